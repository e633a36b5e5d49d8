"""The mixture's arithmetic (pure numpy) and the assembled predictor.

Notation (README, "what it is"): router r(x) over groups, base b(x) over classes, specialist
s_g(x) over its group's classes embedded into all classes as ŝ_g(x), gate g's
weights w_g(x) over {base, specialist}. Branch g: p_g = w_g0 * b + w_g1 * ŝ_g.
Hard routing: p = p_{argmax r}. Soft routing: p = sum_g r_g * p_g.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmoe import feed
from hmoe.gates import GateInput
from hmoe.groups import Groups
from hmoe.params import FUSIONS, ROUTINGS

logger = logging.getLogger(__name__)
PROBS = GateInput("probs")  # the gates' default input: both experts' probabilities
PREDICT_BATCH = 512  # images per predict call: larger batches gain nothing on a CPU


def tta_views(x: np.ndarray, level: int) -> list[tuple[float, np.ndarray]]:
    """(weight, images) views whose weighted mean prediction is the TTA prediction.

    Level 0: the image. Level 1: the image and its mirror. Level 2 (airbench): half on
    level 1, half on level 1 of the image shifted one pixel up-left and down-right
    (reflect padding). Weights sum to 1, so averaged distributions stay distributions.
    """
    if level not in (0, 1, 2):
        raise ValueError(f"TTA level must be 0, 1 or 2, got {level}")
    if level == 0:
        return [(1.0, x)]
    views = [(0.5, x), (0.5, x[:, :, ::-1])]
    if level == 1:
        return views
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [padded[:, :-2, :-2], padded[:, 2:, 2:]]
    return [(w / 2, v) for w, v in views] + [
        (0.125, v) for s in shifted for v in (s, s[:, :, ::-1])
    ]


def embed(spec_probs: np.ndarray, class_ids: Sequence[int], n_classes: int) -> np.ndarray:
    """Place a specialist's (N, k) distribution into (N, n_classes), zeros elsewhere.

    A specialist with a dustbin output (N, k + 1) loses that column and is
    renormalised over its k classes: within the mixture it speaks only for its
    classes, and the gate decides how much it counts.
    """
    k = len(class_ids)
    if spec_probs.shape[1] == k + 1:
        kept = spec_probs[:, :k]
        spec_probs = kept / np.maximum(kept.sum(axis=1, keepdims=True), 1e-12)
    elif spec_probs.shape[1] != k:
        raise ValueError(f"specialist has {spec_probs.shape[1]} outputs for a group of {k}")
    out = np.zeros((spec_probs.shape[0], n_classes), dtype=np.float32)
    out[:, list(class_ids)] = spec_probs
    return out


def route_weights(router_probs: np.ndarray, routing: str) -> np.ndarray:
    """(N, G) weights of each branch: one-hot of the top group, or the probabilities."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if routing == "soft":
        return router_probs.astype(np.float32)
    return one_hot(np.argmax(router_probs, axis=1), router_probs.shape[1])


def one_hot(index: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[np.asarray(index)]


def branch_probs(gate_w: np.ndarray, base: np.ndarray, spec_embedded: np.ndarray) -> np.ndarray:
    """p_g = w0 * b + w1 * ŝ_g, row-wise; a distribution when the inputs are."""
    return gate_w[:, :1] * base + gate_w[:, 1:2] * spec_embedded


def combine(
    route: np.ndarray,
    gate_ws: Sequence[np.ndarray],
    base: np.ndarray,
    specs_embedded: Sequence[np.ndarray],
) -> np.ndarray:
    """Mixture distribution: sum_g route[:, g] * p_g (hard route: the chosen branch)."""
    out = np.zeros_like(base, dtype=np.float32)
    for g, (w, s) in enumerate(zip(gate_ws, specs_embedded, strict=True)):
        out += route[:, g : g + 1] * branch_probs(w, base, s)
    return out


def ensemble(base: np.ndarray, specs_embedded: Sequence[np.ndarray]) -> np.ndarray:
    """Compute-matched control: mean of base and every specialist, renormalised."""
    total = base + sum(specs_embedded)
    return total / total.sum(axis=1, keepdims=True)


def group_marginal(base: np.ndarray, groups: Groups) -> np.ndarray:
    """(N, G): the base's probability of each group (the sum over its classes)."""
    membership = np.zeros((len(groups.classes), len(groups.names)), dtype=np.float32)
    membership[np.arange(len(groups.classes)), list(groups.group_of_label())] = 1.0
    return base @ membership


def fuse_routes(router: np.ndarray, marginal: np.ndarray, fusion: str) -> np.ndarray:
    """The routing distribution (``mixture.router_fusion``): the router's own, or its
    normalised product with the base's group marginal. Two classifiers of the group
    that err on different images correct each other.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"router fusion must be one of {FUSIONS}, got {fusion!r}")
    if fusion == "none":
        return router
    joint = router * marginal
    return (joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Outputs:
    """Every frozen network's output on one split (what evaluation and gates need)."""

    router: np.ndarray  # (N, G) the routing distribution (after `mixture.router_fusion`)
    base: np.ndarray  # (N, C)
    specs: tuple[np.ndarray, ...]  # G x (N, C), embedded
    features: np.ndarray | None = None  # (N, F) base trunk features, when gates see them
    router_net: np.ndarray | None = None  # (N, G) the router network's own output

    def for_gate(self, g: int, seen: GateInput) -> np.ndarray:
        """What gate ``g`` sees on these images."""
        return seen.numpy(self.base, self.specs[g], self.features)


class Mixture:
    """The assembled hierarchical mixture: router, base, specialists and gates.

    ``predict_proba`` runs hard routing the cheap way: the batch is split by route
    and each branch's specialist and gate run only on its share.
    """

    def __init__(
        self,
        *,
        router,
        base,
        specialists: Mapping[str, object],
        gates: Mapping[str, object],
        groups: Groups,
        routing: str,
        router_fusion: str,
        tta: int = 0,
        gate_input: GateInput = PROBS,
    ) -> None:
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        missing = [g for g in groups.names if g not in specialists]
        missing += [g for g in groups.names if gates and g not in gates]
        if missing:
            raise ValueError(f"no specialist or gate for groups {missing}")
        self.router, self.base, self.groups, self.routing = router, base, groups, routing
        if router_fusion not in FUSIONS:
            raise ValueError(f"router_fusion must be one of {FUSIONS}, got {router_fusion!r}")
        self.router_fusion = router_fusion
        self.specialists = [specialists[g] for g in groups.names]
        # Gates may be absent while they are being trained (outputs() needs none).
        self.gates = [gates[g] for g in groups.names] if gates else []
        self.tta = tta
        self.n_classes = len(groups.classes)
        self.gate_input = gate_input
        self._fronts: dict = {}  # built on first use: base (+ router head) (+ features)
        self._shared_head: list | None = None  # the router's head on the base trunk, if so

    def predict_network(self, model, x: np.ndarray) -> np.ndarray:
        """Any network's distribution with the mixture's test-time views."""
        return self._predict(model, x)

    def _front(
        self, x: np.ndarray, *, with_router: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(base probabilities, router network's output, trunk features or None), with
        every output the caller needs taken from one pass over the views.

        A router that is a head on the base's frozen trunk (the default) shares that
        trunk: it is run once for both, which spares a whole network's forward
        passes in evaluation and gate training. Same weights, same outputs.
        """
        import keras

        from hmoe.layers import TRUNK_OUTPUT

        shared = with_router and self.shared_router_head() is not None
        want_features = self.gate_input.needs_features
        if not (shared or want_features):
            router = self._predict(self.router, x) if with_router else None
            return self._predict(self.base, x), router, None
        key = (shared, want_features)
        if key not in self._fronts:
            trunk = self.base.get_layer(TRUNK_OUTPUT).output
            outs = [self.base.output]
            if shared:
                outs.append(self.shared_router_head()(trunk))
            if want_features:
                outs.append(trunk)
            self._fronts[key] = keras.Model(self.base.inputs, outs)
        got = self._views_mean(self._fronts[key], x)
        base = got.pop(0)
        router = got.pop(0) if shared else (self._predict(self.router, x) if with_router else None)
        return base, router, got.pop(0) if want_features else None

    def shared_router_head(self):
        """The router's head (features -> group probabilities) as a model, when the
        router is the base's trunk plus a head (every other layer holds the base's
        weights), else None.
        """
        if self._shared_head is None:
            self._shared_head = _shared_head(self.router, self.base) or []
        return self._shared_head or None

    def _predict(self, model, x: np.ndarray) -> np.ndarray:
        """A network's distribution, averaged over the TTA views of images (gates: none)."""
        if len(x) == 0:
            return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
        if x.ndim != 4:
            return np.asarray(self._forward(model, x))
        return self._views_mean(model, x)[0]

    def _forward(self, model, x: np.ndarray):
        """``model`` on ``x`` in batches of ``PREDICT_BATCH`` (:func:`hmoe.feed.predict`:
        no ``tf.data`` iterator, whose teardown would idle the process for seconds).
        """
        return feed.predict(model, x, PREDICT_BATCH)

    def _views_mean(self, model, x: np.ndarray) -> list[np.ndarray]:
        """Each of ``model``'s outputs, weighted-averaged over the TTA views of images."""
        views = [(w, self._forward(model, v)) for w, v in tta_views(x, self.tta)]
        views = [(w, outs if isinstance(outs, list | tuple) else [outs]) for w, outs in views]
        return [sum(w * np.asarray(outs[i]) for w, outs in views) for i in range(len(views[0][1]))]

    def _spec(self, g: int, x: np.ndarray) -> np.ndarray:
        ids = self.groups.class_ids(self.groups.names[g])
        return embed(self._predict(self.specialists[g], x), ids, self.n_classes)

    def outputs(self, x: np.ndarray) -> Outputs:
        """Run every network on every image (dense): for evaluation and gate training."""
        base, router, features = self._front(x)
        return Outputs(
            router=self._route(router, base), base=base, specs=self._specs(x),
            features=features, router_net=router,
        )  # fmt: skip

    def _route(self, router: np.ndarray, base: np.ndarray) -> np.ndarray:
        return fuse_routes(router, group_marginal(base, self.groups), self.router_fusion)

    def gate_weights(self, out: Outputs) -> list[np.ndarray]:
        return [
            self._predict(gate, out.for_gate(g, self.gate_input))
            for g, gate in enumerate(self.gates)
        ]

    def predict_dense(self, x: np.ndarray) -> np.ndarray:
        """Mixture probabilities with every network on every image."""
        out = self.outputs(x)
        route = route_weights(out.router, self.routing)
        return combine(route, self.gate_weights(out), out.base, out.specs)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Mixture probabilities; hard routing runs each branch on its share only."""
        return self.predict_details(x).probs

    def predict_details(self, x: np.ndarray) -> Prediction:
        """Probabilities plus how they were reached: the group the router chose, its
        probability, and the weight the chosen group's gate gave its specialist.
        """
        if not self.gates:
            raise ValueError("this Mixture has no gates: train them (`dvc repro train_gates`)")
        if self.routing == "soft":
            out = self.outputs(x)
            weights = self.gate_weights(out)
            probs = combine(route_weights(out.router, "soft"), weights, out.base, out.specs)
            route = np.argmax(out.router, axis=1)
            spec_w = np.stack([w[:, 1] for w in weights], axis=1)[np.arange(len(x)), route]
            return Prediction(probs, route, out.router[np.arange(len(x)), route], spec_w)
        base, router, features = self._front(x)
        router = self._route(router, base)
        route = np.argmax(router, axis=1)
        probs = np.zeros_like(base)
        spec_w = np.zeros(len(x), dtype=np.float32)
        for g in range(len(self.gates)):
            idx = np.flatnonzero(route == g)
            if idx.size == 0:
                continue
            spec = self._spec(g, x[idx])
            seen = self.gate_input.numpy(base[idx], spec, _rows(features, idx))
            w = self._predict(self.gates[g], seen)
            probs[idx] = branch_probs(w, base[idx], spec)
            spec_w[idx] = w[:, 1]
        return Prediction(probs, route, router[np.arange(len(x)), route], spec_w)

    def _specs(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self._spec(g, x) for g in range(len(self.specialists)))


def _shared_head(router, base):
    """The router's head as a model if its trunk is the base's (same layers, equal
    weights), else None.
    """
    import keras

    from hmoe.layers import HEAD_LAYERS, TRUNK_OUTPUT

    if not hasattr(router, "get_layer") or not hasattr(base, "get_layer"):
        return None
    base_layers = {layer.name: layer for layer in base.layers}
    for layer in router.layers:
        if layer.name in HEAD_LAYERS or not layer.weights:
            continue
        twin = base_layers.get(layer.name)
        if twin is None or len(twin.weights) != len(layer.weights):
            return None
        for a, b in zip(layer.weights, twin.weights, strict=True):
            if "seed_generator" in a.path:  # augmentation's random state: off in inference
                continue
            if a.shape != b.shape or not np.array_equal(np.asarray(a), np.asarray(b)):
                return None
    names = [layer.name for layer in router.layers]
    if [n for n in names if n in HEAD_LAYERS] != list(HEAD_LAYERS) or names[-3:] != list(
        HEAD_LAYERS
    ):
        return None
    features = router.get_layer(TRUNK_OUTPUT).output
    return keras.Model(features, router.output, name="router_head")


def _rows(a: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if a is None else a[idx]


@dataclass(frozen=True)
class Prediction:
    """What the served mixture returns per image (arrays of length N)."""

    probs: np.ndarray  # (N, C) mixture distribution
    group: np.ndarray  # (N,) index of the group the router chose
    group_prob: np.ndarray  # (N,) the router's probability of that group
    specialist_weight: np.ndarray  # (N,) the chosen group's gate weight on its specialist


def load_mixture(
    groups: Groups,
    files: Mapping[str, Path],
    *,
    routing: str,
    router_fusion: str,
    tta: int = 0,
    gate_input: GateInput = PROBS,
    gates: bool = True,
    read: Callable[[Path], Any] | None = None,
) -> Mixture:
    """The assembled mixture from its files (registered name -> path, as
    :func:`hmoe.modelset.model_files` gives them or a logged pyfunc's artifacts), each
    read by ``read`` (a stage's store; default: loaded from the file).
    ``gates=False`` loads the frozen experts and router only, for training the gates.
    """
    from hmoe import modelset

    def load(name: str):
        return (read or modelset.load_model)(files[name])

    names = groups.names
    return Mixture(
        router=load(modelset.ROUTER),
        base=load(modelset.BASE),
        specialists={g: load(modelset.specialist_name(g)) for g in names},
        gates={g: load(modelset.gate_name(g)) for g in names} if gates else {},
        groups=groups,
        routing=routing,
        tta=tta,
        gate_input=gate_input,
        router_fusion=router_fusion,
    )
