"""Stage `train_specialists`: one specialist per group, each on its group's images only.

The groups come from the `groups` stage (params.yaml's partition, or discovered).
Each specialist is its own MLflow run (`train_specialists@<group>`) and resumes on
its own; the stage writes one metrics file with a section per group.
"""

from __future__ import annotations

from hmoe import grouping, modelset, nodes, paths, runner
from hmoe.data import load_split
from hmoe.data.storage import write_json

STAGE = "train_specialists"


def main() -> None:
    params = runner.init(STAGE)
    groups = grouping.load_groups()
    cfg = params.specialists
    train, val = load_split(paths.TRAIN), load_split(paths.VAL)
    metrics = {}
    for group in groups.names:
        ids = groups.class_ids(group)
        subset = {"dustbin": cfg.dustbin, "seed": params.seed}
        job = runner.ClassifierJob(
            stage=f"{STAGE}@{group}",
            cfg=cfg,
            n_outputs=nodes.specialist_outputs(ids, cfg.dustbin),
            train=nodes.specialist_subset(*train, ids, **subset),
            val=nodes.specialist_subset(*val, ids, **subset),
            model_path=paths.specialist_model(group),
            registered_name=modelset.specialist_name(group),
            history=paths.specialist_history(group),
            write_metrics=False,
        )
        metrics[group] = runner.run_classifier_job(job, params)
    write_json(paths.SPECIALIST_METRICS, metrics)


if __name__ == "__main__":
    main()
