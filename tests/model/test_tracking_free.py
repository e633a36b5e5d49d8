"""The MLflow code decides no output, which is why hmoe/observer is in no stage's DVC
deps: the base trained by its stage function under MLflow's observer (a real MLflow
store: runs, per-epoch metrics, datasets, registration, plus the backup and epoch log)
has exactly the weights of the same step with no hooks at all.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from hmoe import modelset, paths
from hmoe.edge import runtime
from hmoe.edge.run import run_stage
from hmoe.edge.store import FileStore
from hmoe.observer.runs import Observer
from hmoe.params import load_params
from hmoe.steps.experts import train_base
from tests.conftest import ROOT
from tests.support.synthetic import make_images

pytestmark = pytest.mark.model


def test_tracked_stage_trains_the_same_weights_as_the_bare_step(tmp_path, monkeypatch):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    p = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(p.base, epochs=2, batch_size=16)
    p = dataclasses.replace(p, net=dataclasses.replace(p.net, width=4), base=cfg)
    x, y = make_images(6, seed=0)
    order = np.random.default_rng(1).permutation(len(y))
    x, y = x[order], y[order]
    train, val = (x[:48], y[:48]), (x[48:], y[48:])
    from hmoe.data import save_split

    save_split(paths.TRAIN, *train)
    save_split(paths.VAL, *val)

    runtime.setup(p)  # the seeds and precision the stage sets
    bare = train_base(p, train, val).model

    done = run_stage("train_base", p, FileStore(), Observer(p.mlflow.experiment))
    tracked = done.written[paths.BASE_MODEL]

    assert paths.BASE_MODEL.is_file() and (tmp_path / "mlflow.db").is_file()
    for a, b in zip(bare.get_weights(), tracked.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    saved = modelset.load_model(paths.BASE_MODEL)
    for a, b in zip(bare.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
