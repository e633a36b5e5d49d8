"""Stage `evaluate`: the only stage that reads the test split.

Scores the mixture and every control (:func:`hmoe.steps.evaluate.evaluate`), writes
metrics, plot tables and the report (:mod:`hmoe.report`); the observer logs the run,
registers the assembled mixture as the `hmoe-mixture` pyfunc and closes the
pipeline's parent run (:mod:`hmoe.observer`).
"""

from __future__ import annotations

import logging

from hmoe import edge, modelset, observer, paths, report, runtime
from hmoe.data.storage import write_json
from hmoe.gates import GateInput
from hmoe.mixture import load_mixture
from hmoe.steps.evaluate import evaluate

logger = logging.getLogger("hmoe.evaluate")
STAGE = "evaluate"


def main() -> None:
    params = runtime.init(STAGE)
    groups = edge.read_groups()
    mix = load_mixture(
        groups,
        modelset.model_files(groups.names),
        routing=params.mixture.routing,
        tta=params.mixture.tta,
        gate_input=GateInput(params.gates.inputs),
        router_fusion=params.mixture.router_fusion,
    )
    second = paths.SECOND_BASE_MODEL
    second_base = modelset.load_model(second) if second.is_file() else None
    test = edge.read_split("test")
    x, y = test.arrays
    with observer.stage(STAGE, params, {"test": test}) as run:
        result = evaluate(mix, (x, y), second_base=second_base, seed=params.seed)
        report.write_plot_tables(y, result.labels, list(groups.classes))
        write_json(paths.METRICS, result.headline, sort_keys=False)
        write_json(paths.EVAL_DETAILS, result.details, sort_keys=False)
        provenance = report.provenance(params, run.parent, run.wall_times())
        files = report.write_run_report(result, y, groups, provenance)
        observer.evaluated(run, params, mix, (x, y), result)
    observer.finish_pipeline(run, params, groups, result, files)
    logger.info("%s", report.headline(result.metrics, result.best_control))


if __name__ == "__main__":
    main()
