"""A sweep's plan: its file, the configuration x seed pairs still to run, and which of
them share a network (the reuse keys DVC's own hashing would give).

Pure: reads the sweep file and params.yaml, imports no Keras (the Ray engine's driver
plans with it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hmoe import paths
from hmoe.params import Params, ParamsError, parse_params
from hmoe.profile import merged

logger = logging.getLogger("hmoe.sweep")


class SweepError(ValueError):
    """A bad sweep file or option; the message names the key and the fix."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file: the raw params every configuration starts from, and each
    configuration's overrides (validated: a misspelt key fails before any training).
    """

    raw: dict[str, Any]
    configurations: dict[str, dict[str, Any]]
    reference: str
    seeds: int


def load_spec(path: Path, seeds: int | None = None) -> SweepSpec:
    """Read and validate a sweep file against params.yaml (and its profile)."""
    if not path.is_file():
        raise SweepError(f"sweep file {path} not found")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - {"profile", "params", "reference", "seeds", "configurations"})
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r}")
    raw = yaml.safe_load(paths.PARAMS.read_text())
    if spec.get("profile"):
        raw = merged(raw, yaml.safe_load(Path(spec["profile"]).read_text()) or {})
    raw = merged(raw, spec.get("params") or {})
    configs = spec.get("configurations") or {}
    if not isinstance(configs, Mapping) or not configs:
        raise SweepError(f"{path}: `configurations` must map names to params overrides")
    reference = spec.get("reference", next(iter(configs)))
    if reference not in configs:
        raise SweepError(f"{path}: reference {reference!r} is not one of {list(configs)}")
    n_seeds = seeds if seeds is not None else int(spec.get("seeds", 1))
    if n_seeds < 1:
        raise SweepError("--seeds must be at least 1")
    for name, overrides in configs.items():
        try:
            params_for(raw, overrides or {}, 0)
        except ParamsError as err:
            raise SweepError(f"{path}: configuration {name!r}: {err}") from None
    return SweepSpec(raw, {k: dict(v or {}) for k, v in configs.items()}, reference, n_seeds)


def params_for(raw: Mapping[str, Any], overrides: Mapping[str, Any], seed_offset: int) -> Params:
    """A configuration's params for one seed (params.yaml's seed + ``seed_offset``)."""
    params = parse_params(merged(dict(raw), dict(overrides)))
    return replace(params, seed=params.seed + seed_offset)


@dataclass(frozen=True)
class Pair:
    """One configuration x seed still to run: its name, overrides and resolved params."""

    config: str
    overrides: dict[str, Any]
    params: Params

    @property
    def seed(self) -> int:
        return self.params.seed


def shared_params(spec: SweepSpec) -> Params:
    """The reference params, after checking that every configuration shares the `data`
    section: the splits are prepared once for all of them.
    """
    datas = {params_for(spec.raw, o, 0).data for o in spec.configurations.values()}
    if len(datas) > 1:
        raise SweepError("configurations must share the `data` section (one set of splits)")
    return params_for(spec.raw, {}, 0)


def finished_rows(out: Path) -> pd.DataFrame:
    """The rows already in ``out``/findings.csv (none for a new folder)."""
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "findings.csv"
    return pd.read_csv(csv) if csv.is_file() else pd.DataFrame(columns=["config", "seed"])


def pending_pairs(spec: SweepSpec, done: pd.DataFrame) -> list[Pair]:
    """Every configuration x seed not in ``done``, seed by seed."""
    pairs = []
    for offset in range(spec.seeds):
        for name, overrides in spec.configurations.items():
            p = params_for(spec.raw, overrides, offset)
            if ((done["config"] == name) & (done["seed"] == p.seed)).any():
                logger.info("%s seed %d: already in findings.csv", name, p.seed)
                continue
            pairs.append(Pair(name, overrides, p))
    return pairs


def reuse_groups(pairs: Sequence[Pair]) -> list[list[Pair]]:
    """The pairs that share a network, together, in order: what one worker must run so
    that every network is still trained once. Two pairs share one when a stage past
    the first (`prepare`, done once by the caller) has the same key under both; with today's
    dvc.yaml that is exactly when their `train_base` keys are equal (the same seed and
    base params), as every other network's key holds the base's params or key.
    """
    from hmoe.pipeline import read_stages

    stages = read_stages()
    root = list(range(len(pairs)))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i] = root[root[i]]
        return i

    first_with: dict[tuple, int] = {}
    for i, pair in enumerate(pairs):
        for name, key in list(stage_keys(pair.params, stages).items())[1:]:
            root[find(i)] = find(first_with.setdefault((name, key), i))
    groups: dict[int, list[Pair]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(find(i), []).append(pair)
    return list(groups.values())


def stage_keys(p: Params, stages: Sequence[Any]) -> dict[str, tuple]:
    """Each stage's reuse key under ``p``: the resolved params it lists plus its
    upstream stages' keys (what DVC hashes), in pipeline order.
    """
    from hmoe.pipeline import upstream

    keys: dict[str, tuple] = {}
    for stage in stages:
        declared = tuple(sorted(stage.declared(p).items()))
        keys[stage.name] = (declared, *(keys[u.name] for u in upstream(stage, stages)))
    return keys
