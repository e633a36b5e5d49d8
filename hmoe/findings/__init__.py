"""The findings of a sweep, computed from its output folder alone.

    python -m hmoe.findings sweeps/results/decisive [--reference default]

The folder holds ``findings.csv`` (one row per configuration x seed, written by
:func:`hmoe.sweep.run_sweep`), ``labels/`` (each row's predicted test labels) and
``evidence/`` (each row's per-image probabilities on val and test,
:mod:`hmoe.evidence`). From them this package writes, beside them:

- ``findings.md``: every accuracy and cost per configuration (mean ± sd over seeds,
  paired differences with their t-intervals, :mod:`.tables`); the decisive comparisons
  (mixture soft and hard against two bases, mixture against base and against fixed 1/2
  gates: the mean paired difference with its 95 % t-interval over seeds, the bootstrap
  interval over seeds and test images, each machine's mean, and per seed McNemar's
  exact test on the test images); from the evidence (:mod:`.cascades`), the
  accuracy-inference-cost frontier of the confidence cascades, oracle routing against
  two bases told the same true group, the gate diagnostics and the experts'
  calibration; and the provenance (commits, machines, wall time per seed).
- ``findings.png`` (:mod:`.figure`): test accuracy against inference multiply-adds per
  image with the cascades' frontier, beside the paired differences against two bases.

The findings are a pure function of these files, so a finished sweep's findings are
rebuilt with newer analysis code without training anything again. Older folders lack
some columns or files; a section that cannot be computed from them is left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from hmoe.findings.cascades import (
    calibration_markdown,
    calibration_table,
    frontier_markdown,
    frontier_table,
    gate_table,
    gates_markdown,
    oracle_markdown,
    oracle_table,
    read_evidence,
    read_group_names,
    read_labels,
)
from hmoe.findings.figure import POINTS, findings_figure, point_table
from hmoe.findings.tables import (
    ACCURACIES,
    COSTS,
    DECISIVE,
    Labels,
    _configuration_table,
    _decisive_markdown,
    _mcnemar_markdown,
    _provenance_markdown,
    decisive_table,
    mcnemar_table,
    read_findings,
    summary_table,
)
from hmoe.stats import t_interval

logger = logging.getLogger("hmoe.findings")

__all__ = [
    "ACCURACIES",
    "COSTS",
    "DECISIVE",
    "POINTS",
    "decisive_table",
    "findings_figure",
    "findings_markdown",
    "mcnemar_table",
    "point_table",
    "read_findings",
    "summary_table",
    "t_interval",
    "write_findings",
]


def findings_markdown(
    frame: pd.DataFrame,
    reference: str,
    picture: str | None = None,
    labels: Labels | None = None,
    extra: Sequence[str] = (),
) -> str:
    """findings.md: the configuration table first (the wide one), then the decisive
    comparisons, the per-seed McNemar table (from ``labels``), the picture, any
    ``extra`` sections and the provenance, each only when the files have what it needs.
    """
    parts = [_configuration_table(frame, reference)]
    decisive = _decisive_markdown(frame, labels)
    mcnemar = _mcnemar_markdown(frame, labels or {})
    if decisive or mcnemar:
        parts.append("## The decisive comparisons\n\n" + decisive)
        if mcnemar:
            parts.append("### Per seed: McNemar on the test images\n\n" + mcnemar)
    if picture:
        parts.append(
            "## Accuracy against inference cost\n\n"
            f"![test accuracy against inference multiply-adds per image]({picture})\n\n"
            "Left: one point per configuration and predictor, with its 95 % t-interval over "
            "the seeds, and the cascades' frontier where the sweep saved its evidence; oracle "
            "routing (hollow circle) knows each image's true group, so it is not a deployable "
            "model, drawn just right of hard routing's cost (it runs one specialist per "
            "image, as hard routing does); where the evidence has it, its fair control, two "
            "bases told the same group (hollow diamond, just left of two bases' cost). "
            "Right: each predictor minus two "
            "bases, seed by seed (dots), their mean (diamond) and its 95 % t-interval.\n"
        )
    parts += [part for part in extra if part]
    provenance = _provenance_markdown(frame)
    if provenance:
        parts.append("## Provenance\n\n" + provenance)
    return "\n".join(parts)


def write_findings(frame: pd.DataFrame, out: Path, reference: str) -> list[Path]:
    """Write ``out``/findings.png (when it has a point) and ``out``/findings.md from the
    rows and the folder's labels and evidence; return the files written. The sweep and
    the CLI both come here, so they agree.
    """
    out.mkdir(parents=True, exist_ok=True)
    frame = _as_text(frame, ("commit", "machine"))
    labels, evidence = read_labels(out), read_evidence(out)
    frontier = frontier_table(frame, evidence, reference)
    told = oracle_table(evidence, reference)
    written = []
    fig = findings_figure(frame, frontier, told)
    if fig is not None:
        fig.savefig(out / "findings.png", dpi=110)
        plt.close(fig)
        written.append(out / "findings.png")
    else:
        logger.warning("no accuracy with an inference cost in the rows: no findings.png")
    extra = []
    if not frontier.empty:
        extra.append("## The cascades' frontier\n\n" + frontier_markdown(frontier, reference))
    sections = (
        ("Oracle routing against two bases told the same group", oracle_markdown, lambda *_: told),
        ("The gates, learned against fixed 1/2", gates_markdown, gate_table),
        (
            "The experts' confidence against their accuracy",
            calibration_markdown,
            partial(calibration_table, names=read_group_names(out)),
        ),
    )
    for title, markdown, table in sections:
        text = markdown(table(evidence, reference))
        if text:
            extra.append(f"## {title}\n\n{text}")
    picture = "findings.png" if fig is not None else None
    text = findings_markdown(frame, reference, picture, labels, extra)
    (out / "findings.md").write_text(text)
    written.append(out / "findings.md")
    logger.info("findings written: %s", ", ".join(map(str, written)))
    return written


def _as_text(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Text columns as text (a CSV read without dtypes may make a commit a number)."""
    frame = frame.copy()
    for column in columns:
        if column in frame:
            frame[column] = frame[column].map(lambda v: v if pd.isna(v) else str(v))
    return frame
