"""A training loss that turns NaN stops the stage with one message naming the fix,
and leaves no model and no backup to resume from (the real step with the stage's
edge and observer, a local MLflow store).
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from mlflow.tracking import MlflowClient

from hmoe import paths
from hmoe.data import save_split
from hmoe.edge.run import run_stage
from hmoe.edge.start import StageError
from hmoe.edge.store import FileStore
from hmoe.observer.runs import Observer
from hmoe.observer.tracking import STAGE_TAG
from hmoe.params import load_params
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
    with pytest.raises(StageError, match=r"became NaN.*`base\.learning_rate`"):
        run_stage("train_base", p, FileStore(), Observer(p.mlflow.experiment))
    assert not paths.BASE_MODEL.exists()
    assert not paths.BASE_METRICS.exists()
    assert paths.BACKUPS.is_dir()  # the hooks made one while training ...
    assert not any(paths.BACKUPS.glob("train_base-*"))  # ... and deleted it
    (run,) = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(p.mlflow.experiment).experiment_id],
        filter_string=f"tags.{STAGE_TAG} = 'train_base'",
    )
    assert run.info.status == "FAILED"
