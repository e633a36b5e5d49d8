"""Where a stage's inputs and outputs live, by the paths dvc.yaml names them.

A stage function reads and writes through a store and never opens a file itself:

- :class:`FileStore` (``dvc repro``): the files in the repository, written atomically
  (a crash never leaves a truncated output for DVC to cache);
- :class:`MemoryStore` (``python -m hmoe.sweep``): the values in memory, so a sweep's
  configurations share networks without touching the repository.

A value is read back as the kind its path's suffix says: ``.npz`` a split ``(x, y)``
(or a dict of arrays), ``.keras`` a network (loaded with ``safe_mode=True``), ``.json``
a dict, ``.csv`` a :class:`pandas.DataFrame`, anything else bytes. A value written is
a network, a split, a dict (for ``.json``), text or bytes, or a writer: a function that
writes the file at the path it is given (a figure, a table with its own format).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hmoe import paths
from hmoe.data.storage import atomic_write, file_md5, load_split, save_split, write_json

Writer = Callable[[Path], object]
# Readers of file kinds that need more than this module knows, registered by the module
# that knows them: ``.keras`` by :mod:`hmoe.modelset` (a stage that reads a network
# imports it, so a stage that reads none depends on no network code).
READERS: dict[str, Callable[[Path], Any]] = {}


class Store(Protocol):
    """The stage's inputs and outputs by path (see the module's docstring)."""

    on_disk: bool  # files: a network's training can resume from a backup, and be registered

    def read(self, path: Path) -> Any: ...

    def write(self, path: Path, value: Any) -> Any:
        """Write ``value``; returns what the store holds for it (a writer's bytes in memory)."""
        ...

    def exists(self, path: Path) -> bool: ...

    def digest(self, path: Path) -> str: ...


def json_file(payload: Any, *, sort_keys: bool = True) -> Writer:
    """A writer of ``payload`` as JSON (keys sorted unless their order matters:
    metrics.json leads with the headline, which `dvc exp show` keeps as its columns).
    """
    return lambda tmp: write_json(tmp, payload, sort_keys=sort_keys)


class FileStore:
    """The repository's files (paths relative to its root, where DVC runs a stage)."""

    on_disk = True

    def read(self, path: Path) -> Any:
        path = Path(path)
        if path.suffix == ".npz":
            return _npz(path)
        if path.suffix in READERS:
            return READERS[path.suffix](path)
        if path.suffix == ".keras":
            raise RuntimeError(f"{path}: import hmoe.modelset to read networks")
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `dvc repro` to build it")
        return _parse(path.suffix, path.read_bytes())

    def write(self, path: Path, value: Any) -> Any:
        path = Path(path)
        if callable(getattr(value, "save", None)):  # a network
            atomic_write(path, value.save)
        elif isinstance(value, tuple):
            save_split(path, *value)
        elif isinstance(value, Mapping):
            write_json(path, dict(value))
        elif isinstance(value, str | bytes):
            data = value.encode() if isinstance(value, str) else value
            atomic_write(path, lambda tmp: tmp.write_bytes(data))
        elif callable(value):
            atomic_write(path, value)
        else:
            raise TypeError(f"{path}: cannot write a {type(value).__name__}")
        return value

    def exists(self, path: Path) -> bool:
        return Path(path).is_file()

    def digest(self, path: Path) -> str:
        return file_md5(path)


class MemoryStore:
    """Values in memory by path: a sweep's pipeline execution, the files it would write
    (a writer's file is kept as its bytes and read back by its suffix).
    """

    on_disk = False

    def __init__(self, values: Mapping[Path, Any] | None = None) -> None:
        self.values: dict[Path, Any] = {Path(k): v for k, v in (values or {}).items()}
        self._digests: dict[Path, str] = {}  # a split is hashed once, not at every run

    def read(self, path: Path) -> Any:
        path = Path(path)
        if path not in self.values:
            raise FileNotFoundError(f"{path} is not in the sweep's memory: no stage wrote it")
        value = self.values[path]
        return _parse(path.suffix, value) if isinstance(value, bytes) else value

    def write(self, path: Path, value: Any) -> Any:
        if callable(value) and not callable(getattr(value, "save", None)):
            value = _written(Path(path), value)
        elif isinstance(value, str):
            value = value.encode()  # read back as bytes, as from a file
        self.values[Path(path)] = value
        self._digests.pop(Path(path), None)
        return value

    def exists(self, path: Path) -> bool:
        return Path(path) in self.values

    def digest(self, path: Path) -> str:
        path = Path(path)
        if path not in self._digests:
            value = self.values[path]
            md5 = hashlib.md5()
            for a in value if isinstance(value, tuple) else (value,):
                md5.update(
                    np.ascontiguousarray(a).tobytes()
                    if isinstance(a, np.ndarray)
                    else repr(a).encode()
                )
            self._digests[path] = md5.hexdigest()
        return self._digests[path]


def _written(path: Path, writer: Writer) -> bytes:
    """The bytes ``writer`` writes for ``path`` (a temporary file of the same suffix)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / path.name
        writer(target)
        return target.read_bytes()


def _npz(path: Path) -> Any:
    """A split as ``(x, y)``, with :func:`load_split`'s hints when it is damaged; any
    other npz as a dict of arrays.
    """
    # A damaged or foreign file falls through: load_split says what to do about it.
    damaged = (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile)
    with contextlib.suppress(*damaged), np.load(path, allow_pickle=False) as f:
        if set(f.files) != {"x", "y"}:
            return {k: f[k] for k in f.files}
    return load_split(path)


def _parse(suffix: str, data: bytes) -> Any:
    if suffix == ".json":
        return json.loads(data)
    if suffix == ".csv":
        import pandas as pd

        return pd.read_csv(io.BytesIO(data))
    if suffix == ".npz":
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    return data


def data_digest(store: Store) -> str | None:
    """The source digest `prepare` recorded, to tag every stage's run with."""
    if store.exists(paths.DATA_REPORT):
        return store.read(paths.DATA_REPORT).get("digest")
    return None
