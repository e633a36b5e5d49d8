import numpy as np

from hmoe.metrics import accuracy, confusion, per_class_accuracy, specialist_accuracy


def test_accuracy_and_confusion():
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0, 0.1, 0.9]])
    y = np.array([0, 1, 1, 2])
    assert accuracy(probs, y) == 0.75
    cm = confusion(y, probs.argmax(1), 3)
    assert cm.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    np.testing.assert_allclose(per_class_accuracy(y, probs.argmax(1), 3), [1.0, 0.5, 1.0])


def test_per_class_accuracy_is_nan_for_absent_class():
    acc = per_class_accuracy(np.array([0, 0]), np.array([0, 1]), 3)
    assert acc[0] == 0.5 and np.isnan(acc[2])


def test_specialist_accuracy_only_counts_its_group():
    spec = np.zeros((4, 4))
    spec[:, 2] = 1.0  # always predicts class 2
    y = np.array([2, 3, 0, 1])  # group {2, 3}: one of two right; others ignored
    assert specialist_accuracy(spec, y, (2, 3)) == 0.5


def test_the_headline_is_figures_the_report_labels():
    from hmoe.metrics import FIGURES, HEADLINE

    assert set(HEADLINE) <= set(FIGURES), set(HEADLINE) - set(FIGURES)
