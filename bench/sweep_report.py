"""The README's "Does the hierarchy help?" tables, from the MLflow parent runs of a sweep
of queued DVC experiments (one parent per experiment, carrying the test metrics).

    python bench/sweep_report.py --prefix sw- [--seeds-of sw-default-s]

Per configuration: the mixture's test accuracy, its paired lift over the base and over
the best fair control (with the bootstrap 95 % interval over the test images and
McNemar's p, as `evaluate` computed them); for the seed replicates, the mean paired
difference with its t-interval across seeds (:func:`hmoe.summary.paired_lift`).
"""

from __future__ import annotations

import argparse

import pandas as pd
from mlflow.tracking import MlflowClient

from hmoe import tracking
from hmoe.summary import paired_lift

COLUMNS = {
    "val_mixture": "val: mixture",
    "val_base": "val: base",
    "mixture_accuracy": "mixture",
    "base_accuracy": "base",
    "two_bases_control_accuracy": "two bases",
    "soft_accuracy": "soft routing",
    "oracle_accuracy": "oracle routing",
}


def parents(prefix: str, experiment: str) -> pd.DataFrame:
    tracking.mlflow.set_tracking_uri(tracking.tracking_uri())
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.{tracking.ROLE_TAG} = 'pipeline' and attributes.status = 'FINISHED'",
    )
    rows = [
        {"name": r.info.run_name, "best_control": r.data.tags.get("best_control", ""),
         **r.data.metrics, **val_metrics(client, exp.experiment_id, r.info.run_id)}
        for r in runs
        if r.info.run_name.startswith(prefix)
    ]  # fmt: skip
    return pd.DataFrame(rows).drop_duplicates("name").set_index("name").sort_index()


def val_metrics(client: MlflowClient, experiment_id: str, parent: str) -> dict[str, float]:
    """The mixture's and the base's validation accuracy (train_gates): what selects."""
    gates = client.search_runs(
        [experiment_id],
        f"tags.mlflow.parentRunId = '{parent}' and tags.{tracking.STAGE_TAG} = 'train_gates'",
    )
    if not gates:
        return {}
    m = gates[0].data.metrics
    return {
        "val_mixture": m.get("final_val_accuracy"),
        "val_base": m.get("final_val_base_accuracy"),
    }


def lift(row: pd.Series, key: str) -> str:
    return (
        f"{row[f'{key}_diff'] * 100:+.2f} ({row[f'{key}_ci_low'] * 100:+.2f} .. "
        f"{row[f'{key}_ci_high'] * 100:+.2f}), p={row[f'{key}_mcnemar_p']:.2g}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default="sw-")
    ap.add_argument("--experiment", default="hmoe")
    ap.add_argument("--seeds-of", default="sw-default-s", help="name prefix of seed replicates")
    args = ap.parse_args()
    df = parents(args.prefix, args.experiment)
    head = ["configuration", *COLUMNS.values(), "mixture - base (95 % CI), McNemar p",
            "mixture - best fair control (95 % CI), p", "best control"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in df.iterrows():
        accs = [f"{row[k] * 100:.2f}" if k in row and pd.notna(row[k]) else "" for k in COLUMNS]
        lifts = [lift(row, "vs_base"), lift(row, "vs_best_control"), row["best_control"]]
        lines.append(f"| {name} | " + " | ".join([*accs, *lifts]) + " |")
    print("\n".join(lines))
    seeds = df[df.index.str.startswith(args.seeds_of)]
    if len(seeds) > 1:
        for other in ("base_accuracy", "two_bases_control_accuracy"):
            t = paired_lift(seeds, "mixture_accuracy", other)
            print(
                f"\nmixture - {other} over {t['n']} seeds: {t['mean_diff'] * 100:+.2f} points "
                f"(95 % t-interval {t['ci_low'] * 100:+.2f} .. {t['ci_high'] * 100:+.2f}, "
                f"paired t-test p={t['p_value']:.2g}); mixture mean "
                f"{seeds['mixture_accuracy'].mean() * 100:.2f} %"
            )


if __name__ == "__main__":
    main()
