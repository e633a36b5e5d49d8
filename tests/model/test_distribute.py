"""`train.distribute: mirrored` trains the real network under tf.distribute's
MirroredStrategy, here over two logical CPU devices (how multi-GPU data parallelism
is exercised without GPUs). A fresh process: devices are fixed when TF starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.model

SCRIPT = """
import dataclasses, json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from hmoe.distribute import replica_devices, training_scope
from hmoe.metrics import summarise_history
from hmoe.recipe import build_network, fit_classifier
from hmoe.params import load_params
from tests.support.synthetic import make_images

p = load_params("params.yaml")
cfg = dataclasses.replace(p.base, epochs=2, batch_size=32, lookahead=True)
arch = dataclasses.replace(p.net, width=4)
x, y = make_images(16, seed=0)
keras.utils.set_random_seed(0)
with training_scope("mirrored") as replicas:
    model = build_network(10, arch, cfg, seed=0, name="base", whitening_images=x)
    history = fit_classifier(model, (x, y), (x[:40], y[:40]), cfg)
    summary = summarise_history(history.history, monitor="val_accuracy", mode="max")
    kinds = {type(w.value).__name__ for w in model.trainable_weights}
probs = model.predict(x[:8], verbose=0)
with training_scope("none") as single:  # same two devices, no strategy: plain variables
    plain = build_network(10, arch, cfg, seed=0, name="base", whitening_images=x)
    plain_kinds = {type(w.value).__name__ for w in plain.trainable_weights}
print(json.dumps({
    "replicas": replicas, "auto_devices": replica_devices("auto"), "kinds": sorted(kinds),
    "epochs": summary["epochs_run"], "val_loss": summary["val_loss"],
    "rows": float(np.abs(probs.sum(axis=1) - 1).max()),
    "single": single, "single_kinds": sorted(plain_kinds),
}))
"""


def _run() -> dict:
    env = os.environ | {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mirrored_trains_over_two_logical_devices_and_none_builds_on_one():
    """One process for both settings (its TensorFlow start is most of the cost)."""
    got = _run()
    assert got["replicas"] == 2
    assert any("Mirrored" in k for k in got["kinds"]), got["kinds"]
    assert got["epochs"] == 2 and got["val_loss"] == got["val_loss"]  # finite, not NaN
    assert got["rows"] < 1e-4
    assert got["auto_devices"] == []  # auto mirrors only over 2+ GPUs
    assert got["single"] == 1
    assert not any("Mirrored" in k for k in got["single_kinds"]), got["single_kinds"]


JAX_SCRIPT = """
import dataclasses, json
import keras, numpy as np
from hmoe.distribute import replica_devices, training_scope
from hmoe.metrics import summarise_history
from hmoe.recipe import build_network, fit_classifier
from hmoe.params import load_params
from tests.support.synthetic import make_images

p = load_params("params.yaml")
cfg = dataclasses.replace(p.base, epochs=2, batch_size=32, lookahead=True)
arch = dataclasses.replace(p.net, width=4)
x, y = make_images(16, seed=0)
keras.utils.set_random_seed(0)
with training_scope("mirrored") as replicas:
    model = build_network(10, arch, cfg, seed=0, name="base", whitening_images=x)
    history = fit_classifier(model, (x, y), (x[:40], y[:40]), cfg, jit_compile=True)
    summary = summarise_history(history.history, monitor="val_accuracy", mode="max")
    shards = len(model.trainable_weights[0].value.sharding.device_set)
probs = model.predict(x[:8], verbose=0)
print(json.dumps({
    "replicas": replicas, "auto_devices": replica_devices("auto"), "shards": shards,
    "epochs": summary["epochs_run"], "val_loss": summary["val_loss"],
    "rows": float(np.abs(probs.sum(axis=1) - 1).max()),
}))
"""


def test_jax_data_parallel_trains_over_two_cpu_devices():
    """`train.distribute` on JAX: keras.distribution.DataParallel over two host devices."""
    from tests.support.tiers import JAX_INSTALL, has_module, need

    need(has_module("jax"), JAX_INSTALL)
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    proc = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["replicas"] == 2 and got["shards"] == 2  # weights replicated on both
    assert got["epochs"] == 2 and got["val_loss"] == got["val_loss"]
    assert got["rows"] < 1e-4
    assert got["auto_devices"] == []  # auto: only over 2+ GPUs
