"""The champion rule and lineage links, on a real MLflow registry (SQLite in a temp dir).

The registry knows no pipeline names: any registered model name works."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from hmoe.observer import registry

NAME = "hmoe-mixture"


def test_decide_promotes_only_strict_improvements():
    assert registry.decide(0.8, None, None).promote
    assert registry.decide(0.81, 0.80, "3").promote
    tie = registry.decide(0.80, 0.80, "3")
    assert not tie.promote and "v3" in tie.reason
    assert not registry.decide(0.79, 0.80, "3").promote


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    c = MlflowClient()
    c.create_registered_model(NAME)
    return c


def _new_version(client, tmp_path) -> str:
    return client.create_model_version(NAME, source=str(tmp_path)).version


def test_champion_alias_follows_val_accuracy(client, tmp_path):
    v1 = _new_version(client, tmp_path)
    assert registry.apply_champion_rule(NAME, v1, 0.80, "split-a").promote
    v2 = _new_version(client, tmp_path)
    assert not registry.apply_champion_rule(NAME, v2, 0.79, "split-a").promote
    assert "challenger" in client.get_model_version(NAME, v2).tags
    assert client.get_model_version_by_alias(NAME, "champion").version == v1
    v3 = _new_version(client, tmp_path)
    d = registry.apply_champion_rule(NAME, v3, 0.85, "split-a")
    assert d.promote and d.champion_version == v1 and d.champion_val == pytest.approx(0.80)
    assert client.get_model_version_by_alias(NAME, "champion").version == v3


def test_champion_scored_on_another_split_is_not_compared(client, tmp_path):
    v1 = _new_version(client, tmp_path)
    assert registry.apply_champion_rule(NAME, v1, 0.80, "split-a").promote
    v2 = _new_version(client, tmp_path)
    d = registry.apply_champion_rule(NAME, v2, 0.99, "split-b")  # better, but on other images
    assert not d.promote and "another validation split" in d.reason
    assert client.get_model_version_by_alias(NAME, "champion").version == v1
    assert client.get_model_version(NAME, v2).tags["split_digest"] == "split-b"


def test_lineage_links_the_version_whose_md5_is_the_output(client, tmp_path):
    old, new = _new_version(client, tmp_path), _new_version(client, tmp_path)
    registry.tag_version(NAME, old, {"dvc_md5": "aaa"})
    registry.tag_version(NAME, new, {"dvc_md5": "bbb"})
    parent = client.create_run(client.create_experiment("t")).info.run_id
    registry.link_lineage(parent, {NAME: "aaa", "hmoe-unregistered": "ccc"})
    tags = client.get_run(parent).data.tags
    assert tags[f"model_version.{NAME}"] == str(old)
    assert not any("hmoe-unregistered" in k for k in tags)


SERVED_IMPORTS = """
import hmoe.serving
from hmoe.serving import MixturePyfunc
from hmoe.mixture import load_mixture
from hmoe.modelset import load_model
print(hmoe.serving.__file__)
"""


def test_the_served_pyfunc_ships_only_what_serving_imports(tmp_path):
    """The mixture's pyfunc code is hmoe.serving's import closure: enough to load and
    run it in a process that sees no other hmoe code, and no training, sweep, team or
    MLflow-logging module.
    """
    import os
    import subprocess
    import sys

    code = registry.served_code("hmoe.serving", tmp_path / "code")
    shipped = {p.relative_to(code).as_posix() for p in code.rglob("*.py")}
    assert {"serving.py", "mixture.py", "gates.py", "groups.py", "__init__.py"} <= shipped
    unwanted = ("sweep", "teamstack", "observer/", "steps/", "report", "findings/", "cli")
    assert not [f for f in shipped if f.startswith(unwanted)], sorted(shipped)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHONPATH": str(code.parent)
    }
    proc = subprocess.run(
        [sys.executable, "-c", SERVED_IMPORTS], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == str(code / "serving.py")
