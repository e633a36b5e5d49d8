"""bench/cpu_session.sh refuses what it cannot run before it times anything: a session
on a lent machine is short, and a typo should not cost its first ten minutes.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "cpu_session.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},  # no E2E from the caller's environment
    )


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0


@pytest.mark.parametrize("part", ["profil", "e2e-full", "all"])
def test_an_unknown_part_is_refused(part: str) -> None:
    done = run("profile", part)
    assert done.returncode == 2
    assert f"unknown part: {part}" in done.stderr
    assert done.stdout == ""  # nothing ran


def test_the_end_to_end_part_needs_its_data() -> None:
    done = run("e2e")
    assert done.returncode == 2
    assert "E2E=<data source>" in done.stderr
    assert done.stdout == ""
