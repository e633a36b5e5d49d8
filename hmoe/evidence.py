"""Every network's per-image probabilities on val and test, saved per seed by the sweep.

A sweep's networks are thrown away when it ends; these files keep what they said, so
that a later question about them (a cascade, another gate, another control) is answered
from the files without training again (:mod:`hmoe.frontier`, ``python -m hmoe.findings``).

One compressed npz per configuration x seed, float16 (a few hundred kB), with for each
split ``s`` in ``val`` and ``test``:

- ``s_y``: the true labels (int8);
- ``s_base``, ``s_second_base`` (when the control was trained): (N, C) distributions;
- ``s_specialist_<group>``: (N, k) over the group's own classes (``class_ids_<group>``);
- ``s_router``: (N, G) the routing distribution the mixture used (after
  ``mixture.router_fusion``); ``s_router_net``: the router network's own;
- ``s_gate_<group>``: (N,) the weight group's gate gave its specialist (the base gets
  one minus it), on every image (dense, as soft routing uses them).

All with the mixture's test-time views, exactly as `train_gates` and `evaluate` saw them.

The few lines of mixture arithmetic here (embedding a specialist, a gated branch, hard or
soft routing) repeat :mod:`hmoe.mixture`'s, which imports Keras through its gates: the
findings and the Ray engine's driver read these files without loading TensorFlow.
tests/unit/test_frontier.py checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("val", "test")


@dataclass(frozen=True)
class SplitEvidence:
    """One split's probabilities, in float32 (as computed, or as read back from float16)."""

    y: np.ndarray  # (N,)
    base: np.ndarray  # (N, C)
    specialists: tuple[np.ndarray, ...]  # G x (N, C), embedded into all classes
    router: np.ndarray  # (N, G) the routing distribution the mixture used
    router_net: np.ndarray | None  # (N, G) the router network's own
    gates: tuple[np.ndarray, ...]  # G x (N,) weight on the specialist
    second_base: np.ndarray | None  # (N, C)

    def gate_weights(self) -> list[np.ndarray]:
        """Each gate's (N, 2) weights: on the base, on its specialist."""
        return [np.stack([1 - w, w], axis=1).astype(np.float32) for w in self.gates]

    def mixture(self, routing: str) -> np.ndarray:
        """The mixture's distribution under ``routing`` (hard or soft)."""
        route = routes(self.router, routing)
        return sum(
            route[:, g : g + 1] * branch(w, self.base, spec)
            for g, (w, spec) in enumerate(zip(self.gate_weights(), self.specialists, strict=True))
        )


def routes(router: np.ndarray, routing: str) -> np.ndarray:
    """(N, G) branch weights: the routing distribution (soft) or its top group (hard)."""
    if routing == "soft":
        return router.astype(np.float32)
    if routing != "hard":
        raise ValueError(f"routing must be hard or soft, got {routing!r}")
    return np.eye(router.shape[1], dtype=np.float32)[np.argmax(router, axis=1)]


def branch(gate_w: np.ndarray, base: np.ndarray, spec: np.ndarray) -> np.ndarray:
    """A gated branch: w0 x base + w1 x specialist, row-wise."""
    return gate_w[:, :1] * base + gate_w[:, 1:2] * spec


def embed(spec: np.ndarray, class_ids: Sequence[int], n_classes: int) -> np.ndarray:
    """A specialist's (N, k) distribution placed into (N, n_classes), zeros elsewhere."""
    out = np.zeros((len(spec), n_classes), dtype=np.float32)
    out[:, list(class_ids)] = spec
    return out


def split_evidence(
    out, gate_weights: Sequence[np.ndarray], y: np.ndarray, second: np.ndarray | None
) -> SplitEvidence:
    """One split's evidence from a mixture's dense outputs (:class:`hmoe.mixture.Outputs`)
    and its gates' weights."""
    return SplitEvidence(
        y=np.asarray(y),
        base=out.base,
        specialists=tuple(out.specs),
        router=out.router,
        router_net=out.router_net,
        gates=tuple(np.asarray(w)[:, 1] for w in gate_weights),
        second_base=second,
    )


def evidence_writer(
    splits: Mapping[str, SplitEvidence], class_ids: Mapping[str, Sequence[int]]
) -> Callable[[Path], None]:
    """A writer of the evidence file at the path it is given (a stage's store)."""
    arrays: dict[str, np.ndarray] = {}
    names = list(class_ids)
    for g in names:
        arrays[f"class_ids_{g}"] = np.asarray(class_ids[g], dtype=np.int8)
    for s, ev in splits.items():
        arrays[f"{s}_y"] = np.asarray(ev.y).astype(np.int8)
        arrays[f"{s}_base"] = _half(ev.base)
        arrays[f"{s}_router"] = _half(ev.router)
        if ev.router_net is not None:
            arrays[f"{s}_router_net"] = _half(ev.router_net)
        if ev.second_base is not None:
            arrays[f"{s}_second_base"] = _half(ev.second_base)
        for g, spec, w in zip(names, ev.specialists, ev.gates, strict=True):
            arrays[f"{s}_specialist_{g}"] = _half(spec[:, list(class_ids[g])])
            arrays[f"{s}_gate_{g}"] = _half(w)
    return lambda tmp: np.savez_compressed(tmp, groups=np.asarray(names), **arrays)


def load_evidence(path: Path) -> dict[str, SplitEvidence]:
    """A saved file's splits, in float32, specialists embedded into all classes again."""
    with np.load(path) as f:
        return evidence_from({k: f[k] for k in f.files})


def evidence_from(a: Mapping[str, np.ndarray]) -> dict[str, SplitEvidence]:
    """The splits of an evidence file's arrays (see :func:`load_evidence`)."""
    names = [str(g) for g in a["groups"]]
    ids = {g: [int(i) for i in a[f"class_ids_{g}"]] for g in names}
    found = {}
    for s in SPLITS:
        if f"{s}_base" not in a:
            continue
        base = a[f"{s}_base"].astype(np.float32)
        n_classes = base.shape[1]
        found[s] = SplitEvidence(
            y=a[f"{s}_y"].astype(np.int64),
            base=base,
            specialists=tuple(
                embed(a[f"{s}_specialist_{g}"].astype(np.float32), ids[g], n_classes) for g in names
            ),
            router=a[f"{s}_router"].astype(np.float32),
            router_net=_optional(a, f"{s}_router_net"),
            gates=tuple(a[f"{s}_gate_{g}"].astype(np.float32) for g in names),
            second_base=_optional(a, f"{s}_second_base"),
        )
    return found


def _half(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _optional(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray | None:
    return arrays[key].astype(np.float32) if key in arrays else None


def labels_writer(labels: Mapping[str, np.ndarray], y: np.ndarray) -> Callable[[Path], None]:
    """A writer of every predictor's test labels and the truth, so any paired statistic
    can be recomputed later without retraining (a few kB).
    """
    arrays = {k: np.asarray(v, dtype=np.int8) for k, v in labels.items()}
    arrays["y"] = np.asarray(y).astype(np.int8)
    return lambda tmp: np.savez_compressed(tmp, **arrays)
