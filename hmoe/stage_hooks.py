"""What a classifier stage adds around each network it trains (:class:`StageHooks`):
a backup that a killed run resumes from exactly, the epoch log, then the atomic save
and metrics. Kept apart from :mod:`hmoe.edge` so that stages which train nothing
(prepare, groups, evaluate) do not depend on it.

No MLflow code: the network's run, its epoch metrics and its registration are added by
:func:`hmoe.observer.watch` around these hooks, so that editing them retrains nothing.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmoe import paths
from hmoe.data.storage import atomic_write, file_md5, write_json
from hmoe.edge import SplitFile, StageError, backup_key, data_digest, save_model, stage_params
from hmoe.params import Params
from hmoe.steps.hooks import Fit, Hooks, NetworkJob

logger = logging.getLogger("hmoe")


def load_base(params_needed: bool) -> Any:
    """The trained base, when a network is built from it (else None)."""
    from hmoe import modelset

    return modelset.load_model(paths.BASE_MODEL) if params_needed else None


@dataclass(frozen=True)
class NetworkOutput:
    """Where one network of a stage goes: its file, registered name and epoch log."""

    model_path: Path
    registered_name: str
    history: Path
    metrics: Path | None  # None: the stage gathers several networks' metrics itself


class StageHooks(Hooks):
    """Around each network a classifier stage trains: a backup that a killed run
    resumes from exactly, the epoch log, then the atomic save and metrics.

    While a network trains, :attr:`replicas` and :attr:`resumed_at` say how (for the
    observer's run).
    """

    def __init__(
        self,
        stage: str,
        params: Params,
        outputs: Mapping[str, NetworkOutput],
        splits: Mapping[str, SplitFile],
    ) -> None:
        self.stage, self.params, self.outputs, self.splits = stage, params, outputs, splits
        self._backup: Path | None = None
        self.resumed_at = 0  # epochs an earlier, killed attempt completed
        self.replicas = 1  # devices the network trains on

    def run_name(self, job: NetworkJob) -> str:
        """The network's name as a run: the stage, or `stage@group` for a specialist."""
        _, _, group = job.name.partition("@")
        return f"{self.stage}@{group}" if group else self.stage

    @contextlib.contextmanager
    def network(self, job: NetworkJob) -> Iterator[Fit]:
        import keras

        from hmoe.distribute import training_scope
        from hmoe.resume import TrainingDiverged, completed_epochs

        run = self.run_name(job)
        backup = paths.BACKUPS / backup_key(run, self.resume_inputs(run, job))
        resumed_at = completed_epochs(backup)
        with training_scope(self.params.train.distribute) as replicas:
            if resumed_at:
                logger.info("%s: resuming after epoch %d from %s", run, resumed_at, backup)
            # The epochs' log lives with the backup until the end: DVC deletes a stage's
            # outputs before it reruns the stage, which would lose a killed attempt's rows.
            backup.mkdir(parents=True, exist_ok=True)
            epoch_log = backup / "history.csv"
            if not resumed_at:
                epoch_log.unlink(missing_ok=True)
            callbacks = [
                keras.callbacks.CSVLogger(str(epoch_log), append=bool(resumed_at)),
                keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False),
            ]
            self._backup, self.resumed_at, self.replicas = backup, resumed_at, replicas
            try:
                yield Fit(callbacks, backup / "state")
            except TrainingDiverged as err:
                shutil.rmtree(backup, ignore_errors=True)  # never resume from NaN weights
                raise StageError(str(err)) from None
        shutil.rmtree(backup, ignore_errors=True)

    def finished(self, job: NetworkJob, model: Any, summary: dict[str, Any]) -> dict[str, Any]:
        """Summary from the epoch log (every attempt's epochs), then the atomic save."""
        import pandas as pd

        from hmoe.metrics import summarise_history

        out = self.outputs[job.name]
        epoch_log = self._backup / "history.csv"
        epochs = pd.read_csv(epoch_log)
        atomic_write(out.history, lambda tmp: shutil.copyfile(epoch_log, tmp))
        summary = summarise_history(epochs.to_dict("list"), monitor="val_accuracy", mode="max")
        save_model(model, out.model_path)
        if out.metrics is not None:
            write_json(out.metrics, summary)
        return summary

    def resume_inputs(self, run: str, job: NetworkJob) -> dict[str, Any]:
        """Everything that decides a training run's result: a backup made with any of it
        different must not be resumed (new data, another base, another recipe).
        """
        inputs = stage_params(run, self.params) | {"seed": job.seed, "data_digest": data_digest()}
        inputs |= {"n_outputs": job.n_outputs, "train": job.n_train, "val": job.n_val}
        if job.init_from_base:
            inputs["base_md5"] = file_md5(paths.BASE_MODEL)
        return inputs


def one_network(
    stage: str,
    params: Params,
    job: str,
    model_path: Path,
    registered_name: str,
    splits: Mapping[str, SplitFile],
) -> StageHooks:
    """The hooks of a stage that trains one network (``job``: its name in the step):
    epoch log and metrics in the stage's reports folder.
    """
    reports = paths.stage_reports(stage)
    out = NetworkOutput(
        model_path, registered_name, reports / "history.csv", reports / "metrics.json"
    )
    return StageHooks(stage, params, {job: out}, splits)
