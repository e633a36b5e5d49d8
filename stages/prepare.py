"""Stage `prepare`: read `data.source`, verify it, write train/val/test splits."""

from __future__ import annotations

import logging
import sys

from hmoe import paths, runner, tracking
from hmoe.data import DataError, class_counts, load_source, save_split, stratified_split

logger = logging.getLogger("hmoe.prepare")


def main() -> None:
    params = runner.init("prepare")
    try:
        raw = load_source(params.data.source)
        x_tr, y_tr, x_val, y_val = stratified_split(
            raw.x_train,
            raw.y_train,
            val_size=params.data.val_size,
            limit=params.data.limit,
            seed=params.seed,
        )
    except DataError as err:
        logger.error("prepare: %s", err)
        sys.exit(2)
    splits = {"train": (x_tr, y_tr), "val": (x_val, y_val), "test": (raw.x_test, raw.y_test)}
    files = {"train": paths.TRAIN, "val": paths.VAL, "test": paths.TEST}
    for name, (x, y) in splits.items():
        save_split(files[name], x, y)
        logger.info("prepare: %s split %d images -> %s", name, len(x), files[name])
    report = {
        "source": params.data.source,
        "kind": raw.kind,
        "digest": raw.digest,
        "counts": {name: class_counts(y) for name, (_, y) in splits.items()},
        "sizes": {name: len(y) for name, (_, y) in splits.items()},
    }
    runner.write_json(paths.DATA_REPORT, report)
    logged = runner.stage_params("prepare", params)
    with tracking.stage_run("prepare", params.mlflow.experiment, logged, raw.digest):
        tracking.mlflow.log_metrics({f"{k}_images": v for k, v in report["sizes"].items()})
        tracking.mlflow.log_dict(report, "data.json")


if __name__ == "__main__":
    main()
