"""Stage edges shared by the training stages: start-up, I/O, tracking.

The compute lives in :mod:`hmoe.nodes`; this module reads and writes files and
talks to MLflow around it. Two job kinds: :class:`ClassifierJob` (base,
specialists, router) and :class:`GateJob` (the gates on frozen outputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from hmoe import modelset, nodes, paths, tracking
from hmoe.data.storage import atomic_write, write_json
from hmoe.distribute import training_scope
from hmoe.params import Groups, NetParams, Params
from hmoe.resume import completed_epochs
from hmoe.startup import StageError, data_digest, init, stage_params

logger = logging.getLogger("hmoe")
__all__ = ["ClassifierJob", "GateJob", "init", "run_classifier_job", "run_gate_job"]


def save_model(model: keras.Model, path: Path) -> None:
    """Atomic ``.keras`` save: a crash never leaves a truncated model for DVC to cache."""
    atomic_write(path, model.save)


@contextlib.contextmanager
def tracked_stage(
    stage: str, params: Params, splits: Mapping[str, Path] = ()
) -> Iterator[tuple[Path, str]]:
    """The stage's MLflow child run with its params, precision and input datasets.

    Yields (reports folder, parent run id).
    """
    reports = paths.stage_reports(stage)
    logged = stage_params(stage, params)
    with tracking.stage_run(stage, params.mlflow.experiment, logged, data_digest()) as (_, parent):
        tracking.mlflow.log_param("precision_used", keras.mixed_precision.global_policy().name)
        for context, path in dict(splits).items():
            tracking.log_split(context, path)
        yield reports, parent


def finish_training(
    stage: str,
    reports: Path | None,
    metrics: Mapping[str, float],
    models: Mapping[Path, tuple[keras.Model, str, np.ndarray]],
    params: Params,
) -> None:
    """Save models and metrics atomically, log them, register every model.

    ``reports`` None: the stage writes its own metrics file (several jobs, one file).
    """
    for path, (model, _, _) in models.items():
        save_model(model, path)
    if reports is not None:
        write_json(reports / "metrics.json", dict(metrics))
    tracking.mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
    if params.mlflow.register:
        for path, (model, registered, example) in models.items():
            tracking.log_keras_model(
                model,
                name=registered.removeprefix("hmoe-"),
                example=example,
                out_path=path,
                registered_name=registered,
            )


@dataclass(frozen=True)
class ClassifierJob:
    """One classifier-training stage: what to train, on what, saved where."""

    stage: str
    cfg: NetParams
    n_outputs: int
    train: nodes.Split
    val: nodes.Split
    model_path: Path
    registered_name: str
    seed: int | None = None  # None: params' seed
    history: Path | None = None  # None: <stage reports>/history.csv
    write_metrics: bool = True  # False: the stage gathers several jobs' metrics itself


def base_job(
    stage: str, params: Params, model_path: Path, registered_name: str, seed: int | None = None
) -> ClassifierJob:
    """A base network's job (the base, or the control's second base): all classes, the
    train split, selected on val.
    """
    from hmoe.data import load_split
    from hmoe.data.constants import CIFAR10_CLASSES

    return ClassifierJob(
        stage=stage,
        cfg=params.base,
        n_outputs=len(CIFAR10_CLASSES),
        train=load_split(paths.TRAIN),
        val=load_split(paths.VAL),
        model_path=model_path,
        registered_name=registered_name,
        seed=seed,
    )


def run_classifier_job(job: ClassifierJob, params: Params) -> dict[str, float]:
    """Build (from the base when the recipe says so), train, save, log, register."""
    init = modelset.load_model(paths.BASE_MODEL) if job.cfg.init_from_base else None
    seed = params.seed if job.seed is None else job.seed
    backup = paths.BACKUPS / _backup_key(job.stage, resume_inputs(job, params, seed))
    resumed_at = completed_epochs(backup)
    with (
        tracked_stage(job.stage, params, {"train": paths.TRAIN, "val": paths.VAL}) as (rep, _),
        training_scope(params.train.distribute) as replicas,
    ):
        tracking.mlflow.log_param("replicas", replicas)
        if resumed_at:
            tracking.mlflow.set_tag("resumed_from_epoch", resumed_at)
            logger.info("%s: resuming after epoch %d from %s", job.stage, resumed_at, backup)
        history = job.history or rep / "history.csv"
        # The epochs' log lives with the backup until the end: DVC deletes a stage's
        # outputs before it reruns the stage, which would lose a killed attempt's rows.
        epoch_log = backup / "history.csv"
        backup.mkdir(parents=True, exist_ok=True)
        if not resumed_at:
            epoch_log.unlink(missing_ok=True)
        model = nodes.build_network(
            job.n_outputs,
            params.net,
            job.cfg,
            seed=seed,
            name=job.stage.replace("train_", "").replace("@", "_"),
            init=init,
            whitening_images=job.train[0],
        )
        logger.info(
            "%s: %d params, %d train / %d val images",
            job.stage,
            model.count_params(),
            len(job.train[0]),
            len(job.val[0]),
        )
        callbacks = [
            keras.callbacks.TerminateOnNaN(),
            tracking.EpochLogger(),
            keras.callbacks.CSVLogger(str(epoch_log), append=bool(resumed_at)),
            keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False),
        ]
        start = time.perf_counter()
        nodes.train_network(
            model, job.cfg, job.train, job.val, callbacks=callbacks,
            jit_compile=params.train.jit_compile, seed=seed, state_dir=backup / "state",
        )  # fmt: skip
        # from the CSV: with a resume it holds the epochs of every attempt
        epochs = pd.read_csv(epoch_log)
        atomic_write(history, lambda tmp: shutil.copyfile(epoch_log, tmp))
        if model.stop_training and not np.isfinite(epochs["loss"]).all():
            shutil.rmtree(backup, ignore_errors=True)  # never resume from NaN weights
            section = job.stage.split("@")[0].removeprefix("train_").replace("second_", "")
            raise StageError(
                f"{job.stage}: the training loss became NaN, so training stopped and nothing "
                f"was saved. Lower `{section}.learning_rate` (now {job.cfg.learning_rate}) "
                "or check the input images"
            )
        metrics = nodes.summarise_history(
            epochs.to_dict("list"), monitor="val_accuracy", mode="max"
        )
        fit_s = time.perf_counter() - start
        images = len(job.train[0]) * (metrics["epochs_run"] - resumed_at)
        # timings go to MLflow only: a DVC metric would differ between identical models
        tracking.mlflow.log_metrics({"fit_s": fit_s, "train_images_per_s": images / fit_s})
        example = job.val[0][:4]
        models = {job.model_path: (model, job.registered_name, example)}
        finish_training(job.stage, rep if job.write_metrics else None, metrics, models, params)
    shutil.rmtree(backup, ignore_errors=True)
    logger.info(
        "%s: best val accuracy %.4f at epoch %d",
        job.stage,
        metrics["val_accuracy"],
        metrics["best_epoch"],
    )
    return metrics


@dataclass(frozen=True)
class GateJob:
    """The gate stage: frozen outputs on the fitting and selection images -> gates."""

    stage: str
    groups: Groups
    fit: tuple[np.ndarray, np.ndarray]
    select: tuple[np.ndarray, np.ndarray]
    split_files: Mapping[str, Path]


def run_gate_job(job: GateJob, params: Params) -> dict[str, float]:
    """Outputs of the frozen networks (once), gates fitted on them, saved and logged."""
    groups = job.groups
    experts = modelset.load_mixture(
        groups, tta=params.mixture.tta, gates=False, gate_inputs=params.gates.inputs
    )
    with tracked_stage(job.stage, params, job.split_files) as (rep, _):
        rep.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        out_fit, out_sel = experts.outputs(job.fit[0]), experts.outputs(job.select[0])
        logger.info(
            "frozen outputs on %d + %d images (TTA level %d) in %.1fs",
            len(job.fit[0]),
            len(job.select[0]),
            params.mixture.tta,
            time.perf_counter() - start,
        )
        gates, metrics = nodes.train_gates(
            groups,
            params.gates,
            params.mixture.routing,
            (out_fit, job.fit[1]),
            (out_sel, job.select[1]),
            callbacks=[tracking.EpochLogger(), keras.callbacks.CSVLogger(str(rep / "history.csv"))],
        )
        tracking.mlflow.log_metric("fit_s", time.perf_counter() - start)  # MLflow only
        mode = params.gates.inputs
        models = {
            paths.gate_model(g): (gate, modelset.gate_name(g), out_sel.gate_inputs(i, mode)[:4])
            for i, (g, gate) in enumerate(zip(groups.names, gates, strict=True))
        }
        finish_training(job.stage, rep, metrics, models, params)
    logger.info(
        "gates: val mixture accuracy %.4f (base %.4f)",
        metrics["val_accuracy"],
        metrics["val_base_accuracy"],
    )
    return metrics


def resume_inputs(job: ClassifierJob, params: Params, seed: int) -> dict[str, Any]:
    """Everything that decides a training run's result: a backup made with any of it
    different must not be resumed (new data, another base, another recipe).
    """
    inputs = stage_params(job.stage, params) | {"seed": seed, "data_digest": data_digest()}
    inputs |= {"n_outputs": job.n_outputs, "train": len(job.train[1]), "val": len(job.val[1])}
    if job.cfg.init_from_base:
        inputs["base_md5"] = tracking.file_md5(paths.BASE_MODEL)
    return inputs


def _backup_key(stage: str, logged: Mapping[str, Any]) -> str:
    """Backups are per stage and inputs, so a changed recipe never resumes a stale run."""
    digest = hashlib.sha256(json.dumps(dict(logged), sort_keys=True, default=str).encode())
    return f"{stage.replace('@', '-')}-{digest.hexdigest()[:12]}"
