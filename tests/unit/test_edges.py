"""Stage edges: declared params, backup keys, atomic saves, datasets in MLflow,
serving's input checks and params profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from hmoe import edge, observer, paths, runtime, tracking
from hmoe.data import save_split
from hmoe.data.storage import file_md5
from hmoe.params import ParamsError, load_params, parse_params
from hmoe.profile import merged
from hmoe.serving import InputError, to_images
from tests.conftest import ROOT


@pytest.fixture
def params():
    return load_params(ROOT / "params.yaml")


def test_stage_params_are_exactly_the_declared_ones(monkeypatch, params):
    monkeypatch.chdir(ROOT)
    got = edge.stage_params("train_specialists@natural", params)
    assert got["specialists.epochs"] == params.specialists.epochs
    assert got["specialists.dustbin"] == params.specialists.dustbin
    assert got["net.width"] == params.net.width
    # the effective recipe: the shared `recipe` with the specialists' overrides applied
    assert got["specialists.learning_rate"] == params.specialists.learning_rate
    assert "base.epochs" not in got
    assert not any(k.startswith(("gates.", "mlflow.", "groups.", "router.")) for k in got)
    router = edge.stage_params("train_router", params)
    assert not any(k.startswith(("base.", "specialists.", "gates.")) for k in router)
    assert "groups.natural" in edge.stage_params("groups", params)
    assert edge.stage_params("evaluate", params)["gates.inputs"] == params.gates.inputs
    assert set(edge.stage_params("prepare", params)) == {
        "data.source",
        "data.val_size",
        "data.gate_size",
        "data.limit",
        "data.split_seed",
    }


def test_backup_key_changes_with_params_and_stage():
    a = edge.backup_key("train_base", {"base.epochs": 8})
    assert a == edge.backup_key("train_base", {"base.epochs": 8})
    assert a != edge.backup_key("train_base", {"base.epochs": 9})
    assert a != edge.backup_key("train_router", {"base.epochs": 8})
    assert "@" not in edge.backup_key("train_specialists@natural", {})


@pytest.mark.parametrize(
    ("backend", "gpus", "flags", "policy"),
    [
        ("tensorflow", 0, ["avx2", "avx512f", "avx512_bf16"], "mixed_bfloat16"),  # Zen 4
        ("tensorflow", 0, ["avx512f", "avx512_bf16", "amx_bf16"], "mixed_bfloat16"),
        ("tensorflow", 0, ["avx2", "avx512f"], "float32"),  # bf16 would be emulated
        ("jax", 0, ["avx512_bf16"], "float32"),
        ("jax", 1, [], "mixed_bfloat16"),
        ("tensorflow", 2, [], "mixed_bfloat16"),
    ],
)
def test_auto_precision_follows_the_hardware_and_says_why(backend, gpus, flags, policy):
    got, why = runtime.auto_precision("auto", backend, gpus, flags)
    assert got == policy
    assert why.startswith("auto: ")
    assert runtime.auto_precision("float32", backend, gpus, flags) == (
        "float32",
        "set in params.yaml",
    )


def test_resolve_precision_reads_this_machine():
    policy, why = runtime.resolve_precision("auto")
    bf16 = any(f in runtime.cpu_flags() for f in runtime.CPU_BF16_FLAGS)
    assert policy == ("mixed_bfloat16" if bf16 else "float32"), why  # no GPU in the tests


def test_save_model_is_atomic(tmp_path):
    class Boom:
        def save(self, path):
            with open(path, "wb") as fh:
                fh.write(b"half")
            raise OSError("disk full")

    target = tmp_path / "m.keras"
    with pytest.raises(OSError, match="disk full"):
        edge.save_model(Boom(), target)
    assert list(tmp_path.iterdir()) == []


def test_tracked_stage_logs_params_and_split_datasets(monkeypatch, tmp_path, params):
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-datasets")
    rng = np.random.default_rng(0)
    save_split(paths.TRAIN, rng.integers(0, 255, (20, 32, 32, 3), np.uint8), np.arange(20) % 10)
    train = edge.read_split("train")
    assert train.path == paths.TRAIN and len(train.y) == 20
    with observer.stage("train_base", params, {"train": train}) as stage_run:
        run_id = tracking.mlflow.active_run().info.run_id
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == stage_run.parent
    assert run.data.params["base.epochs"] == str(params.base.epochs)
    assert run.data.params["precision_used"] == "float32"
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == file_md5(paths.TRAIN)
    assert inp.dataset.name == "train"
    assert inp.tags[0].value == "train"


def test_to_images_accepts_arrays_and_flat_frames():
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_images(x), x)
    flat = pd.DataFrame(x.reshape(3, -1))
    np.testing.assert_array_equal(to_images(flat), x)
    assert to_images(x.astype(np.int64)).dtype == np.uint8


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (np.zeros((2, 28, 28, 3), np.uint8), "(N, 32, 32, 3)"),
        (np.zeros((32, 32, 3), np.uint8), "(N, 32, 32, 3)"),
        (np.full((1, 32, 32, 3), 300), "0..255"),
        (np.full((1, 32, 32, 3), -1), "0..255"),
        (np.full((1, 32, 32, 3), 0.5), "multiply by 255"),
        (np.full((1, 32, 32, 3), 12.5), "integers 0..255"),
        (np.zeros((0, 32, 32, 3)), "empty batch"),
        (np.zeros((0,)), "empty batch"),
        (np.zeros((3, 32, 32, 3)), "cap of 2"),
        (np.full((1, 32, 32, 3), "a"), "numbers 0..255"),
    ],
)
def test_to_images_rejects_bad_input(bad, needle):
    with pytest.raises(InputError, match=None) as err:
        to_images(bad, max_batch=2)
    assert needle in str(err.value)


def test_to_images_accepts_integral_floats_as_json_gives_them():
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float64)
    np.testing.assert_array_equal(to_images(x), x.astype(np.uint8))


def test_profile_merge_is_deep_and_profiles_validate():
    base = {"a": {"x": 1, "y": 2}, "b": 3}
    assert merged(base, {"a": {"y": 5}}) == {"a": {"x": 1, "y": 5}, "b": 3}
    assert base == {"a": {"x": 1, "y": 2}, "b": 3}  # the input is not mutated
    from hmoe.params import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for profile in sorted((ROOT / "profiles").glob("*.yaml")):
        parse_params(merged(raw, yaml.safe_load(profile.read_text())))


def test_distribute_settings():
    from hmoe.distribute import replica_devices

    assert replica_devices("none") == []
    assert replica_devices("auto") == []  # no GPU on the test machines
    with pytest.raises(ValueError, match=r"train\.distribute"):
        replica_devices("horovod")


def test_bad_distribute_param_is_named(raw_params):
    raw_params["train"]["distribute"] = "multiworker"
    with pytest.raises(ParamsError, match=r"`train\.distribute`"):
        parse_params(raw_params)
