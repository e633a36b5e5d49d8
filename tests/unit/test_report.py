import numpy as np
import pandas as pd

from hmoe.report import gate_matrix, routing_matrix, write_report


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
    files = write_report(
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
    assert {f.name for f in files} >= {"confusion.png", "report.md", "report.html"}
    assert all(f.stat().st_size > 0 for f in files)
    md = (tmp_path / "report.md").read_text()
    assert "| mixture | 0.5000 |" in md and "specialist a (on its classes)" in md
