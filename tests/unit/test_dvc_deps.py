"""DVC reruns a stage whenever code it runs changes: every hmoe module a stage imports
(transitively, including imports inside functions) must be a dep in dvc.yaml, except
the MLflow code (the package hmoe/observer), which decides no output
(tests/model/test_tracking_free.py) and so must not be one: editing how a run is logged
retrains nothing.

A package folder listed as a dep (``hmoe/data``, ``hmoe/edge``) covers every module in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.support.imports import imported

# MLflow logging and registration: values flow into them, never out to an output file.
LOGGING_ONLY = Path("hmoe/observer")
PACKAGE_DEPS = ("hmoe/data", "hmoe/edge")  # listed whole


def logging_only(file: Path) -> bool:
    return LOGGING_ONLY in file.parents


def _module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imports(file: Path) -> set[str]:
    """Project modules named by every import statement in ``file``."""
    package = ".".join(file.relative_to(ROOT).with_suffix("").parts[:-1])
    found = imported(file, package, lambda m: _module_file(m) is not None, parent=True)
    return {m for m in found if m.split(".")[0] in ("hmoe", "stages")}


def closure(module: str) -> set[Path]:
    """Files of ``module`` and of every project module it imports, transitively."""
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        file = _module_file(name)
        if file is None or file in seen:
            continue
        seen.add(file)
        if logging_only(file.relative_to(ROOT)):
            continue  # what only logging imports decides no output either
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        todo += sorted(_imports(file))
    return {f.relative_to(ROOT) for f in seen}


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _covered(file: Path, deps: list[str]) -> bool:
    return any(file == Path(d) or Path(d) in file.parents for d in deps)


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_lists_every_module_it_imports(name):
    spec = _stages()[name]
    module = spec["cmd"].split()[2]
    needed = {f for f in closure(module) if f.name != "__init__.py" or f.parent.name != "stages"}
    needed = {f for f in needed if not logging_only(f)}
    missing = sorted(str(f) for f in needed if not _covered(f, spec["deps"]))
    assert not missing, f"{name}: add to its deps in dvc.yaml: {missing}"


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_lists_no_module_it_does_not_import(name):
    """The converse: a listed module the stage never runs would rerun it for nothing."""
    spec = _stages()[name]
    needed = {f for f in closure(spec["cmd"].split()[2]) if not logging_only(f)}
    code_deps = [d for d in spec["deps"] if d.endswith(".py") or d in PACKAGE_DEPS]
    extra = [d for d in code_deps if not any(f == Path(d) or Path(d) in f.parents for f in needed)]
    assert not extra, f"{name}: remove from its deps in dvc.yaml: {extra}"


def test_closure_follows_function_level_imports(tmp_path):
    assert Path("hmoe/recipe.py") in closure("stages.train_base")
    assert Path("hmoe/recipe.py") in closure("stages.groups")  # only inside load_model
    assert Path("hmoe/serving.py") not in closure("stages.evaluate")  # the observer's alone


def test_training_stages_do_not_depend_on_the_mixture_or_logging():
    """Editing the TTA arithmetic, the controls or the MLflow code retrains nothing."""
    for name in ("train_base", "train_second_base", "train_specialists", "train_router"):
        deps = set(_stages()[name]["deps"])
        for module in (
            "hmoe/mixture.py",
            "hmoe/controls.py",
            "hmoe/observer",
        ):
            assert module not in deps, f"{name} lists {module}"
