"""A sweep's findings from its findings.csv alone (hmoe.findings), on small synthetic rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hmoe.findings import (
    decisive_table,
    findings_markdown,
    main,
    mcnemar_table,
    point_table,
    read_findings,
    t_interval,
    write_findings,
)
from hmoe.stats import mcnemar_exact

SEEDS = (42, 43, 44)
# Per seed: soft, hard, mixture (soft routing), base, two bases, oracle accuracies.
ACC = {
    "soft_accuracy": (0.881, 0.884, 0.879),
    "hard_accuracy": (0.877, 0.880, 0.878),
    "base_accuracy": (0.875, 0.879, 0.874),
    "two_bases_control_accuracy": (0.886, 0.889, 0.887),
    "oracle_accuracy": (0.896, 0.899, 0.897),
}
DISCORDANT = {  # (only the mixture right, only the other right) per seed
    "soft_vs_two_bases": ((120, 170), (130, 180), (110, 190)),
    "hard_vs_two_bases": ((100, 190), (90, 180), (95, 185)),
    "mixture_vs_base": ((80, 20), (60, 10), (70, 20)),
}
COSTS = {
    "cost_inference_mmacs_base": 34.2,
    "cost_inference_mmacs_two_bases": 68.3,
    "cost_inference_mmacs_hard": 102.5,
    "cost_inference_mmacs_soft": 136.7,
    "cost_train_gmacs_mixture": 2870.0,
    "cost_train_gmacs_base": 1366.8,
}


def rows(config: str = "default") -> list[dict]:
    """The rows a decisive sweep writes for one configuration (the columns that matter)."""
    out = []
    for i, seed in enumerate(SEEDS):
        row = {"config": config, "seed": seed, **{k: v[i] for k, v in ACC.items()}, **COSTS}
        row["mixture_accuracy"] = row["soft_accuracy"]
        for name, counts in DISCORDANT.items():
            a, b = counts[i]
            row |= {f"{name}_only_a": a, f"{name}_only_b": b}
            row[f"{name}_mcnemar_p"] = mcnemar_exact(a, b)
        row |= {"commit": "f92cfa4", "machine": "AMD EPYC 7B13 (2 cores)", "wall_s": 2700.0 + i}
        out.append(row)
    return out


def old_rows() -> pd.DataFrame:
    """A findings.csv of an older sweep: no two bases, hard or soft, no McNemar pairs,
    no commit or machine, no inference costs (some sweeps lack them all).
    """
    frame = pd.DataFrame(rows())
    keep = ["config", "seed", "mixture_accuracy", "base_accuracy", "wall_s"]
    return frame[keep]


def test_t_interval_matches_a_hand_computation():
    d = np.array([0.004, -0.001, 0.006])
    mean, lo, hi, p = t_interval(d)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert mean == pytest.approx(0.003)
    assert (lo, hi) == pytest.approx((0.003 - half, 0.003 + half))
    assert p == pytest.approx(stats.ttest_rel(d, np.zeros(3)).pvalue)
    one = t_interval(np.array([0.01, np.nan]))  # one finite seed: no interval
    assert one[0] == pytest.approx(0.01) and np.isnan(one[1]) and np.isnan(one[3])


def test_summary_paired_lift_is_the_same_statistic():
    from hmoe.summary import paired_lift

    frame = pd.DataFrame(rows())
    lift = paired_lift(frame, "soft_accuracy", "two_bases_control_accuracy")
    d = frame["soft_accuracy"] - frame["two_bases_control_accuracy"]
    assert (lift["mean_diff"], lift["ci_low"], lift["ci_high"], lift["p_value"]) == (
        pytest.approx(t_interval(d.to_numpy()))
    )


def test_decisive_comparisons_are_paired_by_seed():
    table = decisive_table(pd.DataFrame(rows())).set_index("comparison")
    soft = table.loc["mixture (soft) - two bases"]
    d = np.subtract(ACC["soft_accuracy"], ACC["two_bases_control_accuracy"])
    assert soft["seeds"] == 3
    assert (soft["mean"], soft["ci_low"], soft["ci_high"], soft["p"]) == pytest.approx(
        t_interval(d)
    )
    assert soft["ci_high"] < 0  # the soft mixture loses to two bases in every seed
    assert set(table.index) == {
        "mixture (soft) - two bases",
        "mixture (hard) - two bases",
        "mixture - base",
    }


def test_mcnemar_section_gives_each_seeds_counts_and_exact_p():
    table = mcnemar_table(pd.DataFrame(rows()))
    assert len(table) == 3 * 3  # seeds x comparisons
    hard = table[(table["comparison"] == "hard_vs_two_bases") & (table["seed"] == 43)].iloc[0]
    assert (hard["only_a"], hard["only_b"]) == (90, 180)
    assert hard["p"] == pytest.approx(stats.binomtest(90, 270, 0.5).pvalue)
    md = findings_markdown(pd.DataFrame(rows()), "default")
    section = md[md.index("## The decisive comparisons") :]
    assert "| default | 43 | 130 / 180 (p=" in section
    assert "mixture (hard) - two bases" in section
    assert "mixture lower" in section  # its interval excludes 0


def test_provenance_names_commit_machine_and_wall_time_per_seed():
    md = findings_markdown(pd.DataFrame(rows()), "default")
    assert "- Commit(s): f92cfa4" in md
    assert "- Machine(s): AMD EPYC 7B13 (2 cores)" in md
    assert "| 43 | 1 | 45.0 | f92cfa4 | AMD EPYC 7B13 (2 cores) |" in md


def test_the_configuration_table_stays_first():
    md = findings_markdown(pd.DataFrame(rows()), "default")
    first = next(line for line in md.splitlines() if line.startswith("| "))
    assert first.startswith("| configuration | seeds | mixture |")


def test_png_is_written_and_is_a_png(tmp_path):
    frame = pd.DataFrame(rows() + rows("weighted"))
    written = write_findings(frame, tmp_path, "default")
    assert written == [tmp_path / "findings.png", tmp_path / "findings.md"]
    assert (tmp_path / "findings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![test accuracy" in (tmp_path / "findings.md").read_text()
    points = point_table(frame)
    # the shared base and two bases once, each configuration's three mixture points
    assert len(points) == 2 + 2 * 3
    soft = points[(points["kind"] == "soft") & (points["config"] == "default")].iloc[0]
    assert soft["mmacs"] == pytest.approx(136.7)
    assert soft["ci_low"] < soft["mean"] < soft["ci_high"]


def test_an_old_csv_without_the_new_columns_still_gives_findings(tmp_path):
    old_rows().to_csv(tmp_path / "findings.csv", index=False)
    main([str(tmp_path)])
    md = (tmp_path / "findings.md").read_text()
    assert md.startswith("| configuration | seeds | mixture |")
    assert "mixture - base" in md  # what it can compute
    assert "(soft) - two bases" not in md  # no soft nor two bases: no such comparison
    assert "McNemar" not in md and "![" not in md  # what it cannot: left out
    assert not (tmp_path / "findings.png").exists()
    assert "| 42 | 1 | 45.0 | not recorded | not recorded |" in md


def test_an_older_evaluate_mcnemar_stands_in_for_mixture_vs_base(tmp_path):
    frame = pd.DataFrame(rows())
    frame = frame.drop(columns=[c for c in frame if c.startswith("mixture_vs_base_")])
    frame["vs_base_only_a"], frame["vs_base_only_b"] = 80, 20
    frame["vs_base_mcnemar_p"] = mcnemar_exact(80, 20)
    table = mcnemar_table(frame)
    assert (table[table["comparison"] == "mixture_vs_base"]["only_a"] == 80).all()


def test_commits_that_look_like_numbers_stay_text(tmp_path):
    frame = pd.DataFrame(rows())
    frame["commit"] = "1234567"
    frame.to_csv(tmp_path / "findings.csv", index=False)
    assert read_findings(tmp_path / "findings.csv")["commit"].iloc[0] == "1234567"


def test_cli_rejects_an_unknown_reference(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "findings.csv", index=False)
    with pytest.raises(SystemExit, match="not one of"):
        main([str(tmp_path), "--reference", "nope"])
