"""Step `prepare`: the raw data set -> the train, gate, val and test splits.

The splits are stratified by scikit-learn with ``data.split_seed`` (apart from
``seed``, so a seed sweep keeps the same images in every split); the test split is
the source's own, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hmoe.data.constants import PREPARED_SPLITS
from hmoe.data.raw import RawData
from hmoe.data.split import class_counts, prepare_splits
from hmoe.params import DataParams

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Prepared:
    splits: dict[str, Split]  # train, gate, val, test
    report: dict[str, Any]  # source, kind, digest, class counts and sizes per split


def prepare(raw: RawData, data: DataParams) -> Prepared:
    """Hold out val (selection only) and gate (the gates' fitting images) from train."""
    splits = prepare_splits(
        raw.x_train,
        raw.y_train,
        val_size=data.val_size,
        gate_size=data.gate_size,
        limit=data.limit,
        seed=data.split_seed,
    )
    splits[PREPARED_SPLITS[-1]] = (raw.x_test, raw.y_test)  # the source's own test split
    report = {
        "source": data.source,
        "kind": raw.kind,
        "digest": raw.digest,
        "counts": {name: class_counts(y) for name, (_, y) in splits.items()},
        "sizes": {name: len(y) for name, (_, y) in splits.items()},
    }
    return Prepared({n: splits[n] for n in PREPARED_SPLITS}, report)
