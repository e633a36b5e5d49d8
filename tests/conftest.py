"""Shared fixtures (the repository root, a valid params mapping, the tiny repos of
tests/support/shared.py) and how the suite is spread over pytest-xdist's workers.
"""

from __future__ import annotations

import copy
import gc
import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# One worker per core, so one TensorFlow thread per worker and per process it starts
# (stages, dvc, servers inherit it): TensorFlow otherwise starts a pool per core in
# every process, and two workers' pools fight over the two cores. Op determinism makes
# the results independent of the thread count.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
pytest_plugins = ["tests.support.shared"]

# pytest-xdist (pyproject's addopts: one worker per core) hands each worker whole
# units: a unit is an `xdist_group`, by default the test module (by file name: the
# modules are imported by their base names), so a module-scoped fixture is built once.
# The sweep and Ray tiers form one unit, "sweep": the Ray tier compares with the sweep
# tier's run (tiny_sweep), so on one worker it never waits for the other to build it.
# Units go out in the order below, longest first (`--no-loadscope-reorder`: xdist would
# otherwise sort them by their number of tests, which puts the two-test JAX and
# reliability tiers last); the other modules follow in file order, and a worker gets
# its next unit when two tests of its current one are left. test_repro ends on two
# short checks, so the team tier goes to the worker that finishes the sweep first, not
# behind test_repro on one worker (the two in a row took 620 s of a 666 s run).
GROUPS = {"test_sweep": "sweep", "test_ray_sweep": "sweep"}
HEAVY_FIRST = (
    "test_repro",
    "sweep",
    "test_team",
    "test_reliability",
    "test_kills",
    "test_distribute",
    "test_stage_errors",
    "test_router_levers",
    "test_recipe",
    "test_learning",
)


def _group(item: pytest.Item) -> str:
    mark = item.get_closest_marker("xdist_group")
    if mark:
        return mark.args[0]
    return GROUPS.get(item.path.stem, item.path.stem)


def pytest_configure(config: pytest.Config) -> None:
    """The whole session in a network namespace with only loopback (issue 35), made by
    the controller before xdist starts its workers, which inherit it: a server that a
    test starts cannot listen beyond the machine, whatever address it binds. Where it
    cannot be made (not root), the reason is left for the tiers that start servers.
    """
    from tests.support import netns

    if hasattr(config, "workerinput") or os.environ.get(netns.REASON) is not None:
        return  # a worker (already inside), or a nested pytest that inherited it
    os.environ[netns.REASON] = netns.enter() or "inside"


@pytest.hookimpl(tryfirst=True)  # before xdist turns the groups into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(_group(item)))
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: file order kept


def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """Every test a worker collected must carry its group in its node id (xdist's
    loadgroup marker), or the shared repos would be built once per worker.
    """
    lost = [i for i in ids if "@" not in i]
    if node.config.getvalue("dist") == "loadgroup" and lost:
        raise pytest.UsageError(
            f"pytest-xdist dropped the xdist_group of {lost[0]} and {len(lost) - 1} more"
            " (pytest-dev/pytest-xdist#1386): install the pytest pinned in pyproject.toml"
        )


@pytest.fixture(autouse=True)
def _float32_after_each_test():
    """A test that runs a stage in process sets the global Keras float policy (bfloat16
    on a CPU with bf16 instructions, as `train.precision: auto` says): put float32 back,
    so the next test on the same worker starts as a fresh process would.
    """
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")
    if "mlflow" in sys.modules:
        # A stage run in process that a test leaves unfinished (a context generator still
        # suspended) ends its MLflow run when the garbage collector finalises it. Left to
        # chance, that happened inside MLflow's store lock while a later test opened a
        # store, and the worker deadlocked (2026-12-08): finalise it here, between tests.
        gc.collect()


@pytest.fixture
def raw_params() -> dict:
    """A fresh copy of the repository's params.yaml as a mapping."""
    return copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
