"""Stage `groups`: the partition of the classes that every later stage uses.

An explicit partition in params.yaml is validated and written as is. With
`groups: auto`, `grouping.count` groups are discovered by spectral clustering of
the base's confusion matrix on the validation split (HD-CNN, arXiv 1410.0736):
classes the base mixes up share a group, where a specialist can tell them apart.
The validation split fitted no weight, and the test split stays unread.
"""

from __future__ import annotations

import logging

import numpy as np

from hmoe import grouping, modelset, paths, runner, tracking
from hmoe.data import load_split
from hmoe.data.constants import CIFAR10_CLASSES
from hmoe.data.storage import write_json
from hmoe.metrics import confusion
from hmoe.params import Params, parse_groups

STAGE = "groups"
logger = logging.getLogger("hmoe.groups")


def main() -> None:
    params = runner.init(STAGE)
    splits = {} if params.groups is not None else {"val": paths.VAL}
    with runner.tracked_stage(STAGE, params, splits):
        record = partition(params)
        write_json(paths.GROUPS, record)
        tracking.mlflow.log_dict(record, "groups.json")
    logger.info("groups (%s): %s", record["source"], record["groups"])


def partition(params: Params) -> dict:
    """params.yaml's partition, or the one discovered from the base's val confusions."""
    if params.groups is not None:
        return grouping.groups_record(params.groups, "params")
    x, y = load_split(paths.VAL)
    base = modelset.load_model(paths.BASE_MODEL)
    pred = np.argmax(base.predict(x, batch_size=512, verbose=0), axis=1)
    cm = confusion(y, pred, len(CIFAR10_CLASSES))
    found = grouping.discover(cm, CIFAR10_CLASSES, params.grouping.count, params.seed)
    record = grouping.groups_record(parse_groups(dict(found)), "auto")
    record["val_confusion"] = cm.tolist()
    return record


if __name__ == "__main__":
    main()
