"""dvc.yaml and hmoe/paths.py name the same files; declared params exist."""

from pathlib import Path

import yaml

from hmoe import paths
from hmoe.params import flatten, load_params
from hmoe.pipeline import read_stages
from tests.conftest import ROOT


def _stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _outs(stage):
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]


def test_outputs_match_paths_module():
    s = _stages()
    assert _outs(s["prepare"]) == [
        str(paths.TRAIN),
        str(paths.GATE),
        str(paths.VAL),
        str(paths.TEST),
        str(paths.DATA_REPORT),
    ]
    # each network's training summary is an out, not a DVC metric: `dvc exp show` leads
    # with evaluate's headline (issue 22)
    assert _outs(s["train_base"]) == [str(paths.BASE_MODEL), str(paths.BASE_METRICS)]
    assert _outs(s["train_router"])[0] == str(paths.ROUTER_MODEL)
    assert _outs(s["groups"]) == [str(paths.GROUPS)]
    assert _outs(s["train_specialists"]) == [str(paths.SPECIALISTS), str(paths.SPECIALIST_METRICS)]
    assert paths.specialist_model("x").parent == paths.SPECIALISTS
    assert _outs(s["train_second_base"])[0] == str(paths.SECOND_BASE)
    assert paths.SECOND_BASE_MODEL.parent == paths.SECOND_BASE
    assert _outs(s["train_gates"])[0] == str(paths.GATES)
    assert [next(iter(m)) for m in s["evaluate"]["metrics"]] == [str(paths.METRICS)]
    assert str(paths.EVAL_DETAILS) in _outs(s["evaluate"])  # the rest: a plain output
    assert not any("metrics" in spec for name, spec in s.items() if name != "evaluate")
    assert str(paths.CONFUSION) in str(s["evaluate"]["plots"])
    assert str(paths.SPECIALIST_HISTORY) in str(s["train_specialists"]["plots"])
    assert paths.specialist_history("x").parent == paths.SPECIALIST_HISTORY


def test_groups_file_is_read_by_every_stage_after_groups():
    s = _stages()
    for name in ("train_specialists", "train_router", "train_gates", "evaluate"):
        assert str(paths.GROUPS) in s[name]["deps"], name
        assert "groups" not in s[name]["params"], name
    assert "groups" not in s["train_base"]["params"]


def test_only_evaluate_reads_the_test_split():
    for name, stage in _stages().items():
        deps = stage.get("deps", [])
        assert (str(paths.TEST) in deps) == (name == "evaluate"), name


def test_declared_params_exist():
    flat = flatten(load_params(ROOT / "params.yaml"))
    for name, stage in _stages().items():
        for key in stage.get("params", []):
            assert any(k == key or k.startswith(f"{key}.") for k in flat), (name, key)


def test_stage_modules_exist():
    for stage in _stages().values():
        cmd = stage["cmd"]
        module = cmd.split()[2]
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file(), cmd


def test_the_committed_lock_holds_only_dvc_yaml_s_stages():
    """A stage removed from dvc.yaml must not linger in dvc.lock with deps on deleted
    files (issue 22): the lock describes this pipeline's run, nothing else.
    """
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(lock["stages"]) <= set(declared)
    # a dep is a file of the repository, or an output of a stage (DVC's cache holds it)
    produced = {Path(o) for s in read_stages(ROOT / "dvc.yaml") for o in s.outs}
    for name, stage in lock["stages"].items():
        for dep in stage.get("deps", []):
            path = Path(dep["path"])
            made = any(path == o or o in path.parents for o in produced)
            assert (ROOT / path).exists() or made, (name, dep["path"])
