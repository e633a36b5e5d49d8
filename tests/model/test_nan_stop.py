"""A training loss that turns NaN stops the stage with one message naming the fix,
and leaves no model and no backup to resume from (the real runner, a local MLflow store).
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from hmoe import paths, runner
from hmoe.data import save_split
from hmoe.params import load_params
from hmoe.startup import StageError
from tests.conftest import ROOT
from tests.support.synthetic import make_images

pytestmark = pytest.mark.model


def test_nan_loss_stops_the_stage_and_names_the_learning_rate(tmp_path, monkeypatch):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    p = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(p.base, epochs=3, batch_size=16, learning_rate=1e12, lookahead=False)
    p = dataclasses.replace(p, net=dataclasses.replace(p.net, width=4), base=cfg)
    x, y = make_images(8, seed=0)
    save_split(paths.TRAIN, x, y)  # the stage logs its input splits as MLflow datasets
    save_split(paths.VAL, x[:20], y[:20])
    job = runner.ClassifierJob(
        stage="train_base", cfg=cfg, n_outputs=10, train=(x, y), val=(x[:20], y[:20]),
        model_path=paths.BASE_MODEL, registered_name="hmoe-base",
    )  # fmt: skip
    with pytest.raises(StageError, match=r"became NaN.*`base\.learning_rate`"):
        runner.run_classifier_job(job, p)
    assert not paths.BASE_MODEL.exists()
    assert not any(paths.BACKUPS.glob("train_base-*"))
