"""No usage statistics leave the project: DVC's analytics and MLflow's telemetry are off."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PROBE = (
    "import {imports}; from mlflow.telemetry.client import get_telemetry_client; "
    "print(get_telemetry_client() is None)"
)


def _telemetry_off_after(imports: str, home: Path) -> bool:
    """In a bare environment (no CI or pytest variables, which MLflow itself heeds); its
    home is a temporary folder, where MLflow keeps its installation id.
    """
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports)], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return proc.stdout.strip().splitlines()[-1] == "True"


def test_importing_hmoe_first_turns_mlflow_telemetry_off(tmp_path):
    assert not _telemetry_off_after("mlflow", tmp_path)  # the control: MLflow's default is on
    assert _telemetry_off_after("hmoe, mlflow", tmp_path)


def test_dvc_analytics_are_off_in_the_project_config():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert config.get("core", "analytics") == "false"
