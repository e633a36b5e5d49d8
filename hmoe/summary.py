"""Mean and spread of the test metrics across DVC experiments (e.g. a seed sweep).

    dvc exp run --queue -S seed=1 ; dvc exp run --queue -S seed=2 ; dvc queue start -j 2
    python -m hmoe.summary                       # every experiment
    python -m hmoe.summary --by mixture.routing  # one row per routing

Reads ``dvc exp show --json`` (so it sees exactly what DVC shows) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

from hmoe.profile import dotted

METRICS_FILE = "reports/metrics.json"
DEFAULT_METRICS = (
    "mixture_accuracy",
    "base_accuracy",
    "ensemble_accuracy",
    "oracle_accuracy",
    "router_accuracy",
    "lift_over_base",
    "lift_over_ensemble",
)


def _records(node: Any, is_exp: bool = False) -> Iterator[dict[str, Any]]:
    """Every revision (workspace, baselines, experiments) in dvc exp show's JSON."""
    if isinstance(node, list):
        for item in node:
            yield from _records(item, is_exp)
    elif isinstance(node, Mapping):
        data = node.get("data")
        if isinstance(data, Mapping) and "metrics" in data:
            metrics = (data.get("metrics") or {}).get(METRICS_FILE, {}).get("data", {})
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            if metrics:
                yield {
                    "name": node.get("name") or node.get("rev"),
                    "rev": node.get("rev"),
                    "is_experiment": is_exp,
                    **dotted(params),
                    **metrics,
                }
        for key in ("experiments", "revs"):
            if node.get(key):
                yield from _records(node[key], is_exp or key == "experiments")


def frame(show_json: Any) -> pd.DataFrame:
    """One row per DVC experiment; baselines count only when there is no experiment."""
    df = pd.DataFrame(list(_records(show_json)))
    if df.empty:
        return df
    df = df[df["rev"] != "workspace"].drop_duplicates(subset=["rev"])
    return df[df["is_experiment"]] if df["is_experiment"].any() else df


def summarise(df: pd.DataFrame, metrics: Sequence[str], by: str | None = None) -> pd.DataFrame:
    cols = [m for m in metrics if m in df]
    if not cols:
        raise ValueError(f"none of {list(metrics)} found; run `dvc exp show` to check")
    if by:
        if by not in df:
            raise ValueError(f"no parameter {by!r} in the experiments")
        return df.groupby(by)[cols].agg(["mean", "std", "count"])
    return df[cols].agg(["mean", "std", "min", "max", "count"]).T


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by", help="group by a parameter, e.g. mixture.routing")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--json-file", help="read this dvc exp show --json output instead")
    args = parser.parse_args(argv)
    if args.json_file:
        with open(args.json_file) as fh:
            raw = json.load(fh)
    else:
        out = subprocess.run(
            ["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True
        )
        raw = json.loads(out.stdout)
    df = frame(raw)
    if df.empty:
        raise SystemExit("no experiment has reports/metrics.json yet: run `dvc exp run` first")
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 160):
        print(f"{len(df)} experiments")  # noqa: T201  (a CLI's output)
        print(summarise(df, args.metrics, args.by))  # noqa: T201


if __name__ == "__main__":
    main()
