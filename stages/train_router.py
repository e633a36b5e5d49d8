"""Stage `train_router`: the router, a classifier over the groups.

By default a head on the frozen base trunk (`router.start: head`): one cheap pass.
"""

from __future__ import annotations

from hmoe import modelset, paths
from hmoe.edge.networks import Network, NetworkHooks, base_for
from hmoe.edge.run import Stage, main
from hmoe.steps.experts import train_router

ROUTER = Network(paths.ROUTER_MODEL, paths.ROUTER_HISTORY, paths.ROUTER_METRICS, modelset.ROUTER)


def run(stage: Stage) -> None:
    stage.start_keras()
    groups = stage.read_groups()
    base = base_for(stage, stage.params.router.init_from_base)
    train, val = stage.split(paths.TRAIN), stage.split(paths.VAL)
    hooks = NetworkHooks(stage, {"router": ROUTER})
    train_router(stage.params, groups, train, val, base=base, hooks=hooks)


if __name__ == "__main__":
    main(__file__)
