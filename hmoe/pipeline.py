"""dvc.yaml, read as data: the one declaration of the pipeline that every runner uses.

`dvc repro` runs the stages; :mod:`hmoe.sweep` runs the same steps in one process. Both
take from here the stages, the params each lists, and the order their deps and outs
give, so no DAG and no list of params is written twice. A stage's reuse key in the
sweep is what DVC hashes: the resolved values of the params it lists, plus the keys of
the stages whose outputs it reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hmoe import paths
from hmoe.params import Params, flatten


class PipelineError(ValueError):
    """dvc.yaml cannot be read as a pipeline (a cycle, an unknown stage)."""


@dataclass(frozen=True)
class DeclaredStage:
    """One dvc.yaml stage as declared: its name, the params it lists, and the paths it
    reads and writes (what runs it is :class:`hmoe.edge.run.Stage`).
    """

    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots alike: whatever DVC writes for it

    def declared(self, params: Params) -> dict[str, Any]:
        """The params this stage lists, with their resolved values (a section expands to
        its keys): what DVC hashes, what the stage's MLflow run logs, what a backup and a
        sweep's reuse are keyed on.
        """
        flat = flatten(params)
        return {
            k: v
            for k, v in flat.items()
            if any(k == d or k.startswith(f"{d}.") for d in self.params)
        }

    def reads(self, other: DeclaredStage) -> bool:
        """Whether this stage depends on an output of ``other`` (a file or inside a folder)."""
        return any(
            dep == out or dep.startswith(f"{out}/") for dep in self.deps for out in other.outs
        )


def _paths(entries: Sequence[Any]) -> tuple[str, ...]:
    """Path entries of deps/outs/metrics/plots: a string, or a one-key mapping of options."""
    return tuple(next(iter(e)) if isinstance(e, Mapping) else str(e) for e in entries or ())


def read_stages(path: Path = paths.DVC_YAML) -> tuple[DeclaredStage, ...]:
    """Every stage of dvc.yaml, each after the stages whose outputs it reads (ties keep
    dvc.yaml's order).
    """
    raw = yaml.safe_load(Path(path).read_text())["stages"]
    stages = [
        DeclaredStage(
            name,
            tuple(str(p) for p in spec.get("params", [])),
            _paths(spec.get("deps", [])),
            _paths([*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]),
        )
        for name, spec in raw.items()
    ]
    ordered: list[DeclaredStage] = []
    while len(ordered) < len(stages):
        ready = [
            s
            for s in stages
            if s not in ordered and all(o in ordered for o in stages if o is not s and s.reads(o))
        ]
        if not ready:
            raise PipelineError(f"{path}: the stages' deps and outs form a cycle")
        ordered.append(ready[0])
    return tuple(ordered)


def stage(name: str, path: Path = paths.DVC_YAML) -> DeclaredStage:
    """One stage by name (``train_specialists@natural`` names its stage)."""
    base = name.split("@", maxsplit=1)[0]
    for s in read_stages(path):
        if s.name == base:
            return s
    raise PipelineError(f"{path} has no stage {base!r}")


def upstream(of: DeclaredStage, stages: Sequence[DeclaredStage]) -> tuple[DeclaredStage, ...]:
    """The stages whose outputs ``of`` reads, in pipeline order."""
    return tuple(s for s in stages if s is not of and of.reads(s))
