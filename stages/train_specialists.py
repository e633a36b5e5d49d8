"""Stage `train_specialists`: one specialist per group, each on its group's images.

The groups come from the `groups` stage (params.yaml's partition, or discovered).
Each specialist is its own MLflow run (`train_specialists@<group>`), resumes on its
own and starts from the base as saved (read afresh for each); the stage writes one
metrics file with a section per group.
"""

from __future__ import annotations

from hmoe import modelset, paths
from hmoe.edge.networks import Network, NetworkHooks, base_for
from hmoe.edge.run import Stage, main
from hmoe.steps.experts import train_specialist


def specialist(group: str) -> Network:
    history = paths.specialist_history(group)
    return Network(paths.specialist_model(group), history, None, modelset.specialist_name(group))


def run(stage: Stage) -> None:
    stage.start_keras()
    params, groups = stage.params, stage.read_groups()
    train, val = stage.split(paths.TRAIN), stage.split(paths.VAL)
    hooks = NetworkHooks(stage, {f"specialist@{g}": specialist(g) for g in groups.names})
    from_base = params.specialists.init_from_base or params.specialists.distill > 0
    summaries = {}
    for g in groups.names:
        base = base_for(stage, from_base)
        trained = train_specialist(params, groups, g, train, val, base=base, hooks=hooks)
        summaries[g] = trained.summary
    stage.write(paths.SPECIALIST_METRICS, summaries)


if __name__ == "__main__":
    main(__file__)
