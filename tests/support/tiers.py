"""Tiers that need an extra or a service skip, with the install command, when it is
missing, so that the README's two commands pass on a fresh machine; CI sets
HMOE_REQUIRE_ALL_TIERS=1 (.ci/run), which turns every such skip into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

REQUIRE_ALL = "HMOE_REQUIRE_ALL_TIERS"
JAX_INSTALL = "the JAX backend needs the jax extra: pip install -e '.[dev,jax]'"


def need(ok: bool, reason: str) -> None:
    """Skip (or, under HMOE_REQUIRE_ALL_TIERS=1, fail) unless ``ok``."""
    if ok:
        return
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ALL}=1: every tier must run)", pytrace=False)
    pytest.skip(reason)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def has_postgres() -> bool:
    return bool(shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb")))


def has_weed() -> bool:
    return bool(shutil.which("weed") or (Path(sys.executable).parent / "weed").is_file())


def need_loopback_only() -> None:
    """The tiers that start servers run where the only interface is loopback
    (tests/support/netns.py): skip, or fail under HMOE_REQUIRE_ALL_TIERS=1, elsewhere."""
    from tests.support import netns

    ok, why = netns.loopback_only()
    need(ok, f"this tier starts servers and runs only in a loopback-only network namespace: {why}")
