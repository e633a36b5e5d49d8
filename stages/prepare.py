"""Stage `prepare`: read `data.source`, verify it, write the train/gate/val/test splits."""

from __future__ import annotations

import logging

from hmoe import paths
from hmoe.data import load_source
from hmoe.edge.run import Stage, main
from hmoe.edge.start import resolve_source
from hmoe.steps.data import prepare

logger = logging.getLogger("hmoe.prepare")


def run(stage: Stage) -> None:
    data = stage.params.data
    prepared = prepare(load_source(resolve_source(data.source)), data)  # DataError: exit 2
    for name, (x, y) in prepared.splits.items():
        stage.write(paths.split(name), (x, y))
        logger.info("prepare: %s split %d images -> %s", name, len(x), paths.split(name))
        if paths.split(name) != paths.TEST:  # its run's datasets (test: evaluate's alone)
            stage.dataset(paths.split(name), x, y)
    stage.write(paths.DATA_REPORT, prepared.report)
    stage.log_metrics({f"{k}_images": v for k, v in prepared.report["sizes"].items()})
    stage.record.log_dict(prepared.report, "data.json")


if __name__ == "__main__":
    main(__file__)
