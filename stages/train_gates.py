"""Stage `train_gates`: one gate per group, experts and router frozen.

The gates are fitted on the `gate` split, which no expert or router trained on (their
outputs there are as confident as on new images), and early-stopped on `val`.
`gates.fit_on: train` fits them on as many of the experts' own training images
instead: the in-sample control that shows what held-out fitting is worth.

The frozen networks' outputs are computed once (with the same test-time views that
evaluate uses); every gate epoch then costs only the gates' small dense layers.
"""

from __future__ import annotations

from hmoe import grouping, nodes, paths, runner
from hmoe.data import load_split

STAGE = "train_gates"


def main() -> None:
    params = runner.init(STAGE)
    fit_on = params.gates.fit_on
    fit_file = paths.GATE if fit_on == "gate" else paths.TRAIN
    train = load_split(paths.TRAIN) if fit_on == "train" else None
    job = runner.GateJob(
        stage=STAGE,
        groups=grouping.load_groups(),
        fit=nodes.gate_fit_split(fit_on, load_split(paths.GATE), train),
        select=load_split(paths.VAL),
        split_files={fit_on: fit_file, "val": paths.VAL},
    )
    runner.run_gate_job(job, params)


if __name__ == "__main__":
    main()
