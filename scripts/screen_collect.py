"""Keep one finished experiment's evidence and costs for the specialist screen (issue 43).

Run in a workspace where `dvc exp run` (or `dvc repro`) has just finished:

    python scripts/screen_collect.py OUT CONFIG

It copies the experiment's per-image evidence (reports/eval/evidence.npz, every network's
probabilities on val and test) to ``OUT/evidence/CONFIG-s<seed>.npz`` and writes
``OUT/costs/CONFIG-s<seed>.json``: each specialist's training multiply-adds (image
passes x one forward pass, the convention of hmoe.edge.networks) and its inference
multiply-adds per image, whole and with the base's trunk shared (a `branch` or `head`
network then costs only its new layers), plus the run's params and headline figures.
`python -m hmoe.findings.screen OUT` builds the screen's table from these files.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from hmoe import paths
from hmoe.costs import multiply_adds
from hmoe.edge.start import groups_from
from hmoe.modelset import load_model
from hmoe.params import flatten, load_params
from hmoe.transfer import is_new

logger = logging.getLogger("screen_collect")


def new_layer_macs(model, start: str) -> int:
    """Multiply-adds of the layers a network adds to the base's trunk (all of them when
    it starts from scratch or as a full copy)."""
    if start not in ("head", "branch"):
        return multiply_adds(model)
    return multiply_adds(model, keep=lambda name: is_new(name, start))


def collect(out: Path, config: str) -> Path:
    """Copy the evidence and write the costs of the experiment in the working directory."""
    params = load_params()
    groups = groups_from(json.loads(paths.GROUPS.read_text()))
    key = f"{config}-s{params.seed}"
    (out / "evidence").mkdir(parents=True, exist_ok=True)
    (out / "costs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.EVIDENCE, out / "evidence" / f"{key}.npz")
    with np.load(paths.TRAIN) as f:
        y_train = f["y"]
    history = json.loads(paths.SPECIALIST_METRICS.read_text())
    start = params.specialists.start
    specs = {}
    for g in groups.names:
        model = load_model(paths.specialist_model(g))
        n_images = int(np.isin(y_train, groups.class_ids(g)).sum())
        epochs = int(history[g]["epochs_run"])
        macs = multiply_adds(model)
        specs[g] = {
            "train_images": n_images,
            "epochs_run": epochs,
            "train_gmacs": n_images * epochs * macs / 1e9,
            "inference_mmacs": macs / 1e6,
            "inference_mmacs_trunk_shared": new_layer_macs(model, start) / 1e6,
        }
    base = load_model(paths.BASE_MODEL)
    base_metrics = json.loads(paths.BASE_METRICS.read_text())
    base_epochs = int(base_metrics["epochs_run"])
    record = {
        "config": config,
        "seed": params.seed,
        "specialists": specs,
        "base": {
            "train_gmacs": len(y_train) * base_epochs * multiply_adds(base) / 1e9,
            "inference_mmacs": multiply_adds(base) / 1e6,
        },
        "params": flatten(params),
        "metrics": json.loads(paths.METRICS.read_text()),
        "gates": json.loads(paths.GATES_METRICS.read_text()),
    }
    target = out / "costs" / f"{key}.json"
    target.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    logger.info("kept %s: %s", key, {g: round(s["train_gmacs"]) for g, s in specs.items()})
    return target


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("config")
    args = parser.parse_args()
    collect(args.out, args.config)


if __name__ == "__main__":
    main()
