"""Stage `train_base`: the base expert, a classifier over all classes."""

from __future__ import annotations

from hmoe import modelset, paths
from hmoe.edge.networks import Network, NetworkHooks
from hmoe.edge.run import Stage, main
from hmoe.steps.experts import train_base

BASE = Network(paths.BASE_MODEL, paths.BASE_HISTORY, paths.BASE_METRICS, modelset.BASE)


def run(stage: Stage) -> None:
    stage.start_keras()
    train, val = stage.split(paths.TRAIN), stage.split(paths.VAL)
    train_base(stage.params, train, val, hooks=NetworkHooks(stage, {"base": BASE}))


if __name__ == "__main__":
    main(__file__)
