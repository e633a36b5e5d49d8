"""Stage `train_second_base`: the two-bases control's second member, on request.

With `controls.second_base: true` it trains a base of the same recipe with another
seed; `evaluate` then scores the average of the two bases as a control, the fair
comparison for a mixture that also runs more than one network. Otherwise it writes
only a note (and an epoch log with no epochs), without starting Keras: DVC's outputs
must exist either way.
"""

from __future__ import annotations

import logging

from hmoe import modelset, paths
from hmoe.edge.networks import Network, NetworkHooks
from hmoe.edge.run import Stage, main

logger = logging.getLogger("hmoe.second_base")
SECOND = Network(
    paths.SECOND_BASE_MODEL,
    paths.SECOND_BASE_HISTORY,
    paths.SECOND_BASE_METRICS,
    modelset.SECOND_BASE,
)
NOTE = "controls.second_base is false: no two-network ensemble control\n"


def run(stage: Stage) -> None:
    if not stage.params.controls.second_base:
        stage.write(paths.SECOND_BASE / "NOT_TRAINED", NOTE)
        stage.write(SECOND.history, "epoch\n")
        stage.write(SECOND.metrics, {"trained": 0})
        logger.info("second base not asked for (controls.second_base: false)")
        return
    from hmoe.steps.experts import train_base  # loads Keras

    stage.start_keras()
    train, val = stage.split(paths.TRAIN), stage.split(paths.VAL)
    hooks = NetworkHooks(stage, {"second_base": SECOND})
    train_base(stage.params, train, val, hooks=hooks, second=True)


if __name__ == "__main__":
    main(__file__)
