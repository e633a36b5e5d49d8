"""Stage `train_specialist@<group>`: one specialist, trained on its group's images only.

Usage: python -m stages.train_specialist <group>
"""

from __future__ import annotations

import argparse

import numpy as np

from hmoe import paths, runner
from hmoe.data import load_split
from hmoe.nets import build_classifier, copy_trunk


def group_subset(x: np.ndarray, y: np.ndarray, class_ids: tuple[int, ...]):
    """Images of the group's classes, labels renumbered 0..k-1 in group order."""
    keep = np.isin(y, class_ids)
    local = {cid: i for i, cid in enumerate(class_ids)}
    return x[keep], np.array([local[int(c)] for c in y[keep]], dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("group", help="group name from params.yaml `groups`")
    group = parser.parse_args().group
    params = runner.init(f"train_specialist@{group}")
    ids = params.groups.class_ids(group)
    cfg = params.specialists

    def build():
        model = build_classifier(
            len(ids),
            width=cfg.width,
            weight_decay=cfg.weight_decay,
            augment=cfg.augment,
            seed=params.seed,
            name=f"specialist_{group}",
        )
        if cfg.init_from_base:
            copy_trunk(runner.load_model(paths.BASE_MODEL), model)
        return model

    job = runner.ClassifierJob(
        stage=f"train_specialist@{group}",
        cfg=cfg,
        build=build,
        train=group_subset(*load_split(paths.TRAIN), ids),
        val=group_subset(*load_split(paths.VAL), ids),
        model_path=paths.specialist_model(group),
        registered_name=f"hmoe-specialist-{group}",
    )
    runner.run_classifier_job(job, params)


if __name__ == "__main__":
    main()
