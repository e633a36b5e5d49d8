"""The real `dvc repro` on a tiny synthetic dataset, checked through real MLflow.

One session-scoped pipeline run (`tiny_pipeline`, tests/support/shared.py; about 2.5
minutes on 2 cores) feeds every check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from hmoe import paths
from hmoe.data.constants import CIFAR10_CLASSES as CLASSES
from hmoe.data.storage import file_md5
from hmoe.edge import runtime
from hmoe.observer import tracking
from tests.support.shared import first_metrics
from tests.support.tinyrepo import run as _run

pytestmark = pytest.mark.pipeline
STAGES = {
    "prepare",
    "train_base",
    "groups",
    "train_specialists@artificial",
    "train_specialists@natural",
    "train_router",
    "train_gates",
    "evaluate",
}
MODELS = [
    "hmoe-base",
    "hmoe-router",
    "hmoe-specialist-artificial",
    "hmoe-specialist-natural",
    "hmoe-gate-artificial",
    "hmoe-gate-natural",
    "hmoe-mixture",
]


@pytest.fixture(scope="module")
def repo(tiny_pipeline):
    return tiny_pipeline


@pytest.fixture(scope="module")
def client(repo):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo[0] / 'mlflow.db'}")
    return MlflowClient()


def test_outputs_and_metrics(repo):
    root, _, _ = repo
    assert (root / "dvc.lock").is_file()
    headline = json.loads((root / "reports/metrics.json").read_text())
    details = json.loads((root / "reports/eval/details.json").read_text())
    # the one DVC metric holds the headline alone, so `dvc exp show` stays narrow
    assert list(headline) == [
        "mixture_accuracy", "base_accuracy", "hard_accuracy", "soft_accuracy",
        "router_accuracy", "oracle_accuracy",
    ]  # fmt: skip
    metrics = headline | details
    for key in (
        "base_accuracy",
        "router_accuracy",
        "mixture_accuracy",
        "ensemble_accuracy",
        "oracle_accuracy",
        "soft_accuracy",
        "hard_accuracy",
        "specialist_artificial_accuracy",
        "specialist_natural_accuracy",
    ):
        assert key in metrics, key
    assert metrics["lift_over_base"] == pytest.approx(
        metrics["mixture_accuracy"] - metrics["base_accuracy"]
    )
    assert metrics["lift_over_ensemble"] == pytest.approx(
        metrics["mixture_accuracy"] - metrics["ensemble_accuracy"]
    )
    assert metrics["mixture_accuracy"] == metrics["soft_accuracy"]  # routing: soft
    assert metrics["mixture_rows_sum_max_error"] < 1e-4
    assert not any(k.startswith("inference_") for k in metrics)  # timings go to MLflow only
    data = json.loads((root / "reports/data.json").read_text())
    assert data["sizes"] == {"train": 120, "gate": 60, "val": 60, "test": 60}
    assert data["digest"].startswith("sha256:")
    history = (root / "reports/train_base/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch") and len(history) == 2
    specialists = json.loads((root / "reports/train_specialists/metrics.json").read_text())
    assert set(specialists) == {"artificial", "natural"}
    assert (root / "reports/train_specialists/history/natural.csv").is_file()
    assert json.loads((root / "reports/groups.json").read_text())["source"] == "params"
    assert "two_bases_control_accuracy" not in metrics  # controls.second_base: false
    assert (root / "models/second_base/NOT_TRAINED").is_file()


def test_one_parent_with_a_child_per_stage(repo, client):
    exp = client.get_experiment_by_name("hmoe-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "mixture_accuracy" in parent.data.metrics
    # every effective param, flattened, so `mlflow ui` compares pipeline runs by them
    assert parent.data.params["specialists.epochs"] == "1"
    assert parent.data.params["router.lookahead"] == "False"  # the router's override
    assert (
        parent.data.params["specialists.learning_rate"]
        == parent.data.params["recipe.learning_rate"]
    )
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.info.run_name for r in children} == STAGES
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["data_digest"].startswith("sha256:")
        assert len(child.data.tags["git_commit"]) == 40
    base = next(r for r in children if r.info.run_name == "train_base")
    assert base.data.params["net.width"] == "4"
    assert base.data.params["precision_used"] == runtime.resolve_precision("auto")[0]
    inputs = {i.dataset.name: i.dataset.digest for i in base.inputs.dataset_inputs}
    assert inputs == {
        "train": file_md5(repo[0] / "data/prepared/train.npz"),
        "val": file_md5(repo[0] / "data/prepared/val.npz"),
    }
    gates = next(r for r in children if r.info.run_name == "train_gates")
    assert {i.dataset.name for i in gates.inputs.dataset_inputs} == {"gate", "val"}
    # the gates train inside the shared hooks: their run has the cost figures too
    assert {"fit_s", "train_images_per_s", "final_val_loss", "final_val_accuracy"} <= set(
        gates.data.metrics
    )
    assert gates.data.params["replicas"] == "1"
    assert "gates.epochs" not in base.data.params
    assert len(client.get_metric_history(base.info.run_id, "val_accuracy")) == 1


def test_the_last_line_logged_links_the_experiments_runs_table(repo, client):
    """`mlflow ui` 3.17 opens on its GenAI overview: the run ends with the link that
    opens its experiment's runs table instead.
    """
    _, _, log = repo
    logged = [line for line in log.splitlines() if re.match(r"\S+ \S+ [A-Z]+ hmoe[.\w]*: ", line)]
    exp_id = client.get_experiment_by_name("hmoe-test").experiment_id
    link = f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert logged[-1].endswith(f": {link}"), logged[-3:]
    assert "mlflow ui --backend-store-uri sqlite:///" in logged[-1]


def test_the_mixture_ships_only_the_code_serving_imports(repo, client, tmp_path):
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts("models:/hmoe-mixture/1", dst_path=tmp_path))
    code = local / "code" / "hmoe"
    shipped = {p.relative_to(code).as_posix() for p in code.rglob("*.py")}
    assert {"serving.py", "mixture.py", "gates.py"} <= shipped
    assert not [f for f in shipped if f.startswith(("sweep", "teamstack", "observer/", "steps/"))]


def test_every_network_is_registered_and_tagged(repo, client):
    root = repo[0]
    for name in MODELS:
        versions = client.search_model_versions(f"name = '{name}'")
        assert len(versions) == 1, name
        assert len(versions[0].tags["git_commit"]) == 40
    base = client.get_model_version("hmoe-base", "1")
    assert base.tags["dvc_md5"] == file_md5(root / "models/base.keras")
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    locked = lock["stages"]["train_base"]["outs"][0]
    assert locked["md5"] == base.tags["dvc_md5"]


def test_cli_scores_the_test_split_as_files_like_evaluate(repo, tmp_path):
    """`hmoe predict` in a fresh process (the champion pyfunc from the SQLite registry)
    on the test split written as PNG files, lossless, and on two odd images: its labels
    score exactly the mixture accuracy `evaluate` reported (same TTA, same routing). The
    served frame's columns are the team tier's check.
    """
    from PIL import Image

    root, env, _ = repo
    with np.load(root / "data/prepared/test.npz") as npz:
        x, y = npz["x"], npz["y"]
    files = []
    for i, image in enumerate(x):
        files.append(tmp_path / f"test{i:03d}.png")
        Image.fromarray(image).save(files[-1])
    rng = np.random.default_rng(0)
    odd = [tmp_path / "small.png", tmp_path / "big.jpg"]
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(odd[0])
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(odd[1])
    cli_env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "hmoe.cli", "predict", *map(str, files + odd)],
        cwd=root, env=cli_env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["file", "class"] and len(lines) == len(files) + 3
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == [str(f) for f in files + odd]
    assert all(r[1] in CLASSES and r[3] in ("artificial", "natural") for r in rows)
    labels = [CLASSES.index(r[1]) for r in rows[: len(files)]]
    reported = first_metrics(repo)["mixture_accuracy"]
    assert np.mean(np.array(labels) == y) == pytest.approx(reported)
    assert "big.jpg: 48x64 RGB -> 32x32 RGB" in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "hmoe.cli", "predict", str(tmp_path / "missing.png")],
        cwd=root, env=cli_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "no such file" in bad.stderr


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


# MLflow code: values flow in, nothing flows back (tests/unit/test_dvc_deps.py)
LOGGING_PACKAGE = Path("hmoe/observer")


def _decides_no_output(root) -> list[str]:
    """The logging modules and every other hmoe module that no stage lists in its deps
    (the sweep, serving, the CLI...): none of them can change a stage's output.
    """
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    deps = [Path(d) for spec in stages.values() for d in spec["deps"]]
    unlisted = {
        str(rel)
        for rel in (f.relative_to(root) for f in (root / "hmoe").rglob("*.py"))
        if not any(rel == d or d in rel.parents for d in deps)
    }
    logging = {str(f.relative_to(root)) for f in (root / LOGGING_PACKAGE).rglob("*.py")}
    return sorted(unlisted | logging)


def _status_after_editing(root, env, modules) -> set[str]:
    """The stages `dvc status` finds changed while every file in ``modules`` is edited."""
    originals = {m: (root / m).read_text() for m in modules}
    try:
        for module, text in originals.items():
            (root / module).write_text(text + "\n# an edit\n")
        proc = subprocess.run(
            ["dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True,
            timeout=300, check=True,
        )  # fmt: skip
    finally:
        for module, text in originals.items():
            (root / module).write_text(text)
    return set(json.loads(proc.stdout))


def test_second_repro_reruns_nothing_and_gates_change_reruns_two(repo):
    root, env, _ = repo
    assert _ran(_run(["dvc", "repro"], root, env)) == set()
    assert _run(["git", "status", "--porcelain"], root, env) == ""  # nothing rewritten
    out = _run(["dvc", "exp", "run", "-S", "gates.learning_rate=0.01", "-n", "lr01"], root, env)
    assert _ran(out) == {"train_gates", "evaluate"}
    # (that a tracking setting, mlflow.*, reruns nothing is the team tier's experiment)
    show = _run(["dvc", "exp", "show", "--no-pager", "--csv"], root, env)
    header = show.splitlines()[0].split(",")
    assert "mixture_accuracy" in header and not any(h.startswith("counts") for h in header)
    # issue 22: two experiments compared, without the dependency hash columns, fit 200
    narrow = ["dvc", "exp", "show", "--only-changed", "--drop", ".*/", "--md", "--no-pager"]
    table = _run(narrow, root, env)
    assert "gates.learning_rate" in table and max(map(len, table.splitlines())) <= 200, table
    summary = _run([sys.executable, "-m", "hmoe.summary"], root, env)
    assert "experiments" in summary and "mixture_accuracy" in summary


def test_hierarchy_options_rerun_only_what_they_change(repo):
    """Learned groups, dustbin specialists trained longer, learned gates on features and
    the second base, in one experiment: the base is reused, the groups are discovered, the
    specialists train for the epochs their key says, the control is scored.
    """
    root, env, _ = repo
    options = [
        "groups=2",
        "specialists.dustbin=0.5",
        "specialists.epochs=2",
        "gates.kind=learned",
        "gates.inputs=both",
        "controls.second_base=true",
    ]
    cmd = ["dvc", "exp", "run", "-n", "options"] + [a for o in options for a in ("-S", o)]
    ran = _ran(_run(cmd, root, env))
    assert ran == {
        "groups",
        "train_specialists",
        "train_router",
        "train_second_base",
        "train_gates",
        "evaluate",
    }
    record = json.loads((root / "reports/groups.json").read_text())
    assert record["source"] == "auto" and len(record["groups"]) == 2
    assert sorted(c for m in record["groups"].values() for c in m) == sorted(CLASSES)
    for group in record["groups"]:  # issue 22: specialists.epochs is what they train for
        history = pd.read_csv(root / paths.specialist_history(group))
        assert len(history) == 2
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert 0 <= metrics["two_bases_control_accuracy"] <= 1  # a headline metric when trained
    details = json.loads((root / "reports/eval/details.json").read_text())
    assert details["mixture_rows_sum_max_error"] < 1e-4
    assert (root / "models/second_base/base.keras").is_file()
    report = (root / "reports/report/report.md").read_text()
    assert "## Groups (auto)" in report and "two bases averaged" in report


# The module's last two checks are short on purpose: pytest-xdist gives a worker its
# next unit when two tests of the current one are left (tests/conftest.py), and the
# worker that runs this module should not take the team tier while the other is free.
def test_editing_the_mixture_or_logging_code_retrains_nothing(repo):
    """Narrow deps: the TTA/mixture arithmetic reruns only the stages that use it, and
    (after the experiments above, from whatever the workspace holds) editing every
    module that decides no stage's output (the MLflow code, hmoe/observer; the sweep,
    serving...) leaves `dvc status` clean.
    """
    root, env, _ = repo
    assert _status_after_editing(root, env, ["hmoe/mixture.py"]) == {"train_gates", "evaluate"}
    quiet = _decides_no_output(root)
    assert "hmoe/observer/runs.py" in quiet and not any(q.startswith("hmoe/edge") for q in quiet)
    assert _status_after_editing(root, env, quiet) == set(), quiet


def test_the_sweep_runs_dvc_yaml_s_steps_to_the_same_numbers(repo, tiny_sweep):
    """One declaration, two runners: the in-process sweep, reading dvc.yaml, gives every
    accuracy `dvc repro` gave for the same params and seed (issue 22). The sweep's
    `default` configuration is params.yaml plus the two-bases control, a network of its
    own that moves no other. The first run's metrics are read from its commit, as the
    experiments above have changed the workspace.
    """
    metrics = first_metrics(repo)
    findings = pd.read_csv(tiny_sweep.repo / "out/findings.csv", float_precision="round_trip")
    row = findings.set_index(["config", "seed"]).loc[("default", 42)]
    accuracies = [k for k in metrics if k.endswith("_accuracy")]
    assert len(accuracies) >= 10
    assert {k: row[k] for k in accuracies} == {k: metrics[k] for k in accuracies}
    assert next(iter(metrics)) == "mixture_accuracy"  # the headline leads metrics.json
