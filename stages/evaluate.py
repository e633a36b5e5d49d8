"""Stage `evaluate`: the only stage that reads the test split.

Scores the mixture and every control (:func:`hmoe.steps.evaluate.evaluate`), writes
the metrics, the plot tables, every predictor's test labels, every network's
probabilities on val and test (:mod:`hmoe.evidence`) and the report
(:mod:`hmoe.report`); its run logs the figures, registers the assembled mixture as the
`hmoe-mixture` pyfunc and closes the pipeline's parent run (:mod:`hmoe.observer`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from hmoe import modelset, paths, report
from hmoe.edge.run import Stage, main
from hmoe.edge.store import json_file
from hmoe.evidence import (
    SplitEvidence,
    evidence_from,
    evidence_writer,
    labels_writer,
    split_evidence,
)
from hmoe.gates import GateInput
from hmoe.groups import Groups
from hmoe.mixture import Mixture, load_mixture
from hmoe.steps.evaluate import Evaluation, evaluate

logger = logging.getLogger("hmoe.evaluate")


def run(stage: Stage) -> None:
    stage.start_keras()
    params, groups = stage.params, stage.read_groups()
    mix = load_mixture(
        groups,
        modelset.model_files(groups.names),
        routing=params.mixture.routing,
        tta=params.mixture.tta,
        gate_input=GateInput(params.gates.inputs),
        router_fusion=params.mixture.router_fusion,
        read=stage.read,
    )
    trained = stage.store.exists(paths.SECOND_BASE_MODEL)
    second_base = stage.read(paths.SECOND_BASE_MODEL) if trained else None
    x, y = stage.split(paths.TEST)
    run = stage.record
    result = evaluate(mix, (x, y), second_base=second_base, seed=params.seed)
    for path, table in report.plot_tables(y, result.labels, list(groups.classes)).items():
        stage.write(path, table)
    stage.write(paths.METRICS, json_file(result.headline, sort_keys=False))
    details = result.details | {"best_control": result.best_control}
    stage.write(paths.EVAL_DETAILS, json_file(details, sort_keys=False))
    stage.write(paths.LABELS, labels_writer(result.labels, y))
    found = evidence(stage, mix, second_base, result, y)
    stage.write(paths.EVIDENCE, evidence_writer(found, ids(groups)))
    provenance = report.provenance(
        params, stage.read(paths.DATA_REPORT), run.parent, run.wall_times()
    )
    record = stage.read(paths.GROUPS)
    files = report.run_report(result, y, groups, record, histories(stage, groups), provenance)
    for path, value in files.items():
        stage.write(path, value)
    val_accuracy = float(stage.read(paths.GATES_METRICS)["val_accuracy"])
    val_digest = stage.store.digest(paths.VAL)
    tables = [paths.PER_CLASS]
    run.evaluated(
        params, mix, (x, y), result, tables=tables, val_accuracy=val_accuracy, val_digest=val_digest
    )
    run.finish_pipeline(params, networks(stage, groups), result, list(files))
    logger.info("%s", report.headline(result.metrics, result.best_control))


def histories(stage: Stage, groups: Groups) -> dict[str, Any]:
    """The epoch logs evaluate lists in its deps (a folder: one per group)."""
    found = {}
    for label, dep in report.history_deps(stage.declared).items():
        if dep.suffix == ".csv":
            found[label] = stage.read(dep)
        else:
            found |= {f"{label} {g}": stage.read(dep / f"{g}.csv") for g in groups.names}
    return found


def networks(stage: Stage, groups: Groups) -> dict[str, str]:
    """The md5 of every network file the stage read, by registered name: the versions
    the pipeline's run links to.
    """
    files = modelset.model_files(groups.names)
    return {
        name: stage.store.digest(path) for name, path in files.items() if stage.store.exists(path)
    }


def ids(groups: Groups) -> dict[str, list[int]]:
    return {g: list(groups.class_ids(g)) for g in groups.names}


def evidence(
    stage: Stage, mix: Mixture, second_base: Any, result: Evaluation, y: np.ndarray
) -> dict[str, SplitEvidence]:
    """Test evidence from what was scored; val from the gates stage's, with the second
    base run on val (the only network run again: a few seconds).
    """
    val = evidence_from(stage.read(paths.GATES_VAL_EVIDENCE))["val"]
    if second_base is not None:
        x_val, _ = stage.split(paths.VAL, logged=False)
        val = replace(val, second_base=mix.predict_network(second_base, x_val))
    test = split_evidence(result.outputs, result.gate_weights, y, result.second_base)
    return {"val": val, "test": test}


if __name__ == "__main__":
    main(__file__)
