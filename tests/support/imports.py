"""The modules a Python file imports, read with ``ast`` (every import statement, at
module level or inside a function: a function-level import is a dependency too).
Shared by the import-graph and the DVC-deps checks.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path


def imported(
    file: Path, package: str, is_module: Callable[[str], bool], *, parent: bool
) -> set[str]:
    """Module names ``file`` imports, relative imports resolved against ``package``.

    ``from a import b`` names ``a.b`` when that is a module; with ``parent`` it also
    names ``a`` (a package's ``__init__`` runs first), without it ``a`` only when ``b``
    is no module (a name defined in ``a``).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            subs = {
                f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}")
            }
            found |= subs | {base} if parent or not subs else subs
    return {m for m in found if is_module(m)}
