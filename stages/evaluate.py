"""Stage `evaluate`: the only stage that reads the test split.

Scores the mixture and every control (:func:`hmoe.steps.evaluate.evaluate`), writes
metrics, plots and the report, registers the assembled mixture as the `hmoe-mixture`
pyfunc and closes the pipeline's parent run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hmoe import edge, modelset, paths, runtime
from hmoe.data.storage import atomic_write, file_md5, write_json
from hmoe.gates import GateInput
from hmoe.metrics import per_class_accuracy
from hmoe.mixture import Mixture, load_mixture
from hmoe.report import read_histories, write_report
from hmoe.steps.evaluate import Evaluation, evaluate

logger = logging.getLogger("hmoe.evaluate")
STAGE = "evaluate"
CONFIG_FILE = Path(".cache/hmoe/mixture-config.json")
TIMED_IMAGES = 1000  # enough for a stable rate; the full test split would double evaluate


def time_inference(mix: Mixture, x: np.ndarray) -> dict[str, float]:
    """Routed (each branch on its share) vs dense (every network on every image).

    Logged to MLflow only: timings are not a DVC metric (identical models would
    show a difference in every `dvc metrics diff`).
    """
    start = time.perf_counter()
    routed = mix.predict_proba(x)
    routed_s = time.perf_counter() - start
    start = time.perf_counter()
    dense = mix.predict_dense(x)
    dense_s = time.perf_counter() - start
    return {
        "inference_routed_images_per_s": len(x) / routed_s,
        "inference_dense_images_per_s": len(x) / dense_s,
        "inference_routed_dense_max_abs_diff": float(np.abs(routed - dense).max()),
    }


def write_plots(y: np.ndarray, labels: dict, classes: list[str]) -> None:
    """Confusion rows (DVC `confusion` template) and per-class accuracy."""
    names = np.asarray(classes)
    confusion_rows = pd.DataFrame({"actual": names[y], "predicted": names[labels["mixture"]]})
    per_class = pd.DataFrame(
        {
            "class": classes,
            "base": per_class_accuracy(y, labels["base"], len(classes)),
            "mixture": per_class_accuracy(y, labels["mixture"], len(classes)),
        }
    )
    atomic_write(paths.CONFUSION, lambda tmp: confusion_rows.to_csv(tmp, index=False))
    atomic_write(
        paths.PER_CLASS, lambda tmp: per_class.to_csv(tmp, index=False, float_format="%.4f")
    )


def histories(groups) -> dict[str, Path]:
    """The epoch logs of the networks this run trained, one figure panel each."""
    files = {"base": paths.stage_reports("train_base") / "history.csv"}
    if paths.SECOND_BASE_MODEL.is_file():
        files["second base"] = paths.stage_reports("train_second_base") / "history.csv"
    files |= {f"specialist {g}": paths.specialist_history(g) for g in groups.names}
    files["router"] = paths.stage_reports("train_router") / "history.csv"
    return files


def provenance(params, parent: str) -> dict[str, str]:
    """Which run, code, params, data, machine and runtime the report comes from."""
    import os

    import keras

    from hmoe import tracking

    data = json.loads(paths.DATA_REPORT.read_text())
    run = os.environ.get("DVC_EXP_NAME")
    commit = tracking.git_commit()[:10]
    changed = edge.changed_params(params)
    walls = tracking.stage_wall_times(parent)
    return {
        "run": f"DVC experiment {run} (baseline {commit})" if run else f"commit {commit}",
        "MLflow parent run": parent,
        "params that differ from params.yaml at HEAD": ", ".join(
            f"{k}={v}" for k, v in changed.items()
        )
        or "none",
        "data": f"{data['source']} ({data['kind']}, {data['digest']})",
        "split sizes": ", ".join(f"{k} {v:,}" for k, v in data["sizes"].items()),
        "machine": runtime.machine(),
        "backend, precision, compiled": f"{keras.backend.backend()}, "
        f"{keras.mixed_precision.global_policy().name}, "
        f"{runtime.resolve_jit(params.train.jit_compile)[0]}",
        "stage wall times (s)": ", ".join(f"{k} {v:.0f}" for k, v in walls.items()) or "n/a",
    }


def report(result: Evaluation, y: np.ndarray, groups, prov: dict[str, str]) -> list[Path]:
    record = json.loads(paths.GROUPS.read_text())
    return write_report(
        paths.REPORT,
        metrics=result.metrics,
        y=y,
        base_pred=result.labels["base"],
        mix_pred=result.labels["mixture"],
        router_probs=result.router_probs,
        gate_ws=result.gate_weights,
        classes=list(groups.classes),
        group_names=groups.names,
        histories=read_histories(histories(groups)),
        best_control=result.best_control,
        partition=groups.to_dict(),
        partition_source=record["source"],
        provenance=prov,
    )


def main() -> None:
    params = runtime.init(STAGE)
    groups = edge.read_groups()
    mix = load_mixture(
        groups,
        modelset.model_files(groups.names),
        routing=params.mixture.routing,
        tta=params.mixture.tta,
        gate_input=GateInput(params.gates.inputs),
        router_fusion=params.mixture.router_fusion,
    )
    second = paths.SECOND_BASE_MODEL
    second_base = modelset.load_model(second) if second.is_file() else None
    test = edge.read_split("test")
    x, y = test.arrays
    with edge.tracked(STAGE, params, {"test": test}) as parent:
        from hmoe import registry, tracking

        result = evaluate(mix, (x, y), second_base=second_base, seed=params.seed)
        metrics = result.metrics
        write_plots(y, result.labels, list(groups.classes))
        write_json(paths.METRICS, metrics)
        report_files = report(result, y, groups, provenance(params, parent))
        tracking.log_metrics(metrics | time_inference(mix, x[:TIMED_IMAGES]))
        tracking.log_evaluation(result.best_control, y, result.labels["mixture"], groups)
        tracking.log_artifacts([paths.PER_CLASS])
        if params.mlflow.register:
            from hmoe.serving import mixture_config

            config = mixture_config(groups, params.mixture, params.gates.inputs)
            files = modelset.model_files(groups.names)
            version = registry.register_mixture(groups, config, files, x[:2], CONFIG_FILE)
            val = json.loads((paths.stage_reports("train_gates") / "metrics.json").read_text())
            registry.apply_champion_rule(version, float(val["val_accuracy"]), file_md5(paths.VAL))
    registry.link_lineage(parent, groups)
    tracking.finish_parent(parent, metrics, report_files, {"best_control": result.best_control})
    logger.info(
        "test accuracy: mixture %.4f, base %.4f, router %.4f; mixture - base %+.4f "
        "(95 %% CI %+.4f .. %+.4f, McNemar p=%.3g); best control %s",
        metrics["mixture_accuracy"],
        metrics["base_accuracy"],
        metrics["router_accuracy"],
        metrics["vs_base_diff"],
        metrics["vs_base_ci_low"],
        metrics["vs_base_ci_high"],
        metrics["vs_base_mcnemar_p"],
        result.best_control,
    )


if __name__ == "__main__":
    main()
