"""Stage `evaluate`: the only stage that reads the test split.

Reports base, router, each specialist on its own group, the mixture, and the
controls (compute-matched ensemble, oracle / hard / soft routing); registers the
assembled mixture as the `hmoe-mixture` pyfunc and closes the pipeline's parent run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

import hmoe
from hmoe import paths, runner, tracking
from hmoe.data import load_split
from hmoe.metrics import accuracy, confusion, per_class_accuracy, specialist_accuracy
from hmoe.mixture import Mixture, Outputs, combine, ensemble, one_hot, route_weights
from hmoe.params import Params
from hmoe.registry import MIXTURE, apply_champion_rule, versions_for_outputs
from hmoe.report import read_histories, write_report

logger = logging.getLogger("hmoe.evaluate")
STAGE = "evaluate"
CONFIG_FILE = Path(".cache/hmoe/mixture-config.json")


def load_mixture(params: Params) -> Mixture:
    names = params.groups.names
    return Mixture(
        router=runner.load_model(paths.ROUTER_MODEL),
        base=runner.load_model(paths.BASE_MODEL),
        specialists={g: runner.load_model(paths.specialist_model(g)) for g in names},
        gates={g: runner.load_model(paths.gate_model(g)) for g in names},
        groups=params.groups,
        routing=params.mixture.routing,
    )


def score(mix: Mixture, out: Outputs, weights: list[np.ndarray], y: np.ndarray):
    """All test metrics, plus the base's and the mixture's predicted labels."""
    groups = mix.groups
    true_group = np.asarray(groups.group_of_label())[y]
    n_groups = len(groups.names)
    probs = {
        "hard": combine(route_weights(out.router, "hard"), weights, out.base, out.specs),
        "soft": combine(route_weights(out.router, "soft"), weights, out.base, out.specs),
        "oracle": combine(one_hot(true_group, n_groups), weights, out.base, out.specs),
        "ensemble": ensemble(out.base, out.specs),
    }
    mixture = probs[mix.routing]
    m = {
        "base_accuracy": accuracy(out.base, y),
        "router_accuracy": accuracy(out.router, true_group),
        "mixture_accuracy": accuracy(mixture, y),
        **{f"{k}_accuracy": accuracy(p, y) for k, p in probs.items()},
    }
    for g, name in enumerate(groups.names):
        ids = groups.class_ids(name)
        m[f"specialist_{name}_accuracy"] = specialist_accuracy(out.specs[g], y, ids)
        m[f"gate_{name}_specialist_weight"] = float(weights[g][:, 1].mean())
    m["lift_over_base"] = m["mixture_accuracy"] - m["base_accuracy"]
    m["lift_over_ensemble"] = m["mixture_accuracy"] - m["ensemble_accuracy"]
    m["mixture_rows_sum_max_error"] = float(np.abs(mixture.sum(axis=1) - 1).max())
    return m, np.argmax(out.base, axis=1), np.argmax(mixture, axis=1)


def time_inference(mix: Mixture, x: np.ndarray) -> dict[str, float]:
    """Routed (each branch on its share) vs dense (every network on every image)."""
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


def write_plots(y: np.ndarray, base_pred: np.ndarray, mix_pred: np.ndarray, classes) -> None:
    """Confusion rows (DVC `confusion` template) and per-class accuracy."""
    paths.EVAL.mkdir(parents=True, exist_ok=True)
    rows = ["actual,predicted"] + [
        f"{classes[a]},{classes[p]}" for a, p in zip(y, mix_pred, strict=True)
    ]
    paths.CONFUSION.write_text("\n".join(rows) + "\n")
    n = len(classes)
    base_acc = per_class_accuracy(y, base_pred, n)
    mix_acc = per_class_accuracy(y, mix_pred, n)
    lines = ["class,base,mixture"] + [
        f"{c},{b:.4f},{m:.4f}" for c, b, m in zip(classes, base_acc, mix_acc, strict=True)
    ]
    paths.PER_CLASS.write_text("\n".join(lines) + "\n")


def main() -> None:
    params = runner.init(STAGE)
    mix = load_mixture(params)
    x, y = load_split(paths.TEST)
    classes = list(params.groups.classes)
    logged = runner.stage_params(STAGE, params)
    with tracking.stage_run(STAGE, params.mlflow.experiment, logged, runner.data_digest()) as (
        _,
        parent,
    ):
        out = mix.outputs(x)
        weights = mix.gate_weights(out)
        metrics, base_pred, mix_pred = score(mix, out, weights, y)
        metrics |= time_inference(mix, x)
        write_plots(y, base_pred, mix_pred, classes)
        cm = confusion(y, mix_pred, len(classes))
        runner.write_json(paths.METRICS, metrics)
        tracking.mlflow.log_metrics(metrics)
        tracking.mlflow.log_dict({"classes": classes, "matrix": cm.tolist()}, "confusion.json")
        tracking.mlflow.log_artifact(str(paths.PER_CLASS))
        report_files = write_report(
            paths.REPORT,
            metrics=metrics,
            y=y,
            base_pred=base_pred,
            mix_pred=mix_pred,
            router_probs=out.router,
            gate_ws=weights,
            classes=classes,
            group_names=params.groups.names,
            histories=read_histories(paths.REPORTS),
        )
        if params.mlflow.register:
            version = register_mixture(params, x[:2])
            val = json.loads((paths.stage_reports("train_gates") / "metrics.json").read_text())
            decision = apply_champion_rule(version, float(val["val_accuracy"]))
            tracking.mlflow.log_dict(dataclasses.asdict(decision), "champion_rule.json")
    link_lineage(parent, params)
    for f in report_files:
        tracking.MlflowClient().log_artifact(parent, str(f), "report")
    tracking.finish_parent(parent, metrics)
    logger.info(
        "test accuracy: mixture %.4f, base %.4f, ensemble %.4f, router %.4f",
        metrics["mixture_accuracy"],
        metrics["base_accuracy"],
        metrics["ensemble_accuracy"],
        metrics["router_accuracy"],
    )


def model_outputs(params: Params) -> dict[str, Path]:
    """Registered name -> the DVC output file it was logged from."""
    names = params.groups.names
    return {
        "hmoe-base": paths.BASE_MODEL,
        "hmoe-router": paths.ROUTER_MODEL,
        **{f"hmoe-specialist-{g}": paths.specialist_model(g) for g in names},
        **{f"hmoe-gate-{g}": paths.gate_model(g) for g in names},
    }


def link_lineage(parent: str, params: Params) -> None:
    """Tag the pipeline run with the model versions (and runs) behind every output,
    so a pipeline whose stages DVC skipped still shows where each network came from.
    """
    client = tracking.MlflowClient()
    for name, (version, run_id) in versions_for_outputs(model_outputs(params)).items():
        client.set_tag(parent, f"model_version.{name}", version)
        client.set_tag(parent, f"source_run.{name}", run_id)


def register_mixture(params: Params, example: np.ndarray) -> str:
    """Log and register the assembled mixture as a pyfunc (`hmoe-mixture`)."""
    from mlflow.models import infer_signature

    from hmoe.serving import MixturePyfunc, artifact_map, predictions_frame

    names = params.groups.names
    CONFIG_FILE.parent.mkdir(parents=True, exist_ok=True)
    CONFIG_FILE.write_text(
        json.dumps(
            {
                "classes": list(params.groups.classes),
                "groups": {n: list(m) for n, m in zip(names, params.groups.members, strict=True)},
                "routing": params.mixture.routing,
            }
        )
    )
    arts = artifact_map(
        paths.BASE_MODEL,
        paths.ROUTER_MODEL,
        {g: paths.specialist_model(g) for g in names},
        {g: paths.gate_model(g) for g in names},
        CONFIG_FILE,
    )
    probs = np.full((len(example), len(params.groups.classes)), 0.1, dtype=np.float32)
    signature = infer_signature(example, predictions_frame(probs, list(params.groups.classes)))
    info = tracking.mlflow.pyfunc.log_model(
        name="mixture",
        python_model=MixturePyfunc(),
        artifacts=arts,
        code_paths=[str(Path(hmoe.__file__).parent)],
        signature=signature,
        input_example=example,
        registered_model_name=MIXTURE,
    )
    version = str(info.registered_model_version)
    client = tracking.MlflowClient()
    for name, path in model_outputs(params).items():
        client.set_model_version_tag(MIXTURE, version, f"dvc_md5.{name}", tracking.file_md5(path))
    for k, v in tracking.common_tags().items():
        client.set_model_version_tag(MIXTURE, version, k, v)
    logger.info("registered %s version %s", MIXTURE, version)
    return version


if __name__ == "__main__":
    main()
