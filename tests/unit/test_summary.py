"""hmoe.summary over rows shaped like dvc.api.exp_show()'s."""

import pandas as pd
import pytest

from hmoe.summary import frame, summarise


def _row(rev, typ, seed, routing, acc, base):
    return {
        "Experiment": None if typ in ("workspace", "baseline") else f"exp-{rev}",
        "rev": rev,
        "typ": typ,
        "seed": seed,
        "mixture.routing": routing,
        "mixture_accuracy": acc,
        "base_accuracy": base,
    }


ROWS = [
    _row("workspace", "workspace", 1, "hard", 0.80, 0.75),
    _row("abc", "baseline", 1, "hard", 0.80, 0.75),
    _row("e1", "branch_commit", 2, "hard", 0.82, 0.76),
    _row("e2", "branch_base", 3, "soft", 0.84, 0.77),
]


def test_frame_keeps_experiments_once_without_workspace_or_baseline():
    df = frame([*ROWS, ROWS[2]])
    assert sorted(df["rev"]) == ["e1", "e2"]


def test_frame_falls_back_to_baselines_when_there_is_no_experiment():
    assert list(frame(ROWS[:2])["rev"]) == ["abc"]
    assert frame([]).empty


def test_summary_mean_and_spread():
    out = summarise(frame(ROWS), ["mixture_accuracy", "base_accuracy", "missing"])
    assert out.loc["mixture_accuracy", "mean"] == pytest.approx(0.83)
    assert out.loc["mixture_accuracy", "std"] == pytest.approx(0.0141421, rel=1e-4)
    assert out.loc["base_accuracy", "count"] == 2
    assert "missing" not in out.index


def test_summary_by_param_and_errors():
    out = summarise(frame(ROWS), ["mixture_accuracy"], by="mixture.routing")
    assert out.loc["soft", ("mixture_accuracy", "mean")] == pytest.approx(0.84)
    with pytest.raises(ValueError, match="no parameter"):
        summarise(frame(ROWS), ["mixture_accuracy"], by="nope")
    with pytest.raises(ValueError, match="none of"):
        summarise(frame(ROWS), ["nope"])


def test_paired_lift_across_experiments():
    from hmoe.summary import paired_lift

    df = frame(ROWS)  # diffs 0.06 and 0.07
    t = paired_lift(df)
    assert t["n"] == 2
    assert t["mean_diff"] == pytest.approx(0.065)
    # t(0.975, 1) = 12.706; sem = 0.00707107 / sqrt(2) = 0.005
    assert t["ci_high"] - t["mean_diff"] == pytest.approx(12.706 * 0.005, rel=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        paired_lift(df.iloc[:1])


def test_by_tests_within_each_group_never_pooled():
    from hmoe.summary import paired_lift, paired_lifts

    rows = [
        _row(f"h{i}", "branch_commit", i, "hard", 0.80 + d, 0.80)
        for i, d in enumerate((0.01, 0.012, 0.011))
    ] + [
        _row(f"s{i}", "branch_commit", i, "soft", 0.80 - d, 0.80)
        for i, d in enumerate((0.02, 0.021, 0.019))
    ]
    df = frame(rows)
    out = paired_lifts(df, "mixture.routing").set_index("mixture.routing")
    hard = paired_lift(df[df["mixture.routing"] == "hard"])
    assert out.loc["hard", "mean_diff"] == pytest.approx(hard["mean_diff"])
    assert out.loc["hard", "ci_low"] > 0 and out.loc["soft", "ci_high"] < 0
    assert out.loc["soft", "n"] == 3
    pooled = paired_lifts(df)  # the old behaviour: one test over both routings
    assert pooled.iloc[0]["n"] == 6 and pooled.iloc[0]["ci_low"] < 0 < pooled.iloc[0]["ci_high"]
    one = paired_lifts(df.iloc[:4], "mixture.routing").set_index("mixture.routing")
    assert one.loc["soft", "n"] == 1 and pd.isna(one.loc["soft", "mean_diff"])
