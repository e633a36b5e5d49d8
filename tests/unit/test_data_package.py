"""hmoe.data as a package: old imports still work, and the constants stay light."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import hmoe.data
from tests.conftest import ROOT

HEAVY = ("PIL", "sklearn", "keras", "tensorflow")

_PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("module", ["hmoe.data.constants", "hmoe.data"])
def test_import_pulls_in_no_heavy_dependency(module: str) -> None:
    code = _PROBE.format(module=module, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []


HOMES = {
    "BATCH_DIR_NAME": "constants",
    "CIFAR10_CLASSES": "constants",
    "IMAGE_SHAPE": "constants",
    "META_BATCH": "constants",
    "SPLITS": "constants",
    "TEST_BATCH": "constants",
    "TRAIN_BATCHES": "constants",
    "DataError": "constants",
    "RawData": "raw",
    "load_source": "sources",
    "stratified_split": "split",
    "class_counts": "split",
    "save_split": "storage",
    "load_split": "storage",
    "atomic_write": "storage",
    "write_json": "storage",
}


def test_public_names_are_the_documented_ones() -> None:
    assert sorted(hmoe.data.__all__) == sorted(HOMES)


@pytest.mark.parametrize(("name", "home"), sorted(HOMES.items()))
def test_public_name_is_its_submodules_object(name: str, home: str) -> None:
    module = importlib.import_module(f"hmoe.data.{home}")
    assert getattr(hmoe.data, name) is getattr(module, name)
    assert name in dir(hmoe.data)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = hmoe.data.no_such_thing  # type: ignore[attr-defined]
