"""Bad input to a real stage process: one clear line naming the input and the fix,
exit status 2, no traceback, nothing written.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import ROOT


def _stage(tmp: Path, module: str, params: dict, **env: str) -> subprocess.CompletedProcess:
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(ROOT / "dvc.yaml", tmp / "dvc.yaml")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    full_env |= {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    return subprocess.run(
        [sys.executable, "-m", module], cwd=tmp, env=full_env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def _one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_missing_data_source_is_named(tmp_path, raw_params):
    raw_params["data"]["source"] = str(tmp_path / "nowhere.zip")
    proc = _stage(tmp_path, "stages.prepare", raw_params)
    _one_clear_line(proc, "nowhere.zip")
    assert not (tmp_path / "data").exists()


def test_misspelt_params_key_stops_before_any_work(tmp_path, raw_params):
    raw_params["specialists"]["dustbn"] = 0.5
    _one_clear_line(_stage(tmp_path, "stages.groups", raw_params), "`specialists.dustbn`")
    assert not (tmp_path / "reports").exists()


def test_missing_groups_file_names_the_stage_to_run(tmp_path, raw_params):
    proc = _stage(tmp_path, "stages.train_router", raw_params, MLFLOW_TRACKING_URI="file:./mlruns")
    _one_clear_line(proc, "reports/groups.json", "dvc repro groups")


def test_tracking_server_that_does_not_answer_fails_in_seconds(tmp_path, raw_params):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    proc = _stage(
        tmp_path, "stages.groups", raw_params,
        MLFLOW_TRACKING_URI=f"http://bob:hunter2@127.0.0.1:{port}",
    )  # fmt: skip
    assert time.monotonic() - start < 60
    _one_clear_line(proc, f"bob:***@127.0.0.1:{port}", "does not answer")
    assert "hunter2" not in proc.stderr + proc.stdout
