"""The set of frozen networks: their files, their registered names, and one way to load them.

Every registered model name and every model file is written here once; stages,
serving, lineage and the bench all go through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras

from hmoe import paths
from hmoe.mixture import Mixture
from hmoe.params import Groups

BASE = "hmoe-base"
SECOND_BASE = "hmoe-second-base"  # the two-network ensemble control, when asked for
# The second base's seed is seed + this: far from the seeds of a seed sweep, whose
# bases it must not repeat.
SECOND_BASE_SEED_OFFSET = 1000
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
    import hmoe.nets
    import hmoe.train  # noqa: F401  registers the learning-rate schedule

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro` to build it")
    return keras.saving.load_model(path, safe_mode=True)


def load_mixture(
    groups: Groups,
    *,
    routing: str = "hard",
    tta: int = 0,
    gates: bool = True,
    files: dict[str, Path] | None = None,
    gate_inputs: str = "probs",
) -> Mixture:
    """The assembled mixture from its files (``files`` overrides the DVC outputs' paths,
    e.g. the artifacts of a logged pyfunc). ``gates=False`` loads the frozen experts
    and router only, for training the gates; ``gate_inputs`` is what the gates see.
    """
    files = files or model_files(groups.names, gates=gates)
    return Mixture(
        router=load_model(files[ROUTER]),
        base=load_model(files[BASE]),
        specialists={g: load_model(files[specialist_name(g)]) for g in groups.names},
        gates={g: load_model(files[gate_name(g)]) for g in groups.names} if gates else {},
        groups=groups,
        routing=routing,
        tta=tta,
        gate_inputs=gate_inputs,
    )
