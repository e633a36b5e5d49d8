"""MLflow's model registry: Keras networks and pyfunc models logged and registered,
lineage links, and which version of a model is `@champion`.

The champion is chosen on the validation split only: the test split stays a
report, never a selection criterion. This module imports nothing from the pipeline
(tests/unit/test_import_graph.py): names, files' md5s and tags are passed in by the
stage's observer (:mod:`hmoe.observer`), so it decides no output and is no DVC dep.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:  # a stage that registers a network has loaded Keras already
    import keras

logger = logging.getLogger(__name__)

CHAMPION = "champion"
VAL_TAG = "val_accuracy"
SPLIT_TAG = "split_digest"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate_val: float
    champion_val: float | None
    champion_version: str | None


def decide(
    candidate_val: float, champion_val: float | None, champion_version: str | None
) -> Decision:
    """Promote when there is no champion or the candidate is strictly better on val."""
    if champion_val is None:
        return Decision(True, "no champion yet", candidate_val, None, None)
    if candidate_val > champion_val:
        reason = (
            f"val accuracy {candidate_val:.4f} > champion v{champion_version} {champion_val:.4f}"
        )
        return Decision(True, reason, candidate_val, champion_val, champion_version)
    reason = f"val accuracy {candidate_val:.4f} <= champion v{champion_version} {champion_val:.4f}"
    return Decision(False, reason, candidate_val, champion_val, champion_version)


def current_champion(
    client: MlflowClient, name: str
) -> tuple[str | None, float | None, str | None]:
    """(version, val accuracy, split digest) of the champion, or Nones."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None, None
    val = mv.tags.get(VAL_TAG)
    return mv.version, (float(val) if val is not None else None), mv.tags.get(SPLIT_TAG)


def apply_champion_rule(
    name: str, version: str, val_accuracy: float, split_digest: str
) -> Decision:
    """Tag the new version with its val accuracy and split; make it champion or challenger.

    Accuracies measured on different validation images are not comparable, so a
    champion scored on another split is never replaced automatically.
    """
    client = MlflowClient()
    client.set_model_version_tag(name, version, VAL_TAG, f"{val_accuracy:.6f}")
    client.set_model_version_tag(name, version, SPLIT_TAG, split_digest)
    champion_version, champion_val, champion_split = current_champion(client, name)
    if champion_version is not None and champion_split != split_digest:
        reason = (
            f"champion v{champion_version} was scored on another validation split "
            f"({champion_split}); not compared: promote by hand if intended"
        )
        decision = Decision(False, reason, val_accuracy, champion_val, champion_version)
    else:
        decision = decide(val_accuracy, champion_val, champion_version)
    if mlflow.active_run() is not None:
        mlflow.log_dict(dataclasses.asdict(decision), "champion_rule.json")
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "champion_rule", decision.reason)
    else:
        client.set_model_version_tag(name, version, "challenger", decision.reason)
    logger.info(
        "%s v%s: %s (%s)",
        name,
        version,
        "champion" if decision.promote else "challenger",
        decision.reason,
    )
    return decision


def versions_for_outputs(md5s: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Registered name -> (version, source run id) of the versions whose tagged md5
    equals the current output file's (``md5s``: registered name -> md5): links stages
    DVC skipped to the runs that produced their outputs.
    """
    client = MlflowClient()
    links: dict[str, tuple[str, str]] = {}
    for name, md5 in md5s.items():
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            continue
        match = [v for v in versions if v.tags.get("dvc_md5") == md5]
        if match:
            newest = max(match, key=lambda v: int(v.version))
            links[name] = (str(newest.version), newest.run_id)
    return links


# -- the networks and the pyfunc ----------------------------------------------------


def requirements() -> list[str]:
    """Pinned requirements of a logged model (MLflow cannot infer them for Keras 3)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in ("keras", "tensorflow-cpu", "tensorflow", "jax", "numpy", "pandas", "mlflow"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return pins


def drop_superseded(name: str, parent: str, stage: str) -> list[str]:
    """Delete the versions of ``name`` that the active run's registration replaces:

    - a KILLED run's: a stage killed after it registered (or while it did) never
      finished, so DVC recorded none of its outputs, and its rerun registers again;
    - another run's of the same ``stage`` under the same pipeline ``parent``: an earlier
      attempt that finished this network but whose stage was killed later (the first
      specialist of `train_specialists`, say), which the rerun trains again.

    Without this a kill leaves versions that no finished stage produced (half-tagged,
    perhaps `@champion`) beside the rerun's. Runs are marked KILLED when the rerun
    starts (:func:`hmoe.observer.tracking.mark_killed_attempts`), before it registers.
    """
    client = MlflowClient()
    active = mlflow.active_run()
    current = active.info.run_id if active is not None else ""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    dropped = []
    for v in versions:
        if not v.run_id or v.run_id == current:
            continue
        try:
            run = client.get_run(v.run_id)
        except MlflowException:  # its run was deleted: not ours to judge
            continue
        tags = run.data.tags
        same = tags.get("mlflow.parentRunId") == parent and tags.get("hmoe_stage") == stage
        if run.info.status == "KILLED" or same:
            client.delete_model_version(name, v.version)
            dropped.append(str(v.version))
    if dropped:
        logger.warning("%s: deleted version(s) %s of killed attempts", name, ", ".join(dropped))
    return dropped


def tag_version(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Tag a registered version, e.g. with the DVC output it was saved as (path, md5)."""
    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def log_keras_model(
    model: keras.Model, registered_name: str, example: np.ndarray, tags: Mapping[str, str]
) -> str | None:
    """Log a Keras model with its signature, register it, tag the version with ``tags``.

    No input_example: the keras flavor fails on it in MLflow 3.17 (mlflow#16183).
    Returns the registered version, or None when registration is off.
    """
    from mlflow.models import infer_signature

    signature = infer_signature(example, np.asarray(model.predict_on_batch(example)))
    info = mlflow.keras.log_model(
        model,
        name=registered_name.removeprefix("hmoe-"),
        signature=signature,
        registered_model_name=registered_name,
        pip_requirements=requirements(),
    )
    version = info.registered_model_version
    if registered_name and version is not None:
        tag_version(registered_name, str(version), tags)
        logger.info("registered %s version %s", registered_name, version)
        return str(version)
    return None


def log_pyfunc(
    registered_name: str,
    python_model: mlflow.pyfunc.PythonModel,
    *,
    artifacts: Mapping[str, Path],
    example: np.ndarray,
    example_output: Any,
    tags: Mapping[str, str],
) -> str:
    """Log and register a pyfunc model; return its version, tagged with ``tags``. Its
    code is the modules its class's module imports (:func:`served_code`), no more.

    The signature holds outputs only: MLflow enforces an input schema by casting (a
    uint8 spec turns 0.5 into 0) or by refusing other dtypes, so a pyfunc that checks
    its inputs itself answers with a message that says what is expected instead.
    """
    import tempfile

    from mlflow.models import ModelSignature, infer_signature

    outputs = infer_signature(example, example_output).outputs
    with tempfile.TemporaryDirectory() as tmp:
        code = served_code(type(python_model).__module__, Path(tmp))
        info = mlflow.pyfunc.log_model(
            name=registered_name.removeprefix("hmoe-"),
            python_model=python_model,
            artifacts={k: str(v) for k, v in artifacts.items()},
            code_paths=[str(code)],
            signature=ModelSignature(inputs=None, outputs=outputs),
            input_example=example,
            registered_model_name=registered_name,
            pip_requirements=requirements(),
        )
    version = str(info.registered_model_version)
    tag_version(registered_name, version, tags)
    logger.info("registered %s version %s", registered_name, version)
    return version


def link_lineage(parent: str, md5s: Mapping[str, str]) -> None:
    """Tag the pipeline run with the model versions (and runs) behind every output
    (``md5s``: registered name -> its file's md5), so a pipeline whose stages DVC
    skipped still shows where each network came from.
    """
    client = MlflowClient()
    for name, (version, run_id) in versions_for_outputs(md5s).items():
        client.set_tag(parent, f"model_version.{name}", version)
        client.set_tag(parent, f"source_run.{name}", run_id)


def served_code(module: str, dest: Path) -> Path:
    """``module``'s package, as a folder under ``dest`` holding only ``module`` and the
    modules of its package it imports, transitively, at module level or inside a
    function (and their packages' ``__init__``): what a served pyfunc runs, without
    the training, sweep or team code beside it. Returns the package's folder. The
    modules are read, not imported.
    """
    import importlib.util
    import shutil

    top = module.split(".", maxsplit=1)[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{module} is not in a package")
    root = Path(next(iter(spec.submodule_search_locations))).parent  # holds the package
    for file in _closure(module, root):
        target = dest / file.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    return dest / top


def _closure(module: str, root: Path) -> set[Path]:
    """Files of ``module`` and of every module of its package it imports, transitively
    (``root``: the folder holding the package).
    """
    top = module.split(".", maxsplit=1)[0]
    todo, found = [module], {}
    while todo:
        name = todo.pop()
        file = _module_file(root, name)
        if name in found or file is None:
            continue  # seen, or `from a import b` where b is a name, not a module
        found[name] = file
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # packages run first
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        todo += [m for m in _imported(file, package) if m.split(".")[0] == top]
    return set(found.values())


def _module_file(root: Path, name: str) -> Path | None:
    path = root.joinpath(*name.split("."))
    for file in (path.with_suffix(".py"), path / "__init__.py"):
        if file.is_file():
            return file
    return None


def _imported(file: Path, package: str) -> set[str]:
    """Names ``file`` imports anywhere in its body (``from a import b`` names both
    ``a`` and ``a.b``; relative imports resolved against ``package``).
    """
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names
