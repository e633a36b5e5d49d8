"""The one runner of a stage: `dvc repro` and the sweep both call :func:`run_stage`.

A stage is one function in ``stages/<name>.py``, ``run(stage: Stage) -> None``: it reads
its inputs through :meth:`Stage.read` and writes its outputs through :meth:`Stage.write`,
by the paths dvc.yaml names them (a path dvc.yaml does not list for the stage is
refused, so the declaration and the code cannot drift apart). Where the values live is
the store's business (:mod:`hmoe.edge.store`): files under ``dvc repro``, memory in a
sweep. What the stage logs goes to the observer it is given (MLflow's,
:mod:`hmoe.observer`, or :class:`NoObserver`), and is also kept in
:attr:`Stage.logged`, so that a sweep that reuses the stage's outputs can record the
same runs again.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmoe import paths
from hmoe.edge import start
from hmoe.edge.store import FileStore, Store
from hmoe.groups import Groups
from hmoe.params import Params
from hmoe.pipeline import DeclaredStage, read_stages
from hmoe.pipeline import stage as declared_stage

logger = logging.getLogger("hmoe")

StageFunction = Callable[["Stage"], None]


class NoRun:
    """A run that records nothing (no MLflow, or tracking off). It spells out every
    method of the observer's run, so a misspelt call fails here too, not only where
    MLflow is installed (tests/unit/test_edges.py compares the two).
    """

    parent = ""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_param(self, key: str, value: Any) -> None:
        pass

    def set_tag(self, key: str, value: Any) -> None:
        pass

    def log_dict(self, payload: Mapping[str, Any], name: str) -> None:
        pass

    def callbacks(self) -> list:
        return []

    def register_network(self, model: Any, name: str, example: Any, path: Path) -> None:
        pass

    def drop_superseded(self, name: str) -> None:
        pass

    def wall_times(self) -> dict[str, float]:
        return {}

    def evaluated(self, params: Any, mix: Any, test: Any, result: Any, **recorded: Any) -> None:
        pass

    def finish_pipeline(self, params: Any, networks: Any, result: Any, files: Any) -> None:
        pass


class NoObserver:
    """What a stage is observed by without MLflow: runs that record nothing."""

    @contextlib.contextmanager
    def run(self, stage: Stage, name: str, tags: Mapping[str, str]) -> Iterator[NoRun]:
        yield NoRun()

    def pointers(self) -> list[str]:
        return []


@dataclass
class Logged:
    """What one MLflow run of a stage was given, kept to record it again on reuse."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Stage:
    """What a stage function gets: its params, its inputs and outputs (by dvc.yaml's
    paths, through the store), and its runs (one per trained network, named
    `stage` or `stage@group`, else one for the stage, opened on first use).
    """

    def __init__(
        self,
        declared: DeclaredStage,
        params: Params,
        store: Store,
        observer: Any,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.declared, self.params, self.store, self.observer = declared, params, store, observer
        self.name = declared.name
        self.tags = dict(tags or {})  # put on every run the stage opens
        self.written: dict[Path, Any] = {}  # path -> value as the store holds it, in order
        self.datasets: dict[str, tuple[np.ndarray, np.ndarray, Path]] = {}
        self.logged: dict[str, Logged] = {}  # run name -> what it was given
        self.networks: dict[str, dict[str, float]] = {}  # network -> images/s, GMACs
        self._runs: dict[str, Any] = {}
        self._exit = contextlib.ExitStack()
        self._keras = False

    # -- inputs and outputs ---------------------------------------------------------

    def read(self, path: Path) -> Any:
        """An input by its dvc.yaml path (a dep of this stage, or a file in one); a
        missing one names the stage that writes it.
        """
        self._check(path, self.declared.deps, "deps")
        if not self.store.exists(path):
            raise FileNotFoundError(f"{path} is missing: run `dvc repro {producer(path)}` first")
        return self.store.read(path)

    def split(self, path: Path, *, logged: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """A prepared split; ``logged``: an input dataset of the stage's runs."""
        x, y = self.read(path)
        if logged:
            self.dataset(path, x, y)
        return x, y

    def dataset(self, path: Path, x: np.ndarray, y: np.ndarray) -> None:
        """An input dataset of the stage's runs (logged as each opens)."""
        self.datasets[Path(path).stem] = (x, y, Path(path))

    def write(self, path: Path, value: Any) -> None:
        """An output by its dvc.yaml path (an out of this stage, or a file in one)."""
        self._check(path, self.declared.outs, "outs")
        self.written[Path(path)] = self.store.write(path, value)

    def read_groups(self) -> Groups:
        """The partition the `groups` stage wrote: every stage after it reads it."""
        return start.groups_from(self.read(paths.GROUPS))

    def _check(self, path: Path, declared: tuple[str, ...], kind: str) -> None:
        p = Path(path)
        if not any(p == Path(d) or Path(d) in p.parents for d in declared):
            raise start.StageError(
                f"stage {self.name} uses {p}, which dvc.yaml does not list in its {kind}"
            )

    # -- how it runs ----------------------------------------------------------------

    def start_keras(self) -> None:
        """Seeds, determinism, precision and compilation, before the stage's first
        Keras work (stages that run no network never load Keras).
        """
        from hmoe.edge import runtime

        policy, why, jit, jit_why = runtime.setup(self.params)
        if not self._keras:
            logger.info(
                "stage %s: precision %s (%s), compiled %s (%s)",
                self.name, policy, why, jit, jit_why,
            )  # fmt: skip
        self._keras = True

    # -- its runs -------------------------------------------------------------------

    @property
    def record(self) -> Any:
        """The stage's own run (opened on first use, closed when the stage ends)."""
        if self.name not in self._runs:
            self._runs[self.name] = self._exit.enter_context(self._open(self.name))
        return self._runs[self.name]

    @contextlib.contextmanager
    def network_run(self, name: str) -> Iterator[Any]:
        """One trained network's run, around its training; a network named after the
        stage (its one network, or the gates) trains in the stage's own run, which
        stays open for what the stage records after it (the gates' registrations).
        """
        if name == self.name:
            yield self.record
            return
        with self._open(name) as run:
            self._runs[name] = run
            try:
                yield run
            finally:
                self._runs.pop(name, None)

    @contextlib.contextmanager
    def _open(self, name: str) -> Iterator[Any]:
        self.logged.setdefault(name, Logged())
        with self.observer.run(self, name, self.tags) as run:
            yield run

    def log_metrics(self, metrics: Mapping[str, float], run: str = "") -> None:
        """Final figures of a run (the stage's own unless ``run`` names a network's)."""
        name = run or self.name
        values = {k: float(v) for k, v in metrics.items()}
        self.logged.setdefault(name, Logged()).metrics.update(values)
        target = self._runs.get(name) if run else self.record
        if target is not None:
            target.log_metrics(values)

    def log_param(self, key: str, value: Any, run: str = "") -> None:
        """A param beside the declared ones (a network's replicas)."""
        name = run or self.name
        self.logged.setdefault(name, Logged()).params[key] = value
        target = self._runs.get(name) if run else self.record
        if target is not None:
            target.log_param(key, value)

    def register(
        self, model: Any, name: str, path: Path, run: str = "", example: Any = None
    ) -> None:
        """Register a network written to ``path`` under ``name`` from its run, with an
        input example (default: four val images). Files only: a sweep's networks live
        in memory and are not registered.
        """
        if not self.store.on_disk:
            return
        target = self._runs.get(run) if run else self.record
        if example is None:
            example = self.datasets[paths.VAL.stem][0][:4]
        if target is not None:
            target.register_network(model, name, example, path)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> bool | None:
        """Close the stage's own run, told how the stage ended (KILLED, FAILED)."""
        return self._exit.__exit__(*exc)


def run_stage(
    name: str,
    params: Params,
    store: Store,
    observer: Any = None,
    tags: Mapping[str, str] | None = None,
) -> Stage:
    """Stage ``name``'s function (``stages.<name>.run``) on ``store``; returns the
    finished :class:`Stage` (what it wrote, logged and trained).
    """
    function = stage_function(name)
    stage = Stage(declared_stage(name), params, store, observer or NoObserver(), tags)
    start_s = time.perf_counter()
    with stage:
        function(stage)
    logger.info("%s: done in %.1f s", name, time.perf_counter() - start_s)
    for line in stage.observer.pointers():  # where to look: the last line logged
        logger.info("%s", line)
    return stage


def stage_function(name: str) -> StageFunction:
    """``stages.<name>.run``: the one function of a dvc.yaml stage."""
    try:
        module = importlib.import_module(f"stages.{name}")
    except ModuleNotFoundError:
        raise start.StageError(f"dvc.yaml stage {name} has no module stages/{name}.py") from None
    function = getattr(module, "run", None)
    if not callable(function):
        raise start.StageError(f"stages/{name}.py has no function run(stage)")
    return function


def observer(experiment: str) -> Any:
    """MLflow's observer when MLflow is installed, else one that records nothing."""
    try:
        from hmoe.observer.runs import Observer  # imports MLflow
    except ImportError:
        logger.info("MLflow is not installed: runs are not tracked")
        return NoObserver()
    return Observer(experiment)


def main(module_file: str) -> None:
    """``python -m stages.<name>`` (dvc.yaml's cmd; ``module_file``: that module's
    ``__file__``): the stage on the repository's files, params read once from
    params.yaml, tracked in MLflow.
    """
    name = Path(module_file).stem
    params = start.init(name)  # a user error: one line, exit 2
    run_stage(name, params, FileStore(), observer(params.mlflow.experiment))


def producer(path: Path) -> str:
    """The dvc.yaml stage that writes ``path`` (or a folder holding it)."""
    p = Path(path)
    for s in read_stages():
        if any(p == Path(o) or Path(o) in p.parents for o in s.outs):
            return s.name
    return ""
