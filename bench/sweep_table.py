"""The "Does the hierarchy help?" table from a ``bench/sweep.py`` output folder.

    python bench/sweep_table.py DIR

Per configuration, averaged over its seeds: the mixture's test accuracy, its lift
over the base and over the fair two-network ensemble (two bases of the same recipe),
each with a paired bootstrap 95 % interval. The test images are the same for every
seed, so the interval resamples images, each image carrying its mean (over seeds)
difference in correctness; the seed-to-seed spread is shown as the std of the lifts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hmoe.stats import mcnemar_exact, paired_bootstrap


def lift(preds: list[dict], config: str, other: str) -> tuple[float, float, float, float]:
    """(mean lift, CI low, CI high, seed std) of config's mixture over ``other``."""
    a = np.mean([p[f"{config}/mixture"] == p["y"] for p in preds], axis=0)
    b = np.mean([p[f"{config}/{other}"] == p["y"] for p in preds], axis=0)
    lo, hi = paired_bootstrap(a, b)
    per_seed = [
        np.mean(p[f"{config}/mixture"] == p["y"]) - np.mean(p[f"{config}/{other}"] == p["y"])
        for p in preds
    ]
    return float(np.mean(a - b)), lo, hi, float(np.std(per_seed, ddof=1) if len(preds) > 1 else 0)


def table(folder: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in (folder / "sweep.jsonl").read_text().splitlines()]
    df = pd.DataFrame(rows)
    preds = {int(f.stem.split("-")[1]): dict(np.load(f)) for f in folder.glob("preds-*.npz")}
    out = []
    for config, group in df.groupby("config", sort=False):
        seeds = sorted(group["seed"])
        ps = [preds[s] for s in seeds if f"{config}/mixture" in preds[s]]
        row = {
            "config": config,
            "seeds": len(ps),
            "mixture": group["mixture_accuracy"].mean(),
            "base": group["base_accuracy"].mean(),
            "two_bases": group["two_bases_control_accuracy"].mean(),
            "soft": group["soft_accuracy"].mean(),
            "val_mixture": group["val_mixture_accuracy"].mean(),
        }
        for other in ("base", "two_bases"):
            d, lo, hi, sd = lift(ps, config, other)
            row |= {f"vs_{other}": d, f"vs_{other}_ci": f"{lo:+.4f} .. {hi:+.4f}",
                    f"vs_{other}_seed_std": sd}  # fmt: skip
        only = [
            (int(np.sum((p[f"{config}/mixture"] == p["y"]) & (p[f"{config}/base"] != p["y"]))),
             int(np.sum((p[f"{config}/mixture"] != p["y"]) & (p[f"{config}/base"] == p["y"]))))
            for p in ps
        ]  # fmt: skip
        row["mcnemar_p_pooled"] = mcnemar_exact(sum(a for a, _ in only), sum(b for _, b in only))
        out.append(row)
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub table (pandas' to_markdown needs tabulate, which is not a dependency)."""
    cells = df.map(lambda v: f"{v:.4f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells.to_numpy().tolist()])


def main() -> None:
    print(markdown(table(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
