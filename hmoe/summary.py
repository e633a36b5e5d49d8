"""Mean and spread of the test metrics across DVC experiments (e.g. a seed sweep).

    dvc exp run --queue -S seed=1 ; dvc exp run --queue -S seed=2 ; dvc queue start -j 2
    python -m hmoe.summary                       # every experiment
    python -m hmoe.summary --by mixture.routing  # one row per routing, tested within each

Reads ``dvc.api.exp_show()`` (one row per revision, the same data `dvc exp show`
prints) and prints a table.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from hmoe.metrics import HEADLINE  # reports/metrics.json's keys: what exp_show() returns

logger = logging.getLogger(__name__)

EXPERIMENT_TYPES = ("branch_base", "branch_commit")


def frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per DVC experiment; baselines count only when there is no experiment."""
    df = pd.DataFrame(list(rows))
    if df.empty or "typ" not in df:
        return pd.DataFrame()
    df = df[df["typ"] != "workspace"].drop_duplicates(subset=["rev"])
    experiments = df[df["typ"].isin(EXPERIMENT_TYPES)]
    return experiments if not experiments.empty else df


def summarise(df: pd.DataFrame, metrics: Sequence[str], by: str | None = None) -> pd.DataFrame:
    cols = [m for m in metrics if m in df]
    if not cols:
        raise ValueError(f"none of {list(metrics)} found; run `dvc exp show` to check")
    values = df[cols].apply(pd.to_numeric, errors="coerce")
    if by:
        if by not in df:
            raise ValueError(f"no parameter {by!r} in the experiments")
        return values.groupby(df[by]).agg(["mean", "std", "count"])
    return values.agg(["mean", "std", "min", "max", "count"]).T


def paired_lift(df: pd.DataFrame, a: str = "mixture_accuracy", b: str = "base_accuracy") -> dict:
    """Paired t-test of ``a`` vs ``b`` across experiments (e.g. seeds), with a 95 % interval.

    Each experiment contributes one paired difference, so seed-to-seed variation that
    moves both models together cancels out.
    """
    from hmoe.stats import t_interval

    pairs = df[[a, b]].apply(pd.to_numeric, errors="coerce").dropna()
    n = len(pairs)
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 experiments with {a} and {b}, got {n}")
    mean, low, high, p = t_interval((pairs[a] - pairs[b]).to_numpy())
    return {"n": n, "mean_diff": mean, "ci_low": low, "ci_high": high, "p_value": p}


def paired_lifts(
    df: pd.DataFrame,
    by: str | None = None,
    a: str = "mixture_accuracy",
    b: str = "base_accuracy",
) -> pd.DataFrame:
    """:func:`paired_lift` over all experiments, or within each value of the parameter
    ``by``: experiments of different configurations are not pairs of one comparison, so
    pooling them would test nothing in particular. A group with fewer than two
    experiments gets its count and no interval.
    """
    groups = [("all", df)] if not by else list(df.groupby(by, sort=True))
    rows = []
    for name, group in groups:
        try:
            rows.append({by or "experiments": name} | paired_lift(group, a, b))
        except ValueError:
            n = int(group[[a, b]].apply(pd.to_numeric, errors="coerce").dropna().shape[0])
            rows.append({by or "experiments": name, "n": n})
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> None:
    import dvc.api

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by", help="group by a parameter, e.g. mixture.routing")
    parser.add_argument("--metrics", nargs="+", default=list(HEADLINE))
    args = parser.parse_args(argv)
    df = frame(dvc.api.exp_show())
    if df.empty:
        raise SystemExit("no experiment has reports/metrics.json yet: run `dvc exp run` first")
    try:
        table = summarise(df, args.metrics, args.by)
    except ValueError as err:
        raise SystemExit(f"hmoe.summary: {err}") from None
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 160):
        print(f"{len(df)} experiments")  # noqa: T201  (a CLI's output)
        print(table)  # noqa: T201
        if len(df) > 1 and {"mixture_accuracy", "base_accuracy"} <= set(df):
            where = f"within each {args.by}" if args.by else "over all experiments"
            print(f"mixture - base, paired t-test {where} (95 % t-interval):")  # noqa: T201
            print(paired_lifts(df, args.by).to_string(index=False))  # noqa: T201


if __name__ == "__main__":
    main()
