"""One training step of the base, timed by kind of work, beside the framework's own
convolution rate for exactly this network's convolutions (the roofline).

    python bench/profile_step.py [--precision mixed_bfloat16] [--batch 512] [--reps 10]

TensorFlow only (the stages' backend on CPU). Each kind of work is timed on its own, as
compiled functions over the shapes the base has at ``--batch`` images: the whole step
(``train_on_batch``: forward, backward, optimizer and lookahead), the host's batch
(indexing and one-hot labels), the augmentation layer, every convolution forward and
backward, BatchNorm, activations and pooling forward and backward, the dtype casts
around the float32 BatchNorm, and the optimizer's update alone. "rest" is the step
minus the sum of the parts run inside it: what the parts do not explain (framework
overhead, serial sections, work the separate timings cannot see); it can be negative
where the step fuses or overlaps what the parts run apart. Times are medians of
``--reps`` calls after a warm-up, in wall ms and CPU ms (both cores count). Run it on
an idle machine; it prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from hmoe.costs import multiply_adds
from hmoe.edge.runtime import machine
from hmoe.params import load_params
from hmoe.recipe import build_network, make_optimizer
from hmoe.resume import EpochBatches


def timed(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms) of ``fn()`` after two warm-up calls."""
    for _ in range(2):
        _sync(fn())
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        _sync(fn())
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return 1000 * float(np.median(walls)), 1000 * float(np.median(cpus))


def _sync(out: object) -> None:
    """Wait for the result (TF's eager results are ready; fetch one value to be sure)."""
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()
            return


def fwd_bwd(layer: keras.layers.Layer, x: tf.Tensor, training: bool = True) -> Callable:
    """A compiled forward and backward pass of one layer (gradients to input and weights)."""

    @tf.function(jit_compile=False)
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(tf.cast(y, tf.float32))
        return tape.gradient(loss, [x, *layer.trainable_weights])

    return lambda: run(x)


def forward(layer: keras.layers.Layer, x: tf.Tensor) -> Callable:
    run = tf.function(lambda x: layer(x, training=False), jit_compile=False)
    return lambda: run(x)


def layer_inputs(model: keras.Model, x: np.ndarray) -> dict[str, tf.Tensor]:
    """Each layer's input on a batch (one forward pass through a multi-output model)."""
    names = [layer.name for layer in model.layers[1:]]
    probe = keras.Model(model.inputs, [model.get_layer(n).input for n in names])
    return dict(zip(names, probe(x, training=True), strict=True))


def profile(args: argparse.Namespace) -> None:
    p = load_params()
    keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = args.batch * 4
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    cfg = p.base
    model = build_network(10, p.net, cfg, seed=0, name="base", whitening_images=x)
    batches = EpochBatches(x, y, args.batch, 10, 0)
    steps = 10 * len(batches)
    model.compile(
        optimizer=make_optimizer(cfg, steps, 1),  # lookahead due from step 2: it runs
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        jit_compile=args.jit,
    )
    xb, yb = batches[0]
    rows: dict[str, tuple[float, float]] = {}
    rows["step"] = timed(lambda: model.train_on_batch(xb, yb, return_dict=True), args.reps)
    rows["input batches (host)"] = timed(lambda: batches[1], args.reps)

    inputs = layer_inputs(model, xb)
    kinds = {
        "convolutions (fwd + bwd)": keras.layers.Conv2D,
        "BatchNorm (fwd + bwd)": keras.layers.BatchNormalization,
        "activations (fwd + bwd)": keras.layers.Activation,
        "pooling (fwd + bwd)": (keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling2D),
    }
    conv_fwd = {}
    for label, kind in kinds.items():
        total = np.zeros(2)
        for layer in model.layers:
            if isinstance(layer, kind):
                total += timed(fwd_bwd(layer, inputs[layer.name]), args.reps)
                if label.startswith("convolutions"):
                    conv_fwd[layer.name] = layer
        rows[label] = tuple(total)
    aug = model.get_layer("augment")
    aug_run = tf.function(lambda t: aug(t, training=True))
    rows["augmentation"] = timed(lambda: aug_run(inputs["augment"]), args.reps)
    rows["casts around float32 BatchNorm"] = _cast_time(model, inputs, args.reps)
    rows["optimizer + lookahead"] = _optimizer_time(model, args.reps)
    parts = sum(np.array(v) for k, v in rows.items() if k not in ("step", "input batches (host)"))
    rows["rest (step - parts inside it)"] = tuple(np.array(rows["step"]) - parts)
    _print_table(rows, args)
    _roofline(model, conv_fwd, inputs, rows["step"], args)


def _cast_time(model: keras.Model, inputs: dict, reps: int) -> tuple[float, float]:
    """bfloat16 -> float32 into each BatchNorm and float32 -> bfloat16 after it, with
    their gradients (zero under float32, where there is nothing to cast)."""
    compute = keras.mixed_precision.global_policy().compute_dtype
    if compute == "float32":
        return 0.0, 0.0
    total = np.zeros(2)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            t = tf.cast(inputs[layer.name], compute)

            @tf.function
            def run(t):
                with tf.GradientTape() as tape:
                    tape.watch(t)
                    back = tf.cast(tf.cast(t, tf.float32) * 1.0, compute)
                    loss = tf.reduce_sum(tf.cast(back, tf.float32))
                return tape.gradient(loss, t)

            total += timed(lambda run=run, t=t: run(t), reps)
    return tuple(total)


def _optimizer_time(model: keras.Model, reps: int) -> tuple[float, float]:
    """The optimizer's update (momentum, weight decay, the schedule and the lookahead
    conditional) on gradients of the weights' shapes, compiled as in the step."""
    opt = model.optimizer
    variables = model.trainable_variables
    grads = [tf.ones_like(v) * 1e-4 for v in variables]

    @tf.function
    def run():
        opt.apply(grads, variables)
        return opt.iterations

    return timed(run, reps)


def _print_table(rows: dict[str, tuple[float, float]], args: argparse.Namespace) -> None:
    step_wall, step_cpu = rows["step"]
    print(f"[{machine()}] {args.precision}, batch {args.batch}, compiled={args.jit}, "
          f"TensorFlow {tf.__version__}, median of {args.reps}")  # fmt: skip
    print("| work | wall ms/step | share of step | CPU ms/step | cores busy |")
    print("|---|---|---|---|---|")
    for name, (wall, cpu) in rows.items():
        share = wall / step_wall if name != "step" else 1.0
        busy = cpu / wall if wall > 0 else float("nan")
        print(f"| {name} | {wall:.1f} | {100 * share:.0f} % | {cpu:.1f} | {busy:.2f} |")
    print(f"images/s: {1000 * args.batch / step_wall:.0f} wall, "
          f"{1000 * args.batch / step_cpu:.0f} per CPU-s")  # fmt: skip


def _roofline(model, convs: dict, inputs: dict, step: tuple[float, float], args) -> None:
    """The framework's forward convolution rate on this network's convolutions, in both
    precisions, against the step's achieved rate (3 x the forward multiply-adds: forward,
    backward to inputs, backward to weights)."""
    macs = multiply_adds(model) * args.batch
    conv_macs = sum(_conv_macs(layer, inputs[layer.name]) for layer in convs.values())
    print(f"forward: {macs / args.batch / 1e6:.1f} M multiply-adds an image, "
          f"{100 * conv_macs / macs:.0f} % in the convolutions")  # fmt: skip
    achieved = 2 * 3 * macs / (step[0] / 1000) / 1e9
    achieved_cpu = 2 * 3 * macs / (step[1] / 1000) / 1e9
    print("| convolutions forward | GFLOP/s wall | GFLOP per CPU-s |")
    print("|---|---|---|")
    rates = {}
    for dtype in ("bfloat16", "float32"):
        wall = cpu = 0.0
        for layer in convs.values():
            kernel = tf.cast(layer.kernel, dtype)
            x = tf.cast(inputs[layer.name], dtype)
            run = tf.function(lambda x, k=kernel: tf.nn.conv2d(x, k, 1, "SAME"))
            w, c = timed(lambda run=run, x=x: run(x), args.reps)
            wall, cpu = wall + w, cpu + c
        rates[dtype] = (2 * conv_macs / (wall / 1000) / 1e9, 2 * conv_macs / (cpu / 1000) / 1e9)
        print(f"| {dtype} | {rates[dtype][0]:.0f} | {rates[dtype][1]:.0f} |")
    ref = "bfloat16" if "bfloat16" in args.precision else "float32"
    print(f"training step: {achieved:.0f} GFLOP/s wall, {achieved_cpu:.0f} GFLOP per CPU-s: "
          f"{100 * achieved / rates[ref][0]:.0f} % of the {ref} convolution rate (wall), "
          f"{100 * achieved_cpu / rates[ref][1]:.0f} % per CPU-s")  # fmt: skip


def _conv_macs(layer: keras.layers.Conv2D, x: tf.Tensor) -> float:
    n, h, w, c = x.shape
    kh, kw, _, f = layer.kernel.shape
    return float(n * h * w * c * kh * kw * f)


def main() -> None:
    warnings.filterwarnings("ignore", message="The structure of `inputs`")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="mixed_bfloat16")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--jit", action="store_true", help="compile the step with XLA")
    args = ap.parse_args()
    if not args.jit:
        tf.config.experimental.enable_op_determinism()  # as the stages run on CPU
    profile(args)


if __name__ == "__main__":
    main()
