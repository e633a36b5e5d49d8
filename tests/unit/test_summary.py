import pytest

from hmoe.summary import frame, summarise


def _rev(rev, seed, routing, acc, base):
    return {
        "rev": rev,
        "name": f"exp-{rev}",
        "data": {
            "params": {"params.yaml": {"data": {"seed": seed, "mixture": {"routing": routing}}}},
            "metrics": {
                "reports/metrics.json": {"data": {"mixture_accuracy": acc, "base_accuracy": base}}
            },
        },
    }


SHOW = [
    {**_rev("workspace", 1, "hard", 0.80, 0.75), "experiments": None},
    {
        **_rev("abc", 1, "hard", 0.80, 0.75),
        "experiments": [
            {"revs": [_rev("e1", 2, "hard", 0.82, 0.76)]},
            {"revs": [_rev("e2", 3, "soft", 0.84, 0.77)]},
        ],
    },
]


def test_frame_collects_every_experiment_once_without_baselines():
    df = frame(SHOW)
    assert sorted(df["rev"]) == ["e1", "e2"]
    assert set(df["mixture.routing"]) == {"hard", "soft"}
    assert sorted(frame(SHOW[:1] + [{**SHOW[1], "experiments": None}])["rev"]) == ["abc"]


def test_summary_mean_and_spread():
    s = summarise(frame(SHOW), ["mixture_accuracy", "base_accuracy"])
    assert s.loc["mixture_accuracy", "mean"] == pytest.approx(0.83)
    assert s.loc["mixture_accuracy", "std"] == pytest.approx(0.02**0.5 / 10)
    assert s.loc["base_accuracy", "count"] == 2
    by = summarise(frame(SHOW), ["mixture_accuracy"], by="mixture.routing")
    assert by.loc["hard", ("mixture_accuracy", "mean")] == pytest.approx(0.82)


def test_unknown_metric_or_param_is_a_clear_error():
    with pytest.raises(ValueError, match="none of"):
        summarise(frame(SHOW), ["nope"])
    with pytest.raises(ValueError, match="no parameter"):
        summarise(frame(SHOW), ["mixture_accuracy"], by="nope")
