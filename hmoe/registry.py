"""Every model logged to MLflow and registered: the Keras networks, the pyfunc
mixture, the lineage links, and which mixture version is `@champion`.

The champion is chosen on the validation split only: the test split stays a
report, never a selection criterion. Nothing here decides an output file, so this
module is no DVC dep (see :mod:`hmoe.edge`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hmoe import modelset
from hmoe.data.storage import file_md5
from hmoe.modelset import MIXTURE
from hmoe.tracking import common_tags

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
    client: MlflowClient, name: str = MIXTURE
) -> tuple[str | None, float | None, str | None]:
    """(version, val accuracy, split digest) of the champion, or Nones."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None, None
    val = mv.tags.get(VAL_TAG)
    return mv.version, (float(val) if val is not None else None), mv.tags.get(SPLIT_TAG)


def apply_champion_rule(
    version: str, val_accuracy: float, split_digest: str, name: str = MIXTURE
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


def versions_for_outputs(outs: Mapping[str, Path]) -> dict[str, tuple[str, str]]:
    """Registered name -> (version, source run id) of the versions whose tagged md5
    equals the current output file: links stages DVC skipped to the runs that
    produced their outputs.
    """
    client = MlflowClient()
    links: dict[str, tuple[str, str]] = {}
    for name, path in outs.items():
        if not path.is_file():
            continue
        md5 = file_md5(path)
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


def tag_version(name: str, version: str, out_path: Path) -> None:
    """Tie a registered version to the DVC output it was saved as (path and md5)."""
    client = MlflowClient()
    tags = {
        "dvc_out": str(out_path),
        "dvc_md5": file_md5(out_path),
        **common_tags(),
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def log_keras_model(
    model: keras.Model, registered_name: str, example: np.ndarray, out_path: Path
) -> str | None:
    """Log a Keras model with its signature, register it, tag the version.

    No input_example: the keras flavor fails on it in MLflow 3.17 (mlflow#16183).
    Returns the registered version, or None when registration is off.
    """
    from mlflow.models import infer_signature

    signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
    info = mlflow.keras.log_model(
        model,
        name=registered_name.removeprefix("hmoe-"),
        signature=signature,
        registered_model_name=registered_name,
        pip_requirements=requirements(),
    )
    version = info.registered_model_version
    if registered_name and version is not None:
        tag_version(registered_name, str(version), out_path)
        logger.info("registered %s version %s", registered_name, version)
        return str(version)
    return None


def register_mixture(
    groups, config: Mapping[str, Any], files: Mapping[str, Path], example: np.ndarray,
    config_file: Path,
) -> str:  # fmt: skip
    """Log and register the assembled mixture as a pyfunc (`hmoe-mixture`).

    ``config``: what the pyfunc needs besides the networks (written to ``config_file``,
    which travels as an artifact); ``files``: registered name -> network file.
    """
    import json

    from mlflow.models import ModelSignature, infer_signature

    import hmoe
    from hmoe.mixture import Prediction
    from hmoe.serving import CONFIG, MixturePyfunc, predictions_frame

    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    arts = {name: str(path) for name, path in files.items()} | {CONFIG: str(config_file)}
    n, n_classes = len(example), len(groups.classes)
    dummy = Prediction(
        probs=np.full((n, n_classes), 1 / n_classes, dtype=np.float32),
        group=np.zeros(n, dtype=np.int64),
        group_prob=np.ones(n, dtype=np.float32),
        specialist_weight=np.full(n, 0.5, dtype=np.float32),
    )
    # Outputs only: MLflow enforces an input schema by casting (a uint8 spec turns 0.5
    # into 0) or by refusing other dtypes, so the pyfunc checks its inputs itself
    # (hmoe.serving.to_images) and answers with a message that says what is expected.
    outputs = predictions_frame(dummy, list(groups.classes), list(groups.names))
    signature = ModelSignature(inputs=None, outputs=infer_signature(example, outputs).outputs)
    info = mlflow.pyfunc.log_model(
        name="mixture",
        python_model=MixturePyfunc(),
        artifacts=arts,
        code_paths=[str(Path(hmoe.__file__).parent)],
        signature=signature,
        input_example=example,
        registered_model_name=MIXTURE,
        pip_requirements=requirements(),
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for name, path in files.items():
        client.set_model_version_tag(MIXTURE, version, f"dvc_md5.{name}", file_md5(path))
    for k, v in common_tags().items():
        client.set_model_version_tag(MIXTURE, version, k, v)
    logger.info("registered %s version %s", MIXTURE, version)
    return version


def link_lineage(parent: str, groups) -> None:
    """Tag the pipeline run with the model versions (and runs) behind every output,
    so a pipeline whose stages DVC skipped still shows where each network came from.
    """
    client = MlflowClient()
    outs = modelset.model_files(groups.names)
    for name, (version, run_id) in versions_for_outputs(outs).items():
        client.set_tag(parent, f"model_version.{name}", version)
        client.set_tag(parent, f"source_run.{name}", run_id)
