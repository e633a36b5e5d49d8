"""Shared fixtures (the repository root, a valid params mapping, the tiny repos of
tests/support/shared.py) and how the suite is spread over pytest-xdist's workers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["tests.support.shared"]

# pytest-xdist (pyproject's addopts: one worker per core) hands each worker whole
# units: a unit is an `xdist_group`, by default the test module, so a module-scoped
# fixture is built once. The pipeline, sweep and Ray tiers form one group, "tiny": they
# share tiny_pipeline and tiny_sweep (tests/support/shared.py), and one worker runs
# them in turn while the other takes the team, JAX and reliability tiers. The slow
# units go first, longest first; the short unit modules fill in behind (a worker gets
# its next unit when the current one is almost done).
SHARED = ("tests.pipeline.test_repro", "tests.pipeline.test_sweep", "tests.ray.test_ray_sweep")
HEAVY_FIRST = (
    "tiny",
    "tests.team.test_team",
    "tests.pipeline.test_jax",
    "tests.pipeline.test_reliability",
)


def _group(item: pytest.Item) -> str:
    mark = item.get_closest_marker("xdist_group")
    if mark:
        return mark.args[0]
    return "tiny" if item.module.__name__ in SHARED else item.module.__name__


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


@pytest.fixture
def raw_params() -> dict:
    """A fresh copy of the repository's params.yaml as a mapping."""
    return copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
