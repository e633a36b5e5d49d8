"""Load CIFAR-10 from any of the forms it is distributed in, with a content digest.

The pipeline must run offline on a copy somebody already has (the official pickled
batches, their tarball, or a class-folder tree of PNG/JPEG files, as a folder or a zip)
as well as from the Keras download, so every source is normalised here into one `RawData`.
Each source also gets a content digest so that MLflow runs and DVC reports can say exactly
which data they were trained on.

Every failure that a user can cause (wrong path, wrong layout, corrupt file) raises
`DataError` whose message names the offending path or archive member and says how to fix
it, because these errors surface at the top of a `dvc repro` log where a bare traceback
would not help.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from hmoe.data.constants import (
    BATCH_DIR_NAME,
    KERAS_HINT,
    META_BATCH,
    TEST_BATCH,
    TRAIN_BATCHES,
    DataError,
)
from hmoe.data.folders import decode_plan, find_tree_root, is_hidden, list_dir_files, plan_tree
from hmoe.data.raw import RawData, as_images, as_labels, finish
from hmoe.data.unpickle import assemble_batches

logger = logging.getLogger(__name__)


def load_source(source: str, *, workers: int = 2) -> RawData:
    """Load CIFAR-10 from `source`: "keras", a .tar.gz, a batches folder, or class folders.

    `workers` bounds the processes used to decode image files; 1 decodes in this process,
    which is simpler to debug and faster for small trees.
    """
    if source.strip().lower() == "keras":
        return _load_keras()
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {str(path)!r} does not exist; {KERAS_HINT}")
    if path.is_dir():
        batch_dir = _find_batch_dir(path)
        if batch_dir is not None:
            return _load_batches_dir(batch_dir)
        if find_tree_root(list_dir_files(path)) is not None:
            return _load_class_folders_dir(path, workers=workers)
        raise DataError(
            f"folder {str(path)!r} is not a recognised CIFAR-10 layout: expected "
            f"{BATCH_DIR_NAME}/ batch files (data_batch_1..5, test_batch) or class folders "
            f"train/<class>/*.png|jpg and test/<class>/*.png|jpg; {KERAS_HINT}"
        )
    name = path.name.lower()
    if name.endswith(".zip"):
        return _load_class_folders_zip(path, workers=workers)
    if name.endswith((".tar.gz", ".tgz")):
        return _load_tar_gz(path)
    if zipfile.is_zipfile(path):
        return _load_class_folders_zip(path, workers=workers)
    if _looks_gzip(path):
        return _load_tar_gz(path)
    raise DataError(
        f"file {str(path)!r} is not a recognised CIFAR-10 format: expected the official "
        f"cifar-10-python.tar.gz, a {BATCH_DIR_NAME}/ folder, or a .zip of class folders "
        f"(train/<class>/*.png|jpg, test/<class>/*.png|jpg); {KERAS_HINT}"
    )


def _looks_gzip(path: Path) -> bool:
    """Sniff the gzip magic so a renamed tarball is still recognised."""
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


# --------------------------------------------------------------------------- digests


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, streamed so a 160 MB tarball is never held twice in memory."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def folder_digest(root: Path, rel_paths: Sequence[str] | None = None) -> str:
    """sha256 over sorted (relative path, file sha256) pairs: renames count, mtimes do not."""
    if rel_paths is None:
        rel_paths = list_dir_files(root)
    digester = hashlib.sha256()
    for rel in sorted(rel_paths):
        digester.update(f"{rel}\0{file_sha256(root / rel)}\n".encode())
    return f"sha256:{digester.hexdigest()}"


# --------------------------------------------------------------------------- keras


def _load_keras() -> RawData:
    """Download (or reuse Keras's cache of) the official arrays; Keras checks the checksum."""
    import keras  # lazy: importing keras pulls in a backend, far too slow for other sources

    logger.info("loading CIFAR-10 through keras.datasets.cifar10 (downloads once)")
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # network, cache and checksum errors all land here
        raise DataError(
            f"keras.datasets.cifar10.load_data() failed ({exc}); check the network, or set "
            f"`data.source` to a local copy such as cifar-10-python.tar.gz"
        ) from exc
    arrays = (
        as_images(np.asarray(x_train), "keras x_train"),
        as_labels(np.asarray(y_train), "keras y_train"),
        as_images(np.asarray(x_test), "keras x_test"),
        as_labels(np.asarray(y_test), "keras y_test"),
    )
    digester = hashlib.sha256()
    for arr in arrays:
        digester.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return RawData(*arrays, digest=f"sha256:{digester.hexdigest()}", kind="keras")


# --------------------------------------------------------------------------- pickled batches


def _find_batch_dir(path: Path) -> Path | None:
    """The folder holding the batch files: `path` itself or its cifar-10-batches-py/."""
    for candidate in (path, path / BATCH_DIR_NAME):
        if candidate.is_dir() and any(
            (candidate / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)
        ):
            return candidate
    return None


def _load_batches_dir(folder: Path) -> RawData:
    """Load the extracted official folder (data_batch_1..5, test_batch)."""
    logger.info("loading CIFAR-10 batches from %s", folder)

    def read(name: str) -> bytes | None:
        file = folder / name
        return file.read_bytes() if file.is_file() else None

    data = assemble_batches(read, str(folder))
    names = [n for n in (*TRAIN_BATCHES, TEST_BATCH, META_BATCH) if (folder / n).is_file()]
    return finish(data, digest=folder_digest(folder, names), kind="batches-dir")


def _load_tar_gz(path: Path) -> RawData:
    """Read the official tarball's batch members in memory, never extracting to disk."""
    logger.info("loading CIFAR-10 batches from %s", path)
    members: dict[str, bytes] = {}
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META_BATCH}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for info in tar:
                base = PurePosixPath(info.name).name
                if not info.isfile() or base not in wanted or base in members:
                    continue
                fh = tar.extractfile(info)
                if fh is not None:
                    members[base] = fh.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{str(path)!r} is not a readable tar.gz ({type(exc).__name__}: {exc}); "
            f"re-download cifar-10-python.tar.gz or {KERAS_HINT}"
        ) from exc
    data = assemble_batches(members.get, str(path))
    return finish(data, digest=f"sha256:{file_sha256(path)}", kind="tar.gz")


# --------------------------------------------------------------------------- class folders


def _load_class_folders_dir(root: Path, *, workers: int) -> RawData:
    """Load train/<class>/* and test/<class>/* image files from a folder."""
    logger.info("loading CIFAR-10 class folders from %s", root)
    rel_paths = list_dir_files(root)
    prefix = find_tree_root(rel_paths)
    if prefix is None:  # pragma: no cover - load_source checked this already
        raise DataError(f"{root}: no train/ or test/ folder")
    plan = plan_tree(rel_paths, prefix, str(root))
    arrays = decode_plan(plan, lambda rel: (root / rel).read_bytes(), str(root), workers)
    data = RawData(*arrays, digest="", kind="")
    return finish(data, digest=folder_digest(root, rel_paths), kind="class-folders-dir")


def _load_class_folders_zip(path: Path, *, workers: int) -> RawData:
    """Load a zip of class folders, reading members in memory (the zip is never extracted)."""
    logger.info("loading CIFAR-10 class folders from %s", path)
    try:
        with zipfile.ZipFile(path) as zf:
            rel_paths = [
                info.filename
                for info in zf.infolist()
                if not info.is_dir() and not is_hidden(PurePosixPath(info.filename))
            ]
            prefix = find_tree_root(rel_paths)
            if prefix is None:
                raise DataError(
                    f"zip {str(path)!r} has no train/ or test/ folder (at the top or inside "
                    f"one wrapping folder); expected train/<class>/*.png|jpg and "
                    f"test/<class>/*.png|jpg"
                )
            plan = plan_tree(rel_paths, prefix, str(path))
            arrays = decode_plan(plan, zf.read, str(path), workers)
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{str(path)!r} is not a readable zip ({exc}); re-download it or {KERAS_HINT}"
        ) from exc
    except (zlib.error, EOFError) as exc:
        raise DataError(
            f"{str(path)!r}: a member could not be decompressed ({exc}); re-download the zip"
        ) from exc
    data = RawData(*arrays, digest="", kind="")
    return finish(data, digest=f"sha256:{file_sha256(path)}", kind="class-folders-zip")
