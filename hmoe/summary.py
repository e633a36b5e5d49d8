"""Mean and spread of the test metrics across DVC experiments (e.g. a seed sweep).

    dvc exp run --queue -S seed=1 ; dvc exp run --queue -S seed=2 ; dvc queue start -j 2
    python -m hmoe.summary                       # every experiment
    python -m hmoe.summary --by mixture.routing  # one row per routing

Reads ``dvc.api.exp_show()`` (one row per revision, the same data `dvc exp show`
prints) and prints a table.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

# reports/metrics.json's keys (the headline): DVC's metrics, so what exp_show() returns
DEFAULT_METRICS = (
    "mixture_accuracy",
    "base_accuracy",
    "hard_accuracy",
    "soft_accuracy",
    "router_accuracy",
    "oracle_accuracy",
    "two_bases_control_accuracy",
)
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


def main(argv: Sequence[str] | None = None) -> None:
    import dvc.api

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by", help="group by a parameter, e.g. mixture.routing")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    args = parser.parse_args(argv)
    df = frame(dvc.api.exp_show())
    if df.empty:
        raise SystemExit("no experiment has reports/metrics.json yet: run `dvc exp run` first")
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 160):
        print(f"{len(df)} experiments")  # noqa: T201  (a CLI's output)
        print(summarise(df, args.metrics, args.by))  # noqa: T201
        if len(df) > 1 and {"mixture_accuracy", "base_accuracy"} <= set(df):
            t = paired_lift(df)
            print(  # noqa: T201
                f"mixture - base over {t['n']} experiments: {t['mean_diff']:+.4f} "
                f"(95 % CI {t['ci_low']:+.4f} .. {t['ci_high']:+.4f}, "
                f"paired t-test p={t['p_value']:.3g})"
            )


if __name__ == "__main__":
    main()
