"""MLflow at the edges: one child run per stage under one parent run per pipeline.

Stages are separate processes started by DVC, so nothing can be shared in memory:
the parent run is found (or created) by its ``hmoe_pipeline`` tag and its RUNNING
status. That tag identifies one pipeline execution: the DVC experiment's name, or
for `dvc repro` the commit plus a digest of the uncommitted params and code, so a
rerun after editing params.yaml gets a new parent while a rerun of the same inputs
after a crash continues under the crashed one. The evaluate stage finishes it.
A stage interrupted by Ctrl-C or SIGTERM is marked KILLED, one that raised FAILED;
a stage killed outright (SIGKILL) is marked KILLED by its rerun, which names it.

This module imports nothing from the pipeline (tests/unit/test_import_graph.py): what
it logs is passed in by the stage's observer (:mod:`hmoe.observer`), so editing it can
change no output and it is in no stage's DVC deps.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from hmoe import gitrev

logger = logging.getLogger(__name__)

PIPELINE_TAG = "hmoe_pipeline"
ROLE_TAG = "hmoe_role"
STAGE_TAG = "hmoe_stage"
# MLflow 3.17's UI opens an experiment on its GenAI overview unless this experiment tag
# names another kind; with it, the runs table ("Model training") is the first view.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default


@dataclass(frozen=True)
class Pipeline:
    """One pipeline execution as MLflow records it, when the caller holds it in memory
    (the sweep: one per configuration x seed). DVC's stages are separate processes and
    find theirs by :func:`pipeline_key` instead (:func:`find_or_create_parent`).
    """

    run_id: str
    key: str
    tags: Mapping[str, str]  # put on the parent and on every stage run under it


_held: contextvars.ContextVar[Pipeline | None] = contextvars.ContextVar("hmoe_pipeline")


@contextlib.contextmanager
def under(pipeline: Pipeline) -> Iterator[None]:
    """Stage runs opened inside go under ``pipeline``'s parent, with its tags."""
    token = _held.set(pipeline)
    try:
        yield
    finally:
        _held.reset(token)


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer; the message names it and what to do."""


def _root(root: Path | None) -> Path:
    """Where a local store lives: the caller's repository root (the pipeline passes
    DVC's, also from a queued experiment's temporary copy), else the current folder.
    """
    return Path(root if root is not None else Path.cwd()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute SQLite store at ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{_root(root) / 'mlflow.db'}"


def artifact_location(root: Path | None = None) -> str | None:
    """Artifacts beside a local store; None lets a tracking server decide."""
    uri = tracking_uri(root)
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (_root(root) / "mlartifacts").as_uri()


def pipeline_key() -> str:
    """Identity of one pipeline execution: the sweep's pair (:func:`under`), the DVC
    experiment, else the commit and the digest of what is not committed yet (params,
    dvc.yaml, code).
    """
    held = _held.get(None)
    if held is not None:
        return held.key
    return os.environ.get("DVC_EXP_NAME") or f"repro@{gitrev.commit(short=True)}-{inputs_digest()}"


def inputs_digest() -> str:
    """Digest of params.yaml, dvc.yaml and every uncommitted change to the code.

    Stage outputs (dvc.lock, reports/, models/) are left out: they change while the
    pipeline runs, and the parent must stay the same from its first stage to its last.
    """
    digest = hashlib.sha256()
    for name in ("params.yaml", "dvc.yaml"):
        path = Path(name)
        digest.update(path.read_bytes() if path.is_file() else b"")
    try:
        changed = subprocess.run(
            ["git", "diff", "HEAD", "--", "hmoe", "stages"],
            capture_output=True, check=True, cwd=Path.cwd(),
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        changed = b""
    digest.update(changed)
    return digest.hexdigest()[:8]


def setup(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at the store (at ``root``, see :func:`tracking_uri`) and the
    experiment; return the experiment id.

    On the default SQLite store, queued experiments running in parallel (`dvc queue
    start -j N`) would create its schema, or the experiment, at the same moment and
    one would fail (an alembic migration race): a file lock beside the database
    makes them take turns.
    """
    uri = tracking_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        client = MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            where, tags = artifact_location(root), {KIND_TAG: KIND}
            exp_id = client.create_experiment(experiment, artifact_location=where, tags=tags)
        else:
            exp_id = exp.experiment_id
            if exp.tags.get(KIND_TAG) is None:  # made before the tag was set
                client.set_experiment_tag(exp_id, KIND_TAG, KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def runs_table(experiment: str) -> tuple[str, str]:
    """The link that opens ``experiment``'s runs table, and the command that serves a
    local store ("" for a tracking server). MLflow 3.17's UI opens on its GenAI
    overview whatever the experiment's tags say (docs/tracking.md);
    ``workflowType=machine_learning`` opens the runs ("Model training") instead.
    """
    uri = mlflow.get_tracking_uri()
    exp = MlflowClient().get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else "0"
    server = uri.startswith(("http://", "https://"))
    base = masked(uri).rstrip("/") if server else LOCAL_UI
    link = f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    return link, "" if server else f"mlflow ui --backend-store-uri {uri}"


def masked(uri: str) -> str:
    """``uri`` with any password replaced by ***, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the (masked) URI, when a tracking server does not answer:
    MLflow's own client would retry with backoff for minutes.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(
            f"the MLflow tracking server {masked(uri)} does not answer ({reason}); start it "
            "(see docs/team.md) or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
        ) from None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on ``<db>.lock`` for a local SQLite store; nothing otherwise."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def common_tags() -> dict[str, str]:
    tags = {PIPELINE_TAG: pipeline_key(), "git_commit": gitrev.commit()}
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(var):
            tags[var] = os.environ[var]
    held = _held.get(None)
    return tags | dict(held.tags if held is not None else {})


def running_pipelines(experiment_id: str, key: str) -> list:
    """The RUNNING parent runs of the pipeline execution ``key``."""
    return MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.{PIPELINE_TAG} = '{key}' and tags.{ROLE_TAG} = 'pipeline' "
        "and attributes.status = 'RUNNING'",
    )


def create_parent(experiment_id: str, name: str, tags: Mapping[str, str] = ()) -> str:
    """A new parent run for this pipeline execution (:func:`common_tags`, ``tags``)."""
    tags = {**common_tags(), **dict(tags), ROLE_TAG: "pipeline"}
    run = MlflowClient().create_run(experiment_id, run_name=name, tags=tags)
    logger.info("created MLflow pipeline run %s (%s)", run.info.run_id, tags[PIPELINE_TAG])
    return run.info.run_id


def find_or_create_parent(experiment_id: str) -> str:
    """The RUNNING parent run of this pipeline execution, created when absent: DVC runs
    each stage in its own process, so a stage continues the parent its first stage made.
    """
    held = _held.get(None)
    if held is not None:
        return held.run_id
    key = pipeline_key()
    found = running_pipelines(experiment_id, key)
    if found:
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or key.removeprefix("repro@")
    return create_parent(experiment_id, name)


def mark_killed(runs: Sequence[Any], what: str) -> list[str]:
    """Runs still RUNNING whose process died unannounced (SIGKILL, a lost node): marked
    KILLED, with their RUNNING children; returns their ids for the new run's
    ``resumes_runs`` tag. The one place a dead run is marked, for both runners.
    """
    client = MlflowClient()
    for run in runs:
        children = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}' "
            "and attributes.status = 'RUNNING'",
        )
        for dead in [*children, run]:
            client.set_terminated(dead.info.run_id, "KILLED")
        logger.warning("%s: earlier attempt %s was killed; marked KILLED", what, run.info.run_id)
    return [r.info.run_id for r in runs]


def finish_parent(
    parent_id: str,
    metrics: Mapping[str, float],
    files: Sequence[Path] = (),
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Put the run's params, the summary metrics, the report's files and tags on the
    parent run and mark the pipeline finished.
    """
    client = MlflowClient()
    logged = client.get_run(parent_id).data.params
    fresh = [Param(k, str(v)) for k, v in (params or {}).items() if k not in logged]
    for start in range(0, len(fresh), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(parent_id, params=fresh[start : start + 100])
    for f in files:
        client.log_artifact(parent_id, str(f), "report")
    for k, v in (tags or {}).items():
        client.set_tag(parent_id, k, v)
    for k, v in metrics.items():
        client.log_metric(parent_id, k, float(v))
    client.set_terminated(parent_id, "FINISHED")


def end_run(run_id: str, status: str) -> None:
    """Mark a run that was not started with ``mlflow.start_run`` (a parent) ended."""
    MlflowClient().set_terminated(run_id, status)


@contextlib.contextmanager
def stage_run(
    stage: str,
    experiment: str,
    params: Mapping[str, Any],
    data_digest: str | None = None,
    root: Path | None = None,
) -> Iterator[tuple[mlflow.ActiveRun, str]]:
    """A child run for one stage; yields (run, parent run id); logs wall time."""
    exp_id = setup(experiment, root)
    parent = find_or_create_parent(exp_id)
    tags = {ROLE_TAG: "stage", STAGE_TAG: stage}
    if data_digest:
        tags["data_digest"] = data_digest
    tags |= common_tags()  # a held pipeline's tags win: a sweep's data are its own
    start = time.perf_counter()
    stale = mark_killed_attempts(exp_id, parent, stage)
    if stale:
        tags["resumes_runs"] = ",".join(stale)
    run = mlflow.start_run(run_name=stage, parent_run_id=parent, tags=tags)
    try:
        mlflow.log_params(dict(params))
        yield run, parent
        mlflow.log_metric("wall_s", time.perf_counter() - start)
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def mark_killed_attempts(experiment_id: str, parent: str, stage: str) -> list[str]:
    """Earlier runs of this stage under this parent still RUNNING were killed outright
    (SIGKILL, power loss): mark them KILLED and return their ids for the new run's tag.
    """
    found = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.{STAGE_TAG} = '{stage}' and tags.mlflow.parentRunId = '{parent}' "
        "and attributes.status = 'RUNNING'",
    )
    return mark_killed(found, stage)


def epoch_logger() -> Any:
    """A Keras callback logging per-epoch metrics to the active MLflow run (step = epoch)."""
    return _epoch_logger_class()()


@functools.cache
def _epoch_logger_class() -> type:
    """Built on first use: importing this module loads no Keras, so the Ray sweep's
    driver can resolve and check the tracking store without loading TensorFlow.
    """
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            if logs:
                mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)

    return EpochLogger


def log_dataset(context: str, x: np.ndarray, y: np.ndarray, source: Path, digest: str) -> None:
    """Log a split already in memory as an MLflow dataset input, digest = its DVC md5.

    MLflow's own digest hashes only the first 10,000 values (about 3 images), so two
    different splits could share it; the file's md5 is what dvc.lock records.
    """
    dataset = mlflow.data.from_numpy(
        x, targets=y, source=str(source), name=Path(source).stem, digest=digest
    )
    mlflow.log_input(dataset, context=context)


def log_runtime(backend: str, policy: str, compiled: bool) -> None:
    """How the stage actually ran: Keras backend, dtype policy, compiled or not."""
    mlflow.log_param("keras_backend", backend)
    mlflow.log_param("precision_used", policy)
    mlflow.log_param("jit_compile_used", compiled)


def log_param(key: str, value: Any) -> None:
    mlflow.log_param(key, value)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tag(key: str, value: Any) -> None:
    mlflow.set_tag(key, value)


def log_dict(payload: Mapping[str, Any], name: str) -> None:
    mlflow.log_dict(dict(payload), name)


def log_artifacts(files: Sequence[Path]) -> None:
    for f in files:
        mlflow.log_artifact(str(f))


def stage_wall_times(parent_id: str) -> dict[str, float]:
    """Wall seconds of every finished stage run under the pipeline's parent run."""
    client = MlflowClient()
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return {
        r.info.run_name: r.data.metrics["wall_s"]
        for r in runs
        if "wall_s" in r.data.metrics and r.info.status == "FINISHED"
    }
