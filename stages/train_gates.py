"""Stage `train_gates`: one gate per group, experts and router frozen
(:func:`hmoe.steps.gates.train_gates`): fitted on the held-out gate split (or, as the
in-sample control, `gates.fit_on: train`), early-stopped on val.
"""

from __future__ import annotations

import keras

from hmoe import edge, modelset, observer, paths, runtime
from hmoe.data.storage import write_json
from hmoe.gates import GateInput
from hmoe.mixture import load_mixture
from hmoe.steps.gates import gate_fit_split, train_gates

STAGE = "train_gates"


def main() -> None:
    params = runtime.init(STAGE)
    groups = edge.read_groups()
    fit_on = params.gates.fit_on
    seen = GateInput(params.gates.inputs)
    splits = {name: edge.read_split(name) for name in ("gate", "val")}
    train = edge.read_split("train").arrays if fit_on == "train" else None
    fit = gate_fit_split(fit_on, splits["gate"].arrays, train)
    logged = {fit_on: edge.read_split("train") if fit_on == "train" else splits["gate"]}
    experts = load_mixture(
        groups,
        modelset.model_files(groups.names, gates=False),
        routing=params.mixture.routing,
        tta=params.mixture.tta,
        gate_input=seen,
        gates=False,
        router_fusion=params.mixture.router_fusion,
    )
    reports = paths.stage_reports(STAGE)
    reports.mkdir(parents=True, exist_ok=True)
    with observer.stage(STAGE, params, logged | {"val": splits["val"]}) as run:
        epoch_log = keras.callbacks.CSVLogger(str(reports / "history.csv"))
        callbacks = [*run.callbacks(), epoch_log]
        trained = train_gates(
            params, groups, experts, fit, splits["val"].arrays, callbacks=callbacks
        )
        for g, gate in zip(groups.names, trained.gates, strict=True):
            edge.save_model(gate, paths.gate_model(g))
        write_json(reports / "metrics.json", trained.summary)
        run.log_metrics({f"final_{k}": v for k, v in trained.summary.items()})
        for i, (g, gate) in enumerate(zip(groups.names, trained.gates, strict=True)):
            example = trained.val_outputs.for_gate(i, seen)[:4]
            run.register_network(gate, modelset.gate_name(g), example, paths.gate_model(g))


if __name__ == "__main__":
    main()
