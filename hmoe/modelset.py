"""The set of frozen networks: their files, their registered names, and one way to load them.

Every registered model name and every model file is written here once; stages,
serving and the registry all go through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hmoe import paths
from hmoe.edge.store import READERS

if TYPE_CHECKING:  # loaded where a network is read: importing the names loads no Keras
    import keras

BASE = "hmoe-base"
SECOND_BASE = "hmoe-second-base"  # the two-network ensemble control, when asked for
ROUTER = "hmoe-router"
MIXTURE = "hmoe-mixture"


def specialist_name(group: str) -> str:
    return f"hmoe-specialist-{group}"


def gate_name(group: str) -> str:
    return f"hmoe-gate-{group}"


def model_files(groups: Sequence[str], *, gates: bool = True) -> dict[str, Path]:
    """Registered name -> the DVC output file of every network of the mixture."""
    files = {
        BASE: paths.BASE_MODEL,
        ROUTER: paths.ROUTER_MODEL,
        **{specialist_name(g): paths.specialist_model(g) for g in groups},
    }
    if gates:
        files |= {gate_name(g): paths.gate_model(g) for g in groups}
    return files


def load_model(path: Path) -> keras.Model:
    """Load one network with ``safe_mode=True`` (the custom layers are registered)."""
    import keras

    import hmoe.recipe  # noqa: F401  registers the custom layers and the schedule

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro` to build it")
    return keras.saving.load_model(path, safe_mode=True)


READERS[".keras"] = load_model  # how a stage's file store reads a network
