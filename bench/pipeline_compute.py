"""Time the pipeline's compute (no DVC, no MLflow) under a params profile, any backend.

Why a separate script: the lent GPU machine has JAX but neither TensorFlow, DVC nor
MLflow, so the GPU profile is measured by chaining the same pure nodes the stages
call (:mod:`hmoe.nodes`) in one process:

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
import yaml

from hmoe import nodes
from hmoe.data import load_source
from hmoe.data.split import prepare_splits
from hmoe.mixture import Mixture
from hmoe.params import parse_params
from hmoe.profile import merged
from hmoe.startup import resolve_precision

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    devices = [str(d) for d in keras.distribution.list_devices()]
    return f"{platform.node()} backend={keras.backend.backend()} devices={devices[:1]}"


def say(what: str, value: str) -> None:
    print(f"[{MACHINE}] {what}: {value}", flush=True)


def load_params(args: argparse.Namespace):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if args.profile:
        raw = merged(raw, yaml.safe_load(args.profile.read_text()))
    if args.smoke:
        for net in ("base", "specialists", "router", "gates"):
            raw[net]["epochs"] = 1
    if args.limit:
        raw["data"]["limit"] = args.limit
    if args.val_size:
        raw["data"]["val_size"] = raw["data"]["gate_size"] = args.val_size
    if args.seed is not None:
        raw["seed"] = args.seed
    return parse_params(raw)


def assemble(p, groups, router, base, specs, gates=()) -> Mixture:
    """The mixture of trained networks under params ``p`` (no gates: experts only)."""
    return Mixture(
        router=router,
        base=base,
        specialists=specs,
        gates=dict(zip(groups.names, gates, strict=True)) if gates else {},
        groups=groups,
        routing=p.mixture.routing,
        tta=p.mixture.tta,
        gate_inputs=p.gates.inputs,
    )


def timed_train(p, name, cfg, n_out, train, val, init=None):
    model = nodes.build_network(
        n_out, p.net, cfg, seed=p.seed, name=name, init=init, whitening_images=train[0]
    )
    start = time.perf_counter()
    summary = nodes.train_network(model, cfg, train, val, jit_compile=p.train.jit_compile)
    dt = time.perf_counter() - start
    ips = len(train[0]) * summary["epochs_run"] / dt
    say(name, f"{dt:.1f} s, {ips:.0f} img/s, best val acc {summary['val_accuracy']:.4f}")
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, help="overrides of params.yaml")
    ap.add_argument("--source", required=True)
    ap.add_argument("--smoke", action="store_true", help="1 epoch per network")
    ap.add_argument("--limit", type=int, help="override data.limit")
    ap.add_argument("--val-size", type=int, help="override data.val_size and data.gate_size")
    ap.add_argument("--seed", type=int, help="override seed")
    args = ap.parse_args()
    p = load_params(args)
    keras.utils.set_random_seed(p.seed)
    policy, why = resolve_precision(p.train.precision)
    keras.mixed_precision.set_global_policy(policy)
    say("precision", f"{policy} ({why})")
    t0 = time.perf_counter()
    data = load_source(args.source)
    splits = prepare_splits(
        data.x_train,
        data.y_train,
        val_size=p.data.val_size,
        gate_size=p.data.gate_size,
        limit=p.data.limit,
        seed=p.data.split_seed,
    )  # the same splits as the pipeline's prepare stage
    (x, y), (xg, yg), (xv, yv) = splits["train"], splits["gate"], splits["val"]
    say("prepare_s", f"{time.perf_counter() - t0:.1f}")
    groups = p.groups
    if groups is None:
        raise SystemExit("groups: auto needs the base's confusions: use bench/sweep.py")
    base = timed_train(p, "base", p.base, len(groups.classes), (x, y), (xv, yv))
    specs = {}
    for g in groups.names:
        ids = groups.class_ids(g)
        init = base if p.specialists.init_from_base else None
        sub = {"dustbin": p.specialists.dustbin, "seed": p.seed}
        train = nodes.specialist_subset(x, y, ids, **sub)
        val = nodes.specialist_subset(xv, yv, ids, **sub)
        n_out = nodes.specialist_outputs(ids, p.specialists.dustbin)
        specs[g] = timed_train(p, f"specialist_{g}", p.specialists, n_out, train, val, init)
    router = timed_train(
        p,
        "router",
        p.router,
        len(groups.names),
        (x, nodes.group_labels(y, groups)),
        (xv, nodes.group_labels(yv, groups)),
        base if p.router.init_from_base else None,
    )
    start = time.perf_counter()
    experts = assemble(p, groups, router, base, specs)
    out_gate, out_val = experts.outputs(xg), experts.outputs(xv)
    gates, summary = nodes.train_gates(
        groups, p.gates, p.mixture.routing, (out_gate, yg), (out_val, yv)
    )
    say("gates", f"{time.perf_counter() - start:.1f} s, val acc {summary['val_accuracy']:.4f}")
    start = time.perf_counter()
    mix = assemble(p, groups, router, base, specs, gates)
    metrics, _ = nodes.evaluate_mixture(mix, data.x_test, data.y_test)
    say("evaluate_s", f"{time.perf_counter() - start:.1f}")
    for key in sorted(k for k in metrics if k.endswith("accuracy") or k.startswith("lift")):
        say(f"test {key}", f"{metrics[key]:.4f}")
    say("pipeline_compute_s", f"{time.perf_counter() - t0:.1f}")


MACHINE = machine()

if __name__ == "__main__":
    main()
