"""Stage `train_base`: the base expert, a classifier over all classes."""

from __future__ import annotations

from hmoe import paths, runner
from hmoe.data import load_split
from hmoe.nets import build_classifier


def main() -> None:
    params = runner.init("train_base")
    cfg = params.base
    job = runner.ClassifierJob(
        stage="train_base",
        cfg=cfg,
        build=lambda: build_classifier(
            len(params.groups.classes),
            width=cfg.width,
            weight_decay=cfg.weight_decay,
            augment=cfg.augment,
            seed=params.seed,
            name="base",
        ),
        train=load_split(paths.TRAIN),
        val=load_split(paths.VAL),
        model_path=paths.BASE_MODEL,
        registered_name="hmoe-base",
    )
    runner.run_classifier_job(job, params)


if __name__ == "__main__":
    main()
