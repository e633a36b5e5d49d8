"""Stage `evaluate`: the only stage that reads the test split.

Reports base, router, each specialist on its own group, the mixture, and the
controls (compute-matched ensemble, oracle / hard / soft routing); registers the
assembled mixture as the `hmoe-mixture` pyfunc and closes the pipeline's parent run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

import hmoe
from hmoe import paths, runner, tracking
from hmoe.data import load_split
from hmoe.metrics import accuracy, confusion, per_class_accuracy, specialist_accuracy
from hmoe.mixture import Mixture, combine, ensemble, one_hot, route_weights
from hmoe.params import Params

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


def score(mix: Mixture, x: np.ndarray, y: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """All test metrics, plus the base's and the mixture's predicted labels."""
    groups = mix.groups
    out = mix.outputs(x)
    weights = mix.gate_weights(out)
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
        metrics, base_pred, mix_pred = score(mix, x, y)
        metrics |= time_inference(mix, x)
        write_plots(y, base_pred, mix_pred, classes)
        cm = confusion(y, mix_pred, len(classes))
        runner.write_json(paths.METRICS, metrics)
        tracking.mlflow.log_metrics(metrics)
        tracking.mlflow.log_dict({"classes": classes, "matrix": cm.tolist()}, "confusion.json")
        tracking.mlflow.log_artifact(str(paths.PER_CLASS))
        if params.mlflow.register:
            register_mixture(params, x[:2])
    tracking.finish_parent(parent, metrics)
    logger.info(
        "test accuracy: mixture %.4f, base %.4f, ensemble %.4f, router %.4f",
        metrics["mixture_accuracy"],
        metrics["base_accuracy"],
        metrics["ensemble_accuracy"],
        metrics["router_accuracy"],
    )


def register_mixture(params: Params, example: np.ndarray) -> None:
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
    outs = {
        "base": paths.BASE_MODEL,
        "router": paths.ROUTER_MODEL,
        **{f"specialist-{g}": paths.specialist_model(g) for g in names},
        **{f"gate-{g}": paths.gate_model(g) for g in names},
    }
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
        registered_model_name="hmoe-mixture",
    )
    version = str(info.registered_model_version)
    client = tracking.MlflowClient()
    for key, path in outs.items():
        client.set_model_version_tag(
            "hmoe-mixture", version, f"dvc_md5_{key}", tracking.file_md5(path)
        )
    for k, v in tracking.common_tags().items():
        client.set_model_version_tag("hmoe-mixture", version, k, v)
    logger.info("registered hmoe-mixture version %s", version)


if __name__ == "__main__":
    main()
