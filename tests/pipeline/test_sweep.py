"""`python -m hmoe.sweep` on a tiny synthetic dataset: two configurations x two seeds
through the pipeline's own steps, real MLflow, and the findings table checked
(`tiny_sweep`, tests/support/shared.py: the Ray tier compares its cluster run with it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.support.shared import EXPERIMENT, SWEEP, SWEEP_CMD, SWEEP_FILE, clone, sweep_parents
from tests.support.tinyrepo import base_env
from tests.support.tinyrepo import run as _run

pytestmark = pytest.mark.pipeline
CONFIGS = list(SWEEP["configurations"])  # default (soft routing), finetuned_hard


@pytest.fixture(scope="module")
def sweep(tiny_sweep):
    return tiny_sweep


def test_findings_have_every_configuration_and_seed(sweep):
    repo, _, _ = sweep
    frame = pd.read_csv(repo / "out/findings.csv")
    assert sorted(zip(frame["config"], frame["seed"], strict=True)) == [
        ("default", 42), ("default", 43), ("finetuned_hard", 42), ("finetuned_hard", 43),
    ]  # fmt: skip
    for key in ("mixture_accuracy", "base_accuracy", "two_bases_control_accuracy"):
        assert frame[key].between(0, 1).all(), key
    assert (frame["mixture_rows_sum_max_error"] < 1e-4).all()
    soft, hard = (frame[frame["config"] == c] for c in CONFIGS)
    assert (soft["mixture_accuracy"] == soft["soft_accuracy"]).all()  # params.yaml: soft
    assert (hard["mixture_accuracy"] == hard["hard_accuracy"]).all()


def test_the_saved_evidence_gives_back_every_rows_figures(sweep):
    """Each row's probabilities on val and test (float16) recompute its accuracies: the
    files are what the networks said, and later findings can be built on them alone.
    """
    from hmoe.evidence import load_evidence

    repo, _, _ = sweep
    frame = pd.read_csv(repo / "out/findings.csv")
    for _, row in frame.iterrows():
        ev = load_evidence(repo / "out/evidence" / f"{row['config']}-s{row['seed']}.npz")
        test, val = ev["test"], ev["val"]
        with np.load(repo / "out/labels" / f"{row['config']}-s{row['seed']}.npz") as labels:
            np.testing.assert_array_equal(test.y, labels["y"])
        n_test, n_val = len(test.y), len(val.y)
        figures = {
            "base_accuracy": _acc(test.base, test.y),
            "hard_accuracy": _acc(test.mixture("hard"), test.y),
            "soft_accuracy": _acc(test.mixture("soft"), test.y),
            "two_bases_control_accuracy": _acc(test.base + test.second_base, test.y),
            "val_base_accuracy": _acc(val.base, val.y),
            "val_soft_accuracy": _acc(val.mixture("soft"), val.y),
        }
        for key, value in figures.items():  # float16 may flip a near tie: one image at most
            n = n_val if key.startswith("val_") else n_test
            assert abs(value - row[key]) <= 1 / n + 1e-9, (row["config"], row["seed"], key)


def _acc(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == y))


def test_a_network_with_identical_params_is_trained_once(sweep):
    repo, _, _ = sweep
    frame = pd.read_csv(repo / "out/findings.csv").set_index(["config", "seed"])
    for seed in (42, 43):
        assert frame.loc[("default", seed), "base_s"] > 0
        assert frame.loc[("finetuned_hard", seed), "base_s"] == 0  # the same base, reused
        assert frame.loc[("finetuned_hard", seed), "second_base_s"] == 0
        assert frame.loc[("finetuned_hard", seed), "specialists_s"] > 0  # its own recipe
        # the same base scores the same on the same test images
        assert frame.loc[("default", seed), "base_accuracy"] == pytest.approx(
            frame.loc[("finetuned_hard", seed), "base_accuracy"]
        )


def test_findings_table_compares_with_the_reference(sweep):
    repo, _, log = sweep
    md = (repo / "out/findings.md").read_text()
    first_table = md.split("\n\n")[0]  # the configuration table; other sections follow
    lines = [ln for ln in first_table.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| configuration | seeds | mixture (± sd) |")
    assert "mixture - default (95 % t-CI, p)" in lines[0]
    rows = {ln.split(" | ")[0].removeprefix("| "): ln for ln in lines[1:]}
    assert set(rows) == {"default", "finetuned_hard"}
    assert " ± " in rows["default"]  # two seeds: a spread
    frame = pd.read_csv(repo / "out/findings.csv")
    mine = frame[frame["config"] == "finetuned_hard"].set_index("seed")["mixture_accuracy"]
    ref = frame[frame["config"] == "default"].set_index("seed")["mixture_accuracy"]
    mean = 100 * (mine - ref).mean()
    assert f"{mean:+.2f} (" in rows["finetuned_hard"]
    assert "## The decisive comparisons" in md and "McNemar" in md and "## Provenance" in md
    assert (repo / "out/findings.png").read_bytes()[:4] == b"\x89PNG"
    assert "Traceback" not in log


def _runs(repo):
    """(every run, the parent runs) in ``repo``'s SQLite store."""
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    return runs, [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _children(runs, parent) -> dict:
    return {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}


def test_every_configuration_and_seed_is_an_mlflow_parent_with_a_run_per_stage(sweep):
    repo, _, _ = sweep
    runs, parents = _runs(repo)
    assert sorted(r.info.run_name for r in parents) == [
        "default-s42", "default-s43", "finetuned_hard-s42", "finetuned_hard-s43",
    ]  # fmt: skip
    for parent in parents:
        tags = parent.data.tags
        assert tags["sweep"] == "true" and tags["hmoe_role"] == "pipeline"
        assert "mixture_accuracy" in parent.data.metrics
        children = _children(runs, parent.info.run_id)
        assert set(children) == {
            "prepare", "train_base", "train_second_base", "groups",
            "train_specialists@artificial", "train_specialists@natural", "train_router",
            "train_gates", "evaluate",
        }  # fmt: skip
        reused = {n for n, r in children.items() if r.data.tags["reused"] == "true"}
        if tags["sweep_config"] == "default":  # the first pair of its seed trains every network
            assert reused <= {"prepare"} and tags["reused"] == "false"  # data: prepared once
        else:  # finetuned_hard reuses the bases and the router, not the specialists
            assert {"train_base", "train_second_base", "train_router"} <= reused
            assert not any(n.startswith("train_specialists@") for n in reused)
            assert tags["reused"] == "true"


def test_a_sweep_pair_is_recorded_as_a_dvc_run_of_the_same_params(sweep, tiny_pipeline):
    """`mlflow ui` compares a sweep's pair with a `dvc repro` side by side: the same
    params on the parents and the same runs, by name, param keys and metric keys, under
    them (each stage is one function, run by both runners). The
    tiny pipeline ran params.yaml; the sweep's `default` adds the two-bases control (a
    stage of its own).
    """
    sweep_runs, sweep_parents_ = _runs(sweep.repo)
    dvc_runs, dvc_parents = _runs(tiny_pipeline.repo)  # test_repro adds experiments later
    first = [r for r in dvc_parents if r.data.tags["hmoe_pipeline"].startswith("repro@")]
    dvc_parent = min(first, key=lambda r: r.info.start_time)
    pair = next(r for r in sweep_parents_ if r.info.run_name == "default-s42")
    assert pair.data.params.keys() == dvc_parent.data.params.keys()
    differ = {k for k, v in dvc_parent.data.params.items() if pair.data.params[k] != v}
    assert differ == {"controls.second_base"}
    mine = _children(sweep_runs, pair.info.run_id)
    theirs = _children(dvc_runs, dvc_parent.info.run_id)
    assert set(mine) == set(theirs) | {"train_second_base"}
    for name, run_ in theirs.items():
        assert mine[name].data.params.keys() == run_.data.params.keys(), name
        # the same figures (this pair trained every network: only the data were reused),
        # and evaluate's for the control besides
        got, want = mine[name].data.metrics.keys(), run_.data.metrics.keys()
        assert got >= want if name == "evaluate" else got == want, (name, got ^ want)
        assert mine[name].data.tags["hmoe_stage"] == run_.data.tags["hmoe_stage"] == name
        # the sweep's own data digest, which here is the pipeline's: the same tiny source
        assert mine[name].data.tags["data_digest"] == run_.data.tags["data_digest"], name
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep.repo / 'mlflow.db'}")
    kind = client.get_experiment_by_name(EXPERIMENT).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"  # the runs table opens, not GenAI's overview


def test_a_rerun_skips_finished_rows(sweep):
    repo, env, _ = sweep
    log = _run([*SWEEP_CMD, "--out", "out"], repo, env, timeout=600)
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


def test_a_sigkilled_sweep_reruns_to_every_row_once_with_the_same_numbers(
    sweep, tiny_project, tmp_path_factory
):
    """SIGKILL while the first pair trains (its MLflow parent RUNNING), then, in the
    rerun, as soon as the first row is written (between rows, or early in the second
    pair): the last run ends with each row once and the uninterrupted sweep's numbers;
    MLflow shows the dead parents KILLED and one FINISHED parent per pair.
    """
    reference = pd.read_csv(sweep[0] / "out/findings.csv").set_index(["config", "seed"])
    root = tmp_path_factory.mktemp("killed-sweep")
    env = base_env(root / "repo")
    repo = clone(tiny_project, root / "repo", env)
    (repo / SWEEP_FILE).write_text(yaml.safe_dump(SWEEP))
    cmd = [*SWEEP_CMD[:-1], "1", "--out", "out", "--threads", "1"]  # one seed: two pairs
    csv = repo / "out/findings.csv"
    running = _kill_when(cmd, repo, env, lambda: _running_parents(repo))
    assert not csv.exists() or pd.read_csv(csv).empty  # killed within its first pair
    # again, as soon as the first row is written: between rows, or early in the second
    _kill_when(cmd, repo, env, lambda: csv.exists() and len(pd.read_csv(csv)) == 1)
    assert len(pd.read_csv(csv)) == 1
    _run(cmd, repo, env, timeout=900)
    frame = pd.read_csv(csv).set_index(["config", "seed"])
    assert sorted(frame.index) == [("default", 42), ("finetuned_hard", 42)]
    columns = [c for c in frame if c.endswith("accuracy")]
    pd.testing.assert_frame_equal(frame[columns], reference.loc[frame.index, columns])
    killed = running[0]
    mine = [r for r in sweep_parents(repo) if r.info.run_name == killed.info.run_name]
    assert sorted(r.info.status for r in mine) == ["FINISHED", "KILLED"]
    rerun = next(r for r in mine if r.info.status == "FINISHED")
    assert rerun.data.tags["resumes_runs"] == killed.info.run_id
    statuses = {}
    for r in sweep_parents(repo):
        statuses.setdefault(r.info.run_name, []).append(r.info.status)
    assert all(s.count("FINISHED") == 1 and "RUNNING" not in s for s in statuses.values())


def _running_parents(repo) -> list:
    return [r for r in sweep_parents(repo) if r.info.status == "RUNNING"]


def _kill_when(cmd, repo, env, ready) -> object:
    """Start ``cmd``, SIGKILL its process group once ``ready()`` is truthy; its value."""
    proc = subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline, seen = time.monotonic() + 600, None
    try:
        while not seen and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            seen = ready()
        assert proc.poll() is None and seen, "the sweep ended before it could be killed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return seen
