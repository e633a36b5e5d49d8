"""Stage `train_router`: the router, a classifier over the groups.

By default a head on the frozen base trunk (`router.start: head`): one cheap pass.
"""

from __future__ import annotations

from hmoe import edge, modelset, observer, paths, runtime, stage_hooks
from hmoe.steps.experts import train_router

STAGE = "train_router"


def main() -> None:
    params = runtime.init(STAGE)
    groups = edge.read_groups()
    base = stage_hooks.load_base(params.router.init_from_base)
    splits = {name: edge.read_split(name) for name in ("train", "val")}
    hooks = stage_hooks.one_network(
        STAGE, params, "router", paths.ROUTER_MODEL, modelset.ROUTER, splits
    )
    hooks = observer.watch(hooks)
    train_router(
        params, groups, splits["train"].arrays, splits["val"].arrays, base=base, hooks=hooks
    )


if __name__ == "__main__":
    main()
