"""Stage `evaluate`: the only stage that reads the test split.

Scores the mixture and its controls (:func:`hmoe.nodes.evaluate_mixture`), writes
metrics, plots and the report, registers the assembled mixture as the
`hmoe-mixture` pyfunc and closes the pipeline's parent run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

import hmoe
from hmoe import grouping, modelset, paths, runner, tracking
from hmoe.controls import control_predictions, paired_metrics
from hmoe.data import load_split
from hmoe.data.storage import atomic_write, write_json
from hmoe.metrics import confusion, per_class_accuracy
from hmoe.mixture import Mixture
from hmoe.nodes import evaluate_mixture
from hmoe.params import Groups, Params
from hmoe.registry import apply_champion_rule, versions_for_outputs
from hmoe.report import read_histories, write_report

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


def write_plots(y: np.ndarray, pred: dict, classes: list[str]) -> None:
    """Confusion rows (DVC `confusion` template) and per-class accuracy."""
    names = np.asarray(classes)
    confusion_rows = pd.DataFrame({"actual": names[y], "predicted": names[pred["mixture"]]})
    per_class = pd.DataFrame(
        {
            "class": classes,
            "base": per_class_accuracy(y, pred["base"], len(classes)),
            "mixture": per_class_accuracy(y, pred["mixture"], len(classes)),
        }
    )
    atomic_write(paths.CONFUSION, lambda tmp: confusion_rows.to_csv(tmp, index=False))
    atomic_write(
        paths.PER_CLASS, lambda tmp: per_class.to_csv(tmp, index=False, float_format="%.4f")
    )


def main() -> None:
    params = runner.init(STAGE)
    groups = grouping.load_groups()
    mix = modelset.load_mixture(
        groups,
        routing=params.mixture.routing,
        tta=params.mixture.tta,
        gate_inputs=params.gates.inputs,
    )
    second = paths.SECOND_BASE_MODEL
    second_base = modelset.load_model(second) if second.is_file() else None
    x, y = load_split(paths.TEST)
    classes = list(groups.classes)
    with runner.tracked_stage(STAGE, params, {"test": paths.TEST}) as (_, parent):
        metrics, pred = evaluate_mixture(mix, x, y, second_base)
        controls = control_predictions(
            pred["outputs"], mix.routing, pred["ensemble"], pred.get("two_bases")
        )
        paired = paired_metrics(pred["mixture"], controls, y, seed=params.seed)
        best_control = str(paired.pop("best_control"))
        metrics |= paired
        timings = time_inference(mix, x[:TIMED_IMAGES])
        write_plots(y, pred, classes)
        write_json(paths.METRICS, metrics)
        tracking.mlflow.log_metrics(metrics | timings)
        tracking.mlflow.set_tag("best_control", best_control)
        cm = confusion(y, pred["mixture"], len(classes))
        tracking.mlflow.log_dict({"classes": classes, "matrix": cm.tolist()}, "confusion.json")
        tracking.mlflow.log_artifact(str(paths.PER_CLASS))
        report_files = write_report(
            paths.REPORT,
            metrics=metrics,
            y=y,
            base_pred=pred["base"],
            mix_pred=pred["mixture"],
            router_probs=pred["router_probs"],
            gate_ws=pred["gate_weights"],
            classes=classes,
            group_names=groups.names,
            histories=read_histories(paths.REPORTS),
            best_control=best_control,
            partition=dict(zip(groups.names, groups.members, strict=True)),
            partition_source=json.loads(paths.GROUPS.read_text())["source"],
        )
        if params.mlflow.register:
            version = register_mixture(params, groups, x[:2])
            val = json.loads((paths.stage_reports("train_gates") / "metrics.json").read_text())
            split = tracking.file_md5(paths.VAL)
            decision = apply_champion_rule(version, float(val["val_accuracy"]), split)
            tracking.mlflow.log_dict(dataclasses.asdict(decision), "champion_rule.json")
    link_lineage(parent, groups)
    for f in report_files:
        tracking.MlflowClient().log_artifact(parent, str(f), "report")
    tracking.MlflowClient().set_tag(parent, "best_control", best_control)
    tracking.finish_parent(parent, metrics)
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
        best_control,
    )


def link_lineage(parent: str, groups: Groups) -> None:
    """Tag the pipeline run with the model versions (and runs) behind every output,
    so a pipeline whose stages DVC skipped still shows where each network came from.
    """
    client = tracking.MlflowClient()
    outs = modelset.model_files(groups.names)
    for name, (version, run_id) in versions_for_outputs(outs).items():
        client.set_tag(parent, f"model_version.{name}", version)
        client.set_tag(parent, f"source_run.{name}", run_id)


def register_mixture(params: Params, groups: Groups, example: np.ndarray) -> str:
    """Log and register the assembled mixture as a pyfunc (`hmoe-mixture`)."""
    from mlflow.models import ModelSignature, infer_signature

    from hmoe.mixture import Prediction
    from hmoe.serving import MixturePyfunc, mixture_config, predictions_frame

    names = groups.names
    write_json(CONFIG_FILE, mixture_config(groups, params.mixture, params.gates.inputs))
    files = modelset.model_files(names)
    arts = {name: str(path) for name, path in files.items()} | {"config": str(CONFIG_FILE)}
    n, n_classes = len(example), len(groups.classes)
    dummy = Prediction(
        probs=np.full((n, n_classes), 1 / n_classes, dtype=np.float32),
        group=np.zeros(n, dtype=np.int64),
        group_prob=np.ones(n, dtype=np.float32),
        specialist_weight=np.full(n, 0.5, dtype=np.float32),
    )
    # Outputs only: MLflow enforces an input schema by casting (a uint8 spec turns 0.5
    # into 0) or by refusing other dtypes, so the pyfunc checks its inputs itself
    # (hmoe.serving.to_images) and answers with a message that says what is expected.
    outputs = predictions_frame(dummy, list(groups.classes), list(names))
    signature = ModelSignature(inputs=None, outputs=infer_signature(example, outputs).outputs)
    info = tracking.mlflow.pyfunc.log_model(
        name="mixture",
        python_model=MixturePyfunc(),
        artifacts=arts,
        code_paths=[str(Path(hmoe.__file__).parent)],
        signature=signature,
        input_example=example,
        registered_model_name=modelset.MIXTURE,
        pip_requirements=tracking.requirements(),
    )
    version = str(info.registered_model_version)
    client = tracking.MlflowClient()
    for name, path in files.items():
        client.set_model_version_tag(
            modelset.MIXTURE, version, f"dvc_md5.{name}", tracking.file_md5(path)
        )
    for k, v in tracking.common_tags().items():
        client.set_model_version_tag(modelset.MIXTURE, version, k, v)
    logger.info("registered %s version %s", modelset.MIXTURE, version)
    return version


if __name__ == "__main__":
    main()
