"""What every stage does first: logging, validated params, seeds, float policy.

Kept apart from :mod:`hmoe.runner` so that `prepare`, which trains nothing, does not
import (and so does not depend on) the training code.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from hmoe import paths
from hmoe.data.constants import DataError
from hmoe.params import Params, ParamsError, flatten, load_params

logger = logging.getLogger("hmoe")


class StageError(RuntimeError):
    """A stage cannot go on; the message says why and what to do (no traceback shown)."""


# Errors whose message is the whole story for the user: shown on one line, exit 2.
USER_ERRORS = (ParamsError, DataError, StageError, FileNotFoundError, PermissionError)


def init(stage: str, *, keras_setup: bool = True) -> Params:
    """Logging, error handling, params (validated before any work), seeds, determinism
    and float policy.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_handlers(stage)
    params = load_params(paths.PARAMS)  # a ParamsError: one line, exit 2 (excepthook)
    if keras_setup:
        import keras

        keras.utils.set_random_seed(params.seed)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # same params and data -> same numbers (tests/pipeline/test_reliability.py)
            tf.config.experimental.enable_op_determinism()
        policy, why = resolve_precision(params.train.precision)
        keras.mixed_precision.set_global_policy(policy)
        logger.info("stage %s: params ok, precision %s (%s)", stage, policy, why)
    return params


# Measured with bench/cpu_figures.py (training images/s, fp32 vs mixed_bfloat16): on the
# 2-core AMD EPYC (Zen 4, AVX-512 bf16, no AMX) 401 vs 299 for the default network; on
# the 2-core Intel Xeon with AMX 993 vs 621 for the previous one. bf16 pays on GPUs.
CPU_PRECISION = "float32"
GPU_PRECISION = "mixed_bfloat16"


def resolve_precision(setting: str) -> tuple[str, str]:
    """The Keras dtype policy for ``train.precision`` and why it was chosen."""
    if setting != "auto":
        return setting, "set in params.yaml"
    import keras

    gpus = [d for d in keras.distribution.list_devices() if "gpu" in str(d).lower()]
    if gpus:
        return GPU_PRECISION, f"auto: {len(gpus)} GPU(s) visible"
    return CPU_PRECISION, "auto: CPU only, where bfloat16 measured slower (see README)"


def stage_params(stage: str, params: Params) -> dict[str, Any]:
    """The params this stage declares in dvc.yaml, with their values (for MLflow)."""
    spec = yaml.safe_load(Path("dvc.yaml").read_text())["stages"][stage.split("@", maxsplit=1)[0]]
    declared = spec.get("do", spec).get("params", [])
    flat = flatten(params)
    return {k: v for k, v in flat.items() if any(k == d or k.startswith(f"{d}.") for d in declared)}


def data_digest() -> str | None:
    """The source digest `prepare` recorded, to tag every stage's run with."""
    if paths.DATA_REPORT.is_file():
        return json.loads(paths.DATA_REPORT.read_text()).get("digest")
    return None


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
