"""Tracking location and parent-run bookkeeping, against a real MLflow SQLite store."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hmoe import paths
from hmoe.observer import tracking


def test_default_store_is_absolute_at_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)  # e.g. a queued run's temporary copy elsewhere
    assert paths.repo_root() == tmp_path.resolve()
    root = paths.repo_root()  # the observer passes it: tracking knows no pipeline paths
    assert tracking.tracking_uri(root) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.artifact_location(root) == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.parent.resolve()}/mlflow.db"


def test_env_uri_wins(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    assert tracking.artifact_location() is None


def test_pipeline_key_prefers_dvc_experiment(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lucid-moth")
    assert tracking.pipeline_key() == "lucid-moth"
    monkeypatch.delenv("DVC_EXP_NAME")
    assert tracking.pipeline_key().startswith("repro@")


@pytest.fixture
def store(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stages_share_one_parent_until_it_is_finished(store):
    ids = []
    for stage in ("prepare", "train_base"):
        with tracking.stage_run(stage, "t", {"seed": 1}) as (run, parent):
            ids.append((run.info.run_id, parent))
    (child1, parent1), (child2, parent2) = ids
    assert parent1 == parent2 and child1 != child2
    client = MlflowClient()
    child = client.get_run(child2)
    assert child.data.tags["mlflow.parentRunId"] == parent1
    assert child.data.tags[tracking.STAGE_TAG] == "train_base"
    assert child.data.tags["DVC_EXP_NAME"] == "exp-a"
    assert "wall_s" in child.data.metrics
    tracking.finish_parent(parent1, {"mixture_accuracy": 0.5})
    finished = client.get_run(parent1)
    assert finished.info.status == "FINISHED"
    assert finished.data.metrics["mixture_accuracy"] == 0.5
    assert finished.info.run_name == "exp-a"
    with tracking.stage_run("prepare", "t", {}) as (_, parent3):
        pass
    assert parent3 != parent1
    assert Path(store, "mlflow.db").is_file()


def test_failed_stage_keeps_parent_open_for_the_rerun(store):
    with pytest.raises(RuntimeError), tracking.stage_run("train_base", "t", {}) as (_, p1):
        raise RuntimeError("crash")
    with tracking.stage_run("train_base", "t", {}) as (run, p2):
        pass
    assert p1 == p2
    statuses = {
        r.info.status
        for r in MlflowClient().search_runs([run.info.experiment_id])
        if r.data.tags.get(tracking.ROLE_TAG) == "stage"
    }
    assert statuses == {"FAILED", "FINISHED"}


def test_unreachable_tracking_server_fails_fast_with_the_masked_uri():
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://alice:s3cret@127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable) as err:
        tracking.check_reachable(uri)
    assert time.monotonic() - start < 10
    assert f"alice:***@127.0.0.1:{port}" in str(err.value)
    assert "s3cret" not in str(err.value)
    assert tracking.masked("sqlite:///x.db") == "sqlite:///x.db"
