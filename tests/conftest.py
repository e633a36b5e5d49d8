"""Shared fixtures: the repository root and a valid params mapping."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw_params() -> dict:
    """A fresh copy of the repository's params.yaml as a mapping."""
    return copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
