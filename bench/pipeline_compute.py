"""Time the pipeline's compute (no DVC, no MLflow) under a params profile, any backend.

Why a separate script: the lent GPU machine has JAX but neither TensorFlow, DVC nor
MLflow, so the GPU profile is measured by running the same library functions the
stages call (hmoe.data, hmoe.nets, hmoe.train, hmoe.mixture) in one process:

    KERAS_BACKEND=jax python bench/pipeline_compute.py --profile profiles/gpu.yaml \
        --source /path/to/cifar10-jpeg.zip

Prints one line per figure, prefixed with the machine it ran on.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import keras
import numpy as np
import yaml

from hmoe.data import load_source, stratified_split
from hmoe.metrics import accuracy, specialist_accuracy
from hmoe.mixture import Mixture, combine, route_weights
from hmoe.nets import build_classifier, build_gate, copy_trunk
from hmoe.params import parse_params
from hmoe.profile import merged
from hmoe.train import fit_classifier, fit_gates

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    devices = [str(d) for d in keras.distribution.list_devices()]
    return f"{platform.node()} backend={keras.backend.backend()} devices={devices[:1]}"


def say(what: str, value: str) -> None:
    print(f"[{MACHINE}] {what}: {value}", flush=True)  # noqa: T201


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, help="overrides of params.yaml")
    ap.add_argument("--source", required=True)
    ap.add_argument("--smoke", action="store_true", help="1 epoch per network")
    ap.add_argument("--limit", type=int, help="override data.limit")
    ap.add_argument("--val-size", type=int, help="override data.val_size")
    args = ap.parse_args()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if args.profile:
        raw = merged(raw, yaml.safe_load(args.profile.read_text()))
    if args.smoke:
        for net in ("base", "specialists", "router", "gates"):
            raw[net]["epochs"] = 1
    if args.limit:
        raw["data"]["limit"] = args.limit
    if args.val_size:
        raw["data"]["val_size"] = args.val_size
    p = parse_params(raw)
    keras.utils.set_random_seed(p.seed)
    keras.mixed_precision.set_global_policy(p.train.precision)
    t0 = time.perf_counter()
    data = load_source(args.source)
    x, y, xv, yv = stratified_split(
        data.x_train, data.y_train, val_size=p.data.val_size, limit=p.data.limit, seed=p.seed
    )
    say("prepare_s", f"{time.perf_counter() - t0:.1f}")
    groups = p.groups

    def train(name, cfg, n_out, tr, va, init=None):
        model = build_classifier(
            n_out,
            width=cfg.width,
            weight_decay=cfg.weight_decay,
            augment=cfg.augment,
            seed=p.seed,
            name=name,
        )
        if init is not None:
            copy_trunk(init, model)
        start = time.perf_counter()
        hist = fit_classifier(model, tr, va, cfg, jit_compile=p.train.jit_compile, verbose=2)
        dt = time.perf_counter() - start
        n_ep = len(hist.history["loss"])
        say(
            f"{name}",
            f"{dt:.1f} s, {len(tr[0]) * n_ep / dt:.0f} img/s, "
            f"best val acc {max(hist.history['val_accuracy']):.4f}",
        )
        return model

    base = train("base", p.base, 10, (x, y), (xv, yv))
    specs = {}
    for g in groups.names:
        ids = groups.class_ids(g)
        local = {c: i for i, c in enumerate(ids)}

        def sub(xx, yy, ids=ids, local=local):
            keep = np.isin(yy, ids)
            return xx[keep], np.array([local[int(c)] for c in yy[keep]])

        specs[g] = train(
            f"specialist_{g}",
            p.specialists,
            len(ids),
            sub(x, y),
            sub(xv, yv),
            base if p.specialists.init_from_base else None,
        )
    to_group = np.asarray(groups.group_of_label())
    router = train(
        "router",
        p.router,
        len(groups.names),
        (x, to_group[y]),
        (xv, to_group[yv]),
        base if p.router.init_from_base else None,
    )
    start = time.perf_counter()
    mix = Mixture(
        router=router,
        base=base,
        specialists=specs,
        gates={},
        groups=groups,
        routing=p.mixture.routing,
    )
    out_tr, out_val = mix.outputs(x), mix.outputs(xv)
    gates = [build_gate(10, hidden=p.gates.hidden, name=f"gate_{g}") for g in groups.names]

    def inputs(o):
        return route_weights(o.router, p.mixture.routing), o.base, np.stack(o.specs, 1)

    fit_gates(gates, inputs(out_tr), y, inputs(out_val), yv, p.gates, verbose=0)
    say("gates_s", f"{time.perf_counter() - start:.1f}")
    mix = Mixture(
        router=router,
        base=base,
        specialists=specs,
        gates=dict(zip(groups.names, gates, strict=True)),
        groups=groups,
        routing=p.mixture.routing,
    )
    out = mix.outputs(data.x_test)
    ws = mix.gate_weights(out)
    yt = data.y_test
    say("test base_accuracy", f"{accuracy(out.base, yt):.4f}")
    say("test router_accuracy", f"{accuracy(out.router, to_group[yt]):.4f}")
    for i, g in enumerate(groups.names):
        acc = specialist_accuracy(out.specs[i], yt, groups.class_ids(g))
        say(f"test specialist_{g}_accuracy", f"{acc:.4f}")
    for routing in ("hard", "soft"):
        probs = combine(route_weights(out.router, routing), ws, out.base, out.specs)
        say(f"test mixture_{routing}_accuracy", f"{accuracy(probs, yt):.4f}")
    say("pipeline_compute_s", f"{time.perf_counter() - t0:.1f}")


MACHINE = machine()

if __name__ == "__main__":
    main()
