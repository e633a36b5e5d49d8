"""The git commit the code runs at: one lookup for the MLflow tags, the run report and
the sweep's findings. Standard library only, so the MLflow modules may use it too
(tests/unit/test_import_graph.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SHORT = 10  # hex digits of a short commit: the run name, the report, the findings


def commit(short: bool = False) -> str:
    """HEAD of the repository the process runs in (the current folder, as DVC starts
    every stage at the root), or ``unknown`` outside a git checkout; ``short``: its
    first :data:`SHORT` digits, the same length wherever it is shown (git's own
    ``--short`` length varies with the repository's size).
    """
    cmd = ["git", "rev-parse", "HEAD"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path.cwd())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    full = out.stdout.strip()
    return full[:SHORT] if short else full
