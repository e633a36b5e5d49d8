"""MLflow at the edges: one child run per stage under one parent run per pipeline.

Stages are separate processes started by DVC, so nothing can be shared in memory:
the parent run is found (or created) by its ``hmoe_pipeline`` tag and its RUNNING
status. The evaluate stage, last in the pipeline, finishes it; a crashed pipeline
leaves it RUNNING, so the rerun continues under the same parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

PIPELINE_TAG = "hmoe_pipeline"
ROLE_TAG = "hmoe_role"
STAGE_TAG = "hmoe_stage"


def repo_root() -> Path:
    """The repository root, also from DVC's temporary copies of queued experiments.

    DVC sets DVC_ROOT to the original repository even in ``.dvc/tmp/exps`` copies,
    so the tracking store never strands inside a copy that DVC deletes.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute SQLite store at the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_location() -> str | None:
    """Artifacts beside a local store; None lets a tracking server decide."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (repo_root() / "mlartifacts").as_uri()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path.cwd()
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pipeline_key() -> str:
    """Identity of one pipeline execution: the DVC experiment, else the commit."""
    return os.environ.get("DVC_EXP_NAME") or f"repro@{git_commit()[:10]}"


def setup(experiment: str) -> str:
    """Point MLflow at the store and experiment; return the experiment id."""
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = client.create_experiment(experiment, artifact_location=artifact_location())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def common_tags() -> dict[str, str]:
    tags = {PIPELINE_TAG: pipeline_key(), "git_commit": git_commit()}
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(var):
            tags[var] = os.environ[var]
    return tags


def find_or_create_parent(experiment_id: str) -> str:
    """The RUNNING parent run of this pipeline execution, created when absent."""
    client = MlflowClient()
    key = pipeline_key()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{PIPELINE_TAG} = '{key}' and tags.{ROLE_TAG} = 'pipeline' "
        "and attributes.status = 'RUNNING'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or key.removeprefix("repro@")
    run = client.create_run(
        experiment_id, run_name=name, tags={**common_tags(), ROLE_TAG: "pipeline"}
    )
    logger.info("created MLflow pipeline run %s (%s)", run.info.run_id, key)
    return run.info.run_id


def finish_parent(parent_id: str, metrics: Mapping[str, float]) -> None:
    """Put the summary metrics on the parent and mark the pipeline finished."""
    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(parent_id, k, float(v))
    client.set_terminated(parent_id, "FINISHED")


@contextlib.contextmanager
def stage_run(
    stage: str, experiment: str, params: Mapping[str, Any], data_digest: str | None = None
) -> Iterator[tuple[mlflow.ActiveRun, str]]:
    """A child run for one stage; yields (run, parent run id); logs wall time."""
    exp_id = setup(experiment)
    parent = find_or_create_parent(exp_id)
    tags = {**common_tags(), ROLE_TAG: "stage", STAGE_TAG: stage}
    if data_digest:
        tags["data_digest"] = data_digest
    start = time.perf_counter()
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=tags) as run:
        mlflow.log_params(dict(params))
        yield run, parent
        mlflow.log_metric("wall_s", time.perf_counter() - start)


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch Keras metrics to the active MLflow run (step = epoch)."""

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if logs:
            mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)


def file_md5(path: Path) -> str:
    """The md5 DVC 3 records for a file output in dvc.lock."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def log_split(context: str, path: Path) -> None:
    """Log a prepared split as an MLflow dataset input, digest = its DVC md5.

    MLflow's own digest hashes only the first 10,000 values (about 3 images), so two
    different splits could share it; the file's md5 is what dvc.lock records.
    """
    from hmoe.data.storage import load_split

    x, y = load_split(path)
    dataset = mlflow.data.from_numpy(
        x, targets=y, source=str(path), name=Path(path).stem, digest=file_md5(path)
    )
    mlflow.log_input(dataset, context=context)


def requirements() -> list[str]:
    """Pinned requirements of a logged model (MLflow cannot infer them for Keras 3)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in ("keras", "tensorflow-cpu", "tensorflow", "jax", "numpy", "pandas", "mlflow"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return pins


def tag_version(name: str, version: str, out_path: Path) -> None:
    client = MlflowClient()
    tags = {
        "dvc_out": str(out_path),
        "dvc_md5": file_md5(out_path),
        **common_tags(),
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def log_keras_model(
    model: keras.Model,
    *,
    name: str,
    example: np.ndarray,
    out_path: Path,
    registered_name: str | None,
) -> str | None:
    """Log a Keras model with its signature, register it, tag the version.

    No input_example: the keras flavor fails on it in MLflow 3.17 (mlflow#16183).
    Returns the registered version, or None when registration is off.
    """
    from mlflow.models import infer_signature

    signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
    info = mlflow.keras.log_model(
        model,
        name=name,
        signature=signature,
        registered_model_name=registered_name,
        pip_requirements=requirements(),
    )
    version = info.registered_model_version
    if registered_name and version is not None:
        tag_version(registered_name, str(version), out_path)
        logger.info("registered %s version %s", registered_name, version)
        return str(version)
    return None
