"""Stage `prepare`: read `data.source`, verify it, write train/gate/val/test splits."""

from __future__ import annotations

import logging

from hmoe import edge, observer, paths
from hmoe.data import load_source, save_split
from hmoe.data.storage import write_json
from hmoe.steps.data import prepare

logger = logging.getLogger("hmoe.prepare")
STAGE = "prepare"


def main() -> None:
    params = edge.init(STAGE)  # a DataError: one line, exit 2
    prepared = prepare(load_source(edge.resolve_source(params.data.source)), params.data)
    splits = {}
    for name, (x, y) in prepared.splits.items():
        path = edge.SPLIT_FILES[name]
        save_split(path, x, y)
        splits[name] = edge.SplitFile(name, path, x, y)
        logger.info("prepare: %s split %d images -> %s", name, len(x), path)
    write_json(paths.DATA_REPORT, prepared.report)
    logged = {k: splits[k] for k in ("train", "gate", "val")}  # test: evaluate's alone
    with observer.stage(STAGE, params, logged) as run:
        run.log_metrics({f"{k}_images": v for k, v in prepared.report["sizes"].items()})
        run.log_dict(prepared.report, "data.json")


if __name__ == "__main__":
    main()
