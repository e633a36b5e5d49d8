"""Stage `train_base`: the base expert, a classifier over all classes."""

from __future__ import annotations

from hmoe import modelset, paths, runner

STAGE = "train_base"


def main() -> None:
    params = runner.init(STAGE)
    job = runner.base_job(STAGE, params, paths.BASE_MODEL, modelset.BASE)
    runner.run_classifier_job(job, params)


if __name__ == "__main__":
    main()
