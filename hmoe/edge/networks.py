"""What a stage adds around each network it trains (:class:`NetworkHooks`), under
either runner: the network's run, its epoch log, its images per second and training
cost; on a file store also a backup that a killed run resumes from exactly (for every
network but the gates: :attr:`hmoe.steps.hooks.NetworkJob.resumable`); then the network,
its epoch log and metrics written through the stage, and its registration.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hmoe import paths
from hmoe.edge.start import StageError, backup_key, stage_params
from hmoe.edge.store import data_digest
from hmoe.steps.hooks import Fit, Hooks, NetworkJob

if TYPE_CHECKING:
    from hmoe.edge.run import Stage

logger = logging.getLogger("hmoe")


@dataclass(frozen=True)
class Network:
    """Where one network of a stage goes, by dvc.yaml's paths: its file, epoch log and
    metrics, and the name it is registered under. A None file or metrics: the stage
    writes them itself (several networks' metrics in one file; the gates, trained
    jointly, written and registered one by one).
    """

    model: Path | None
    history: Path
    metrics: Path | None
    registered: str


def base_for(stage: Stage, needed: bool) -> Any:
    """The trained base, when a network is built from it (else None)."""
    return stage.read(paths.BASE_MODEL) if needed else None


class NetworkHooks(Hooks):
    """Around each network a stage trains (``outputs``: the step's network name ->
    where it goes). While a network trains, :attr:`replicas` and :attr:`resumed_at`
    say how.
    """

    def __init__(self, stage: Stage, outputs: Mapping[str, Network]) -> None:
        self.stage, self.outputs = stage, dict(outputs)
        self.resumed_at = 0  # epochs an earlier, killed attempt completed
        self.replicas = 1  # devices the network trains on
        self._log: Path | None = None
        self._timer: Any = None
        self._start = 0.0

    def run_name(self, job: NetworkJob) -> str:
        """The network's run: the stage, or `stage@group` for a specialist."""
        _, _, group = job.name.partition("@")
        return f"{self.stage.name}@{group}" if group else self.stage.name

    @contextlib.contextmanager
    def network(self, job: NetworkJob) -> Iterator[Fit]:
        import keras

        from hmoe.distribute import training_scope
        from hmoe.edge.runtime import resolve_jit
        from hmoe.resume import TrainingDiverged

        name = self.run_name(job)
        with (
            self.stage.network_run(name) as run,
            self._state(name, job) as (callbacks, state_dir),
            training_scope(
                self.stage.params.train.distribute if job.parallel else "none"
            ) as replicas,
        ):
            self.replicas, self._timer = replicas, _epoch_timer_class()()
            self.stage.log_param("replicas", replicas, run=name)
            if self.resumed_at:
                run.set_tag("resumed_from_epoch", self.resumed_at)
            epoch_log = keras.callbacks.CSVLogger(str(self._log), append=bool(self.resumed_at))
            self._start = time.perf_counter()
            jit = resolve_jit(self.stage.params.train.jit_compile)[0]
            try:
                yield Fit([*run.callbacks(), epoch_log, *callbacks, self._timer], state_dir, jit)
            except TrainingDiverged as err:
                if state_dir is not None:  # never resume from NaN weights
                    shutil.rmtree(state_dir.parent, ignore_errors=True)
                raise StageError(str(err)) from None

    @contextlib.contextmanager
    def _state(self, name: str, job: NetworkJob) -> Iterator[tuple[list, Path | None]]:
        """On a file store, the backup a killed run resumes from (kept outside every DVC
        output, which DVC deletes before it reruns a stage, with the epoch log of every
        attempt); in memory, or for a network that cannot resume exactly
        (``job.resumable``: the gates), only a temporary epoch log.
        """
        if not (self.stage.store.on_disk and job.resumable):
            with tempfile.TemporaryDirectory() as tmp:
                self._log, self.resumed_at = Path(tmp) / "history.csv", 0
                yield [], None
            return
        import keras

        from hmoe.resume import completed_epochs

        backup = paths.BACKUPS / backup_key(name, self.resume_inputs(name, job))
        self.resumed_at = completed_epochs(backup)
        if self.resumed_at:
            logger.info("%s: resuming after epoch %d from %s", name, self.resumed_at, backup)
        backup.mkdir(parents=True, exist_ok=True)
        self._log = backup / "history.csv"
        if not self.resumed_at:
            self._log.unlink(missing_ok=True)
        yield (
            [keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)],
            (backup / "state"),
        )
        shutil.rmtree(backup, ignore_errors=True)

    def finished(self, job: NetworkJob, model: Any, summary: dict[str, Any]) -> dict[str, Any]:
        """The step's summary, its epoch figures taken from the epoch log (every
        attempt's epochs); the network, its log and metrics written; its figures
        logged; then its registration.
        """
        import pandas as pd

        from hmoe.costs import multiply_adds
        from hmoe.metrics import summarise_history

        fit_s = time.perf_counter() - self._start
        networks = model if isinstance(model, list | tuple) else [model]  # gates: several
        out, name = self.outputs[job.name], self.run_name(job)
        log = self._log.read_bytes()
        epochs = pd.read_csv(self._log).to_dict("list")
        summary = summary | summarise_history(epochs, monitor=job.monitor, mode=job.mode)
        self.stage.write(out.history, log)
        if out.model is not None:
            self.stage.write(out.model, model)
        if out.metrics is not None:
            self.stage.write(out.metrics, summary)
        images = job.n_train * (summary["epochs_run"] - self.resumed_at)
        times = self._timer.times or [float("nan")]  # none: resumed with every epoch done
        steady = times[1:] or times  # the first epoch includes tracing and compiling
        rate = job.n_train * len(steady) / sum(steady) if sum(steady) > 0 else float("nan")
        passes = job.n_train * summary["epochs_run"]  # image passes (forward + backward)
        self.stage.networks[job.name] = {
            "images_per_s": rate,
            "gmacs": passes * sum(multiply_adds(m) for m in networks) / 1e9,
            "model": out.model,
        }
        # timings go to MLflow only: a DVC metric would differ between identical models
        figures = {"fit_s": fit_s, "train_images_per_s": images / fit_s}
        self.stage.log_metrics(figures | {f"final_{k}": v for k, v in summary.items()}, run=name)
        logger.info(
            "%s: %.0f images/s after compile (first epoch %.1f s)", job.name, rate, times[0]
        )
        if out.model is not None:
            self.stage.register(model, out.registered, out.model, name)
        return summary

    def resume_inputs(self, run: str, job: NetworkJob) -> dict[str, Any]:
        """Everything that decides a training run's result: a backup made with any of it
        different must not be resumed (new data, another base, another recipe).
        """
        store = self.stage.store
        inputs = stage_params(run, self.stage.params) | {"seed": job.seed}
        inputs |= {"data_digest": data_digest(store)}
        inputs |= {"n_outputs": job.n_outputs, "train": job.n_train, "val": job.n_val}
        if job.init_from_base:
            inputs["base_md5"] = store.digest(paths.BASE_MODEL)
        return inputs


@functools.cache
def _epoch_timer_class() -> type:
    """The callback class, built on first use (this module loads no Keras on import)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall time of every epoch (an epoch-level callback: no per-step sync)."""

        def on_train_begin(self, logs=None):
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._t0)

    return EpochTimer
