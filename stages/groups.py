"""Stage `groups`: the partition of the classes that every later stage reads
(:func:`hmoe.steps.groups.learn_groups`; :meth:`hmoe.edge.run.Stage.read_groups`).

Its record, reports/groups.json and the run's `groups.json` artifact, says where the
partition came from (`params`, or `auto` with the base's val confusions it was learned
from) and the groups. An explicit partition in params.yaml needs no network: the stage
reads the val split and the base, and starts Keras (its backend's seconds of start-up),
only for `groups: N`, though dvc.yaml lists both as deps either way (a retrained base
reruns this stage, which then rewrites the same file).
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
