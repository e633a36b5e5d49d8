"""Running a sweep's pairs in one process: dvc.yaml's stages in its order, each the
stage's own function (:func:`hmoe.edge.run.run_stage`) on an in-memory store, its
outputs reused by the stage's key, timed and costed, and recorded in MLflow when it is
installed.

:mod:`hmoe.sweep` drives it (in process, or one Ray task per reuse group); Keras is
imported only where a network runs. No stage is named here: what a stage does is its
module's, and which stages there are is dvc.yaml's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hmoe import modelset, paths
from hmoe.edge.run import Logged, NoObserver, run_stage
from hmoe.edge.store import MemoryStore
from hmoe.observer.sweep import Record
from hmoe.params import Params, parse_params
from hmoe.pipeline import read_stages
from hmoe.sweep_plan import Pair, stage_keys

logger = logging.getLogger("hmoe.sweep")


def set_threads(n: int | None) -> None:
    """Size TensorFlow's intra- and inter-op thread pools to ``n`` CPUs.

    TensorFlow ignores OMP_NUM_THREADS and starts a pool per core of the machine, so a
    task given one CPU of a shared node would run on all of them; and the thread count
    can change the order of a reduction, so runs compared number for number need the
    same one. Must run before TensorFlow's first op; other backends are left as they are.
    """
    if not n:
        return
    import keras

    if keras.backend.backend() != "tensorflow":
        logger.warning(
            "thread count %d applies to TensorFlow only; %s keeps its own",
            n, keras.backend.backend(),
        )  # fmt: skip
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)
    logger.info("TensorFlow: %d intra-op and %d inter-op threads", n, n)


@dataclass(frozen=True)
class Done:
    """One stage's run, kept for every pair with the same key: what it wrote and logged,
    the networks it trained (images/s, GMACs, file) and its wall seconds.
    """

    name: str
    key: tuple
    written: dict[Path, Any]
    logged: dict[str, Logged]
    networks: dict[str, dict[str, Any]]
    seconds: float


@dataclass
class Runner:
    """Every stage for one configuration x seed, each reused by its key."""

    prepared: Done  # the data, prepared once for every configuration
    record: Record
    cache: dict[tuple, Done] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # the last pair's labels, evidence
    reused: bool = False  # whether the last pair reused a network of an earlier one

    def __post_init__(self) -> None:
        self.cache[self.prepared.key] = self.prepared  # every pair of the sweep reuses it

    def run(self, p: Params) -> dict[str, Any]:
        """Every stage of dvc.yaml under ``p``, in its order; returns the metrics row.

        Each stage's key is the resolved params it lists plus its upstream stages' keys
        (what DVC hashes), so a stage is reused exactly when DVC would reuse it.
        """
        stages = read_stages()
        keys = stage_keys(p, stages)
        store, done, self.reused = MemoryStore(), [], False
        observer = self.record.observer or NoObserver()
        for stage in stages:
            full = (stage.name, *keys[stage.name])
            if full in self.cache:
                ran = self.cache[full]
                store.values.update(ran.written)
                self.reused |= bool(ran.networks)
                self.record.replay(p, ran.logged)
                done.append((ran, 0.0))
                continue
            start = time.perf_counter()
            finished = run_stage(stage.name, p, store, observer, {"reused": "false"})
            seconds = time.perf_counter() - start
            ran = Done(
                stage.name, full, finished.written, finished.logged, finished.networks, seconds
            )
            self.cache[full] = ran
            done.append((ran, seconds))
        self.files = {
            "labels": store.values[paths.LABELS],
            "evidence": store.values[paths.EVIDENCE],
        }
        return _row(store, done)


def _row(store: MemoryStore, done: list[tuple[Done, float]]) -> dict[str, Any]:
    """The findings row: evaluate's figures, the gates' val figures, each stage's
    seconds (0: reused), each network's images/s, and the training costs.
    """
    details = dict(store.read(paths.EVAL_DETAILS))
    best = details.pop("best_control")
    row = dict(store.read(paths.METRICS)) | details
    row["best_control"] = best
    gates = store.read(paths.GATES_METRICS)
    row |= {key: gates[name] for key, name in VAL_FIGURES.items()}
    groups = store.read(paths.GROUPS)["groups"]
    row["groups"] = yaml.safe_dump(groups, default_flow_style=True).strip()
    row |= {f"{ran.name.removeprefix('train_')}_s": seconds for ran, seconds in done}
    networks = {n: v for ran, _ in done for n, v in ran.networks.items()}
    # MLflow metric names allow no "@": specialist@natural -> specialist_natural
    row |= {f"{n.replace('@', '_')}_images_per_s": v["images_per_s"] for n, v in networks.items()}
    mixture = set(modelset.model_files(list(groups)).values())
    used = [ran for ran, _ in done if any(v["model"] in mixture for v in ran.networks.values())]
    row["cost_train_gmacs_mixture"] = sum(
        v["gmacs"] for v in networks.values() if v["model"] in mixture
    )
    row["cost_train_s_mixture"] = sum(ran.seconds for ran in used)
    base = [v["gmacs"] for v in networks.values() if v["model"] == paths.BASE_MODEL]
    row["cost_train_gmacs_base"] = sum(base)
    return row


# The findings' val columns, and the gates' metrics they come from.
VAL_FIGURES = {
    "val_mixture_accuracy": "val_accuracy",
    "val_base_accuracy": "val_base_accuracy",
    "val_hard_accuracy": "val_hard_accuracy",
    "val_soft_accuracy": "val_soft_accuracy",
}


def prepare_data(raw: Mapping[str, Any]) -> tuple[Done, str]:
    """The data every configuration shares (the `data` section must not vary): the
    first stage of dvc.yaml (which reads the source, and nothing another stage wrote)
    run once, in memory; and the source's digest.
    """
    p = parse_params(raw)
    first = read_stages()[0]
    start = time.perf_counter()
    finished = run_stage(first.name, p, MemoryStore())
    key = (first.name, *stage_keys(p, read_stages())[first.name])
    prepared = Done(
        first.name, key, finished.written, finished.logged, {}, time.perf_counter() - start
    )
    digest = MemoryStore(finished.written).read(paths.DATA_REPORT).get("digest") or ""
    return prepared, str(digest)


def test_labels(prepared: Done) -> np.ndarray:
    """The test split's labels (what each row's saved labels are scored against)."""
    return prepared.written[paths.TEST][1]


def run_pair(
    runner: Runner,
    pair: Pair,
    provenance: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One configuration x seed under its MLflow parent run; returns its findings row
    (its test labels and evidence stay in ``runner.files``).
    """
    p, t0 = pair.params, time.perf_counter()
    with runner.record.pair(pair, tags):
        row = {"config": pair.config, "seed": p.seed, **runner.run(p), **provenance}
        row["wall_s"] = time.perf_counter() - t0
        runner.record.finish(row, runner.reused)
    return row
