"""A sweep's findings from its findings.csv alone (hmoe.findings), on small synthetic rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hmoe.findings import (
    decisive_table,
    findings_markdown,
    mcnemar_table,
    point_table,
    read_findings,
    t_interval,
    write_findings,
)
from hmoe.findings.__main__ import main

SEEDS = (42, 43, 44)
# Per seed: soft, hard, mixture (soft routing), base, two bases, oracle accuracies.
ACC = {
    "soft_accuracy": (0.881, 0.884, 0.879),
    "hard_accuracy": (0.877, 0.880, 0.878),
    "base_accuracy": (0.875, 0.879, 0.874),
    "two_bases_control_accuracy": (0.886, 0.889, 0.887),
    "oracle_accuracy": (0.896, 0.899, 0.897),
}
DISCORDANT = {  # (only the mixture right, only the other right) per seed, in the labels
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
    }  # no fixed 1/2 gates in these rows: that comparison is left out
    assert table["boot_low"].isna().all()  # no labels: no interval over the test images


def test_the_decisive_table_adds_the_test_images_sampling_from_the_labels():
    """Labels in which the mixture and the base differ on the same images in every seed:
    the seeds agree exactly, so the bootstrap is the images' alone, and wider than 0."""
    labels = {("default", seed): labels_with({"mixture_vs_base": (80, 20)}) for seed in SEEDS}
    frame = pd.DataFrame(rows())
    frame["mixture_accuracy"] = frame["base_accuracy"] + 60 / 150 + np.array([0, 1e-3, -1e-3])
    table = decisive_table(frame, labels).set_index("comparison")
    lo, hi = table.loc["mixture - base", ["boot_low", "boot_high"]]
    assert lo < 60 / 150 < hi and hi - lo > 0.05
    assert np.isnan(table.loc["mixture (soft) - two bases", "boot_low"])  # not in the labels


def test_the_machine_table_splits_the_pooled_difference_by_cpu():
    frame = pd.DataFrame(rows())
    frame.loc[frame["seed"] == 42, "machine"] = "Intel Xeon"
    from hmoe.findings.tables import machine_table

    table = machine_table(frame)
    soft = table[table["comparison"] == "mixture (soft) - two bases"].set_index("machine")
    d = np.subtract(ACC["soft_accuracy"], ACC["two_bases_control_accuracy"])
    assert soft.loc["Intel Xeon", "mean"] == pytest.approx(d[0])
    assert soft.loc["Intel Xeon", "seeds"] == "42"
    assert soft.loc["AMD EPYC 7B13 (2 cores)", "mean"] == pytest.approx(d[1:].mean())
    assert machine_table(pd.DataFrame(rows())).empty  # one machine: nothing to split


def labels_with(counts: dict[str, tuple[int, int]], both: int = 50) -> dict[str, np.ndarray]:
    """Test labels in which each comparison's predictors disagree as ``counts`` says
    (images only the mixture side gets right, images only the control gets right).
    """
    sides = {"soft_vs_two_bases": ("soft", "two_bases"), "mixture_vs_base": ("mixture", "base")}
    n = sum(a + b for a, b in counts.values()) + both
    out = {"y": np.zeros(n, dtype=np.int8)}
    start = 0
    for name, (only_a, only_b) in counts.items():
        a_key, b_key = sides[name]
        a_right, b_right = np.zeros(n, bool), np.zeros(n, bool)
        a_right[start : start + only_a] = True
        b_right[start + only_a : start + only_a + only_b] = True
        a_right[-both:] = b_right[-both:] = True
        out[a_key], out[b_key] = np.where(a_right, 0, 1), np.where(b_right, 0, 2)
        start += only_a + only_b
    return out


def test_mcnemar_section_gives_each_seeds_counts_and_exact_p_from_the_labels():
    labels = {
        ("default", seed): labels_with(
            {k: DISCORDANT[k][i] for k in DISCORDANT if k != "hard_vs_two_bases"}
        )
        for i, seed in enumerate(SEEDS)
    }
    table = mcnemar_table(labels)
    assert len(table) == 3 * 2  # seeds x the comparisons the labels hold
    soft = table[(table["comparison"] == "soft_vs_two_bases") & (table["seed"] == 43)].iloc[0]
    assert (soft["only_a"], soft["only_b"]) == (130, 180)
    assert soft["p"] == pytest.approx(stats.binomtest(130, 310, 0.5).pvalue)
    md = findings_markdown(pd.DataFrame(rows()), "default", labels=labels)
    section = md[md.index("## The decisive comparisons") :]
    assert "| default | 43 | 130 / 180 (p=" in section
    assert "mixture (hard) - two bases" in section  # across seeds, from the CSV
    assert "mixture lower" in section  # its interval excludes 0
    assert "McNemar" not in findings_markdown(pd.DataFrame(rows()), "default")  # no labels


def test_provenance_names_commit_machine_and_wall_time_per_seed():
    md = findings_markdown(pd.DataFrame(rows()), "default")
    assert "- Commit(s): f92cfa4" in md
    assert "- Machine(s): AMD EPYC 7B13 (2 cores)" in md
    assert "| 43 | 1 | 45.0 | f92cfa4 | AMD EPYC 7B13 (2 cores) |" in md


def test_the_configuration_table_stays_first():
    md = findings_markdown(pd.DataFrame(rows()), "default")
    first = next(line for line in md.splitlines() if line.startswith("| "))
    assert first.startswith("| configuration | seeds | mixture (± sd) |")


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
    assert md.startswith("| configuration | seeds | mixture (± sd) |")
    assert "mixture - base" in md  # what it can compute
    assert "(soft) - two bases" not in md  # no soft nor two bases: no such comparison
    assert "McNemar" not in md and "![" not in md  # what it cannot: left out
    assert not (tmp_path / "findings.png").exists()
    assert "| 42 | 1 | 45.0 | not recorded | not recorded |" in md


def test_commits_that_look_like_numbers_stay_text(tmp_path):
    frame = pd.DataFrame(rows())
    frame["commit"] = "1234567"
    frame.to_csv(tmp_path / "findings.csv", index=False)
    assert read_findings(tmp_path / "findings.csv")["commit"].iloc[0] == "1234567"


def test_cli_rejects_an_unknown_reference(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "findings.csv", index=False)
    with pytest.raises(SystemExit, match="not one of"):
        main([str(tmp_path), "--reference", "nope"])


def test_findings_columns_are_figures_the_evaluation_names():
    """One home for what each figure is: findings.md averages figures of
    hmoe.metrics.FIGURES (and the gates' val figures of the same names), no others.
    """
    from hmoe.findings.tables import ACCURACIES
    from hmoe.metrics import FIGURES

    strays = [k for k in ACCURACIES if k.removeprefix("val_") not in FIGURES]
    assert not strays, f"findings columns hmoe.metrics.FIGURES does not name: {strays}"
