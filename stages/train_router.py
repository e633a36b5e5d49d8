"""Stage `train_router`: the router, a classifier over the groups."""

from __future__ import annotations

import numpy as np

from hmoe import paths, runner
from hmoe.data import load_split
from hmoe.nets import build_classifier, copy_trunk


def main() -> None:
    params = runner.init("train_router")
    cfg = params.router
    to_group = np.asarray(params.groups.group_of_label())

    def build():
        model = build_classifier(
            len(params.groups.names),
            width=cfg.width,
            weight_decay=cfg.weight_decay,
            augment=cfg.augment,
            seed=params.seed,
            name="router",
        )
        if cfg.init_from_base:
            copy_trunk(runner.load_model(paths.BASE_MODEL), model)
        return model

    (x, y), (xv, yv) = load_split(paths.TRAIN), load_split(paths.VAL)
    job = runner.ClassifierJob(
        stage="train_router",
        cfg=cfg,
        build=build,
        train=(x, to_group[y]),
        val=(xv, to_group[yv]),
        model_path=paths.ROUTER_MODEL,
        registered_name="hmoe-router",
    )
    runner.run_classifier_job(job, params)


if __name__ == "__main__":
    main()
