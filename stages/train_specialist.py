"""Stage `train_specialist@<group>`: one specialist, trained on its group's images only.

Usage: python -m stages.train_specialist <group>
"""

from __future__ import annotations

import argparse

from hmoe import modelset, nodes, paths, runner
from hmoe.data import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("group", help="group name from params.yaml `groups`")
    group = parser.parse_args().group
    stage = f"train_specialist@{group}"
    params = runner.init(stage)
    ids = params.groups.class_ids(group)
    job = runner.ClassifierJob(
        stage=stage,
        cfg=params.specialists,
        n_outputs=len(ids),
        train=nodes.specialist_subset(*load_split(paths.TRAIN), ids),
        val=nodes.specialist_subset(*load_split(paths.VAL), ids),
        model_path=paths.specialist_model(group),
        registered_name=modelset.specialist_name(group),
    )
    runner.run_classifier_job(job, params)


if __name__ == "__main__":
    main()
