"""Stage `train_second_base`: the fair two-network ensemble's second member, on request.

With `controls.second_base: true` it trains a base of the same recipe with another
seed (seed + modelset.SECOND_BASE_SEED_OFFSET); `evaluate` then scores the average of
the two bases as a control, the fair comparison for a mixture that also runs more
than one network.
Otherwise it writes only a note: the folder must exist for DVC either way.
"""

from __future__ import annotations

import logging

import keras

from hmoe import modelset, paths, runner
from hmoe.data.storage import write_json

STAGE = "train_second_base"
logger = logging.getLogger("hmoe.second_base")


def main() -> None:
    params = runner.init(STAGE)
    paths.SECOND_BASE.mkdir(parents=True, exist_ok=True)
    if not params.controls.second_base:
        (paths.SECOND_BASE / "NOT_TRAINED").write_text(
            "controls.second_base is false: no two-network ensemble control\n"
        )
        write_json(paths.stage_reports(STAGE) / "metrics.json", {"trained": 0})
        logger.info("second base not asked for (controls.second_base: false)")
        return
    seed = params.seed + modelset.SECOND_BASE_SEED_OFFSET
    keras.utils.set_random_seed(seed)
    job = runner.base_job(STAGE, params, paths.SECOND_BASE_MODEL, modelset.SECOND_BASE, seed)
    runner.run_classifier_job(job, params)


if __name__ == "__main__":
    main()
