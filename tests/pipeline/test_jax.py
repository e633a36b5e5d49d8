"""`KERAS_BACKEND=jax dvc repro` end to end on a tiny synthetic dataset: every stage,
the MLflow runs, the registered models and the served pyfunc, on Keras's JAX backend
with the compiled training step (`train.jit_compile: auto`).
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.support.shared import EXPERIMENT, clone
from tests.support.tiers import has_module, need
from tests.support.tinyrepo import base_env, served_champion
from tests.support.tinyrepo import run as _run

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def repo(tiny_project, tmp_path_factory):
    need(has_module("jax"), "the JAX backend needs the jax extra: pip install -e '.[dev,jax]'")
    root = tmp_path_factory.mktemp("jax")
    env = base_env(root / "repo", KERAS_BACKEND="jax")
    repo = clone(tiny_project, root / "repo", env)
    log = _run(["dvc", "repro"], repo, env, timeout=1200)
    return repo, env, log


def test_every_stage_runs_compiled_on_jax_and_is_tracked(repo):
    root, _, log = repo
    assert "compiled True (auto: JAX compiles every step)" in log
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert 0 <= metrics["mixture_accuracy"] <= 1
    details = json.loads((root / "reports/eval/details.json").read_text())
    assert details["mixture_rows_sum_max_error"] < 1e-4
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    stages = {r.info.run_name for r in runs if r.data.tags.get("hmoe_role") == "stage"}
    assert {"prepare", "train_base", "train_router", "train_gates", "evaluate"} <= stages
    base = next(r for r in runs if r.info.run_name == "train_base")
    assert base.data.params["keras_backend"] == "jax"
    assert base.data.params["jit_compile_used"] == "True"
    assert client.get_model_version_by_alias("hmoe-mixture", "champion") is not None


def test_the_served_pyfunc_scores_what_evaluate_reports_on_jax(repo):
    root, env, _ = repo
    _, served, reported = served_champion(root, env)
    assert served == pytest.approx(reported)
