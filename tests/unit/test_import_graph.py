"""The hmoe package imports in one direction, MLflow code knows no pipeline code, and
the stages that train nothing never load Keras.

Every module under hmoe/ is parsed with ``ast``; an edge is any import of another hmoe
module, at module level or inside a function (a function-level import is still a
dependency, only a later one). A cycle means two modules can only be understood, and
changed, together; an MLflow module that imported pipeline code could make an output
depend on how runs are logged (tests/unit/test_dvc_deps.py keeps it out of DVC's deps).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.support import imports

PACKAGE = ROOT / "hmoe"
# Modules that only observe: values flow in as arguments, nothing flows back.
NO_PIPELINE_IMPORTS = ("hmoe.observer.tracking", "hmoe.observer.registry")
# ...but for helpers of the standard library alone, which decide no output.
STDLIB_HELPERS = {"hmoe.gitrev"}


def module_name(file: Path) -> str:
    parts = file.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(f): f for f in sorted(PACKAGE.rglob("*.py"))}


def imported(file: Path, known: set[str]) -> set[str]:
    """The hmoe modules ``file`` imports anywhere in its body (``from a import b``
    names module ``a.b`` when that is a module, else ``a``).
    """
    name = module_name(file)
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    return imports.imported(file, package, known.__contains__, parent=False) - {name}


def import_graph() -> dict[str, set[str]]:
    files = modules()
    return {name: imported(file, set(files)) for name, file in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (first module repeated at the end), or []."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "hmoe.params" in graph["hmoe.recipe"]  # module level
    assert "hmoe.recipe" in graph["hmoe.modelset"]  # inside load_model
    assert "hmoe.data.constants" in graph["hmoe.data.storage"]  # within a subpackage


def test_find_cycle_names_the_modules_in_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_hmoe_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_tracking_and_registry_import_no_hmoe_module():
    graph = import_graph()
    for name in NO_PIPELINE_IMPORTS:
        hmoe = graph[name] - STDLIB_HELPERS
        assert not hmoe, f"{name} imports {sorted(hmoe)}: pass values in instead"


NO_KERAS = """
import sys
import stages.prepare, stages.groups, stages.train_second_base
stages.train_second_base.main(stages.train_second_base.__file__)  # control off: params.yaml
print(sorted(m for m in ("keras", "tensorflow", "jax") if m in sys.modules))
"""


def test_stages_that_train_nothing_never_load_keras(tmp_path):
    """prepare, groups from params and a skipped second base run no network: loading
    Keras (and its backend) would cost each of them more CPU than its own work on tiny
    data, in every tiny repro of the suite.
    """
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db",
    }
    proc = subprocess.run(
        [sys.executable, "-c", NO_KERAS], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout
    assert (tmp_path / "models/second_base/NOT_TRAINED").is_file()


# The modules that may import MLflow: the observer, and the served model's two (its
# pyfunc and the command that loads it).
MLFLOW_MODULES = ("hmoe.observer", "hmoe.serving", "hmoe.cli")


def test_only_the_observer_and_serving_import_mlflow():
    everything = lambda name: True  # noqa: E731  every name, MLflow's included
    for name, file in modules().items():
        if name == "hmoe.observer" or name.startswith(MLFLOW_MODULES):
            continue
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        found = {m for m in imports.imported(file, package, everything, parent=False)}
        mlflow = sorted(m for m in found if m.split(".")[0] == "mlflow")
        assert not mlflow, f"{name} imports {mlflow}: MLflow code lives in hmoe.observer"


def test_the_pure_steps_import_neither_the_stage_edge_nor_the_observer():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("hmoe.steps"):
            edge = sorted(d for d in deps if d.startswith(("hmoe.edge", "hmoe.observer")))
            assert not edge, f"{name} imports {edge}: pass values in through its hooks"
