"""Training images/s of one network of the recipe, per wall second and per CPU second.

    python bench/train_speed.py [--images 8192] [--epochs 4] [--width 64] [--precision float32]
                                [--jit-compile auto|true|false] [--op-determinism on|off]

Random images (speed only), the base's recipe from params.yaml (lookahead on from
epoch 2), TensorFlow op determinism as in the stages (``--op-determinism off``
measures what it costs). Prints one line per epoch and the
mean over the epochs after the first (tracing, warm-up), prefixed with the CPU, then the
whole fit: wall and CPU seconds, cores busy on average. Images per CPU second measures
the step's own speed; the wall rate also counts idle time (issue 34 found seconds of it
at every epoch's end, from tf.data's autotuning: :mod:`hmoe.feed`). Run it on an idle
machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from hmoe.edge.runtime import machine, setup
from hmoe.params import load_params
from hmoe.recipe import build_network, fit_classifier


class Timer(keras.callbacks.Callback):
    def __init__(self, n: int):
        super().__init__()
        self.n, self.rows = n, []

    def on_epoch_begin(self, epoch, logs=None):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.rows.append((self.n / wall, self.n / cpu))
        print(f"[{CPU}] epoch {epoch}: {self.n / wall:.0f} images/s, "
              f"{self.n / cpu:.0f} images per CPU-s", flush=True)  # fmt: skip


CPU = machine()  # the CPU model and its AVX-512 / bf16 flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto")
    ap.add_argument("--op-determinism", choices=("on", "off"), default="on")
    args = ap.parse_args()
    jit_compile = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    p = load_params()
    train = dataclasses.replace(p.train, precision=args.precision, jit_compile=jit_compile)
    p = dataclasses.replace(p, seed=0, train=train)
    _, _, jit, _ = setup(p)  # as a stage runs: seeds, determinism, precision
    if args.op_determinism == "off" and keras.backend.backend() == "tensorflow":
        # no public switch back: tf.config.experimental has only enable_op_determinism
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
    cfg = dataclasses.replace(p.base, epochs=args.epochs)
    arch = p.net if args.width is None else dataclasses.replace(p.net, width=args.width)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, args.images)
    model = build_network(10, arch, cfg, seed=0, name="base", whitening_images=x)
    timer = Timer(args.images)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fit_classifier(model, (x, y), (x[:512], y[:512]), cfg, callbacks=[timer], jit_compile=jit,
                   verbose=0)  # fmt: skip
    fit_wall, fit_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    wall, per_cpu = np.mean(timer.rows[1:], axis=0)
    print(
        f"[{CPU}] {keras.backend.backend()} {args.precision} compiled={jit} "
        f"op determinism {args.op_determinism}, width {arch.width}: {wall:.0f} images/s, "
        f"{per_cpu:.0f} images per CPU-s "
        f"(mean of epochs 2..{args.epochs}, {args.images} images each)"
    )
    # The whole fit, epoch ends included: where an input pipeline's teardown idles the
    # process (issue 34), the epochs' own rates miss it and the cores-busy figure shows it.
    print(
        f"[{CPU}] whole fit: {fit_wall:.1f} s wall, {fit_cpu:.1f} CPU-s, "
        f"{fit_cpu / fit_wall:.2f} cores busy, "
        f"{args.images * args.epochs / fit_wall:.0f} images/s"
    )


if __name__ == "__main__":
    main()
