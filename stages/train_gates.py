"""Stage `train_gates`: one gate per group, experts and router frozen.

The frozen networks' outputs on train and val are computed once; every gate epoch
then costs only the gates' small dense layers.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from hmoe import paths, runner, tracking
from hmoe.data import load_split
from hmoe.metrics import accuracy
from hmoe.mixture import Mixture, Outputs, combine, route_weights
from hmoe.nets import build_gate
from hmoe.train import fit_gates

logger = logging.getLogger("hmoe.train_gates")
STAGE = "train_gates"


def trainer_inputs(out: Outputs, routing: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return route_weights(out.router, routing), out.base, np.stack(out.specs, axis=1)


def main() -> None:
    params = runner.init(STAGE)
    groups, cfg = params.groups, params.gates
    experts = Mixture(
        router=runner.load_model(paths.ROUTER_MODEL),
        base=runner.load_model(paths.BASE_MODEL),
        specialists={g: runner.load_model(paths.specialist_model(g)) for g in groups.names},
        gates={},
        groups=groups,
    )
    (x, y), (xv, yv) = load_split(paths.TRAIN), load_split(paths.VAL)
    reports = paths.stage_reports(STAGE)
    reports.mkdir(parents=True, exist_ok=True)
    logged = runner.stage_params(STAGE, params)
    with tracking.stage_run(STAGE, params.mlflow.experiment, logged, runner.data_digest()):
        start = time.perf_counter()
        out_tr, out_val = experts.outputs(x), experts.outputs(xv)
        logger.info(
            "frozen outputs on %d + %d images in %.1fs",
            len(x),
            len(xv),
            time.perf_counter() - start,
        )
        gates = [
            build_gate(len(groups.classes), hidden=cfg.hidden, name=f"gate_{g}")
            for g in groups.names
        ]
        history = fit_gates(
            gates,
            trainer_inputs(out_tr, params.mixture.routing),
            y,
            trainer_inputs(out_val, params.mixture.routing),
            yv,
            cfg,
            callbacks=[tracking.EpochLogger()],
        )
        route = route_weights(out_val.router, params.mixture.routing)
        weights = [
            np.asarray(gate.predict(out_val.gate_inputs(i), verbose=0))
            for i, gate in enumerate(gates)
        ]
        metrics = {
            "val_accuracy": accuracy(combine(route, weights, out_val.base, out_val.specs), yv),
            "val_base_accuracy": accuracy(out_val.base, yv),
            "val_loss": float(min(history.history["val_loss"])),
            "epochs_run": len(history.history["loss"]),
            "fit_s": time.perf_counter() - start,
        }
        for g, gate in zip(groups.names, gates, strict=True):
            runner.save_model(gate, paths.gate_model(g))
        runner.write_json(reports / "metrics.json", metrics)
        _write_history(history.history, reports / "history.csv")
        tracking.mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        if params.mlflow.register:
            for i, (g, gate) in enumerate(zip(groups.names, gates, strict=True)):
                tracking.log_keras_model(
                    gate,
                    name=f"gate-{g}",
                    example=out_val.gate_inputs(i)[:4],
                    out_path=paths.gate_model(g),
                    registered_name=f"hmoe-gate-{g}",
                )
    logger.info(
        "gates: val mixture accuracy %.4f (base %.4f)",
        metrics["val_accuracy"],
        metrics["val_base_accuracy"],
    )


def _write_history(history: dict[str, list[float]], path) -> None:
    keys = list(history)
    rows = [",".join(["epoch", *keys])]
    for i in range(len(history[keys[0]])):
        rows.append(",".join([str(i), *(f"{history[k][i]:.6f}" for k in keys)]))
    path.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
