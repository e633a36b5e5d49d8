"""Start-up of a stage process: logging, one-line user errors, params read once and
validated before any work, and the keys a stage's backup and runs are named by.

No MLflow code: the stage's runs are opened by the observer it is given
(:mod:`hmoe.edge.run`), which is no DVC dep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hmoe import paths
from hmoe.data.constants import DataError
from hmoe.groups import Groups, GroupsError
from hmoe.params import Params, ParamsError, load_params

logger = logging.getLogger("hmoe")


class StageError(RuntimeError):
    """A stage cannot go on; the message says why and what to do (no traceback shown)."""


# Errors whose message is the whole story for the user: shown on one line, exit 2.
USER_ERRORS = (ParamsError, GroupsError, DataError, StageError, FileNotFoundError, PermissionError)


# -- start-up -----------------------------------------------------------------------


def init(stage: str) -> Params:
    """Logging, error handling and params (validated before any work); a stage that
    runs Keras adds seeds, determinism and precision (:meth:`hmoe.edge.run.Stage.start_keras`).
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


def resolve_source(source: str) -> str:
    """A relative path means relative to the repository root, also in DVC's temp copies
    of queued experiments (so the committed params name one path for every machine).
    """
    if source.strip().lower() == "keras" or Path(source).expanduser().is_absolute():
        return source
    return str(paths.repo_root() / source)


def groups_from(record: Mapping[str, Any], path: Path = paths.GROUPS) -> Groups:
    """The partition in the `groups` stage's record: every stage after it reads it."""
    try:
        return Groups.from_dict(record["groups"])
    except (KeyError, TypeError, GroupsError) as err:
        msg = f"{path} is not a valid groups file ({err}); rerun `dvc repro groups`"
        raise StageError(msg) from None


def backup_key(stage: str, inputs: Mapping[str, Any]) -> str:
    """Backups are per stage and inputs, so a changed recipe never resumes a stale run."""
    digest = hashlib.sha256(json.dumps(dict(inputs), sort_keys=True, default=str).encode())
    return f"{stage.replace('@', '-')}-{digest.hexdigest()[:12]}"
