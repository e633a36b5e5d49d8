"""Running a sweep's pairs in one process: every dvc.yaml stage's step in order, each
network reused by its key, timed and costed, and logged to MLflow when it is installed.

:mod:`hmoe.sweep` drives it (in process, or one Ray task per reuse group); Keras is
imported only where a network runs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from hmoe.params import Params, parse_params
from hmoe.sweep_plan import Pair, SweepError, stage_keys
from hmoe.sweep_record import Record

logger = logging.getLogger("hmoe.sweep")

STEPS = ("base", "second_base", "groups", "specialists", "router", "gates", "evaluate")


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


@functools.cache
def _epoch_timer_class() -> type:
    """The callback class, built on first use: importing this module loads no Keras
    (the Ray engine's driver imports it and must not load TensorFlow).
    """
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall time of every epoch (an epoch-level callback: no per-step sync)."""

        def on_train_begin(self, logs=None):
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._t0)

    return EpochTimer


class SweepHooks:
    """Around each network: its epoch times, for images/s after the first (compiling)
    epoch, and its training cost. :meth:`Record.watch` adds its MLflow run, as a DVC
    stage's network has (the attributes below are what that run reads).
    """

    def __init__(self) -> None:
        self.rates, self._timer = {}, None
        self.gmacs: list[float] = []  # training cost of the networks trained since reset
        self.stage, self.params = "", None  # the stage and params training now
        self.splits: dict = {}  # no split files: none is logged as a dataset
        self.outputs: dict = {}  # no network files: none is registered
        self.replicas, self.resumed_at = 1, 0

    def run_name(self, job) -> str:
        """The network's run name, as a DVC stage names it."""
        from hmoe.stage_hooks import StageHooks

        return StageHooks.run_name(self, job)

    @contextlib.contextmanager
    def network(self, job):
        from hmoe.steps.hooks import Fit

        self._timer = _epoch_timer_class()()
        yield Fit([self._timer])

    def finished(self, job, model, summary):
        times = self._timer.times
        steady = times[1:] or times  # the first epoch includes tracing and compiling
        rate = job.n_train * len(steady) / sum(steady) if sum(steady) > 0 else float("nan")
        self.rates[job.name] = rate
        from hmoe.costs import multiply_adds

        passes = job.n_train * summary["epochs_run"]  # image passes (forward + backward)
        self.gmacs.append(passes * multiply_adds(model) / 1e9)
        logger.info(
            "%s: %.0f images/s after compile (first epoch %.1f s)", job.name, rate, times[0]
        )
        return summary


@functools.cache
def _keeping_mixture_class() -> type:
    """The Mixture that keeps the last dense outputs and network probabilities it
    computed, built on first use (:mod:`hmoe.mixture` loads Keras): the evaluate step
    gets one, so the test split's evidence is saved from the very arrays evaluate
    scored, without running the networks a second time.
    """
    from hmoe.mixture import Mixture

    class KeepingMixture(Mixture):
        kept_outputs = None
        kept_network = None

        def outputs(self, x):
            self.kept_outputs = super().outputs(x)
            return self.kept_outputs

        def predict_network(self, model, x):
            self.kept_network = super().predict_network(model, x)
            return self.kept_network

    return KeepingMixture


@dataclass
class Runner:
    """The steps for one configuration x seed, with every network reused by its key."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    record: Record
    cache: dict[tuple, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cost: dict[tuple, tuple[float, float]] = field(default_factory=dict)  # key -> (GMACs, s)
    hooks: SweepHooks | None = None
    evaluated: Any = None  # the last evaluate's (hmoe.evidence.Evaluated): labels, evidence
    reused: bool = False  # whether the last pair reused a network of an earlier one

    def cached(self, stage: str, key: tuple, p: Params, make: Callable[[], Any]) -> Any:
        """``make()`` once per key (seeded as a stage would be), timed, and recorded as
        the stage's MLflow runs: a training stage's networks open their own (as under
        `dvc repro`), any other stage one; a reused step's runs are tagged so.
        """
        step = stage.removeprefix("train_")
        full = (step, *key)
        if full in self.cache:
            self.seconds[step] = 0.0
            self.reused |= stage in NETWORK_STAGES
            extra = {"replicas": self.hooks.replicas} if stage in NETWORK_STAGES else {}
            for name, metrics in _run_metrics(stage, self.cache[full]).items():
                with self.record.stage(name, p, True, extra) as log:
                    log(metrics)
            return self.cache[full]
        import keras

        keras.utils.set_random_seed(p.seed)
        start = time.perf_counter()
        self.hooks.gmacs = []
        own_run = stage not in NETWORK_STAGES
        with self.record.stage(stage, p, False) if own_run else _no_run() as log:
            self.cache[full] = make()
            if own_run:
                log(_run_metrics(stage, self.cache[full])[stage])
        self.seconds[step] = time.perf_counter() - start
        self.cost[full] = (sum(self.hooks.gmacs), self.seconds[step])
        logger.info("%s: %.1f s", step, self.seconds[step])
        return self.cache[full]

    def run(self, p: Params) -> dict[str, Any]:
        """Every stage of dvc.yaml under ``p``, in its order; returns the metrics row.

        Each stage's key is the resolved params it lists plus its upstream stages' keys
        (what DVC hashes), so a network is reused exactly when DVC would reuse it.
        """
        from hmoe.pipeline import read_stages

        self.seconds, self.reused = {}, False
        hooks = self.hooks = self.hooks or SweepHooks()
        hooks.rates, hooks.params = {}, p
        watched = self.record.watch(hooks)
        steps = stage_steps(p, self.splits, watched, self.record.epoch_callbacks())
        stages = read_stages()
        missing = [s.name for s in stages if s.name not in steps]
        if missing:
            raise SweepError(f"dvc.yaml stages with no step in hmoe.sweep: {missing}")
        keys = stage_keys(p, stages)
        done: dict[str, Any] = {}
        for stage in stages:
            hooks.stage = stage.name
            make = functools.partial(steps[stage.name], done)
            done[stage.name] = self.cached(stage.name, keys[stage.name], p, make)
        return self._row(done, keys, hooks)

    def _row(self, done: Mapping[str, Any], keys: Mapping[str, tuple], hooks: SweepHooks) -> dict:
        """The findings row: evaluate's metrics, val figures, times, rates and costs."""
        result, gates, (groups, _) = done["evaluate"], done["train_gates"], done["groups"]
        row = dict(result.metrics)
        self.evaluated = result
        row["best_control"] = result.evaluation.best_control
        row |= {key: gates.summary[name] for key, name in VAL_FIGURES.items()}
        row["groups"] = yaml.safe_dump(groups.to_dict(), default_flow_style=True).strip()
        row |= {f"{s}_s": self.seconds.get(s, 0.0) for s in STEPS}
        # MLflow metric names allow no "@": specialist@natural -> specialist_natural
        row |= {f"{n.replace('@', '_')}_images_per_s": r for n, r in hooks.rates.items()}
        used = [(s.removeprefix("train_"), keys[s]) for s in MIXTURE_NETWORKS]
        gmacs, secs = np.sum([self.cost.get((s, *k), (0.0, 0.0)) for s, k in used], axis=0)
        row["cost_train_gmacs_mixture"], row["cost_train_s_mixture"] = gmacs, secs
        row["cost_train_gmacs_base"] = self.cost.get(("base", *keys["train_base"]), (0.0, 0.0))[0]
        return row


# The findings' val columns, and the gates step's names for them.
VAL_FIGURES = {
    "val_mixture_accuracy": "val_accuracy",
    "val_base_accuracy": "val_base_accuracy",
    "val_hard_accuracy": "val_hard_accuracy",
    "val_soft_accuracy": "val_soft_accuracy",
}


# The stages whose networks the mixture is made of (its training cost).
MIXTURE_NETWORKS = ("train_base", "train_specialists", "train_router")


def stage_steps(
    p: Params,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    hooks: Any,
    gate_callbacks: Sequence[Any] = (),
) -> dict[str, Callable[[Mapping[str, Any]], Any]]:
    """For each dvc.yaml stage, the step its stage module calls, on the results of the
    stages before it (by stage name). The data are prepared once for every configuration.
    """
    from hmoe.evidence import Evaluated, evidence_of
    from hmoe.gates import GateInput
    from hmoe.steps import experts
    from hmoe.steps.evaluate import evaluate
    from hmoe.steps.gates import gate_fit_split, train_gates
    from hmoe.steps.groups import learn_groups

    train, val = splits["train"], splits["val"]

    def mixture(done: Mapping[str, Any], gates: Sequence = ()) -> Any:
        groups = done["groups"][0]
        return _keeping_mixture_class()(
            router=done["train_router"].model,
            base=done["train_base"].model,
            specialists={g: t.model for g, t in done["train_specialists"].items()},
            gates=dict(zip(groups.names, gates, strict=True)) if gates else {},
            groups=groups,
            routing=p.mixture.routing,
            tta=p.mixture.tta,
            gate_input=GateInput(p.gates.inputs),
            router_fusion=p.mixture.router_fusion,
        )

    def second_base(done: Mapping[str, Any]) -> Any:
        if not p.controls.second_base:
            return None  # the stage writes only a note
        return experts.train_base(p, train, val, second=True, hooks=hooks)

    def gates(done: Mapping[str, Any]) -> Any:
        fit = gate_fit_split(p.gates.fit_on, splits["gate"], train)
        groups = done["groups"][0]
        return train_gates(p, groups, mixture(done), fit, val, callbacks=list(gate_callbacks))

    def evaluated(done: Mapping[str, Any]) -> Evaluated:
        second, gates = done["train_second_base"], done["train_gates"]
        second_model = None if second is None else second.model
        mixed = mixture(done, gates.gates)
        result = evaluate(mixed, splits["test"], second_base=second_model, seed=p.seed)
        return evidence_of(mixed, result, gates, val, second_model, splits["test"][1])

    def network(train_one: Callable[..., Any]) -> Callable[[Mapping[str, Any]], Any]:
        def step(done: Mapping[str, Any]) -> Any:
            groups = done["groups"][0]
            base = done["train_base"].model
            return train_one(p, groups, train, val, base=base, hooks=hooks)

        return step

    return {
        "prepare": lambda done: splits,
        "train_base": lambda done: experts.train_base(p, train, val, hooks=hooks),
        "train_second_base": second_base,
        "groups": lambda done: learn_groups(p, done["train_base"].model, val),
        "train_specialists": network(experts.train_specialists),
        "train_router": network(experts.train_router),
        "train_gates": gates,
        "evaluate": evaluated,
    }


@contextlib.contextmanager
def _no_run() -> Iterator[None]:
    yield None


def _run_metrics(stage: str, value: Any) -> dict[str, dict[str, Any]]:
    """The MLflow runs a step's result stands for, by run name, with the metrics its
    stage module logs: evaluate's figures, a trained network's or the gates' final
    epoch (``final_*``); none for a stage that trained nothing (the second base when
    the control is off).
    """
    if value is None:
        return {}
    if stage == "prepare":  # split -> (x, y)
        return {stage: {f"{name}_images": len(y) for name, (_, y) in value.items()}}
    if isinstance(value, dict) and stage == "train_specialists":  # group -> Trained
        return {f"{stage}@{g}": _finals(t) for g, t in value.items()}
    metrics = getattr(value, "metrics", None)
    if isinstance(metrics, Mapping):
        return {stage: dict(metrics)}
    return {stage: _finals(value)}


def _finals(value: Any) -> dict[str, Any]:
    summary = getattr(value, "summary", None)
    return {f"final_{k}": v for k, v in (summary or {}).items()}


# The stages whose networks open their own runs (their stage modules use observer.watch).
NETWORK_STAGES = ("train_base", "train_second_base", "train_specialists", "train_router")


def prepare_data(
    raw: Mapping[str, Any],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """The splits every configuration shares (the `data` section must not vary), and
    the source's digest (what `prepare` records in reports/data.json under DVC).
    """
    from hmoe import edge
    from hmoe.data import load_source
    from hmoe.steps.data import prepare

    p = parse_params(raw)
    prepared = prepare(load_source(edge.resolve_source(p.data.source)), p.data)
    return prepared.splits, str(prepared.report.get("digest") or "")


def run_pair(
    runner: Runner,
    pair: Pair,
    provenance: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One configuration x seed under its MLflow parent run; returns its findings row
    (its evaluation, labels and evidence, stays in ``runner.evaluated``).
    """
    from hmoe import runtime

    p, t0 = pair.params, time.perf_counter()
    runtime.setup(p)  # this configuration's precision and compilation
    with runner.record.pair(pair, tags):
        row = {"config": pair.config, "seed": p.seed, **runner.run(p), **provenance}
        row["wall_s"] = time.perf_counter() - t0
        runner.record.finish(row, row["best_control"], runner.reused)
    return row
