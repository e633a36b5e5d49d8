"""Stage `train_base`: the base expert, a classifier over all classes."""

from __future__ import annotations

from hmoe import modelset, paths
from hmoe.edge.networks import Network, NetworkHooks
from hmoe.edge.run import Stage, main
from hmoe.steps.experts import train_base

REPORTS = paths.stage_reports("train_base")
BASE = Network(paths.BASE_MODEL, REPORTS / "history.csv", REPORTS / "metrics.json", modelset.BASE)


def run(stage: Stage) -> None:
    stage.start_keras()
    train, val = stage.split(paths.TRAIN), stage.split(paths.VAL)
    train_base(stage.params, train, val, hooks=NetworkHooks(stage, {"base": BASE}))


if __name__ == "__main__":
    main(__file__)
