"""Sweep configurations x seeds through the pipeline's own steps, in one process.

    python -m hmoe.sweep sweeps/hierarchy.yaml --seeds 3 --out sweeps/out

The file names a base profile (overrides of params.yaml), optional further params,
the reference configuration and the configurations, each a set of params overrides::

    profile: profiles/quick.yaml      # optional
    params: {data: {limit: 20000}}    # optional, on top of the profile
    reference: default                # the configuration the others are compared with
    seeds: 3                          # optional; --seeds wins
    configurations:
      default: {}
      finetuned: {specialists: {start: base, epochs: 2, learning_rate: 0.2}}

Every configuration x seed runs the steps the DVC stages run (:mod:`hmoe.steps`):
prepare, base, groups, specialists, router, gates, evaluate. A network whose params
are identical across configurations (the same seed's base, say) is trained once and
reused, as DVC's run cache would. With MLflow importable, each configuration x seed is
a parent run tagged ``sweep`` with a child per step. The output folder gets
``findings.csv`` (one row per configuration x seed, written as each finishes: a
rerun skips the rows already there), beside each row its test labels (``labels/``) and
every network's per-image probabilities on val and test (``evidence/``,
:mod:`hmoe.evidence`), and ``findings.md`` and ``findings.png``, computed from those
files by :mod:`hmoe.findings` (``python -m hmoe.findings OUT`` rebuilds them): per
configuration the mean ± sd of each accuracy and control over seeds, the paired
differences against the reference and against two bases with t-intervals across seeds,
per seed McNemar, accuracy against inference cost with the confidence cascades'
frontier, and the gates against fixed 1/2 gates. Only the test split of the steps'
evaluate is scored; it chooses nothing.

``--engine ray`` runs the same pairs as Ray tasks (:mod:`hmoe.sweep_ray`, docs/team.md):
one task per reuse group (the pairs that share a network), so every network is still
trained once; this process only plans, prepares the splits and writes the rows. At the
same TensorFlow thread count (``--threads`` here, ``--cpus-per-task`` there) the
numbers are the in-process run's, bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from hmoe import paths
from hmoe.data.storage import atomic_write
from hmoe.findings import write_findings
from hmoe.params import Params, ParamsError, parse_params
from hmoe.profile import dotted, merged

logger = logging.getLogger("hmoe.sweep")

STEPS = ("base", "second_base", "groups", "specialists", "router", "gates", "evaluate")


class SweepError(ValueError):
    """A bad sweep file or option; the message names the key and the fix."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file: the raw params every configuration starts from, and each
    configuration's overrides (validated: a misspelt key fails before any training).
    """

    raw: dict[str, Any]
    configurations: dict[str, dict[str, Any]]
    reference: str
    seeds: int


def load_spec(path: Path, seeds: int | None = None) -> SweepSpec:
    """Read and validate a sweep file against params.yaml (and its profile)."""
    if not path.is_file():
        raise SweepError(f"sweep file {path} not found")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - {"profile", "params", "reference", "seeds", "configurations"})
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r}")
    raw = yaml.safe_load(paths.PARAMS.read_text())
    if spec.get("profile"):
        raw = merged(raw, yaml.safe_load(Path(spec["profile"]).read_text()) or {})
    raw = merged(raw, spec.get("params") or {})
    configs = spec.get("configurations") or {}
    if not isinstance(configs, Mapping) or not configs:
        raise SweepError(f"{path}: `configurations` must map names to params overrides")
    reference = spec.get("reference", next(iter(configs)))
    if reference not in configs:
        raise SweepError(f"{path}: reference {reference!r} is not one of {list(configs)}")
    n_seeds = seeds if seeds is not None else int(spec.get("seeds", 1))
    if n_seeds < 1:
        raise SweepError("--seeds must be at least 1")
    for name, overrides in configs.items():
        try:
            params_for(raw, overrides or {}, 0)
        except ParamsError as err:
            raise SweepError(f"{path}: configuration {name!r}: {err}") from None
    return SweepSpec(raw, {k: dict(v or {}) for k, v in configs.items()}, reference, n_seeds)


def params_for(raw: Mapping[str, Any], overrides: Mapping[str, Any], seed_offset: int) -> Params:
    """A configuration's params for one seed (params.yaml's seed + ``seed_offset``)."""
    params = parse_params(merged(dict(raw), dict(overrides)))
    return replace(params, seed=params.seed + seed_offset)


# -- tracking (optional) --------------------------------------------------------------


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


# -- the runner -----------------------------------------------------------------------


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


def stage_keys(p: Params, stages: Sequence[Any]) -> dict[str, tuple]:
    """Each stage's reuse key under ``p``: the resolved params it lists plus its
    upstream stages' keys (what DVC hashes), in pipeline order.
    """
    from hmoe.pipeline import upstream

    keys: dict[str, tuple] = {}
    for stage in stages:
        declared = tuple(sorted(stage.declared(p).items()))
        keys[stage.name] = (declared, *(keys[u.name] for u in upstream(stage, stages)))
    return keys


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


@dataclass(frozen=True)
class Pair:
    """One configuration x seed still to run: its name, overrides and resolved params."""

    config: str
    overrides: dict[str, Any]
    params: Params

    @property
    def seed(self) -> int:
        return self.params.seed


def shared_params(spec: SweepSpec) -> Params:
    """The reference params, after checking that every configuration shares the `data`
    section: the splits are prepared once for all of them.
    """
    datas = {params_for(spec.raw, o, 0).data for o in spec.configurations.values()}
    if len(datas) > 1:
        raise SweepError("configurations must share the `data` section (one set of splits)")
    return params_for(spec.raw, {}, 0)


def experiment_name(p: Params) -> str:
    return f"{p.mlflow.experiment}-sweep"


def finished_rows(out: Path) -> pd.DataFrame:
    """The rows already in ``out``/findings.csv (none for a new folder)."""
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "findings.csv"
    return pd.read_csv(csv) if csv.is_file() else pd.DataFrame(columns=["config", "seed"])


def pending_pairs(spec: SweepSpec, done: pd.DataFrame) -> list[Pair]:
    """Every configuration x seed not in ``done``, seed by seed."""
    pairs = []
    for offset in range(spec.seeds):
        for name, overrides in spec.configurations.items():
            p = params_for(spec.raw, overrides, offset)
            if ((done["config"] == name) & (done["seed"] == p.seed)).any():
                logger.info("%s seed %d: already in findings.csv", name, p.seed)
                continue
            pairs.append(Pair(name, overrides, p))
    return pairs


def run_sweep(
    spec: SweepSpec, out: Path, *, track: bool = True, threads: int | None = None
) -> pd.DataFrame:
    """Run every configuration x seed not yet in ``out``/findings.csv; write findings."""
    from hmoe import runtime

    done = finished_rows(out)
    first = shared_params(spec)
    pairs = pending_pairs(spec, done)
    set_threads(threads)  # before TensorFlow's first op
    policy, why, jit, jit_why = runtime.setup(first)
    logger.info("precision %s (%s), compiled %s (%s)", policy, why, jit, jit_why)
    start = time.perf_counter()
    log = Log(experiment_name(first), track, sweep_id(out))
    runner = Runner(prepare_data(spec.raw), log)
    logger.info("data prepared in %.1f s", time.perf_counter() - start)
    rows = done.to_dict("records")
    provenance = {"commit": _commit(), "machine": runtime.machine()}
    for pair in pairs:
        row = run_pair(runner, pair, provenance)
        add_row(rows, row, runner.evaluated, out, runner.splits["test"][1])
    return finish(rows, out, spec.reference, start)


def reuse_groups(pairs: Sequence[Pair]) -> list[list[Pair]]:
    """The pairs that share a network, together, in order: what one worker must run so
    that every network is still trained once. Two pairs share one when a stage past
    `prepare` (done once, by the caller) has the same key under both; with today's
    dvc.yaml that is exactly when their `train_base` keys are equal (the same seed and
    base params), as every other network's key holds the base's params or key.
    """
    from hmoe.pipeline import read_stages

    stages = read_stages()
    root = list(range(len(pairs)))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i] = root[root[i]]
        return i

    first_with: dict[tuple, int] = {}
    for i, pair in enumerate(pairs):
        for name, key in stage_keys(pair.params, stages).items():
            if name != "prepare":
                root[find(i)] = find(first_with.setdefault((name, key), i))
    groups: dict[int, list[Pair]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(find(i), []).append(pair)
    return list(groups.values())


@dataclass(frozen=True)
class TaskSetup:
    """What a worker needs besides its pairs and the splits, resolved by the driver:
    threads (its CPUs), where MLflow is (None: no MLflow), the sweep's identity and
    the commit its code is at.
    """

    threads: int
    tracking_uri: str | None
    experiment: str
    sweep_id: str
    commit: str


def run_group(
    pairs: Sequence[Pair],
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    where: Mapping[str, Any],
    *,
    setup: TaskSetup,
) -> list[tuple[dict[str, Any], Any]]:
    """A reuse group in a worker process: (row, its evaluation) per pair. ``where`` (node,
    attempt, process id) goes on each MLflow parent run; node and attempt on each row.
    """
    import os

    from hmoe import runtime

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_threads(setup.threads)  # before TensorFlow's first op
    if setup.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = setup.tracking_uri
    runtime.setup(pairs[0].params)
    log = Log(setup.experiment, setup.tracking_uri is not None, setup.sweep_id)
    runner = Runner(dict(splits), log)
    provenance = {"commit": setup.commit, "machine": runtime.machine()}
    tags = {k: str(v) for k, v in where.items()}
    results = []
    for pair in pairs:
        row = run_pair(runner, pair, provenance, tags)
        row |= {"node": where["node"], "attempt": where["attempt"]}
        results.append((row, runner.evaluated))
    return results


def run_sweep_ray(spec: SweepSpec, out: Path, options: Any, *, track: bool = True) -> pd.DataFrame:
    """The sweep as Ray tasks, one per reuse group (:mod:`hmoe.sweep_ray`).

    This process plans, prepares the splits once and writes every row as its task
    returns: a retried task cannot write a row twice. It imports no Keras, so it runs
    no TensorFlow op and holds no GPU.
    """
    from hmoe import sweep_ray

    done = finished_rows(out)
    first = shared_params(spec)
    groups = reuse_groups(pending_pairs(spec, done))
    rows, start = done.to_dict("records"), time.perf_counter()
    if groups:
        logger.info("%d reuse group(s): one Ray task each", len(groups))
        uri = _tracking_uri(experiment_name(first), track, remote=bool(options.address))
        setup = TaskSetup(options.cpus, uri, experiment_name(first), sweep_id(out), _commit())
        splits = prepare_data(spec.raw)
        task = functools.partial(run_group, setup=setup)
        failed = []
        for group, result in sweep_ray.run_tasks(task, groups, splits, options, out):
            if isinstance(result, Exception):
                names = ", ".join(f"{p.config} seed {p.seed}" for p in group)
                logger.error("%s failed: %s", names, result)
                failed.append(names)
                continue
            for row, evaluated in result:
                add_row(rows, row, evaluated, out, splits["test"][1])
        if failed:
            raise SweepError(
                f"{len(failed)} task(s) failed ({'; '.join(failed)}); the finished rows "
                "are in findings.csv and a rerun runs the rest"
            )
    return finish(rows, out, spec.reference, start)


def _tracking_uri(experiment: str, track: bool, remote: bool) -> str | None:
    """The MLflow store every task logs to, checked and with the experiment made here
    (None without MLflow).
    """
    if not track:
        return None
    try:
        from hmoe import tracking
    except ImportError:
        logger.info("MLflow is not installed: the sweep is logged to its folder only")
        return None
    tracking.setup(experiment, paths.repo_root())  # as the stages do, also in DVC's copies
    uri = tracking.tracking_uri(paths.repo_root())
    if remote and not uri.startswith(("http://", "https://")):
        logger.warning(
            "MLflow store %s is a file on this machine: tasks on other hosts can only "
            "reach it through a shared filesystem; use the team's server (docs/team.md)",
            tracking.masked(uri),
        )
    return uri


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


def add_row(
    rows: list[dict[str, Any]],
    row: dict[str, Any],
    evaluated: Any,
    out: Path,
    y: np.ndarray,
) -> None:
    """Append a finished row and rewrite findings.csv (nothing lost on a crash), with
    the row's test labels and every network's probabilities (:mod:`hmoe.evidence`)
    beside it, written first: a row in the CSV always has its files.
    """
    name, seed = row["config"], row["seed"]
    save_labels(out / "labels" / f"{name}-s{seed}.npz", evaluated.labels, y)
    evaluated.save(out / "evidence" / f"{name}-s{seed}.npz")
    rows.append(row)
    frame = pd.DataFrame(rows)  # replaced whole: a kill leaves the old file or the new one
    atomic_write(out / "findings.csv", lambda tmp: frame.to_csv(tmp, index=False))
    logger.info(
        "%s seed %d: mixture %.4f, base %.4f (%.0f s)",
        name, seed, row["mixture_accuracy"], row["base_accuracy"], row["wall_s"],
    )  # fmt: skip


def finish(rows: list[dict[str, Any]], out: Path, reference: str, start: float) -> pd.DataFrame:
    """findings.md and findings.png from every row."""
    frame = pd.DataFrame(rows)
    write_findings(frame, out, reference)
    logger.info("sweep done in %.1f s: %s", time.perf_counter() - start, out / "findings.md")
    return frame


def save_labels(path: Path, labels: Mapping[str, np.ndarray], y: np.ndarray) -> None:
    """Every predictor's test labels and the truth, so any paired statistic can be
    recomputed later without retraining (a few kB per configuration x seed).
    """
    arrays = {k: np.asarray(v, dtype=np.int8) for k, v in labels.items()}
    arrays["y"] = np.asarray(y).astype(np.int8)
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def _commit() -> str:
    """The commit the sweep's code is at (``unknown`` outside a git checkout)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


RAY_ONLY = ("address", "gpus_per_task", "cpus_per_task", "memory_per_task", "max_retries")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="the sweep file (YAML)")
    parser.add_argument("--seeds", type=int, help="seeds per configuration (file's `seeds`)")
    parser.add_argument("--out", type=Path, default=Path("sweeps/out"), help="output folder")
    parser.add_argument("--source", help="override data.source (e.g. the shared zip)")
    parser.add_argument("--no-mlflow", action="store_true", help="log to the folder only")
    parser.add_argument("--threads", type=int, help="TensorFlow threads (in-process engine)")
    parser.add_argument(
        "--engine", choices=("inprocess", "ray"), default="inprocess",
        help="inprocess (default) or ray: one Ray task per reuse group (docs/team.md)",
    )  # fmt: skip
    ray = parser.add_argument_group("ray engine")
    ray.add_argument(
        "--address", help="a running Ray cluster, HOST:PORT ($RAY_ADDRESS); else a local Ray"
    )
    ray.add_argument("--gpus-per-task", type=float, help="GPUs per task (default 0)")
    ray.add_argument("--cpus-per-task", type=int, help="CPUs, and so threads, per task (1)")
    ray.add_argument("--memory-per-task", type=float, help="GiB of memory per task (4)")
    ray.add_argument("--max-retries", type=int, help="retries of a task whose worker died (3)")
    args = parser.parse_args(argv)
    if args.engine != "ray":
        given = [f"--{k.replace('_', '-')}" for k in RAY_ONLY if getattr(args, k) is not None]
        if given:
            parser.error(f"{', '.join(given)} need --engine ray")
    elif args.threads is not None:
        parser.error("--threads is for the in-process engine; with Ray use --cpus-per-task")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        spec = load_spec(args.file, args.seeds)
        if args.source:
            raw = merged(spec.raw, {"data": {"source": args.source}})
            spec = replace(spec, raw=raw)
        if args.threads is not None and args.threads < 1:
            raise SweepError("--threads must be at least 1")
    except (SweepError, ParamsError) as err:
        raise SystemExit(f"hmoe.sweep: {err}") from None
    if args.engine == "ray":
        _main_ray(spec, args)
    else:
        run_sweep(spec, args.out, track=not args.no_mlflow, threads=args.threads)
    print((args.out / "findings.md").read_text())  # noqa: T201  (a CLI's output)


def _main_ray(spec: SweepSpec, args: argparse.Namespace) -> pd.DataFrame:
    """The Ray engine, its errors on one line (no traceback for what the user can fix)."""
    from hmoe import sweep_ray
    from hmoe.tracking import TrackingUnavailable

    try:
        options = sweep_ray.RayOptions.from_args(args)
        return run_sweep_ray(spec, args.out, options, track=not args.no_mlflow)
    except (SweepError, sweep_ray.RayEngineError, TrackingUnavailable) as err:
        raise SystemExit(f"hmoe.sweep: {err}") from None


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: Ray pickles functions
    # and classes of an importable module by reference, of __main__ by value.
    from hmoe.sweep import main as _imported_main

    _imported_main()
