"""Stage edges: declared params, backup keys, the stores, a stage's declared paths,
one function per stage, datasets in MLflow, serving's input checks and params profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from hmoe import paths
from hmoe.data import save_split
from hmoe.data.constants import DataError
from hmoe.data.storage import file_md5
from hmoe.edge import runtime, start
from hmoe.edge.run import Stage, run_stage, stage_function
from hmoe.edge.start import StageError
from hmoe.edge.store import FileStore, MemoryStore, json_file
from hmoe.observer import tracking
from hmoe.observer.runs import Observer
from hmoe.params import ParamsError, load_params, parse_params
from hmoe.pipeline import read_stages
from hmoe.pipeline import stage as declared_stage
from hmoe.profile import merged
from hmoe.serving import InputError, to_images
from tests.conftest import ROOT


@pytest.fixture
def params():
    return load_params(ROOT / "params.yaml")


def test_stage_params_are_exactly_the_declared_ones(monkeypatch, params):
    monkeypatch.chdir(ROOT)
    got = start.stage_params("train_specialists@natural", params)
    assert got["specialists.epochs"] == params.specialists.epochs
    assert got["specialists.dustbin"] == params.specialists.dustbin
    assert got["net.width"] == params.net.width
    # the effective recipe: the shared `recipe` with the specialists' overrides applied
    assert got["specialists.learning_rate"] == params.specialists.learning_rate
    assert "base.epochs" not in got
    assert not any(k.startswith(("gates.", "mlflow.", "groups.", "router.")) for k in got)
    router = start.stage_params("train_router", params)
    assert not any(k.startswith(("base.", "specialists.", "gates.")) for k in router)
    assert "groups.natural" in start.stage_params("groups", params)
    assert start.stage_params("evaluate", params)["gates.inputs"] == params.gates.inputs
    assert set(start.stage_params("prepare", params)) == {
        "data.source",
        "data.val_size",
        "data.gate_size",
        "data.limit",
        "data.split_seed",
    }


def test_backup_key_changes_with_params_and_stage():
    a = start.backup_key("train_base", {"base.epochs": 8})
    assert a == start.backup_key("train_base", {"base.epochs": 8})
    assert a != start.backup_key("train_base", {"base.epochs": 9})
    assert a != start.backup_key("train_router", {"base.epochs": 8})
    assert "@" not in start.backup_key("train_specialists@natural", {})


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
        FileStore().write(target, Boom())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("store", [FileStore, MemoryStore])
def test_stores_read_back_what_was_written(monkeypatch, tmp_path, store):
    monkeypatch.chdir(tmp_path)
    s = store()
    x, y = np.zeros((3, 32, 32, 3), np.uint8), np.arange(3)
    s.write(paths.TRAIN, (x, y))
    s.write(paths.GROUPS, {"b": 1, "a": [2]})
    s.write(paths.METRICS, json_file({"z": 1.5, "a": 2}, sort_keys=False))
    s.write(paths.CONFUSION, lambda tmp: pd.DataFrame({"k": [1, 2]}).to_csv(tmp, index=False))
    s.write(paths.SECOND_BASE / "NOT_TRAINED", "a note\n")
    got_x, got_y = s.read(paths.TRAIN)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    assert s.read(paths.GROUPS) == {"b": 1, "a": [2]}
    assert list(s.read(paths.METRICS)) == ["z", "a"]  # the headline order is kept
    assert s.read(paths.CONFUSION)["k"].tolist() == [1, 2]
    assert s.read(paths.SECOND_BASE / "NOT_TRAINED") == b"a note\n"
    assert s.exists(paths.TRAIN) and not s.exists(paths.VAL)
    if store is FileStore:
        assert s.digest(paths.TRAIN) == file_md5(paths.TRAIN)
    first = s.digest(paths.TRAIN)
    s.write(paths.TRAIN, (x, y + 1))  # other labels: another dataset, another identity
    assert s.digest(paths.TRAIN) != first
    with pytest.raises((FileNotFoundError, DataError)):
        s.read(paths.VAL)


def test_a_stage_reads_and_writes_only_what_dvc_yaml_lists(monkeypatch, params):
    monkeypatch.chdir(ROOT)
    store = MemoryStore({paths.TRAIN: (np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1))})
    stage = Stage(declared_stage("train_base"), params, store, None)
    stage.read(paths.TRAIN)  # a dep
    with pytest.raises(StageError, match=r"train_base uses data/prepared/test\.npz.*deps"):
        stage.read(paths.TEST)
    with pytest.raises(StageError, match=r"train_base uses models/router\.keras.*outs"):
        stage.write(paths.ROUTER_MODEL, b"")
    stage.write(paths.BASE_METRICS, {"a": 1})
    specialists = Stage(declared_stage("train_specialists"), params, store, None)
    specialists.write(paths.specialist_model("natural"), b"x")  # a file in a declared folder
    assert paths.specialist_model("natural") in store.values


def test_what_a_stage_wrote_in_memory_reads_back_when_a_later_pair_reuses_it(monkeypatch, params):
    """A sweep copies a reused stage's outputs into the next pair's store: a writer's
    file must travel as its bytes (and pickle, for Ray), not as the writer.
    """
    import pickle

    monkeypatch.chdir(ROOT)
    stage = Stage(declared_stage("evaluate"), params, MemoryStore(), None)
    stage.write(paths.METRICS, json_file({"z": 1.0, "a": 2.0}, sort_keys=False))
    later = MemoryStore(pickle.loads(pickle.dumps(stage.written)))
    assert later.read(paths.METRICS) == {"z": 1.0, "a": 2.0}


def test_every_dvc_yaml_stage_is_one_function(monkeypatch):
    """Adding a stage to dvc.yaml without its function fails here, not halfway through
    a sweep; every stage module is its function and the shared entry point.
    """
    monkeypatch.chdir(ROOT)
    for s in read_stages():
        assert callable(stage_function(s.name)), s.name
        module = (ROOT / "stages" / f"{s.name}.py").read_text()
        assert "main(__file__)" in module, f"stages/{s.name}.py must end with main(__file__)"
    with pytest.raises(StageError, match=r"no module stages/nowhere\.py"):
        stage_function("nowhere")


def test_the_sweep_report_and_paths_keep_no_list_of_stages():
    """Which stages there are is dvc.yaml's, and what each does its module's: a stage's
    name written as a string in the sweep's runner, the report or the paths would be a
    second declaration to keep in step. paths.py names files, whole, as dvc.yaml does
    (reports/train_base/history.csv), and no stage: nothing there maps a stage to them.
    """
    import ast

    names = {s.name for s in read_stages(ROOT / "dvc.yaml")}
    for module in ("hmoe/sweep.py", "hmoe/sweep_runner.py", "hmoe/sweep_plan.py", "hmoe/report.py"):
        tree = ast.parse((ROOT / module).read_text())
        keys = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
        found = {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and n.value in names and id(n) not in keys
        }  # a record's key (record["groups"]) is no stage
        assert not found, f"{module} names the stages {sorted(found)}"
    tree = ast.parse((ROOT / "hmoe/paths.py").read_text())
    consts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert not consts & names, f"paths.py names the stages {sorted(consts & names)}"


def test_a_stage_runs_on_a_memory_store_and_keeps_what_it_logged(monkeypatch, params):
    monkeypatch.chdir(ROOT)
    done = run_stage("groups", params, MemoryStore())
    record = done.written[paths.GROUPS]
    assert record["source"] == "params"
    assert record["groups"] == params.groups.to_dict()
    assert set(done.logged) == {"groups"}  # its one run, opened by its first log


def test_tracked_stage_logs_params_and_split_datasets(monkeypatch, tmp_path, params):
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-datasets")
    rng = np.random.default_rng(0)
    save_split(paths.TRAIN, rng.integers(0, 255, (20, 32, 32, 3), np.uint8), np.arange(20) % 10)
    stage = Stage(
        declared_stage("train_base"), params, FileStore(), Observer(params.mlflow.experiment)
    )
    _, y = stage.split(paths.TRAIN)
    assert len(y) == 20
    with stage.network_run("train_base") as stage_run:
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


def test_a_run_without_mlflow_has_every_method_of_a_tracked_run():
    """NoRun spells out StageRun's methods: a misspelt call fails without MLflow too."""
    from hmoe.edge.run import NoRun
    from hmoe.observer.runs import StageRun

    public = {n for n in vars(StageRun) if not n.startswith("_") and callable(vars(StageRun)[n])}
    mine = {n for n in vars(NoRun) if not n.startswith("_") and callable(vars(NoRun)[n])}
    assert public == mine
    with pytest.raises(AttributeError):
        NoRun().log_metric({"a": 1.0})  # StageRun's is log_metrics
