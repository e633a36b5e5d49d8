"""The MLflow code decides no output, which is why hmoe/tracking.py, hmoe/registry.py
and hmoe/observer.py are in no stage's DVC deps: the base trained by its stage's hooks
under the observer (a real MLflow store: runs, per-epoch metrics, datasets,
registration, plus the backup and epoch log) has exactly the weights of the same step
with no hooks at all.
"""

from __future__ import annotations

import dataclasses
import shutil

import keras
import numpy as np
import pytest

from hmoe import edge, modelset, observer, paths, stage_hooks
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
    splits = {name: edge.read_split(name) for name in ("train", "val")}

    keras.utils.set_random_seed(p.seed)
    bare = train_base(p, train, val).model

    keras.utils.set_random_seed(p.seed)
    reports = paths.stage_reports("train_base")
    out = stage_hooks.NetworkOutput(
        paths.BASE_MODEL, modelset.BASE, reports / "history.csv", reports / "metrics.json"
    )
    hooks = observer.watch(stage_hooks.StageHooks("train_base", p, {"base": out}, splits))
    tracked = train_base(p, train, val, hooks=hooks).model

    assert paths.BASE_MODEL.is_file() and (tmp_path / "mlflow.db").is_file()
    for a, b in zip(bare.get_weights(), tracked.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    saved = modelset.load_model(paths.BASE_MODEL)
    for a, b in zip(bare.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
