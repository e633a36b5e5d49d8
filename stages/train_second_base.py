"""Stage `train_second_base`: the two-bases control's second member, on request.

With `controls.second_base: true` it trains a base of the same recipe with another
seed; `evaluate` then scores the average of the two bases as a control, the fair
comparison for a mixture that also runs more than one network. Otherwise it writes
only a note, without starting Keras: the folder must exist for DVC either way.
"""

from __future__ import annotations

import logging

from hmoe import edge, observer, paths, runtime
from hmoe.data.storage import write_json
from hmoe.params import Params

STAGE = "train_second_base"
logger = logging.getLogger("hmoe.second_base")


def main() -> None:
    params = edge.init(STAGE)
    paths.SECOND_BASE.mkdir(parents=True, exist_ok=True)
    if not params.controls.second_base:
        (paths.SECOND_BASE / "NOT_TRAINED").write_text(
            "controls.second_base is false: no two-network ensemble control\n"
        )
        write_json(paths.stage_reports(STAGE) / "metrics.json", {"trained": 0})
        logger.info("second base not asked for (controls.second_base: false)")
        return
    train(runtime.init(STAGE))


def train(params: Params) -> None:
    """The second base, with the first one's recipe and its own seed."""
    from hmoe import modelset, stage_hooks  # these load Keras
    from hmoe.steps.experts import train_base

    splits = {name: edge.read_split(name) for name in ("train", "val")}
    hooks = observer.watch(
        stage_hooks.one_network(
            STAGE, params, "second_base", paths.SECOND_BASE_MODEL, modelset.SECOND_BASE, splits
        )
    )
    train_base(params, splits["train"].arrays, splits["val"].arrays, hooks=hooks, second=True)


if __name__ == "__main__":
    main()
