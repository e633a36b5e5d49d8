"""Stage `train_base`: the base expert, a classifier over all classes."""

from __future__ import annotations

from hmoe import modelset, paths, runner
from hmoe.data import load_split
from hmoe.data.constants import CIFAR10_CLASSES

STAGE = "train_base"


def main() -> None:
    params = runner.init(STAGE)
    job = runner.ClassifierJob(
        stage=STAGE,
        cfg=params.base,
        n_outputs=len(CIFAR10_CLASSES),
        train=load_split(paths.TRAIN),
        val=load_split(paths.VAL),
        model_path=paths.BASE_MODEL,
        registered_name=modelset.BASE,
    )
    runner.run_classifier_job(job, params)


if __name__ == "__main__":
    main()
