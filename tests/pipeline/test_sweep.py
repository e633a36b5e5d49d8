"""`python -m hmoe.sweep` on a tiny synthetic dataset: two configurations x two seeds
through the pipeline's own steps, real MLflow, and the findings table checked.
"""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.support.tinyrepo import base_env, make_repo
from tests.support.tinyrepo import run as _run

pytestmark = pytest.mark.pipeline

SWEEP = {
    "params": {  # fine-tuned specialists and hard routing, so the two differ in both
        "controls": {"second_base": True},
        "specialists": {"start": "base", "learning_rate": 0.2, "lookahead": False},
        "mixture": {"routing": "hard", "router_fusion": "none"},
    },
    "reference": "default",
    "seeds": 1,
    "configurations": {
        "default": {},
        "scratch_soft": {
            "specialists": {"start": "scratch", "learning_rate": 0.75, "lookahead": True},
            "mixture": {"routing": "soft"},
        },
    },
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    env = base_env(root / "repo")
    repo = make_repo(root, "hmoe-sweep-test", env)
    (repo / "tiny-sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    cmd = [sys.executable, "-m", "hmoe.sweep", "tiny-sweep.yaml", "--seeds", "2", "--out", "out"]
    log = _run(cmd, repo, env, timeout=1200)
    return repo, env, log


def test_findings_have_every_configuration_and_seed(sweep):
    repo, _, _ = sweep
    frame = pd.read_csv(repo / "out/findings.csv")
    assert sorted(zip(frame["config"], frame["seed"], strict=True)) == [
        ("default", 42), ("default", 43), ("scratch_soft", 42), ("scratch_soft", 43),
    ]  # fmt: skip
    for key in ("mixture_accuracy", "base_accuracy", "two_bases_control_accuracy"):
        assert frame[key].between(0, 1).all(), key
    assert (frame["mixture_rows_sum_max_error"] < 1e-4).all()
    soft = frame[frame["config"] == "scratch_soft"]
    assert (soft["mixture_accuracy"] == soft["soft_accuracy"]).all()  # its routing is soft


def test_a_network_with_identical_params_is_trained_once(sweep):
    repo, _, _ = sweep
    frame = pd.read_csv(repo / "out/findings.csv").set_index(["config", "seed"])
    for seed in (42, 43):
        assert frame.loc[("default", seed), "base_s"] > 0
        assert frame.loc[("scratch_soft", seed), "base_s"] == 0  # the same base, reused
        assert frame.loc[("scratch_soft", seed), "second_base_s"] == 0
        assert frame.loc[("scratch_soft", seed), "specialists_s"] > 0  # its own recipe
        # the same base scores the same on the same test images
        assert frame.loc[("default", seed), "base_accuracy"] == pytest.approx(
            frame.loc[("scratch_soft", seed), "base_accuracy"]
        )


def test_findings_table_compares_with_the_reference(sweep):
    repo, _, log = sweep
    md = (repo / "out/findings.md").read_text()
    first_table = md.split("\n\n")[0]  # the configuration table; other sections follow
    lines = [ln for ln in first_table.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| configuration | seeds | mixture |")
    assert "mixture - default (95 % t-CI, p)" in lines[0]
    rows = {ln.split(" | ")[0].removeprefix("| "): ln for ln in lines[1:]}
    assert set(rows) == {"default", "scratch_soft"}
    assert " ± " in rows["default"]  # two seeds: a spread
    frame = pd.read_csv(repo / "out/findings.csv")
    mine = frame[frame["config"] == "scratch_soft"].set_index("seed")["mixture_accuracy"]
    ref = frame[frame["config"] == "default"].set_index("seed")["mixture_accuracy"]
    mean = 100 * (mine - ref).mean()
    assert f"{mean:+.2f} (" in rows["scratch_soft"]
    assert "## The decisive comparisons" in md and "McNemar" in md and "## Provenance" in md
    assert (repo / "out/findings.png").read_bytes()[:4] == b"\x89PNG"
    assert "Traceback" not in log


def test_every_configuration_and_seed_is_an_mlflow_parent_with_step_children(sweep):
    repo, _, _ = sweep
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("hmoe-sweep-test-sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name for r in parents) == [
        "default-s42", "default-s43", "scratch_soft-s42", "scratch_soft-s43",
    ]  # fmt: skip
    for parent in parents:
        assert parent.data.tags["sweep"] == "true"
        assert "mixture_accuracy" in parent.data.metrics
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert {r.data.tags["step"] for r in children} == {
            "prepare", "base", "second_base", "groups", "specialists", "router", "gates",
            "evaluate",
        }  # fmt: skip


def test_a_rerun_skips_finished_rows(sweep):
    repo, env, _ = sweep
    cmd = [sys.executable, "-m", "hmoe.sweep", "tiny-sweep.yaml", "--seeds", "2", "--out", "out"]
    log = _run(cmd, repo, env, timeout=600)
    assert log.count("already in") == 4
    assert len(pd.read_csv(repo / "out/findings.csv")) == 4


def test_a_misspelt_override_fails_before_training(sweep, tmp_path):
    repo, env, _ = sweep
    bad = {"configurations": {"x": {"specialists": {"epochz": 3}}}}
    (repo / "bad.yaml").write_text(yaml.safe_dump(bad))
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "hmoe.sweep", "bad.yaml", "--out", str(tmp_path / "o")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "specialists.epochz" in proc.stderr and "Traceback" not in proc.stderr
