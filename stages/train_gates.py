"""Stage `train_gates`: one gate per group, experts and router frozen
(:func:`hmoe.steps.gates.train_gates`): fitted on the held-out gate split (or, as the
in-sample control, `gates.fit_on: train`), early-stopped on val. The gates train as one
network inside the shared hooks (:class:`hmoe.edge.networks.NetworkHooks`: their run,
epoch log, images per second and cost); the stage then writes each gate and registers
it with its own input example, and writes the frozen networks' evidence on val
(:mod:`hmoe.evidence`).
"""

from __future__ import annotations

from hmoe import modelset, paths
from hmoe.edge.networks import Network, NetworkHooks
from hmoe.edge.run import Stage, main
from hmoe.evidence import evidence_writer, split_evidence
from hmoe.gates import GateInput
from hmoe.mixture import load_mixture
from hmoe.steps.gates import gate_fit_split, train_gates

# Several gates, one fit: the stage writes and registers each gate, and their metrics.
GATES = Network(None, paths.GATES_HISTORY, None, "")


def run(stage: Stage) -> None:
    stage.start_keras()
    params, groups = stage.params, stage.read_groups()
    fit_on, seen = params.gates.fit_on, GateInput(params.gates.inputs)
    gate = stage.split(paths.GATE, logged=fit_on == "gate")
    train = stage.split(paths.TRAIN) if fit_on == "train" else None
    val = stage.split(paths.VAL)
    experts = load_mixture(
        groups,
        modelset.model_files(groups.names, gates=False),
        routing=params.mixture.routing,
        tta=params.mixture.tta,
        gate_input=seen,
        gates=False,
        router_fusion=params.mixture.router_fusion,
        read=stage.read,
    )
    fit = gate_fit_split(fit_on, gate, train)
    hooks = NetworkHooks(stage, {"gates": GATES})
    trained = train_gates(params, groups, experts, fit, val, hooks=hooks)
    for g, model in zip(groups.names, trained.gates, strict=True):
        stage.write(paths.gate_model(g), model)
    stage.write(paths.GATES_METRICS, trained.summary)
    ids = {g: list(groups.class_ids(g)) for g in groups.names}
    evidence = split_evidence(trained.val_outputs, trained.val_weights, val[1], None)
    stage.write(paths.GATES_VAL_EVIDENCE, evidence_writer({"val": evidence}, ids))
    for i, (g, model) in enumerate(zip(groups.names, trained.gates, strict=True)):
        example = trained.val_outputs.for_gate(i, seen)[:4]
        stage.register(model, modelset.gate_name(g), paths.gate_model(g), example=example)


if __name__ == "__main__":
    main(__file__)
