"""Stage `train_specialists`: one specialist per group, each on its group's images.

The groups come from the `groups` stage (params.yaml's partition, or discovered).
Each specialist is its own MLflow run (`train_specialists@<group>`), resumes on its
own and starts from the base as saved (loaded afresh for each); the stage writes one
metrics file with a section per group.
"""

from __future__ import annotations

from hmoe import edge, modelset, observer, paths, runtime, stage_hooks
from hmoe.data.storage import write_json
from hmoe.steps.experts import train_specialist

STAGE = "train_specialists"


def main() -> None:
    params = runtime.init(STAGE)
    groups = edge.read_groups()
    splits = {name: edge.read_split(name) for name in ("train", "val")}
    outputs = {
        f"specialist@{g}": stage_hooks.NetworkOutput(
            paths.specialist_model(g),
            modelset.specialist_name(g),
            paths.specialist_history(g),
            None,
        )
        for g in groups.names
    }
    hooks = observer.watch(stage_hooks.StageHooks(STAGE, params, outputs, splits))
    summaries = {}
    for g in groups.names:
        spec = params.specialists
        base = stage_hooks.load_base(spec.init_from_base or spec.distill > 0)
        trained = train_specialist(
            params,
            groups,
            g,
            splits["train"].arrays,
            splits["val"].arrays,
            base=base,
            hooks=hooks,
        )
        summaries[g] = trained.summary
    write_json(paths.SPECIALIST_METRICS, summaries)


if __name__ == "__main__":
    main()
