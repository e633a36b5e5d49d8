"""Stage `train_router`: the router, a classifier over the groups.

By default a head on the frozen base trunk (`router.freeze_trunk`): one cheap pass.
"""

from __future__ import annotations

from hmoe import grouping, modelset, nodes, paths, runner
from hmoe.data import load_split

STAGE = "train_router"


def main() -> None:
    params = runner.init(STAGE)
    groups = grouping.load_groups()
    (x, y), (xv, yv) = load_split(paths.TRAIN), load_split(paths.VAL)
    job = runner.ClassifierJob(
        stage=STAGE,
        cfg=params.router,
        n_outputs=len(groups.names),
        train=(x, nodes.group_labels(y, groups)),
        val=(xv, nodes.group_labels(yv, groups)),
        model_path=paths.ROUTER_MODEL,
        registered_name=modelset.ROUTER,
    )
    runner.run_classifier_job(job, params)


if __name__ == "__main__":
    main()
