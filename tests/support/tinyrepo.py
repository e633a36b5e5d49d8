"""A copy of the project in a temporary git + DVC repo, with tiny params and data.

Shared by the pipeline and team tiers: both run the real `dvc` on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import ROOT
from tests.support.synthetic import write_class_folder_tree

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> str:
    """Run a command; fail the test with its output tail when it fails."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    skip = ("tests/", ".ci/", ".dvc/", "bench/", "profiles/", "scripts/")
    files = [f for f in out.stdout.splitlines() if f and not f.startswith(skip)]
    return [f for f in files if f != "dvc.lock" and not f.startswith("reports/")]


def tiny_params(source: Path, experiment: str) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(source=str(source), val_size=60, gate_size=60, limit=None)
    raw["net"]["width"] = 4
    raw["recipe"]["batch_size"] = 32
    for net in ("base", "specialists", "router"):
        raw[net]["epochs"] = 1
    raw["gates"].update(epochs=2, hidden=4)
    raw["mlflow"].update(experiment=experiment)
    return raw


def base_env(repo: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return env | GIT_ENV | {"PYTHONPATH": str(repo)} | extra


def make_repo(root: Path, experiment: str, env: dict[str, str]) -> Path:
    """Copy the tracked project files, write tiny data and params, git + dvc init, commit."""
    repo = root / "repo"
    for rel in tracked_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    source = write_class_folder_tree(
        root / "src", train_per_class=24, test_per_class=6, seed=0, as_zip=True
    )
    params = tiny_params(source, experiment)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    shutil.copy2(ROOT / ".dvc/config", repo / ".dvc/config")  # the project's DVC settings
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny"], repo, env)
    return repo
