"""Stage `groups`: the partition of the classes that every later stage uses
(:func:`hmoe.steps.groups.learn_groups`), written to reports/groups.json.

An explicit partition in params.yaml needs no network: the stage starts Keras (and its
backend's seconds of start-up) only to learn the groups from the base.
"""

from __future__ import annotations

import logging

from hmoe import edge, observer, paths, runtime
from hmoe.data.storage import write_json
from hmoe.steps.groups import learn_groups

STAGE = "groups"
logger = logging.getLogger("hmoe.groups")


def main() -> None:
    params = edge.init(STAGE)
    splits, base = {}, None
    if params.learned_groups:  # groups: N, from the base's confusions on val
        from hmoe import modelset  # loads Keras

        params = runtime.init(STAGE)
        splits = {"val": edge.read_split("val")}
        base = modelset.load_model(paths.BASE_MODEL)
    with observer.stage(STAGE, params, splits) as run:
        val = splits["val"].arrays if splits else ()
        _, record = learn_groups(params, base, val)
        write_json(paths.GROUPS, record)
        run.log_dict(record, "groups.json")
    logger.info("groups (%s): %s", record["source"], record["groups"])


if __name__ == "__main__":
    main()
