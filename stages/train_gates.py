"""Stage `train_gates`: one gate per group, experts and router frozen.

The gates are fitted on the `gate` split, which no expert or router trained on (their
outputs there are as confident as on new images), and early-stopped on `val`.

The frozen networks' outputs are computed once (with the same test-time views that
evaluate uses); every gate epoch then costs only the gates' small dense layers.
"""

from __future__ import annotations

from hmoe import paths, runner
from hmoe.data import load_split

STAGE = "train_gates"


def main() -> None:
    params = runner.init(STAGE)
    job = runner.GateJob(
        stage=STAGE,
        fit=load_split(paths.GATE),
        select=load_split(paths.VAL),
        split_files={"gate": paths.GATE, "val": paths.VAL},
    )
    runner.run_gate_job(job, params)


if __name__ == "__main__":
    main()
