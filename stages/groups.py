"""Stage `groups`: the partition of the classes that every later stage uses
(:func:`hmoe.steps.groups.learn_groups`), written to reports/groups.json.

An explicit partition in params.yaml needs no network: the stage starts Keras (and its
backend's seconds of start-up) only to learn the groups from the base.
"""

from __future__ import annotations

import logging

from hmoe import paths
from hmoe.edge.run import Stage, main
from hmoe.steps.groups import learn_groups

logger = logging.getLogger("hmoe.groups")


def run(stage: Stage) -> None:
    base, val = None, ()
    if stage.params.learned_groups:  # groups: N, from the base's confusions on val
        from hmoe import modelset  # noqa: F401  reads the base (loads Keras)

        stage.start_keras()
        val = stage.split(paths.VAL)
        base = stage.read(paths.BASE_MODEL)
    _, record = learn_groups(stage.params, base, val)
    stage.write(paths.GROUPS, record)
    stage.record.log_dict(record, "groups.json")
    logger.info("groups (%s): %s", record["source"], record["groups"])


if __name__ == "__main__":
    main(__file__)
