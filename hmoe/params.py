"""Typed, validated view of params.yaml.

Every stage parses params.yaml once, through :func:`load_params`, before doing any
work. Unknown keys are rejected because ``dvc exp run -S`` silently adds misspelt
keys (treeverse/dvc#6282): a typo must stop the run, not train with a default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from hmoe.data.constants import CIFAR10_CLASSES
from hmoe.groups import AUTO as AUTO_GROUPS
from hmoe.groups import Groups, GroupsError


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key and the fix."""


@dataclass(frozen=True)
class DataParams:
    source: str
    val_size: int  # held out for early stopping and selection: fits nothing
    gate_size: int  # held out from the experts and router: fits the gates
    limit: int | None
    split_seed: int  # apart from `seed`, so a seed sweep keeps the same splits


@dataclass(frozen=True)
class NetArch:
    """Architecture shared by base, specialists and router (so trunks can be copied).

    The patch-whitening first layer and identity-initialised convolutions are always on
    (no run ever turned them off); these are the numbers a sweep might move.
    """

    width: int  # channels of the first conv group; the others have 2 x width
    bn_bias_lr: float  # learning-rate multiplier of the BatchNorm biases
    bn_momentum: float  # Keras convention: weight of the old moving statistics
    logit_scale: float  # logits are multiplied by this before the softmax


@dataclass(frozen=True)
class RecipeParams:
    """The `recipe` section: the training hyperparameters every network shares, once
    (as airbench94 keeps one ``hyp``); a network's section overrides any of them.
    """

    batch_size: int
    learning_rate: float  # peak of the triangular schedule, for the mean loss of a batch
    momentum: float  # Nesterov SGD
    weight_decay: float  # decoupled: each step multiplies weights by 1 - lr * weight_decay
    label_smoothing: float
    translate: int  # pixels of random translation (reflect padding), with random flips
    lookahead: bool  # airbench's lookahead weight averaging (from the third epoch on)


RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(RecipeParams))
STARTS = ("scratch", "base", "head", "branch")  # how a network starts: see NetParams.start


@dataclass(frozen=True)
class NetParams(RecipeParams):
    """One network's effective recipe: the `recipe` section with the network's own
    overrides applied, its epochs, and how it starts.
    """

    epochs: int
    # scratch: own initialisation; base: a copy of the trained base, every layer
    # trained; head: a new head on the base's frozen trunk (only the head trains);
    # branch: a new last conv group and head on the base's frozen first two groups
    start: str

    @property
    def init_from_base(self) -> bool:
        return self.start != "scratch"

    @property
    def freeze_trunk(self) -> bool:
        return self.start in ("head", "branch")


@dataclass(frozen=True)
class SpecialistParams(NetParams):
    """A specialist's recipe plus the levers of Hinton et al. (2015)."""

    # Also train on this share (x the group's images) of other groups' images,
    # labelled with one extra "dustbin" output. 0: no dustbin.
    dustbin: float
    distill: float  # share of the base's soft targets in every training target; 0: off
    temperature: float | None  # softens the base's targets (p ** (1 / T)); only with distill
    # Each specialist trains epochs / (its share of the training images) epochs, so it
    # takes as many optimizer steps as the base instead of its share of them.
    match_steps: bool


@dataclass(frozen=True)
class GateParams:
    # learned: a small network per group; constant: one trained weight per group (its
    # input ignored); fixed: every gate 1/2, nothing fitted
    kind: str
    epochs: int
    batch_size: int
    learning_rate: float
    hidden: int
    patience: int
    inputs: str  # probs (the experts' outputs), features (the base trunk's), or both
    fit_on: str  # gate (held out from every expert: the default) or train (in-sample control)


@dataclass(frozen=True)
class ControlsParams:
    second_base: bool  # a second base (another seed) for the two-bases control


@dataclass(frozen=True)
class MixtureParams:
    routing: str
    tta: int  # test-time views: 0 none, 1 + mirror, 2 + mirror and 1-pixel shifts
    router_fusion: str  # none, or product with the base's group marginal


@dataclass(frozen=True)
class TrainParams:
    """Runtime settings shared by every training stage."""

    precision: str
    jit_compile: bool | str  # auto (compiled on JAX and on TensorFlow GPUs), true or false
    steps_per_execution: int  # training steps per compiled call (fewer host round trips)
    distribute: str  # auto (mirrored when 2+ GPUs), none, or mirrored (every GPU, else CPU)


@dataclass(frozen=True)
class MlflowParams:
    """Tracking settings: not inputs of any model, so no stage lists them in dvc.yaml."""

    experiment: str
    register: bool


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    groups: Groups | int  # an int N: N groups learned by the `groups` stage
    net: NetArch
    recipe: RecipeParams
    base: NetParams
    specialists: SpecialistParams
    router: NetParams
    gates: GateParams
    controls: ControlsParams
    mixture: MixtureParams
    train: TrainParams
    mlflow: MlflowParams

    @property
    def learned_groups(self) -> int | None:
        """How many groups the `groups` stage learns, or None for an explicit partition."""
        return self.groups if isinstance(self.groups, int) else None


ROUTINGS = ("hard", "soft")
FUSIONS = ("none", "product")  # mixture.router_fusion
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
TTA_LEVELS = (0, 1, 2)
DISTRIBUTE = ("auto", "none", "mirrored")  # train.distribute, see hmoe.distribute
GATE_INPUTS = ("probs", "features", "both")
GATE_FIT = ("gate", "train")
GATE_KINDS = ("learned", "constant", "fixed")
# The network sections: the keys of their own (beyond any recipe override), and how the
# network starts when the section does not say (the base is always trained first).
NETWORKS = {
    "base": ("epochs",),
    "specialists": ("epochs", "start", "dustbin", "distill", "temperature", "match_steps"),
    "router": ("epochs", "start"),
}
_SECTIONS = {
    "data": DataParams,
    "net": NetArch,
    "recipe": RecipeParams,
    "gates": GateParams,
    "controls": ControlsParams,
    "mixture": MixtureParams,
    "train": TrainParams,
    "mlflow": MlflowParams,
}


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError naming key and fix."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the repository root")
    raw = yaml.safe_load(path.read_text()) or {}
    return parse_params(raw)


def parse_params(raw: Mapping[str, Any]) -> Params:
    """Validate a params mapping (the parsed YAML) into frozen objects."""
    if not isinstance(raw, Mapping):
        raise ParamsError("params.yaml must be a mapping of sections")
    allowed = {"seed", "groups", *_SECTIONS, *NETWORKS}
    _reject_unknown(raw, allowed, where="")
    for required in ("seed", "groups", *NETWORKS):
        if required not in raw:
            raise ParamsError(f"missing key `{required}` in params.yaml")
    sections = {name: _section(raw.get(name, {}), cls, name) for name, cls in _SECTIONS.items()}
    _check_recipe("recipe", sections["recipe"])  # named as `recipe.*` before any network's
    nets = {name: _network(raw[name], name, sections["recipe"]) for name in NETWORKS}
    params = Params(
        seed=_int(raw["seed"], "seed"), groups=_groups(raw["groups"]), **sections, **nets
    )
    _check(params)
    return params


def _groups(raw: Any) -> Groups | int:
    """A partition (mapping), or an integer: that many groups, learned."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        max_groups = len(CIFAR10_CLASSES) // 2  # every group needs two classes
        if not 2 <= raw <= max_groups:
            raise ParamsError(f"`groups` to learn must be in 2..{max_groups}, got {raw}")
        return raw
    if raw == AUTO_GROUPS:
        raise ParamsError("`groups: auto` is now `groups: N`: the number of groups to learn")
    return parse_groups(raw)


def _network(raw: Any, name: str, recipe: RecipeParams) -> NetParams:
    """A network section resolved against the recipe: its own keys, and any recipe key
    it overrides. Keys that could not act are refused here (see :func:`_check_network`).
    """
    if not isinstance(raw, Mapping):
        raise ParamsError(f"`{name}` must be a mapping, got {type(raw).__name__}")
    own = NETWORKS[name]
    _reject_unknown(raw, {*own, *RECIPE_KEYS}, where=f"{name}.")
    cls = SpecialistParams if name == "specialists" else NetParams
    hints = get_type_hints(cls)
    values: dict[str, Any] = dataclasses.asdict(recipe) | {"start": "scratch"}
    if name == "specialists":
        values |= {"dustbin": 0.0, "distill": 0.0, "temperature": None, "match_steps": False}
    for key, value in raw.items():
        hint = float if key == "temperature" else hints[key]
        values[key] = _coerce(value, hint, f"{name}.{key}")
    if "epochs" not in raw:
        raise ParamsError(f"missing key `{name}.epochs` in params.yaml")
    net = cls(**values)
    _check_network(name, net)
    return net


def _reject_unknown(mapping: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        key = f"{where}{unknown[0]}"
        raise ParamsError(
            f"unknown key `{key}` in params.yaml; allowed here: {sorted(allowed)}. "
            "Fix the spelling (dvc exp run -S adds misspelt keys silently)."
        )


def _section(raw: Any, cls: type, name: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ParamsError(f"`{name}` must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(raw, set(fields), where=f"{name}.")
    hints = get_type_hints(cls)
    values = {}
    for key, field in fields.items():
        if key in raw:
            values[key] = _coerce(raw[key], hints[key], f"{name}.{key}")
        elif field.default is dataclasses.MISSING:
            raise ParamsError(f"missing key `{name}.{key}` in params.yaml")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check a YAML scalar against the field's type (bool is not an int here)."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"`{key}` must be true or false, got {value!r}")
    if hint is int:
        return _int(value, key)
    if hint == bool | str:
        if isinstance(value, bool) or value == "auto":
            return value
        raise ParamsError(f"`{key}` must be auto, true or false, got {value!r}")
    if hint in (int | None, float | None):  # optional: null, else the number
        return None if value is None else _coerce(value, hint.__args__[0], key)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"`{key}` must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ParamsError(f"`{key}` must be a string, got {value!r}")
    return value


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"`{key}` must be an integer, got {value!r}")
    return value


def parse_groups(raw: Any) -> Groups:
    """params.yaml's `groups` as a :class:`Groups`, its errors as ParamsError."""
    try:
        return Groups.from_dict(raw)
    except GroupsError as err:
        raise ParamsError(str(err)) from None


def _check(p: Params) -> None:
    """Cross-field rules that types alone cannot express."""
    for key in ("epochs", "batch_size", "patience"):
        if getattr(p.gates, key) <= 0:
            raise ParamsError(f"`gates.{key}` must be a positive integer")
    if p.gates.learning_rate <= 0:
        raise ParamsError("`gates.learning_rate` must be > 0")
    _check_arch(p.net)
    for key in ("val_size", "gate_size"):
        if getattr(p.data, key) <= 0:
            raise ParamsError(f"`data.{key}` must be a positive integer")
    held_out = p.data.val_size + p.data.gate_size
    if p.data.limit is not None and p.data.limit <= held_out:
        raise ParamsError(
            f"`data.limit` must be null or larger than `data.val_size` + `data.gate_size` "
            f"({held_out})"
        )
    _one_of(p.gates.inputs, GATE_INPUTS, "gates.inputs")
    _one_of(p.gates.fit_on, GATE_FIT, "gates.fit_on")
    _check_gates(p.gates)
    _one_of(p.mixture.routing, ROUTINGS, "mixture.routing")
    _one_of(p.mixture.tta, TTA_LEVELS, "mixture.tta")
    _one_of(p.mixture.router_fusion, FUSIONS, "mixture.router_fusion")
    _one_of(p.train.precision, PRECISIONS, "train.precision")
    _one_of(p.train.distribute, DISTRIBUTE, "train.distribute")
    if p.train.steps_per_execution <= 0:
        raise ParamsError("`train.steps_per_execution` must be a positive integer")
    if not p.mlflow.experiment:
        raise ParamsError("`mlflow.experiment` must be a non-empty name")


def _check_gates(gates: GateParams) -> None:
    """A gate that sees nothing (constant, fixed) must not be asked to see features, and
    a fixed gate, which fits nothing, must not be asked where to fit.
    """
    _one_of(gates.kind, GATE_KINDS, "gates.kind")
    if gates.kind != "learned" and gates.inputs != "probs":
        raise ParamsError(
            f"`gates.inputs: {gates.inputs}` has no effect with `gates.kind: {gates.kind}` "
            "(its gates ignore their input): set inputs to probs, or kind to learned"
        )
    if gates.kind == "fixed" and gates.fit_on != "gate":
        raise ParamsError(
            "`gates.fit_on: train` has no effect with `gates.kind: fixed` (nothing is "
            "fitted): set fit_on to gate, or kind to learned or constant"
        )


def _check_network(name: str, net: NetParams) -> None:
    """A network's resolved recipe, and the keys that its other settings would make dead."""
    if net.epochs <= 0:
        raise ParamsError(f"`{name}.epochs` must be a positive integer")
    _one_of(net.start, STARTS, f"{name}.start")
    _check_recipe(name, net)
    if not isinstance(net, SpecialistParams):
        return
    if not 0 <= net.dustbin <= 1:
        raise ParamsError("`specialists.dustbin` must be in [0, 1] (0: no dustbin output)")
    if not 0 <= net.distill <= 1:
        raise ParamsError("`specialists.distill` must be in [0, 1] (0: hard labels only)")
    if net.distill == 0 and net.temperature is not None:
        raise ParamsError(
            "`specialists.temperature` has no effect while `specialists.distill` is 0: "
            "remove it, or set distill > 0"
        )
    if net.distill > 0 and net.temperature is None:
        raise ParamsError("`specialists.distill` > 0 needs `specialists.temperature` (e.g. 2.0)")
    if net.temperature is not None and net.temperature <= 0:
        raise ParamsError("`specialists.temperature` must be > 0")


def _check_arch(arch: NetArch) -> None:
    if arch.width <= 0:
        raise ParamsError("`net.width` must be a positive integer")
    if arch.bn_bias_lr <= 0 or arch.logit_scale <= 0:
        raise ParamsError("`net.bn_bias_lr` and `net.logit_scale` must be > 0")
    if not 0 <= arch.bn_momentum < 1:
        raise ParamsError("`net.bn_momentum` must be in [0, 1)")


def _check_recipe(name: str, net: RecipeParams) -> None:
    if net.batch_size <= 0:
        raise ParamsError(f"`{name}.batch_size` must be a positive integer")
    if net.learning_rate <= 0:
        raise ParamsError(f"`{name}.learning_rate` must be > 0")
    if not 0 <= net.label_smoothing < 1:
        raise ParamsError(f"`{name}.label_smoothing` must be in [0, 1)")
    if not 0 <= net.momentum < 1:
        raise ParamsError(f"`{name}.momentum` must be in [0, 1)")
    if net.weight_decay < 0 or net.translate < 0:
        raise ParamsError(f"`{name}.weight_decay` and `{name}.translate` must be >= 0")


def _one_of(value: Any, allowed: tuple, key: str) -> None:
    if value not in allowed:
        raise ParamsError(f"`{key}` must be one of {list(allowed)}, got {value!r}")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value view of a params object or a nested mapping (a profile), the
    key form MLflow logs and `-S` and `dvc exp show` use.
    """
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(obj, Groups):
        return {f"{prefix}{n}": ",".join(m) for n, m in obj.to_dict().items()}
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            out.update(flatten(getattr(obj, f.name), f"{prefix}{f.name}."))
        return out
    return {prefix.rstrip("."): obj}
