"""Running a sweep's pairs in one process: every dvc.yaml stage's step in order, each
network reused by its key, timed and costed, and logged to MLflow when it is installed.

:mod:`hmoe.sweep` drives it (in process, or one Ray task per reuse group); Keras is
imported only where a network runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hmoe import paths
from hmoe.params import Params, parse_params
from hmoe.profile import dotted
from hmoe.sweep_plan import Pair, SweepError, stage_keys

logger = logging.getLogger("hmoe.sweep")

STEPS = ("base", "second_base", "groups", "specialists", "router", "gates", "evaluate")


class Log:
    """MLflow when importable (parent per configuration x seed, child per step), else
    nothing: the device machines have no MLflow, and the sweep must still run there.

    ``sweep_id`` names the sweep (its host and output folder, :func:`sweep_id`): a
    parent of the same sweep, configuration and seed still RUNNING when the pair starts
    again belongs to a process that was killed outright (SIGKILL, a lost node; a Ray
    retry), and is marked KILLED.
    """

    def __init__(self, experiment: str, enabled: bool = True, sweep_id: str = "") -> None:
        self.mlflow, self.experiment_id, self.sweep_id = None, "", sweep_id
        if not enabled:
            return
        try:
            import mlflow
        except ImportError:
            logger.info("MLflow is not installed: the sweep is logged to its folder only")
            return
        from hmoe import tracking

        self.experiment_id = tracking.setup(experiment, paths.repo_root())
        self.mlflow = mlflow

    @contextlib.contextmanager
    def parent(
        self,
        config: str,
        seed: int,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[None]:
        if self.mlflow is None:
            yield
            return
        tags = {"sweep": "true", "sweep_config": config, "seed": str(seed), **(tags or {})}
        if self.sweep_id:
            tags["sweep_id"] = self.sweep_id
            killed = self._mark_killed(config, seed)
            if killed:
                tags["resumes_runs"] = ",".join(killed)
        with self.mlflow.start_run(run_name=f"{config}-s{seed}", tags=tags):
            self.mlflow.log_params({k: v for k, v in params.items() if len(str(v)) < 500})
            yield

    def _mark_killed(self, config: str, seed: int) -> list[str]:
        """This sweep's RUNNING parents of (config, seed): their process died unannounced."""
        client = self.mlflow.tracking.MlflowClient()
        found = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.sweep_id = '{self.sweep_id}' and tags.sweep_config = "
            f"'{config}' and tags.seed = '{seed}' and attributes.status = 'RUNNING'",
        )
        for run in found:
            steps = client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}' "
                "and attributes.status = 'RUNNING'",
            )
            for dead in [*steps, run]:  # the step it was in, then the pair
                client.set_terminated(dead.info.run_id, "KILLED")
            logger.warning(
                "%s seed %d: run %s was killed; marked KILLED", config, seed, run.info.run_id
            )
        return [r.info.run_id for r in found]

    @contextlib.contextmanager
    def step(self, name: str, reused: bool) -> Iterator[None]:
        if self.mlflow is None:
            yield
            return
        tags = {"sweep": "true", "step": name, "reused": str(reused).lower()}
        with self.mlflow.start_run(run_name=name, nested=True, tags=tags):
            yield

    def metrics(self, values: Mapping[str, float]) -> None:
        """Log what is finite; a logging failure is a warning, never a lost sweep."""
        if self.mlflow is None:
            return
        finite = {k: float(v) for k, v in values.items() if np.isfinite(float(v))}
        try:
            self.mlflow.log_metrics(finite)
        except Exception as err:  # the findings are written to the folder regardless
            logger.warning("MLflow did not take the metrics (%s)", err)


def sweep_id(out: Path) -> str:
    """A sweep's identity in MLflow: the driver's host and output folder, hashed (a
    rerun into the same folder is the same sweep; another user's is not).
    """
    where = f"{socket.gethostname()}:{out.resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


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
    epoch; and per-epoch metrics to MLflow when the sweep logs there.
    """

    def __init__(self, log: Log) -> None:
        self.log, self.rates, self._timer = log, {}, None
        self.gmacs: list[float] = []  # training cost of the networks trained since reset

    @contextlib.contextmanager
    def network(self, job):
        from hmoe.steps.hooks import Fit

        self._timer = _epoch_timer_class()()
        callbacks = [self._timer]
        if self.log.mlflow is not None:
            from hmoe.tracking import epoch_logger

            callbacks.append(epoch_logger())
        yield Fit(callbacks)

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
    log: Log
    cache: dict[tuple, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cost: dict[tuple, tuple[float, float]] = field(default_factory=dict)  # key -> (GMACs, s)
    hooks: SweepHooks | None = None
    evaluated: Any = None  # the last evaluate's (hmoe.evidence.Evaluated): labels, evidence

    def cached(self, step: str, key: tuple, seed: int, make: Callable[[], Any]) -> Any:
        """``make()`` once per key (seeded as a stage would be), timed and logged."""
        full = (step, *key)
        reused = full in self.cache
        with self.log.step(step, reused):
            if not reused:
                import keras

                keras.utils.set_random_seed(seed)
                start = time.perf_counter()
                if self.hooks is not None:
                    self.hooks.gmacs = []
                self.cache[full] = make()
                self.seconds[step] = time.perf_counter() - start
                gmacs = sum(self.hooks.gmacs) if self.hooks is not None else 0.0
                self.cost[full] = (gmacs, self.seconds[step])
                logger.info("%s: %.1f s", step, self.seconds[step])
            else:
                self.seconds[step] = 0.0
            self.log.metrics({"wall_s": self.seconds[step], **_summary(self.cache[full])})
        return self.cache[full]

    def run(self, p: Params) -> dict[str, Any]:
        """Every stage of dvc.yaml under ``p``, in its order; returns the metrics row.

        Each stage's key is the resolved params it lists plus its upstream stages' keys
        (what DVC hashes), so a network is reused exactly when DVC would reuse it.
        """
        from hmoe.pipeline import read_stages

        self.seconds = {}
        hooks = self.hooks = self.hooks or SweepHooks(self.log)
        hooks.rates = {}
        steps = stage_steps(p, self.splits, hooks)
        stages = read_stages()
        missing = [s.name for s in stages if s.name not in steps]
        if missing:
            raise SweepError(f"dvc.yaml stages with no step in hmoe.sweep: {missing}")
        keys = stage_keys(p, stages)
        done: dict[str, Any] = {}
        for stage in stages:
            step = stage.name.removeprefix("train_")
            make = functools.partial(steps[stage.name], done)
            done[stage.name] = self.cached(step, keys[stage.name], p.seed, make)
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
    p: Params, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], hooks: SweepHooks
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
        return train_gates(p, done["groups"][0], mixture(done), fit, val)

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


def _summary(value: Any) -> dict[str, float]:
    """Numbers worth logging from what a step returned."""
    summary = getattr(value, "summary", None) or getattr(value, "metrics", None)
    if isinstance(value, dict):  # specialists: group -> Trained
        return {
            f"{g}_{k}": float(v)
            for g, t in value.items()
            for k, v in getattr(t, "summary", {}).items()
        }
    if isinstance(summary, Mapping):
        return {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
    return {}


def prepare_data(raw: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The splits every configuration shares (the `data` section must not vary)."""
    from hmoe import edge
    from hmoe.data import load_source
    from hmoe.steps.data import prepare

    p = parse_params(raw)
    return prepare(load_source(edge.resolve_source(p.data.source)), p.data).splits


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
    flat = dotted(pair.overrides) | {"seed": p.seed}
    with runner.log.parent(pair.config, p.seed, flat, tags):
        row = {"config": pair.config, "seed": p.seed, **runner.run(p), **provenance}
        row["wall_s"] = time.perf_counter() - t0
        runner.log.metrics({k: v for k, v in row.items() if _is_number(v)})
    return row


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
