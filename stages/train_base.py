"""Stage `train_base`: the base expert, a classifier over all classes."""

from __future__ import annotations

from hmoe import edge, modelset, observer, paths, runtime, stage_hooks
from hmoe.steps.experts import train_base

STAGE = "train_base"


def main() -> None:
    params = runtime.init(STAGE)
    splits = {name: edge.read_split(name) for name in ("train", "val")}
    hooks = stage_hooks.one_network(STAGE, params, "base", paths.BASE_MODEL, modelset.BASE, splits)
    hooks = observer.watch(hooks)
    train_base(params, splits["train"].arrays, splits["val"].arrays, hooks=hooks)


if __name__ == "__main__":
    main()
