"""Does the hierarchy help? The issue-9 sweep in one process, any Keras backend.

Why a script beside the pipeline: a full-data configuration takes about half an hour
on the 2-core CPU, so the sweep (8 configurations x 3 seeds) is run where it is cheap:
the lent GPU machine, which has JAX but no TensorFlow, DVC or MLflow. It chains the
pipeline's own nodes (:mod:`hmoe.nodes`), like ``bench/pipeline_compute.py``, with the
same splits as `prepare`; the base (and the second base) of a seed is trained once
and shared by every configuration of that seed, as DVC's cache shares it in
``dvc exp run`` sweeps. One factor changes at a time from the defaults:

    KERAS_BACKEND=jax python bench/sweep.py --source cifar10-jpeg.zip --seeds 42 1 2 --out DIR

Writes DIR/sweep.jsonl (one line of test metrics per seed and configuration) and
DIR/preds-<seed>.npz (every predicted label, for paired intervals); summarise with
``python bench/sweep_table.py DIR``. The test split is only scored, never used to
choose anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import keras
import numpy as np
from pipeline_compute import assemble, say, timed_train

from hmoe import grouping, modelset, nodes
from hmoe.controls import control_predictions
from hmoe.data import load_source
from hmoe.data.constants import CIFAR10_CLASSES
from hmoe.data.split import prepare_splits
from hmoe.metrics import confusion
from hmoe.params import Params, parse_groups, parse_params
from hmoe.profile import merged
from hmoe.startup import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
# name -> overrides of params.yaml (one factor at a time from the defaults)
CONFIGS = {
    "default": {},
    "gates_features": {"gates": {"inputs": "features"}},
    "gates_both": {"gates": {"inputs": "both"}},
    "gates_in_sample": {"gates": {"fit_on": "train"}},
    "auto2": {"groups": "auto", "grouping": {"count": 2}},
    "auto3": {"groups": "auto", "grouping": {"count": 3}},
    "spec_scratch": {"specialists": {"init_from_base": False, "epochs": 8}},
    "spec_dustbin": {"specialists": {"dustbin": 0.5}},
}


def params_for(raw: dict, overrides: dict, seed: int) -> Params:
    return parse_params(merged(raw, overrides) | {"seed": seed})


class SeedRun:
    """Everything trained for one seed, shared between its configurations."""

    def __init__(self, raw: dict, seed: int, splits: dict, smoke: bool) -> None:
        self.raw, self.seed, self.smoke = raw, seed, smoke
        (self.x, self.y), (self.xg, self.yg), (self.xv, self.yv) = (
            splits["train"],
            splits["gate"],
            splits["val"],
        )
        p = params_for(raw, {}, seed)
        keras.utils.set_random_seed(seed)
        self.base = timed_train(p, "base", p.base, 10, (self.x, self.y), (self.xv, self.yv))
        p2 = dataclasses.replace(p, seed=seed + modelset.SECOND_BASE_SEED_OFFSET)
        keras.utils.set_random_seed(p2.seed)
        self.base2 = timed_train(p2, "base2", p.base, 10, (self.x, self.y), (self.xv, self.yv))
        pred = np.argmax(self.base.predict(self.xv, batch_size=512, verbose=0), axis=1)
        self.val_confusion = confusion(self.yv, pred, 10)
        self.cache: dict = {}

    def groups(self, p: Params):
        if p.groups is not None:
            return p.groups
        found = grouping.discover(self.val_confusion, CIFAR10_CLASSES, p.grouping.count, p.seed)
        return parse_groups(dict(found))

    def specialists(self, p: Params, groups) -> dict:
        key = ("spec", groups, p.specialists)
        if key not in self.cache:
            specs = {}
            for g in groups.names:
                ids = groups.class_ids(g)
                sub = {"dustbin": p.specialists.dustbin, "seed": p.seed}
                train = nodes.specialist_subset(self.x, self.y, ids, **sub)
                val = nodes.specialist_subset(self.xv, self.yv, ids, **sub)
                init = self.base if p.specialists.init_from_base else None
                n_out = nodes.specialist_outputs(ids, p.specialists.dustbin)
                specs[g] = timed_train(p, f"spec_{g}", p.specialists, n_out, train, val, init)
            self.cache[key] = specs
        return self.cache[key]

    def router(self, p: Params, groups):
        key = ("router", groups)
        if key not in self.cache:
            train = (self.x, nodes.group_labels(self.y, groups))
            val = (self.xv, nodes.group_labels(self.yv, groups))
            self.cache[key] = timed_train(
                p, "router", p.router, len(groups.names), train, val, self.base
            )
        return self.cache[key]


def run_config(run: SeedRun, name: str, overrides: dict, test: tuple) -> tuple[dict, dict]:
    p = params_for(run.raw, overrides, run.seed)
    keras.utils.set_random_seed(run.seed)
    groups = run.groups(p)
    specs, router = run.specialists(p, groups), run.router(p, groups)
    experts = assemble(p, groups, router, run.base, specs)
    fit = nodes.gate_fit_split(p.gates.fit_on, (run.xg, run.yg), (run.x, run.y))
    out_fit, out_val = experts.outputs(fit[0]), experts.outputs(run.xv)
    gates, summary = nodes.train_gates(
        groups, p.gates, p.mixture.routing, (out_fit, fit[1]), (out_val, run.yv)
    )
    mix = assemble(p, groups, router, run.base, specs, gates)
    metrics, pred = nodes.evaluate_mixture(mix, *test, run.base2)
    controls = control_predictions(
        pred["outputs"], mix.routing, pred["ensemble"], pred["two_bases"]
    )
    out = pred["outputs"]
    labels = {"mixture": pred["mixture"], **controls}
    labels["soft"] = np.argmax(
        nodes.control_probs(out, mix.gate_weights(out), nodes.group_labels(test[1], groups))[
            "soft"
        ],
        axis=1,
    )
    metrics |= {f"{k}_control_accuracy": float(np.mean(v == test[1])) for k, v in controls.items()}
    metrics["val_mixture_accuracy"] = summary["val_accuracy"]
    metrics["val_base_accuracy"] = summary["val_base_accuracy"]
    metrics["groups"] = {g: list(m) for g, m in zip(groups.names, groups.members, strict=True)}
    return metrics, labels


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, help="override data.limit (smoke runs)")
    ap.add_argument("--smoke", action="store_true", help="1 epoch per network, tiny width")
    ap.add_argument("--test-limit", type=int, help="score only this many test images (smoke)")
    args = ap.parse_args()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if args.smoke:
        raw["net"]["width"] = 8
        for net in ("base", "specialists", "router", "gates"):
            raw[net]["epochs"] = 1
        CONFIGS["spec_scratch"]["specialists"]["epochs"] = 1
    if args.limit:
        raw["data"].update(limit=args.limit, val_size=args.limit // 10, gate_size=args.limit // 10)
    policy, why = resolve_precision(raw["train"]["precision"])
    keras.mixed_precision.set_global_policy(policy)
    say("precision", f"{policy} ({why})")
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_source(args.source)
    d = raw["data"]
    splits = prepare_splits(
        data.x_train, data.y_train, val_size=d["val_size"], gate_size=d["gate_size"],
        limit=d["limit"], seed=d["split_seed"],
    )  # fmt: skip
    test = (data.x_test[: args.test_limit], data.y_test[: args.test_limit])
    start = time.perf_counter()
    # Bases of every seed first, then each configuration across the seeds: a run cut
    # short by a time limit still has every seed of the configurations it finished.
    runs = [SeedRun(raw, seed, splits, args.smoke) for seed in args.seeds]
    say("bases_s", f"{time.perf_counter() - start:.1f}")
    preds = {run.seed: {"y": test[1]} for run in runs}
    for name in args.configs:
        for run in runs:
            t0 = time.perf_counter()
            metrics, labels = run_config(run, name, CONFIGS[name], test)
            preds[run.seed] |= {f"{name}/{k}": v.astype(np.int8) for k, v in labels.items()}
            np.savez_compressed(args.out / f"preds-{run.seed}.npz", **preds[run.seed])
            line = {"seed": run.seed, "config": name, "seconds": time.perf_counter() - t0}
            with (args.out / "sweep.jsonl").open("a") as f:
                f.write(json.dumps(line | metrics) + "\n")
            say(
                f"seed {run.seed} {name}",
                f"mixture {metrics['mixture_accuracy']:.4f} base {metrics['base_accuracy']:.4f} "
                f"two_bases {metrics['two_bases_control_accuracy']:.4f} "
                f"({line['seconds']:.0f} s)",
            )
    say("sweep_s", f"{time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    main()
