"""Reliability with the real `dvc` and MLflow's default SQLite store, on tiny data:
parallel queued experiments on a store that does not exist yet, the same numbers from
the same inputs, and a training stage killed with SIGKILL that resumes to the result
of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import time
import warnings

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from hmoe.teamstack import stop_tree
from tests.support.shared import EXPERIMENT, clone
from tests.support.tinyrepo import base_env
from tests.support.tinyrepo import run as _run

pytestmark = pytest.mark.pipeline
TRAIN_BASE_SUMMARY = "reports/train_base/metrics.json"
TRAIN_BASE_HISTORY = "reports/train_base/history.csv"
EPOCHS = 4  # enough epochs for a kill to land mid-training


@pytest.fixture(scope="module")
def repo(tiny_project, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    env = base_env(root / "repo")
    repo = clone(tiny_project, root / "repo", env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base"].update(epochs=EPOCHS, batch_size=8)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "commit", "-qam", "longer base"], repo, env)
    return repo, env


QUEUE: dict = {}  # the queue's workers as seen while they ran, and when it drained


def _queue_workers(root) -> list[psutil.Process]:
    """This repository's `dvc exp queue-worker` processes (they carry its PYTHONPATH)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if "queue-worker" in proc.cmdline() and proc.environ().get("PYTHONPATH") == str(root):
                found.append(proc)
    return found


def _wait_queue(repo, env, timeout=900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _run(["dvc", "queue", "status"], repo, env)
        if not any(s in status for s in ("Running", "Queued")):
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


@pytest.fixture(scope="module")
def twins(repo) -> list[tuple[str, dict, str]]:
    """Two identical experiments queued and run by `dvc queue start -j 2` on a store that
    does not exist yet: each one's commit, and the train_base summary and history it holds.
    """
    root, env = repo
    assert not (root / "mlflow.db").exists()  # both runs race to create the store
    for name in ("twin-a", "twin-b"):
        _run(["dvc", "exp", "run", "--queue", "-n", name, "train_base"], root, env)
    # The workers are daemons: they must not inherit a pipe that the test waits on (a
    # worker that lingers after the queue drains would hold `subprocess.run` open).
    with (root.parent / "queue-start.log").open("w") as log:
        subprocess.run(
            ["dvc", "queue", "start", "-j", "2"], cwd=root, env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300, check=True,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (workers := _queue_workers(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    QUEUE["workers"] = workers  # as they run the two experiments
    status = _wait_queue(root, env)
    QUEUE["drained"] = time.monotonic()
    assert status.count("Success") == 2, status
    rows = list(csv.DictReader(io.StringIO(_run(["dvc", "exp", "show", "--csv"], root, env))))
    by_name = {r["Experiment"]: r["rev"] for r in rows if r["Experiment"] in ("twin-a", "twin-b")}
    assert sorted(by_name) == ["twin-a", "twin-b"]
    # Each experiment is a git commit holding its train_base summary and history (the
    # stage's metrics are an out, not a DVC metric: dvc exp show leads with evaluate's).
    runs = []
    for name in ("twin-a", "twin-b"):
        show = lambda path, rev=by_name[name]: _run(["git", "show", f"{rev}:{path}"], root, env)  # noqa: E731
        runs.append((by_name[name], json.loads(show(TRAIN_BASE_SUMMARY)), show(TRAIN_BASE_HISTORY)))
    return runs


def test_parallel_queue_on_a_fresh_default_store_gives_identical_runs(twins):
    (_, summary_a, history_a), (_, summary_b, history_b) = twins
    assert summary_a["val_accuracy"] > 0
    assert (summary_a, history_a) == (summary_b, history_b)  # op determinism: exactly equal


def _backup_started(root) -> bool:
    return any((root / ".cache/hmoe/backup").glob("train_base-*/training_metadata.json"))


def test_sigkilled_training_resumes_to_the_uninterrupted_result(repo, twins):
    """The uninterrupted run is a twin: its lock checked out, its outputs (the prepared
    splits too) are the workspace's, and its figures the reference the resumed run must
    reach.
    """
    root, env = repo
    rev, reference, history_csv = twins[0]
    _run(["git", "checkout", rev, "--", "dvc.lock", "reports"], root, env)  # uncached outs
    _run(["dvc", "checkout", "prepare", "train_base"], root, env)
    ref_history = pd.read_csv(io.StringIO(history_csv))
    assert len(ref_history) == EPOCHS

    proc = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", "train_base"], cwd=root, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not _backup_started(root) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((root / ".cache/hmoe/backup").glob("*/training_metadata.json").__next__()
                      .read_text())["epoch"]  # fmt: skip
    assert 1 <= done < EPOCHS

    # forced: DVC's run cache would otherwise restore the reference run's outputs
    out = _run(["dvc", "repro", "-f", "-s", "train_base"], root, env)
    assert f"resuming after epoch {done}" in out
    resumed = json.loads((root / "reports/train_base/metrics.json").read_text())
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert resumed[key] == pytest.approx(value, abs=1e-6), key
    history = pd.read_csv(root / "reports/train_base/history.csv")
    assert list(history["epoch"]) == list(range(EPOCHS))
    np.testing.assert_allclose(history["val_accuracy"], ref_history["val_accuracy"], atol=1e-6)
    np.testing.assert_allclose(history["loss"], ref_history["loss"], rtol=1e-5)

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.hmoe_stage = 'train_base'")
    by_status = {}
    for r in runs:
        by_status.setdefault(r.info.status, []).append(r)
    assert len(by_status.get("KILLED", [])) == 1
    newest = max(runs, key=lambda r: r.info.start_time)
    assert newest.info.status == "FINISHED"
    assert newest.data.tags["resumed_from_epoch"] == str(done)
    assert newest.data.tags["resumes_runs"] == by_status["KILLED"][0].info.run_id


def test_no_queue_worker_outlives_the_drained_queue_by_a_minute(repo, twins):
    """DVC's workers stop themselves once the queue stays empty (dvc-task polls every
    10 s); one was seen alive half an hour later, so any still running a minute after
    the queue drained is stopped here by process id and reported (docs/troubleshooting.md
    says how to do the same by hand).
    """
    seen = QUEUE["workers"]
    assert seen, "no `dvc exp queue-worker` found while the queue ran"
    while any(_alive(p) for p in seen) and time.monotonic() < QUEUE["drained"] + 60:
        time.sleep(0.5)
    lingering = [p for p in seen if _alive(p)]
    for proc in lingering:
        stop_tree(proc.pid)
    if lingering:
        warnings.warn(f"stopped {len(lingering)} lingering DVC queue worker(s)", stacklevel=1)
    assert not [p for p in seen if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
