"""A SIGKILL at a random moment in each later stage, and a rerun that ends where an
uninterrupted run ends (issue 35; `train_base` and the sweep: test_reliability.py and
test_sweep.py).

The uninterrupted run is `tiny_pipeline`'s first run: a clone of it, its outputs checked
out from its DVC cache and a fresh MLflow store, has each of `train_specialists`,
`train_router`, `train_gates` and `evaluate` forced to run again, killed (the process
group: `dvc` and the stage) at a moment of its work, and rerun. Every output the stage
writes must then equal the first run's byte for byte (its md5 in dvc.lock), except the
report's provenance (wall times), and the Model Registry must hold exactly one version
per network the reruns registered: none left half-registered by a killed attempt, and
`@champion` on a version with its artifacts.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.support.shared import EXPERIMENT, clone
from tests.support.tinyrepo import base_env
from tests.support.tinyrepo import run as _run

pytestmark = pytest.mark.pipeline
REPORT = ("reports/report/report.md", "reports/report/report.html")  # provenance: wall times


@pytest.fixture(scope="module")
def repo(tiny_pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("kills")
    env = base_env(root / "repo")
    repo = clone(tiny_pipeline.repo, root / "repo", env)
    first = _run(["git", "log", "--format=%H", "--grep", "^first run$"], repo, env).split()[0]
    _run(["git", "checkout", "-q", first], repo, env)
    _run(["dvc", "cache", "dir", "--local", str(tiny_pipeline.repo / ".dvc/cache")], repo, env)
    _run(["dvc", "checkout", "-q"], repo, env)
    first_models = root / "first-models"
    shutil.copytree(repo / "models", first_models)
    return repo, env, _outs(repo), first_models


def _outs(repo: Path) -> dict[str, str]:
    """Every stage output in dvc.lock, by path: its md5 (a folder's: its listing's)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def _weights(path: Path) -> dict[str, bytes]:
    """A saved network's members byte for byte, but for what a save of the same network
    in another process writes differently: `metadata.json` (the save's date) and the
    `shared_object_id`s in `config.json` (Python object ids; numbered here in order of
    appearance, which keeps which layers share an object).
    """
    with zipfile.ZipFile(path) as saved:
        members = {n: saved.read(n) for n in saved.namelist() if n != "metadata.json"}
    ids: dict[bytes, bytes] = {}
    members["config.json"] = re.sub(
        rb'"shared_object_id": (\d+)',
        lambda m: b'"shared_object_id": %d' % ids.setdefault(m[1], len(ids)),
        members["config.json"],
    )
    return members


def _stage_running(repo: Path, stage: str) -> bool:
    db = repo / "mlflow.db"
    if not db.is_file():
        return False
    query = (
        "select count(*) from runs join tags on runs.run_uuid = tags.run_uuid where "
        "tags.key = 'hmoe_stage' and tags.value = ? and runs.status = 'RUNNING'"
    )
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
        try:
            return con.execute(query, (stage,)).fetchone()[0] > 0
        except sqlite3.OperationalError:
            return False


def _first_specialist_saved(repo: Path, since: float) -> bool:
    """A specialist saved by this attempt (the checked-out ones predate it)."""
    return any(f.stat().st_mtime > since for f in (repo / "models/specialists").glob("*.keras"))


def _router_training(repo: Path, since: float) -> bool:
    return any((repo / ".cache/hmoe/backup").glob("train_router-*/history.csv"))


# stage -> (when to kill, how much later at most): the kill lands at a random moment of
# the stage's own work, never in the seconds `dvc` and TensorFlow take to start.
KILLS: dict[str, tuple[Callable[[Path, float], bool], float]] = {
    "train_specialists": (_first_specialist_saved, 0.0),  # the second one is next
    "train_router": (_router_training, 0.5),
    "train_gates": (lambda repo, since: _stage_running(repo, "train_gates"), 1.0),
    "evaluate": (lambda repo, since: _count(repo, "hmoe-mixture") > 0, 0.0),  # registering
}


def _count(repo: Path, name: str) -> int:
    """Registered versions of ``name`` in the store, read as another process would."""
    db = repo / "mlflow.db"
    if not db.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
        try:
            query = "select count(*) from model_versions where name = ?"
            return con.execute(query, (name,)).fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def _kill_during(repo: Path, env: dict, stage: str) -> None:
    ready, spread = KILLS[stage]
    since = time.time()
    proc = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", stage], cwd=repo, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while not ready(repo, since) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(random.uniform(0, spread))
        assert proc.poll() is None, f"{stage} finished before it could be killed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("stage", list(KILLS))
def test_a_sigkilled_stage_reruns_to_the_uninterrupted_result(repo, stage):
    root, env, reference, first_models = repo
    _kill_during(root, env, stage)
    _run(["dvc", "repro", "-f", "-s", stage], root, env)  # forced: past DVC's run cache
    now = _outs(root)
    files = {p for p, md5 in reference.items() if now[p] != md5 and p not in REPORT}
    assert not {p for p in files if not p.startswith("models/")}, f"{stage}: {files}"
    for path in sorted(first_models.rglob("*.keras")):  # a .keras file holds its save date
        mine = root / "models" / path.relative_to(first_models)
        assert _weights(mine) == _weights(path), f"{stage}: {mine} differs from the first run's"

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.hmoe_stage LIKE '{stage}%'")
    assert "KILLED" in {r.info.status for r in runs}, f"{stage}: the dead attempt not KILLED"
    assert max(runs, key=lambda r: r.info.start_time).info.status == "FINISHED"


def test_the_registry_keeps_no_version_of_a_killed_attempt(repo):
    """After the four kills and reruns: one version per registered network the reruns
    trained (and the mixture), each with its artifacts and its DVC tags; the champion is
    one of them.
    """
    root = repo[0]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")  # models:/ URIs resolve there
    client = MlflowClient()
    models = {m.name: m for m in client.search_registered_models()}
    assert "hmoe-mixture" in models, "evaluate's rerun registered no mixture"
    for name in models:
        versions = client.search_model_versions(f"name = '{name}'")
        assert len(versions) == 1, (name, [v.version for v in versions])
        (version,) = versions
        assert client.get_run(version.run_id).info.status == "FINISHED", name
        assert any(k.startswith("dvc_md5") for k in version.tags), name
        files = mlflow.artifacts.list_artifacts(artifact_uri=f"models:/{name}/{version.version}")
        assert {Path(f.path).name for f in files} >= {"MLmodel"}, name
    champion = client.get_model_version_by_alias("hmoe-mixture", "champion")
    (mixture,) = client.search_model_versions("name = 'hmoe-mixture'")
    assert champion.version == mixture.version
