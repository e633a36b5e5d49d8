"""The tiny repos the slow tiers share, built once per test session.

Every slow tier used to build its own copy of the project and its own tiny dataset, and
two of them ran the same sweep. Now:

- `tiny_project`: the project's tracked files, tiny params and one tiny synthetic zip,
  committed in a git + DVC repo. Every tier clones it (`clone`), so all of them train on
  the same bytes with the same params.
- `tiny_pipeline`: a clone after one real `dvc repro` on MLflow's default SQLite store,
  committed as "first run" (the pipeline tier's checks; `first_metrics` is what that
  run's `evaluate` reported, whatever later experiments do to the workspace).
- `tiny_sweep`: a clone after `python -m hmoe.sweep` of `SWEEP` (two configurations x
  two seeds, MLflow on, one thread): the sweep tier's checks, the reference the Ray
  tier's cluster run must equal, and the runner that must give `tiny_pipeline`'s
  numbers for the same params and seed.

Each is built once per test run, also under pytest-xdist: the first worker to ask builds
it in the run's shared temporary folder under a file lock, and the others wait for it
and read its record (`_once`). tiny_project is cloned by tiers on every worker; the
sweep and Ray tiers, which both read tiny_sweep, run on one worker (the "sweep" group of
tests/conftest.py), and the pipeline tier's last check waits for tiny_sweep if the
other worker is still building it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.support.tinyrepo import base_env, make_repo, run

EXPERIMENT = "hmoe-test"

# `default` is params.yaml itself plus the two-bases control, so its first seed is the
# run `tiny_pipeline` made (the control is a separate network: it moves no other one).
# `finetuned_hard` differs in the specialists' start and recipe and in the routing, and
# reuses the base and the second base.
SWEEP = {
    "params": {"controls": {"second_base": True}},
    "reference": "default",
    "seeds": 1,
    "configurations": {
        "default": {},
        "finetuned_hard": {
            "specialists": {"start": "base", "learning_rate": 0.2, "lookahead": False},
            "mixture": {"routing": "hard", "router_fusion": "none"},
        },
    },
}
SWEEP_FILE = "tiny-sweep.yaml"
SWEEP_CMD = [sys.executable, "-m", "hmoe.sweep", SWEEP_FILE, "--seeds", "2"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # as Ray sets it for a one-CPU task


class TinyRun(NamedTuple):
    repo: Path
    env: dict[str, str]
    log: str


def clone(project: Path, dest: Path, env: dict[str, str]) -> Path:
    """A git clone of the tiny project (no remote left behind: tiers add their own)."""
    run(["git", "clone", "-q", str(project), str(dest)], dest.parent, env)
    run(["git", "remote", "remove", "origin"], dest, env)
    return dest


def _once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], TinyRun]) -> TinyRun:
    """``build(folder)`` once per test run: under xdist the workers share the run's temp
    folder, so the first builds under an exclusive lock and records the result; the
    others wait on the lock and read the record.
    """
    on_worker = "PYTEST_XDIST_WORKER" in os.environ
    shared = factory.getbasetemp().parent if on_worker else factory.getbasetemp()
    record = shared / f"{name}.json"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.is_file():
            repo, env, log = json.loads(record.read_text())
            return TinyRun(Path(repo), env, log)
        folder = shared / name
        if folder.exists():
            pytest.fail(f"building the shared {name} repo failed in another worker: see its error")
        folder.mkdir()
        result = build(folder)
        record.write_text(json.dumps([str(result.repo), result.env, result.log]))
        return result


def _project(root: Path) -> TinyRun:
    env = base_env(root / "repo")
    return TinyRun(make_repo(root, EXPERIMENT, env), env, "")


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    return _once(tmp_path_factory, "project", _project).repo


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_project, tmp_path_factory) -> TinyRun:
    def build(root: Path) -> TinyRun:
        env = base_env(root / "repo")
        repo = clone(tiny_project, root / "repo", env)
        log = run(["dvc", "repro"], repo, env, timeout=1200)
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-qm", "first run"], repo, env)
        return TinyRun(repo, env, log)

    return _once(tmp_path_factory, "pipeline", build)


def first_metrics(pipeline: TinyRun) -> dict:
    """`evaluate`'s figures of the committed first run, in the order it wrote them: the
    headline (reports/metrics.json), then the rest (reports/eval/details.json).
    """
    repo, env, _ = pipeline
    first = run(["git", "log", "--format=%H", "--grep", "^first run$"], repo, env).split()[0]
    files = ("reports/metrics.json", "reports/eval/details.json")
    return {k: v for f in files for k, v in read_json_at(repo, env, first, f).items()}


def read_json_at(repo: Path, env: dict, rev: str, path: str) -> dict:
    return json.loads(run(["git", "show", f"{rev}:{path}"], repo, env))


@pytest.fixture(scope="session")
def tiny_sweep(tiny_project, tmp_path_factory) -> TinyRun:
    def build(root: Path) -> TinyRun:
        env = base_env(root / "repo") | ONE_THREAD
        repo = clone(tiny_project, root / "repo", env)
        (repo / SWEEP_FILE).write_text(yaml.safe_dump(SWEEP))
        log = run([*SWEEP_CMD, "--out", "out", "--threads", "1"], repo, env, timeout=1200)
        return TinyRun(repo, env, log)

    return _once(tmp_path_factory, "sweep", build)


def sweep_parents(repo: Path) -> list:
    """The parent runs of a sweep in ``repo``'s SQLite store. Under the store's lock: the
    sweep may be creating the schema, and a second migration at once fails
    (hmoe.observer.tracking.store_lock).
    """
    from mlflow.tracking import MlflowClient

    from hmoe.observer import tracking

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    with tracking.store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], "tags.sweep = 'true'")
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
