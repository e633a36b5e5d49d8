"""How a sweep is cut into tasks (hmoe.sweep_plan.reuse_groups) and the engine options the
command line takes, without training or Ray: params and dvc.yaml only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from hmoe.sweep import parse_args
from hmoe.sweep_plan import load_spec, pending_pairs, reuse_groups


def _spec(tmp_path: Path, configurations: dict, seeds: int = 2):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"configurations": configurations}))
    return load_spec(path, seeds)


def _groups(spec) -> list[list[tuple[str, int]]]:
    pairs = pending_pairs(spec, pd.DataFrame(columns=["config", "seed"]))
    return [[(p.config, p.seed) for p in group] for group in reuse_groups(pairs)]


def test_configurations_sharing_a_base_run_together_one_group_per_seed(tmp_path):
    spec = _spec(tmp_path, {"default": {}, "soft": {"mixture": {"routing": "soft"}}})
    assert _groups(spec) == [
        [("default", 42), ("soft", 42)],
        [("default", 43), ("soft", 43)],
    ]


def test_a_configuration_with_its_own_base_is_its_own_group(tmp_path):
    spec = _spec(tmp_path, {"default": {}, "longer": {"base": {"epochs": 7}}}, seeds=1)
    assert _groups(spec) == [[("default", 42)], [("longer", 42)]]


def test_finished_pairs_are_not_planned(tmp_path):
    spec = _spec(tmp_path, {"default": {}, "soft": {"mixture": {"routing": "soft"}}})
    done = pd.DataFrame({"config": ["default", "soft"], "seed": [42, 42]})
    pairs = pending_pairs(spec, done)
    assert [(p.config, p.seed) for p in pairs] == [("default", 43), ("soft", 43)]


@pytest.mark.parametrize(
    "argv",
    [
        ["s.yaml", "--address", "head:6379"],
        ["s.yaml", "--gpus-per-task", "1"],
        ["s.yaml", "--engine", "ray", "--threads", "2"],
    ],
)
def test_engine_options_are_refused_where_they_do_nothing(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "--" in capsys.readouterr().err


def test_ray_options_are_checked(monkeypatch):
    from hmoe.sweep_ray import RayEngineError, RayOptions

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    args = parse_args(["s.yaml", "--engine", "ray", "--cpus-per-task", "2"])
    assert RayOptions.from_args(args) == RayOptions(cpus=2)
    with pytest.raises(RayEngineError, match="--cpus-per-task"):
        RayOptions.from_args(parse_args(["s.yaml", "--engine", "ray", "--cpus-per-task", "0"]))
