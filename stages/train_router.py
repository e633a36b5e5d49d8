"""Stage `train_router`: the router, a classifier over the groups.

By default a head on the frozen base trunk (`router.freeze_trunk`): one cheap pass.
"""

from __future__ import annotations

from hmoe import modelset, nodes, paths, runner
from hmoe.data import load_split

STAGE = "train_router"


def main() -> None:
    params = runner.init(STAGE)
    (x, y), (xv, yv) = load_split(paths.TRAIN), load_split(paths.VAL)
    job = runner.ClassifierJob(
        stage=STAGE,
        cfg=params.router,
        n_outputs=len(params.groups.names),
        train=(x, nodes.group_labels(y, params.groups)),
        val=(xv, nodes.group_labels(yv, params.groups)),
        model_path=paths.ROUTER_MODEL,
        registered_name=modelset.ROUTER,
    )
    runner.run_classifier_job(job, params)


if __name__ == "__main__":
    main()
