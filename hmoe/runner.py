"""Stage edges shared by the training stages: start-up, I/O, tracking.

The compute lives in :mod:`hmoe.nets`, :mod:`hmoe.train` and :mod:`hmoe.mixture`;
this module reads and writes files and talks to MLflow around it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import yaml

from hmoe import paths, tracking
from hmoe.params import NetParams, Params, ParamsError, flatten, load_params
from hmoe.train import fit_classifier

logger = logging.getLogger("hmoe")


def init(stage: str) -> Params:
    """Logging, params (validated before any work), seed and float policy."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        params = load_params(paths.PARAMS)
    except ParamsError as err:
        logger.error("%s: %s", stage, err)
        sys.exit(2)
    keras.utils.set_random_seed(params.seed)
    keras.mixed_precision.set_global_policy(params.train.precision)
    logger.info("stage %s: params ok, precision %s", stage, params.train.precision)
    return params


def stage_params(stage: str, params: Params) -> dict[str, Any]:
    """The params this stage declares in dvc.yaml, with their values (for MLflow)."""
    spec = yaml.safe_load(Path("dvc.yaml").read_text())["stages"][stage]
    declared = spec.get("do", spec).get("params", [])
    flat = flatten(params)
    return {k: v for k, v in flat.items() if any(k == d or k.startswith(f"{d}.") for d in declared)}


def data_digest() -> str | None:
    if paths.DATA_REPORT.is_file():
        return json.loads(paths.DATA_REPORT.read_text()).get("digest")
    return None


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Atomic JSON write, so a crash never leaves a half-written metrics file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_model(model: keras.Model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def load_model(path: Path) -> keras.Model:
    import hmoe.nets  # noqa: F401  registers custom layers

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro` to build it")
    return keras.saving.load_model(path, safe_mode=True)


@dataclass(frozen=True)
class ClassifierJob:
    """One classifier-training stage: what to train, on what, saved where."""

    stage: str
    cfg: NetParams
    build: Callable[[], keras.Model]
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    model_path: Path
    registered_name: str


def run_classifier_job(job: ClassifierJob, params: Params) -> dict[str, float]:
    """Train, save, write reports and log everything to the stage's MLflow run."""
    reports = paths.stage_reports(job.stage)
    reports.mkdir(parents=True, exist_ok=True)
    logged = stage_params(os.environ.get("DVC_STAGE", job.stage).split("@")[0], params)
    backup = paths.BACKUPS / _backup_key(job.stage, logged)
    with tracking.stage_run(job.stage, params.mlflow.experiment, logged, data_digest()):
        model = job.build()
        logger.info(
            "%s: %d params, %d train / %d val images",
            job.stage,
            model.count_params(),
            len(job.train[0]),
            len(job.val[0]),
        )
        callbacks = [
            tracking.EpochLogger(),
            keras.callbacks.CSVLogger(str(reports / "history.csv")),
            keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=True),
        ]
        start = time.perf_counter()
        history = fit_classifier(
            model,
            job.train,
            job.val,
            job.cfg,
            callbacks=callbacks,
            jit_compile=params.train.jit_compile,
        )
        fit_s = time.perf_counter() - start
        epochs_run = len(history.history["loss"])
        val_acc = history.history["val_accuracy"]
        best = int(np.argmax(val_acc))
        metrics = {
            "val_accuracy": float(val_acc[best]),
            "val_loss": float(history.history["val_loss"][best]),
            "best_epoch": best + 1,
            "epochs_run": epochs_run,
            "train_images_per_s": len(job.train[0]) * epochs_run / fit_s,
            "fit_s": fit_s,
        }
        save_model(model, job.model_path)
        write_json(reports / "metrics.json", metrics)
        tracking.mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        if params.mlflow.register:
            tracking.log_keras_model(
                model,
                name=job.stage.replace("@", "-"),
                example=job.val[0][:4],
                out_path=job.model_path,
                registered_name=job.registered_name,
            )
    shutil.rmtree(backup, ignore_errors=True)
    logger.info("%s: best val accuracy %.4f at epoch %d", job.stage, val_acc[best], best + 1)
    return metrics


def _backup_key(stage: str, logged: Mapping[str, Any]) -> str:
    """Backups are per stage and params, so a changed recipe never resumes a stale run."""
    digest = hashlib.sha256(json.dumps(dict(logged), sort_keys=True, default=str).encode())
    return f"{stage.replace('@', '-')}-{digest.hexdigest()[:12]}"
