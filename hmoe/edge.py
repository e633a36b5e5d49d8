"""The stage edge: everything a DVC stage does around its step but logging.

Start-up (logging, one-line user errors, validated params; :func:`hmoe.runtime.init`
adds seeds, determinism and the float policy), reading inputs, and atomic outputs. A
stage module is then a few lines: init, read, step, write.

Every stage lists this module in its DVC deps, so it holds no MLflow code: the
stage's MLflow run is opened by :mod:`hmoe.observer`, which only receives values and
is no DVC dep (tests/unit/test_dvc_deps.py, tests/model/test_tracking_free.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmoe import paths
from hmoe.data.constants import DataError
from hmoe.data.storage import atomic_write, load_split
from hmoe.groups import Groups, GroupsError
from hmoe.params import Params, ParamsError, load_params

logger = logging.getLogger("hmoe")


class StageError(RuntimeError):
    """A stage cannot go on; the message says why and what to do (no traceback shown)."""


# Errors whose message is the whole story for the user: shown on one line, exit 2.
USER_ERRORS = (ParamsError, GroupsError, DataError, StageError, FileNotFoundError, PermissionError)


# -- start-up -----------------------------------------------------------------------


def init(stage: str) -> Params:
    """Logging, error handling and params (validated before any work). Stages that
    run Keras call :func:`hmoe.runtime.init`, which adds seeds, determinism, precision
    and compilation.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_handlers(stage)
    return load_params(paths.PARAMS)  # a ParamsError: one line, exit 2 (excepthook)


def install_handlers(stage: str) -> None:
    """SIGTERM stops a stage like Ctrl-C (its MLflow run is marked KILLED, outputs are
    written atomically, the training backup is kept for the rerun); user errors and
    interruptions print one line instead of a traceback.
    """

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    def excepthook(kind, err, tb):
        if issubclass(kind, KeyboardInterrupt):
            logger.error(
                "%s: interrupted; completed epochs are kept: rerun `dvc repro` to resume", stage
            )
            sys.exit(130)
        if issubclass(kind, USER_ERRORS):
            logger.error("%s: %s", stage, err)
            sys.exit(2)
        sys.__excepthook__(kind, err, tb)

    signal.signal(signal.SIGTERM, on_sigterm)
    sys.excepthook = excepthook


def stage_params(stage: str, params: Params) -> dict[str, Any]:
    """The params this stage declares in dvc.yaml, with their values: what a backup is
    keyed on (:func:`backup_key`) and what the stage's MLflow run logs.
    """
    from hmoe.pipeline import stage as declared_stage

    return declared_stage(stage).declared(params)


def data_digest() -> str | None:
    """The source digest `prepare` recorded, to tag every stage's run with."""
    if paths.DATA_REPORT.is_file():
        return json.loads(paths.DATA_REPORT.read_text()).get("digest")
    return None


def resolve_source(source: str) -> str:
    """A relative path means relative to the repository root, also in DVC's temp copies
    of queued experiments (so the committed params name one path for every machine).
    """
    if source.strip().lower() == "keras" or Path(source).expanduser().is_absolute():
        return source
    return str(paths.repo_root() / source)


# -- inputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitFile:
    """A prepared split as read: its file (for the dataset's digest) and its arrays."""

    name: str
    path: Path
    x: np.ndarray
    y: np.ndarray

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x, self.y


SPLIT_FILES = {"train": paths.TRAIN, "gate": paths.GATE, "val": paths.VAL, "test": paths.TEST}


def read_split(name: str) -> SplitFile:
    path = SPLIT_FILES[name]
    return SplitFile(name, path, *load_split(path))


def read_groups(path: Path = paths.GROUPS) -> Groups:
    """The partition the `groups` stage wrote: every stage after it reads this file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro groups` first")
    record = json.loads(Path(path).read_text())
    try:
        return Groups.from_dict(record["groups"])
    except (KeyError, GroupsError) as err:
        msg = f"{path} is not a valid groups file ({err}); rerun `dvc repro groups`"
        raise StageError(msg) from None


# -- outputs ------------------------------------------------------------------------


def save_model(model: Any, path: Path) -> None:
    """Atomic ``.keras`` save: a crash never leaves a truncated model for DVC to cache."""
    atomic_write(path, model.save)


def backup_key(stage: str, inputs: Mapping[str, Any]) -> str:
    """Backups are per stage and inputs, so a changed recipe never resumes a stale run."""
    digest = hashlib.sha256(json.dumps(dict(inputs), sort_keys=True, default=str).encode())
    return f"{stage.replace('@', '-')}-{digest.hexdigest()[:12]}"
