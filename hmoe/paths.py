"""Every file the pipeline reads or writes, named once (dvc.yaml names the same).

Paths are relative to the repository root, where DVC runs every stage.
tests/unit/test_paths.py checks that dvc.yaml and this module agree.
"""

from __future__ import annotations

import os
from pathlib import Path

from hmoe.data.constants import PREPARED_SPLITS

PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")  # the pipeline's one declaration (read by hmoe.pipeline)

PREPARED = Path("data/prepared")


def split(name: str) -> Path:
    """A prepared split's file (the names are :data:`hmoe.data.constants.PREPARED_SPLITS`)."""
    return PREPARED / f"{name}.npz"


TRAIN, GATE, VAL, TEST = (split(name) for name in PREPARED_SPLITS)

MODELS = Path("models")
BASE_MODEL = MODELS / "base.keras"
SECOND_BASE = MODELS / "second_base"  # a folder: empty but for a note unless asked for
SECOND_BASE_MODEL = SECOND_BASE / "base.keras"
ROUTER_MODEL = MODELS / "router.keras"
SPECIALISTS = MODELS / "specialists"
GATES = MODELS / "gates"

REPORTS = Path("reports")
DATA_REPORT = REPORTS / "data.json"
GROUPS = REPORTS / "groups.json"  # the partition every stage after `groups` uses
# Each training stage's epoch log and metrics, in a folder named as dvc.yaml names it.
BASE_HISTORY = Path("reports/train_base/history.csv")
BASE_METRICS = Path("reports/train_base/metrics.json")
SECOND_BASE_HISTORY = Path("reports/train_second_base/history.csv")
SECOND_BASE_METRICS = Path("reports/train_second_base/metrics.json")
ROUTER_HISTORY = Path("reports/train_router/history.csv")
ROUTER_METRICS = Path("reports/train_router/metrics.json")
SPECIALIST_METRICS = Path("reports/train_specialists/metrics.json")
SPECIALIST_HISTORY = Path("reports/train_specialists/history")
GATES_HISTORY = Path("reports/train_gates/history.csv")
GATES_METRICS = Path("reports/train_gates/metrics.json")
GATES_VAL_EVIDENCE = Path("reports/train_gates/val_evidence.npz")  # evaluate's val evidence
METRICS = REPORTS / "metrics.json"  # the headline only: the one DVC metric
EVAL = REPORTS / "eval"
EVAL_DETAILS = EVAL / "details.json"  # every other test figure: controls, statistics, costs
EVIDENCE = EVAL / "evidence.npz"  # every network's probabilities on val and test (hmoe.evidence)
LABELS = EVAL / "labels.npz"  # every predictor's test labels and the truth
CONFUSION = EVAL / "confusion.csv"
PER_CLASS = EVAL / "per_class.csv"
REPORT = REPORTS / "report"

# Resumable-training state: outside every DVC output, since DVC deletes a stage's
# outputs before it reruns the stage.
BACKUPS = Path(".cache/hmoe/backup")


def specialist_model(group: str) -> Path:
    return SPECIALISTS / f"{group}.keras"


def specialist_history(group: str) -> Path:
    return SPECIALIST_HISTORY / f"{group}.csv"


def gate_model(group: str) -> Path:
    return GATES / f"{group}.keras"


def repo_root() -> Path:
    """The repository root, also from DVC's temporary copies of queued experiments.

    DVC sets DVC_ROOT to the original repository even in ``.dvc/tmp/exps`` copies, so
    a relative data source and the tracking store never strand inside a copy that DVC
    deletes.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
