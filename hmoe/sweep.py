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
rerun skips the rows already there), ``findings.md`` and ``findings.png``, computed
from the CSV by :mod:`hmoe.findings` (``python -m hmoe.findings OUT`` rebuilds them):
per configuration the mean ± std of each accuracy and control over seeds, the paired
differences against the reference and against two bases with t-intervals across seeds,
per seed McNemar, and accuracy against inference cost. Only the test split of the
steps' evaluate is scored; it chooses nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import yaml

from hmoe import paths
from hmoe.findings import findings_markdown, write_findings
from hmoe.params import Params, ParamsError, parse_params
from hmoe.profile import merged

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
    """

    def __init__(self, experiment: str, enabled: bool = True) -> None:
        self.mlflow = None
        if not enabled:
            return
        try:
            import mlflow
        except ImportError:
            logger.info("MLflow is not installed: the sweep is logged to its folder only")
            return
        from hmoe import tracking

        tracking.setup(experiment)
        self.mlflow = mlflow

    @contextlib.contextmanager
    def parent(self, config: str, seed: int, params: Mapping[str, Any]) -> Iterator[None]:
        if self.mlflow is None:
            yield
            return
        tags = {"sweep": "true", "sweep_config": config, "seed": str(seed)}
        with self.mlflow.start_run(run_name=f"{config}-s{seed}", tags=tags):
            self.mlflow.log_params({k: v for k, v in params.items() if len(str(v)) < 500})
            yield

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


# -- the runner -----------------------------------------------------------------------


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch (an epoch-level callback: no per-step sync)."""

    def on_train_begin(self, logs=None):
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t0)


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

        self._timer = EpochTimer()
        callbacks = [self._timer]
        if self.log.mlflow is not None:
            from hmoe.tracking import EpochLogger

            callbacks.append(EpochLogger())
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


@dataclass
class Runner:
    """The steps for one configuration x seed, with every network reused by its key."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    log: Log
    cache: dict[tuple, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cost: dict[tuple, tuple[float, float]] = field(default_factory=dict)  # key -> (GMACs, s)
    hooks: SweepHooks | None = None
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # the last evaluate's

    def cached(self, step: str, key: tuple, seed: int, make: Callable[[], Any]) -> Any:
        """``make()`` once per key (seeded as a stage would be), timed and logged."""
        full = (step, *key)
        reused = full in self.cache
        with self.log.step(step, reused):
            if not reused:
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
        from hmoe.pipeline import read_stages, upstream

        self.seconds = {}
        hooks = self.hooks = self.hooks or SweepHooks(self.log)
        hooks.rates = {}
        steps = stage_steps(p, self.splits, hooks)
        stages = read_stages()
        missing = [s.name for s in stages if s.name not in steps]
        if missing:
            raise SweepError(f"dvc.yaml stages with no step in hmoe.sweep: {missing}")
        keys: dict[str, tuple] = {}
        done: dict[str, Any] = {}
        for stage in stages:
            declared = tuple(sorted(stage.declared(p).items()))
            keys[stage.name] = (declared, *(keys[u.name] for u in upstream(stage, stages)))
            step = stage.name.removeprefix("train_")
            make = functools.partial(steps[stage.name], done)
            done[stage.name] = self.cached(step, keys[stage.name], p.seed, make)
        return self._row(done, keys, hooks)

    def _row(self, done: Mapping[str, Any], keys: Mapping[str, tuple], hooks: SweepHooks) -> dict:
        """The findings row: evaluate's metrics, val figures, times, rates and costs."""
        result, gates, (groups, _) = done["evaluate"], done["train_gates"], done["groups"]
        row = dict(result.metrics) | paired_by_seed(result.labels, self.splits["test"][1])
        self.labels = result.labels
        row["best_control"] = result.best_control
        val = {"val_mixture_accuracy": "val_accuracy"}  # the gates' names for the val figures
        for key in ("val_mixture_accuracy", "val_base_accuracy", "val_hard_accuracy"):
            row[key] = gates.summary[val.get(key, key)]
        row["val_soft_accuracy"] = gates.summary["val_soft_accuracy"]
        row["groups"] = yaml.safe_dump(groups.to_dict(), default_flow_style=True).strip()
        row |= {f"{s}_s": self.seconds.get(s, 0.0) for s in STEPS}
        # MLflow metric names allow no "@": specialist@natural -> specialist_natural
        row |= {f"{n.replace('@', '_')}_images_per_s": r for n, r in hooks.rates.items()}
        used = [(s.removeprefix("train_"), keys[s]) for s in MIXTURE_NETWORKS]
        gmacs, secs = np.sum([self.cost.get((s, *k), (0.0, 0.0)) for s, k in used], axis=0)
        row["cost_train_gmacs_mixture"], row["cost_train_s_mixture"] = gmacs, secs
        row["cost_train_gmacs_base"] = self.cost.get(("base", *keys["train_base"]), (0.0, 0.0))[0]
        return row


# The stages whose networks the mixture is made of (its training cost).
MIXTURE_NETWORKS = ("train_base", "train_specialists", "train_router")


def stage_steps(
    p: Params, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], hooks: SweepHooks
) -> dict[str, Callable[[Mapping[str, Any]], Any]]:
    """For each dvc.yaml stage, the step its stage module calls, on the results of the
    stages before it (by stage name). The data are prepared once for every configuration.
    """
    from hmoe.gates import GateInput
    from hmoe.mixture import Mixture
    from hmoe.steps import experts
    from hmoe.steps.evaluate import evaluate
    from hmoe.steps.gates import gate_fit_split, train_gates
    from hmoe.steps.groups import learn_groups

    train, val = splits["train"], splits["val"]

    def mixture(done: Mapping[str, Any], gates: Sequence = ()) -> Mixture:
        groups = done["groups"][0]
        return Mixture(
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

    def evaluated(done: Mapping[str, Any]) -> Any:
        second = done["train_second_base"]
        return evaluate(
            mixture(done, done["train_gates"].gates),
            splits["test"],
            second_base=None if second is None else second.model,
            seed=p.seed,
        )

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


# Per seed, image by image (McNemar): (name, mixture side, other side).
PAIRS = (
    ("soft_vs_two_bases", "soft", "two_bases"),
    ("hard_vs_two_bases", "hard", "two_bases"),
    ("mixture_vs_base", "mixture", "base"),
)


def paired_by_seed(labels: Mapping[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Exact McNemar p and the discordant counts of each pair in :data:`PAIRS` present."""
    from hmoe.stats import mcnemar_exact

    out: dict[str, float] = {}
    for name, a, b in PAIRS:
        if a in labels and b in labels:
            ra, rb = labels[a] == y, labels[b] == y
            only_a, only_b = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
            out[f"{name}_only_a"], out[f"{name}_only_b"] = only_a, only_b
            out[f"{name}_mcnemar_p"] = mcnemar_exact(only_a, only_b)
    return out


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


def run_sweep(spec: SweepSpec, out: Path, *, track: bool = True) -> pd.DataFrame:
    """Run every configuration x seed not yet in ``out``/findings.csv; write findings."""
    from hmoe import runtime

    out.mkdir(parents=True, exist_ok=True)
    csv = out / "findings.csv"
    done = pd.read_csv(csv) if csv.is_file() else pd.DataFrame(columns=["config", "seed"])
    first = params_for(spec.raw, {}, 0)
    datas = {params_for(spec.raw, o, 0).data for o in spec.configurations.values()}
    if len(datas) > 1:
        raise SweepError("configurations must share the `data` section (one set of splits)")
    policy, why, jit, jit_why = runtime.setup(first)
    logger.info("precision %s (%s), compiled %s (%s)", policy, why, jit, jit_why)
    start = time.perf_counter()
    runner = Runner(prepare_data(spec.raw), Log(f"{first.mlflow.experiment}-sweep", track))
    logger.info("data prepared in %.1f s", time.perf_counter() - start)
    rows = done.to_dict("records")
    provenance = {"commit": _commit(), "machine": runtime.machine()}
    for offset in range(spec.seeds):
        for name, overrides in spec.configurations.items():
            p = params_for(spec.raw, overrides, offset)
            if ((done["config"] == name) & (done["seed"] == p.seed)).any():
                logger.info("%s seed %d: already in %s", name, p.seed, csv)
                continue
            t0 = time.perf_counter()
            runtime.setup(p)  # this configuration's precision and compilation
            flat = _flat(overrides) | {"seed": p.seed}
            with runner.log.parent(name, p.seed, flat):
                row = {"config": name, "seed": p.seed, **runner.run(p), **provenance}
                row["wall_s"] = time.perf_counter() - t0
                save_labels(out / "labels" / f"{name}-s{p.seed}.npz", runner, spec)
                runner.log.metrics({k: v for k, v in row.items() if _is_number(v)})
            rows.append(row)
            pd.DataFrame(rows).to_csv(csv, index=False)  # nothing lost on a crash
            logger.info(
                "%s seed %d: mixture %.4f, base %.4f (%.0f s)",
                name, p.seed, row["mixture_accuracy"], row["base_accuracy"], row["wall_s"],
            )  # fmt: skip
    frame = pd.DataFrame(rows)
    write_findings(frame, out, spec.reference)
    logger.info("sweep done in %.1f s: %s", time.perf_counter() - start, out / "findings.md")
    return frame


def save_labels(path: Path, runner: Runner, spec: SweepSpec) -> None:
    """Every predictor's test labels and the truth, so any paired statistic can be
    recomputed later without retraining (a few kB per configuration x seed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v, dtype=np.int8) for k, v in runner.labels.items()}
    np.savez_compressed(path, y=runner.splits["test"][1].astype(np.int8), **arrays)


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


def _flat(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    from hmoe.profile import dotted

    return dotted(nested, prefix)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="the sweep file (YAML)")
    parser.add_argument("--seeds", type=int, help="seeds per configuration (file's `seeds`)")
    parser.add_argument("--out", type=Path, default=Path("sweeps/out"), help="output folder")
    parser.add_argument("--source", help="override data.source (e.g. the shared zip)")
    parser.add_argument("--no-mlflow", action="store_true", help="log to the folder only")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        spec = load_spec(args.file, args.seeds)
        if args.source:
            raw = merged(spec.raw, {"data": {"source": args.source}})
            spec = replace(spec, raw=raw)
    except (SweepError, ParamsError) as err:
        raise SystemExit(f"hmoe.sweep: {err}") from None
    frame = run_sweep(spec, args.out, track=not args.no_mlflow)
    print(findings_markdown(frame, spec.reference))  # noqa: T201  (a CLI's output)


if __name__ == "__main__":
    main()
