"""Atomic file writes and the prepared-split .npz files.

Every output goes through `atomic_write`: writing to a temporary file in the same folder
and renaming it means an interrupted stage never leaves a truncated file that DVC or the
next stage would take for a good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hmoe.data.constants import PREPARE_HINT, DataError


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Create or replace the file `path` by calling `write(tmp)`, then renaming tmp to `path`.

    `tmp` is a hidden, unique name in the same folder (so the rename is atomic) that ends
    with `path`'s suffix, because some writers insist on it (Keras only saves to `.keras`).
    Missing parent folders are created. If `write` raises, `path` is left untouched, the
    temporary file is removed, and the exception propagates. Examples::

        atomic_write(out, lambda tmp: tmp.write_bytes(payload))
        atomic_write(model_path, model.save)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], payload: Any, *, sort_keys: bool = True) -> None:
    """Atomic JSON write (indent 2, trailing newline), so diffs stay stable. Keys sorted
    unless the payload's own order matters (metrics.json leads with the headline, which
    `dvc exp show` keeps as its column order).
    """
    text = json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n"  # fail before the disk
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_split(path: str | os.PathLike[str], x: np.ndarray, y: np.ndarray) -> None:
    """Write x and y to an uncompressed .npz atomically (read back by `load_split`)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: np.savez(path) would append ".npz"
            np.savez(fh, x=x, y=y)

    atomic_write(path, write)


def load_split(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read an .npz written by `save_split`, with a fix hint if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared split {str(path)!r} not found; {PREPARE_HINT}")
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise DataError(
            f"{str(path)!r} is not a readable .npz ({exc}); delete it and {PREPARE_HINT}"
        ) from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(
            f"{str(path)!r} holds a single array, not the x and y of a split; "
            f"delete it and {PREPARE_HINT}"
        )
    with loaded as npz:
        missing = [key for key in ("x", "y") if key not in npz.files]
        if missing:
            raise DataError(f"{str(path)!r} lacks array(s) {', '.join(missing)}; {PREPARE_HINT}")
        try:
            return npz["x"], npz["y"]
        except unreadable as exc:
            raise DataError(
                f"{str(path)!r} has a damaged array ({exc}); delete it and {PREPARE_HINT}"
            ) from exc


def file_md5(path: str | os.PathLike[str]) -> str:
    """The md5 DVC 3 records for a file output in dvc.lock."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()
