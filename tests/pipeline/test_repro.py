"""The real `dvc repro` on a tiny synthetic dataset, checked through real MLflow.

One module-scoped pipeline run (about 3-4 minutes on 2 cores) feeds every check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from hmoe import tracking
from tests.conftest import ROOT
from tests.support.synthetic import write_class_folder_tree

pytestmark = pytest.mark.pipeline
STAGES = {
    "prepare",
    "train_base",
    "train_specialist@artificial",
    "train_specialist@natural",
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


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    skip = ("tests/", ".ci/", ".dvc/", "bench/", "profiles/", "scripts/")
    files = [f for f in out.stdout.splitlines() if f and not f.startswith(skip)]
    return [f for f in files if f != "dvc.lock" and not f.startswith("reports/")]


def tiny_params(source: Path) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(source=str(source), val_size=60, gate_size=60, limit=None)
    raw["net"]["width"] = 4
    for net in ("base", "specialists", "router"):
        raw[net].update(epochs=1, batch_size=32)
    raw["gates"].update(epochs=2, hidden=4)
    raw["mlflow"].update(experiment="hmoe-test")
    return raw


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    repo = root / "repo"
    for rel in _tracked_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    source = write_class_folder_tree(
        root / "src", train_per_class=24, test_per_class=6, seed=0, as_zip=True
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(source), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env |= {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(repo),
    }
    _run(["git", "init", "-q"], repo, env)
    _run(["dvc", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "tiny"], repo, env)
    log = _run(["dvc", "repro"], repo, env, timeout=1200)
    return repo, env, log


@pytest.fixture(scope="module")
def client(repo):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo[0] / 'mlflow.db'}")
    return MlflowClient()


def test_outputs_and_metrics(repo):
    root, _, _ = repo
    assert (root / "dvc.lock").is_file()
    metrics = json.loads((root / "reports/metrics.json").read_text())
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
    assert metrics["mixture_accuracy"] == metrics["hard_accuracy"]  # routing: hard
    assert metrics["mixture_rows_sum_max_error"] < 1e-4
    assert not any(k.startswith("inference_") for k in metrics)  # timings go to MLflow only
    data = json.loads((root / "reports/data.json").read_text())
    assert data["sizes"] == {"train": 120, "gate": 60, "val": 60, "test": 60}
    assert data["digest"].startswith("sha256:")
    history = (root / "reports/train_base/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch") and len(history) == 2


def test_one_parent_with_a_child_per_stage(repo, client):
    exp = client.get_experiment_by_name("hmoe-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "mixture_accuracy" in parent.data.metrics
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.info.run_name for r in children} == STAGES
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["data_digest"].startswith("sha256:")
        assert len(child.data.tags["git_commit"]) == 40
    base = next(r for r in children if r.info.run_name == "train_base")
    assert base.data.params["net.width"] == "4"
    assert base.data.params["precision_used"] == "float32"
    inputs = {i.dataset.name: i.dataset.digest for i in base.inputs.dataset_inputs}
    assert inputs == {
        "train": tracking.file_md5(repo[0] / "data/prepared/train.npz"),
        "val": tracking.file_md5(repo[0] / "data/prepared/val.npz"),
    }
    gates = next(r for r in children if r.info.run_name == "train_gates")
    assert {i.dataset.name for i in gates.inputs.dataset_inputs} == {"gate", "val"}
    assert "gates.epochs" not in base.data.params
    assert len(client.get_metric_history(base.info.run_id, "val_accuracy")) == 1


def test_every_network_is_registered_and_tagged(repo, client):
    root = repo[0]
    for name in MODELS:
        versions = client.search_model_versions(f"name = '{name}'")
        assert len(versions) == 1, name
        assert len(versions[0].tags["git_commit"]) == 40
    base = client.get_model_version("hmoe-base", "1")
    assert base.tags["dvc_md5"] == tracking.file_md5(root / "models/base.keras")
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    locked = lock["stages"]["train_base"]["outs"][0]
    assert locked["md5"] == base.tags["dvc_md5"]


def test_mixture_loads_in_a_fresh_process(repo):
    root, env, _ = repo
    script = (
        "import json, mlflow, numpy as np\n"
        f"mlflow.set_tracking_uri('sqlite:///{root / 'mlflow.db'}')\n"
        "m = mlflow.pyfunc.load_model('models:/hmoe-mixture/1')\n"
        "x = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)\n"
        "df = m.predict(x)\n"
        "probs = df.drop(columns='label')\n"
        "print(json.dumps({'cols': list(df.columns), 'sums': probs.sum(axis=1).tolist(),"
        " 'labels': df['label'].tolist(), 'argmax': list(probs.idxmax(axis=1))}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["cols"][-1] == "label" and res["cols"][0] == "airplane" and len(res["cols"]) == 11
    assert all(abs(s - 1) < 1e-4 for s in res["sums"])
    assert res["labels"] == res["argmax"]


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


def test_second_repro_reruns_nothing_and_gates_change_reruns_two(repo):
    root, env, _ = repo
    assert _ran(_run(["dvc", "repro"], root, env)) == set()
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "first run"], root, env)
    out = _run(["dvc", "exp", "run", "-S", "gates.learning_rate=0.01", "-n", "lr01"], root, env)
    assert _ran(out) == {"train_gates", "evaluate"}
    # mlflow.* are tracking settings, not model inputs: renaming the experiment reruns nothing
    out = _run(["dvc", "exp", "run", "-S", "mlflow.experiment=hmoe-test"], root, env)
    assert _ran(out) == set()
    show = _run(["dvc", "exp", "show", "--no-pager", "--csv"], root, env)
    header = show.splitlines()[0].split(",")
    assert "mixture_accuracy" in header and not any(h.startswith("counts") for h in header)
    summary = _run([sys.executable, "-m", "hmoe.summary"], root, env)
    assert "experiments" in summary and "mixture_accuracy" in summary
