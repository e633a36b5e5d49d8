import numpy as np
import pandas as pd

from hmoe.edge.store import FileStore
from hmoe.report import write_report
from hmoe.report_figures import curves_figure, gate_matrix, routing_matrix


def test_routing_matrix_rows_are_shares():
    y = np.array([0, 0, 1, 1, 1])
    router = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.6, 0.4]])
    m = routing_matrix(y, router, 3)
    np.testing.assert_allclose(m[0], [0.5, 0.5])
    np.testing.assert_allclose(m[1], [1 / 3, 2 / 3])
    np.testing.assert_allclose(m[2], [0, 0])


def test_gate_matrix_is_mean_specialist_weight_per_class():
    y = np.array([0, 0, 1])
    w = [np.array([[0.5, 0.5], [0.1, 0.9], [1.0, 0.0]])]
    m = gate_matrix(y, w, 3)
    np.testing.assert_allclose(m[:2, 0], [0.7, 0.0])
    assert np.isnan(m[2, 0])


def test_write_report_writes_figures_and_pages(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(4)]
    y = rng.integers(0, 4, 40)
    files = save(
        write_report(
            tmp_path,
            metrics={"mixture_accuracy": 0.5, "base_accuracy": 0.4, "specialist_a_accuracy": 0.7},
            y=y,
            base_pred=rng.integers(0, 4, 40),
            mix_pred=y,
            router_probs=rng.random((40, 2)),
            gate_ws=[rng.random((40, 2)), rng.random((40, 2))],
            classes=classes,
            group_names=["a", "b"],
            histories={
                "train_base": pd.DataFrame(
                    {"epoch": [0, 1], "accuracy": [0.3, 0.5], "val_accuracy": [0.3, 0.4]}
                )
            },
        )
    )
    assert {f.name for f in files} >= {"confusion.png", "report.md", "report.html"}
    assert all(f.stat().st_size > 0 for f in files)
    md = (tmp_path / "report.md").read_text()
    assert "| mixture | 50.00 % |  |" in md and "| specialist a (on its classes) | 70.00 % |" in md
    assert "0.5000" not in md


def test_results_are_percentages_with_their_paired_intervals(tmp_path):
    """As README reads: 88.81 %, differences in points, the paired 95 % interval beside
    each difference that has one.
    """
    metrics = {
        "mixture_accuracy": 0.8881, "base_accuracy": 0.8829, "routing_loss": 0.0095,
        "lift_over_base": 0.0052, "vs_base_diff": 0.0052, "vs_base_ci_low": 0.0012,
        "vs_base_ci_high": 0.0091, "vs_base_only_a": 252, "vs_base_only_b": 200,
        "vs_base_mcnemar_p": 0.0164, "vs_best_control_diff": -0.0008,
        "vs_best_control_ci_low": -0.0033, "vs_best_control_ci_high": 0.0019,
        "vs_best_control_only_a": 89, "vs_best_control_only_b": 97,
        "vs_best_control_mcnemar_p": 0.608,
    }  # fmt: skip
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 40)
    save(write_report(
        tmp_path, metrics=metrics, y=y, base_pred=y, mix_pred=y,
        router_probs=rng.random((40, 2)), gate_ws=[rng.random((40, 2))] * 2,
        classes=[f"c{i}" for i in range(4)], group_names=["a", "b"], histories={},
        best_control="equal_gates",
    ))  # fmt: skip
    md = (tmp_path / "report.md").read_text()
    results = md[md.index("## Results") : md.index("## Is the lift real?")]
    assert "| mixture | 88.81 % |  |" in results
    assert "| base | 88.29 % |  |" in results
    assert "| hard-routing loss (oracle - hard) | +0.95 points |  |" in results
    assert "| lift over base | +0.52 points | +0.12 .. +0.91 points |" in results
    assert (
        "| lift over best control (equal_gates) | -0.08 points | -0.33 .. +0.19 points |" in results
    )
    assert "| base | +0.52 points | +0.12 .. +0.91 points | 252 | 200 | 0.0164 |" in md
    assert "0.88" not in md and "0.0052" not in md


def test_a_network_trained_for_one_epoch_gets_a_visible_curve():
    """One epoch is one point: a line alone would draw nothing, markers draw it."""
    one = pd.DataFrame({"epoch": [0], "accuracy": [0.3], "val_accuracy": [0.4]})
    long = pd.DataFrame(
        {"epoch": range(40), "accuracy": np.linspace(0.1, 0.9, 40), "val_accuracy": 0.5}
    )
    fig = curves_figure({"router": one, "base": long})
    router, base = fig.axes[:2]
    assert [line.get_marker() for line in router.lines] == ["o", "o"]
    assert all(len(line.get_xdata()) == 1 for line in router.lines)
    assert list(router.get_xticks()) == [1] and router.get_xlim() == (0.5, 1.5)
    assert all(line.get_marker() in (None, "None", "") for line in base.lines)


def save(files):
    """Write a report's files (path -> writer or text) as the evaluate stage's store does."""
    for path, value in files.items():
        FileStore().write(path, value)
    return list(files)


def test_the_log_line_gives_the_headline_in_its_order():
    from hmoe.metrics import HEADLINE
    from hmoe.report import headline

    metrics = {k: 0.5 + i / 100 for i, k in enumerate(HEADLINE)} | {
        "vs_base_diff": 0.01, "vs_base_ci_low": -0.002, "vs_base_ci_high": 0.02,
        "vs_base_mcnemar_p": 0.04, "ensemble_accuracy": 0.9,
    }  # fmt: skip
    line = headline(metrics, "two_bases")
    shown = [k.removesuffix("_accuracy") for k in HEADLINE]
    assert line.startswith("test accuracy: " + ", ".join(f"{k} 0.5" for k in shown[:1]))
    positions = [line.index(f" {k} ") for k in shown]
    assert positions == sorted(positions), line
    assert "ensemble" not in line and line.endswith("best control two_bases")
