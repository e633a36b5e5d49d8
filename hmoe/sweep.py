"""Sweep configurations x seeds through the pipeline's own stages, in one process.

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

Every configuration x seed runs dvc.yaml's stages in its order, each the function that
`dvc repro` runs (``stages/<name>.py``, :mod:`hmoe.edge.run`), on values in memory. A
stage whose params and inputs are identical across configurations (the same seed's
base, say) runs once and is reused, as DVC's run cache would. With MLflow importable,
each configuration x seed is recorded as a `dvc exp run` is (a parent with every
param, a child run per stage or network), tagged ``sweep``. The output folder gets
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
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from hmoe import gitrev, paths
from hmoe.data.storage import atomic_write
from hmoe.findings import write_findings
from hmoe.observer.sweep import Record, sweep_id
from hmoe.params import ParamsError
from hmoe.profile import merged
from hmoe.sweep_plan import (
    Pair,
    SweepError,
    SweepSpec,
    finished_rows,
    load_spec,
    pending_pairs,
    reuse_groups,
    shared_params,
)
from hmoe.sweep_runner import Done, Runner, prepare_data, run_pair, set_threads

logger = logging.getLogger("hmoe.sweep")


def run_sweep(
    spec: SweepSpec, out: Path, *, track: bool = True, threads: int | None = None
) -> pd.DataFrame:
    """Run every configuration x seed not yet in ``out``/findings.csv; write findings."""
    from hmoe.edge import runtime

    done = finished_rows(out)
    first = shared_params(spec)
    pairs = pending_pairs(spec, done)
    set_threads(threads)  # before TensorFlow's first op
    policy, why, jit, jit_why = runtime.setup(first)
    logger.info("precision %s (%s), compiled %s (%s)", policy, why, jit, jit_why)
    start = time.perf_counter()
    prepared, digest = prepare_data(spec.raw)
    record = Record(first.mlflow.experiment, track, sweep_id(out), digest)
    runner = Runner(prepared, record)
    logger.info("data prepared in %.1f s", time.perf_counter() - start)
    rows = done.to_dict("records")
    provenance = {"commit": gitrev.commit(short=True), "machine": runtime.machine()}
    for pair in pairs:
        row = run_pair(runner, pair, provenance)
        add_row(rows, row, runner.files, out)
    return finish(rows, out, spec.reference, start)


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
    data_digest: str = ""


def run_group(
    pairs: Sequence[Pair],
    prepared: Done,
    where: Mapping[str, Any],
    *,
    setup: TaskSetup,
) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """A reuse group in a worker process: (row, its labels and evidence) per pair.
    ``where`` (node, attempt, process id) goes on each MLflow parent run; node and
    attempt on each row.
    """
    import os

    from hmoe.edge import runtime

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_threads(setup.threads)  # before TensorFlow's first op
    if setup.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = setup.tracking_uri
    runtime.setup(pairs[0].params)
    record = Record(
        setup.experiment, setup.tracking_uri is not None, setup.sweep_id, setup.data_digest
    )
    runner = Runner(prepared, record)
    provenance = {"commit": setup.commit, "machine": runtime.machine()}
    tags = {k: str(v) for k, v in where.items()}
    results = []
    for pair in pairs:
        row = run_pair(runner, pair, provenance, tags)
        row |= {"node": where["node"], "attempt": where["attempt"]}
        results.append((row, runner.files))
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
        uri = _tracking_uri(first.mlflow.experiment, track, remote=bool(options.address))
        prepared, digest = prepare_data(spec.raw)
        commit = gitrev.commit(short=True)
        setup = TaskSetup(options.cpus, uri, first.mlflow.experiment, sweep_id(out), commit, digest)
        task = functools.partial(run_group, setup=setup)
        failed = []
        for group, result in sweep_ray.run_tasks(task, groups, prepared, options, out):
            if isinstance(result, Exception):
                names = ", ".join(f"{p.config} seed {p.seed}" for p in group)
                logger.error("%s failed: %s", names, result)
                failed.append(names)
                continue
            for row, files in result:
                add_row(rows, row, files, out)
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
        from hmoe.observer import tracking
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


def add_row(
    rows: list[dict[str, Any]], row: dict[str, Any], files: Mapping[str, bytes], out: Path
) -> None:
    """Append a finished row and rewrite findings.csv (nothing lost on a crash), with
    the row's test labels and every network's probabilities (:mod:`hmoe.evidence`),
    as evaluate wrote them, beside it, written first: a row in the CSV always has its
    files.
    """
    name, seed = row["config"], row["seed"]
    for folder, data in files.items():  # labels/, evidence/
        atomic_write(out / folder / f"{name}-s{seed}.npz", lambda tmp, d=data: tmp.write_bytes(d))
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
    from hmoe.observer.tracking import TrackingUnavailable

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
