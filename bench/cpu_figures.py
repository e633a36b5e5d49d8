"""Print the CPU figures of pipeline runs in this repository, and measure precision.

Run from the repository root after `dvc repro` / `dvc exp run` on the real data:

    python bench/cpu_figures.py [--precision-images 2048] [--skip-precision]

1. names the CPU (model and the flags that decide bfloat16: avx512_bf16, amx_bf16);
2. reads the MLflow store: per-stage fit time, training images/s and val accuracy;
3. reads the MLflow store: end-to-end wall time (first stage start to last stage end)
   of every finished pipeline run, and test accuracies of each, with mean and std
   across runs (e.g. a seed sweep);
4. times one training epoch of the default base network in float32 and in
   mixed_bfloat16 on random images (the measurement behind `train.precision: auto`).

One line per figure, prefixed with the machine. Do not run it beside other heavy jobs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TEST_KEYS = ("mixture_accuracy", "base_accuracy", "router_accuracy", "lift_over_base")


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), ""
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    wanted = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model or platform.processor()} x{os.cpu_count()} [{' '.join(wanted) or 'no avx512'}]"


MACHINE = cpu_name()


def say(what: str, value: str) -> None:
    print(f"[{MACHINE}] {what}: {value}", flush=True)


def stage_figures() -> None:
    """Per training run: fit time and images/s (MLflow only since they are not DVC
    metrics) and the best val accuracy, newest run of each stage name first.
    """
    from mlflow.tracking import MlflowClient

    from hmoe import paths
    from hmoe.observer import tracking

    tracking.mlflow.set_tracking_uri(tracking.tracking_uri(paths.repo_root()))
    client = MlflowClient()
    from hmoe.params import load_params

    exp = client.get_experiment_by_name(load_params().mlflow.experiment)
    if exp is None:
        return
    seen = set()
    runs = client.search_runs(
        [exp.experiment_id], f"tags.{tracking.ROLE_TAG} = 'stage'", order_by=["start_time DESC"]
    )
    for run in runs:
        m, name = run.data.metrics, run.info.run_name
        m = {k.removeprefix("final_"): v for k, v in m.items()} | m  # older runs: final_fit_s
        if name in seen or "fit_s" not in m or "final_val_accuracy" not in m:
            continue
        seen.add(name)
        ips = m.get("train_images_per_s")
        extra = f", {ips:.0f} train img/s" if ips else ""
        say(
            f"stage {name}", f"fit {m['fit_s']:.0f} s{extra}, val acc {m['final_val_accuracy']:.4f}"
        )


def pipeline_runs() -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from hmoe import paths
    from hmoe.observer import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri(paths.repo_root()))
    client = MlflowClient()
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, max_results=5000)
    parents = {
        r.info.run_id: r
        for r in runs
        if r.data.tags.get(tracking.ROLE_TAG) == "pipeline" and r.info.status == "FINISHED"
    }
    children: dict[str, list] = {}
    for r in runs:
        children.setdefault(r.data.tags.get("mlflow.parentRunId", ""), []).append(r)
    rows = []
    for run_id, parent in sorted(parents.items(), key=lambda kv: kv[1].info.start_time):
        stages = [r for r in children.get(run_id, []) if r.info.end_time]  # finished ones
        names = {r.info.run_name for r in stages}
        if {"train_base", "evaluate"} - names:
            continue  # DVC skipped training: no end-to-end time for this one
        wall = (max(r.info.end_time for r in stages) - min(r.info.start_time for r in stages)) / 1e3
        m = parent.data.metrics
        rows.append([m.get(k, float("nan")) for k in TEST_KEYS])
        prec = next(
            (
                r.data.params.get("precision_used")
                for r in stages
                if r.info.run_name == "train_base"
            ),
            "?",
        )
        figures = ", ".join(f"{k} {m.get(k, float('nan')):.4f}" for k in TEST_KEYS)
        note = "" if "prepare" in names else " (prepare restored from DVC's run cache)"
        say(
            f"run {parent.info.run_name}",
            f"end-to-end {wall / 60:.1f} min{note}, {prec}; {figures}",
        )
    if len(rows) > 1:
        arr = np.asarray(rows)
        for k, col in zip(TEST_KEYS, arr.T, strict=True):
            say(f"{k} over {len(rows)} runs", f"mean {col.mean():.4f}, std {col.std(ddof=1):.4f}")


def precision_speed(n_images: int) -> None:
    import keras

    from hmoe.edge.runtime import resolve_precision
    from hmoe.params import load_params
    from hmoe.recipe import build_classifier, fit_classifier

    p = load_params()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n_images)
    cfg = p.base.__class__(**{**p.base.__dict__, "epochs": 2, "lookahead": False})
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        model = build_classifier(10, p.net, translate=p.base.translate)
        start = time.perf_counter()
        fit_classifier(model, (x, y), (x[:256], y[:256]), cfg, verbose=0)
        first = time.perf_counter() - start  # includes tracing; the second epoch is the rate
        start = time.perf_counter()
        model.fit(x, keras.utils.to_categorical(y, 10), batch_size=cfg.batch_size, verbose=0)
        say(
            f"training img/s {policy} (width {p.net.width})",
            f"{n_images / (time.perf_counter() - start):.0f} (first fit {first:.0f} s)",
        )
    keras.mixed_precision.set_global_policy("float32")
    policy, why = resolve_precision("auto")
    say("train.precision auto resolves to", f"{policy} ({why})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision-images", type=int, default=2048)
    ap.add_argument("--skip-precision", action="store_true")
    args = ap.parse_args()
    stage_figures()
    pipeline_runs()
    if not args.skip_precision:
        precision_speed(args.precision_images)


if __name__ == "__main__":
    main()
