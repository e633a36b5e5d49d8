"""Model Registry rules: which mixture version is `@champion`, and lineage links.

The champion is chosen on the validation split only: the test split stays a
report, never a selection criterion.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hmoe.modelset import MIXTURE
from hmoe.tracking import file_md5

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
