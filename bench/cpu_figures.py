"""Print the CPU figures of the last pipeline run in this repository, and measure two more.

Run from the repository root after `dvc repro` on the real data:

    python bench/cpu_figures.py [--overhead-images 4000]

1. reads reports/ (written by the run) and the MLflow store: end-to-end wall time
   (first stage start to last stage end of the newest finished pipeline run),
   per-stage time and training images/s, test accuracies, routed-vs-dense inference;
2. times a no-op `dvc repro` (nothing changed: every stage skipped);
3. measures tracking overhead: one epoch of the base network with the stage's
   callbacks (MLflow per-epoch logging, CSV history, BackupAndRestore) against a
   plain `model.fit`, side by side on the same images, same process.

One line per figure, prefixed with the machine. Do not run it beside other heavy jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MACHINE = f"{platform.node()} {os.cpu_count()} cpu {platform.processor() or platform.machine()}"


def say(what: str, value: str) -> None:
    print(f"[{MACHINE}] {what}: {value}", flush=True)  # noqa: T201


def stage_figures() -> None:
    reports = Path("reports")
    for path in sorted(reports.glob("train_*/**/metrics.json")):
        m = json.loads(path.read_text())
        stage = "/".join(path.relative_to(reports).parts[:-1])
        ips = m.get("train_images_per_s")
        extra = f", {ips:.0f} train img/s" if ips else ""
        say(f"stage {stage}", f"fit {m['fit_s']:.0f} s{extra}, val acc {m['val_accuracy']:.4f}")
    m = json.loads((reports / "metrics.json").read_text())
    for key in sorted(k for k in m if k.endswith("accuracy") or k.startswith("lift")):
        say(f"test {key}", f"{m[key]:.4f}")
    routed, dense = m["inference_routed_images_per_s"], m["inference_dense_images_per_s"]
    say("inference routed / dense img/s", f"{routed:.0f} / {dense:.0f} = {routed / dense:.2f}x")


def end_to_end() -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from hmoe import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = MlflowClient()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.{tracking.ROLE_TAG} = 'stage'",
        max_results=1000,
    )
    by_parent: dict[str, list] = {}
    for r in runs:
        by_parent.setdefault(r.data.tags.get("mlflow.parentRunId", ""), []).append(r)
    full = [
        rs for rs in by_parent.values() if {"prepare", "evaluate"} <= {r.info.run_name for r in rs}
    ]
    if not full:
        say("end-to-end", "no pipeline run with every stage in the store")
        return
    newest = max(full, key=lambda rs: max(r.info.end_time or 0 for r in rs))
    start = min(r.info.start_time for r in newest)
    end = max(r.info.end_time or 0 for r in newest)
    say("end-to-end pipeline wall (MLflow stage runs)", f"{(end - start) / 60000:.1f} min")


def noop_repro() -> None:
    start = time.perf_counter()
    out = subprocess.run(["dvc", "repro"], capture_output=True, text=True)
    dt = time.perf_counter() - start
    reran = "Running stage" in out.stdout
    say("no-op dvc repro", f"{dt:.1f} s ({'RERAN STAGES' if reran else 'nothing rerun'})")


def tracking_overhead(n_images: int) -> None:
    import keras
    import mlflow
    import numpy as np

    from hmoe import paths, tracking
    from hmoe.data import load_split
    from hmoe.nets import build_classifier
    from hmoe.params import load_params
    from hmoe.train import fit_classifier

    p = load_params()
    keras.mixed_precision.set_global_policy(p.train.precision)
    x, y = load_split(paths.TRAIN)
    xv, yv = load_split(paths.VAL)
    x, y, xv, yv = x[:n_images], y[:n_images], xv[:500], yv[:500]
    cfg = p.base.__class__(**{**p.base.__dict__, "epochs": 1})
    results: dict[str, list[float]] = {"plain": [], "tracked": []}
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        mlflow.set_experiment("overhead")
        for rep in range(2):
            for mode in ("plain", "tracked") if rep % 2 == 0 else ("tracked", "plain"):
                keras.utils.set_random_seed(p.seed)
                model = build_classifier(10, width=p.base.width, seed=p.seed)
                callbacks = []
                if mode == "tracked":
                    mlflow.start_run()
                    callbacks = [
                        tracking.EpochLogger(),
                        keras.callbacks.CSVLogger(f"{tmp}/h.csv"),
                        keras.callbacks.BackupAndRestore(f"{tmp}/b{rep}"),
                    ]
                fit_classifier(model, (x, y), (xv, yv), cfg, callbacks=callbacks, verbose=0)
                # second epoch timed: the first includes graph tracing
                start = time.perf_counter()
                model.fit(
                    x,
                    keras.utils.to_categorical(y, 10),
                    batch_size=cfg.batch_size,
                    epochs=1,
                    verbose=0,
                    callbacks=callbacks,
                )
                results[mode].append(len(x) / (time.perf_counter() - start))
                if mode == "tracked":
                    mlflow.end_run()
    plain, tracked = np.median(results["plain"]), np.median(results["tracked"])
    say("training img/s plain / tracked", f"{plain:.0f} / {tracked:.0f} = {tracked / plain:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overhead-images", type=int, default=4000)
    args = ap.parse_args()
    stage_figures()
    end_to_end()
    noop_repro()
    tracking_overhead(args.overhead_images)


if __name__ == "__main__":
    main()
