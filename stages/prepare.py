"""Stage `prepare`: read `data.source`, verify it, write train/val/test splits."""

from __future__ import annotations

import logging
from pathlib import Path

from hmoe import paths, startup, tracking
from hmoe.data import class_counts, load_source, save_split
from hmoe.data.split import prepare_splits
from hmoe.data.storage import write_json

logger = logging.getLogger("hmoe.prepare")
STAGE = "prepare"


def resolve_source(source: str) -> str:
    """A relative path means relative to the repository root, also in DVC's temp copies
    of queued experiments (so the committed params name one path for every machine).
    """
    if source.strip().lower() == "keras" or Path(source).expanduser().is_absolute():
        return source
    return str(tracking.repo_root() / source)


def main() -> None:
    params = startup.init(STAGE, keras_setup=False)  # a DataError: one line, exit 2
    raw = load_source(resolve_source(params.data.source))
    splits = prepare_splits(
        raw.x_train,
        raw.y_train,
        val_size=params.data.val_size,
        gate_size=params.data.gate_size,
        limit=params.data.limit,
        seed=params.data.split_seed,
    )
    splits["test"] = (raw.x_test, raw.y_test)
    files = {"train": paths.TRAIN, "gate": paths.GATE, "val": paths.VAL, "test": paths.TEST}
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
    write_json(paths.DATA_REPORT, report)
    with tracking.stage_run(
        STAGE, params.mlflow.experiment, startup.stage_params(STAGE, params), raw.digest
    ):
        tracking.mlflow.log_metrics({f"{k}_images": v for k, v in report["sizes"].items()})
        tracking.mlflow.log_dict(report, "data.json")
        for name in ("train", "gate", "val"):
            tracking.log_split(name, files[name])


if __name__ == "__main__":
    main()
