"""Load CIFAR-10 from any of the forms it is distributed in, and split it reproducibly.

The pipeline must run offline on a copy somebody already has (the official pickled
batches, their tarball, or a class-folder tree of PNG/JPEG files, as a folder or a zip)
as well as from the Keras download, so every source is normalised here into one
`RawData` of uint8 NHWC images and int64 labels in `CIFAR10_CLASSES` order. Each source
also gets a content digest so that MLflow runs and DVC reports can say exactly which
data they were trained on.

Every failure that a user can cause (wrong path, wrong layout, corrupt file) raises
`DataError` whose message names the offending path or archive member and says how to
fix it, because these errors surface at the top of a `dvc repro` log where a bare
traceback would not help.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import hashlib
import io
import logging
import multiprocessing
import multiprocessing.context
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SHAPE = (32, 32, 3)

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BATCH_DIR_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_BATCH = "batches.meta"

# Images per decode task: big enough that pickling a chunk to a worker is cheap next to
# decoding it, small enough that 60k images still spread evenly over a few workers.
_DECODE_CHUNK = 2000
_PROGRESS_EVERY = 10_000
_HASH_BLOCK = 1 << 20

_KERAS_HINT = "set `data.source: keras` in params.yaml, or point it at an existing path"
_PREPARE_HINT = "run `dvc repro prepare`"


class DataError(ValueError):
    """Bad data source: message names the path/member and the fix.

    A ValueError subclass so that callers validating params can catch one type for both
    bad settings and bad data.
    """


@dataclass(frozen=True)
class RawData:
    """One data source, normalised: uint8 (N, 32, 32, 3) images, int64 labels 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digest: str
    kind: str


# --------------------------------------------------------------------------- dispatch


def load_source(source: str, *, workers: int = 2) -> RawData:
    """Load CIFAR-10 from `source`: "keras", a .tar.gz, a batches folder, or class folders.

    `workers` bounds the processes used to decode image files; 1 decodes in this process,
    which is simpler to debug and faster for small trees.
    """
    if source.strip().lower() == "keras":
        return _load_keras()
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {str(path)!r} does not exist; {_KERAS_HINT}")
    if path.is_dir():
        batch_dir = _find_batch_dir(path)
        if batch_dir is not None:
            return _load_batches_dir(batch_dir)
        if _find_tree_root(_list_dir_files(path)) is not None:
            return _load_class_folders_dir(path, workers=workers)
        raise DataError(
            f"folder {str(path)!r} is not a recognised CIFAR-10 layout: expected "
            f"{BATCH_DIR_NAME}/ batch files (data_batch_1..5, test_batch) or class folders "
            f"train/<class>/*.png|jpg and test/<class>/*.png|jpg; {_KERAS_HINT}"
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
        f"(train/<class>/*.png|jpg, test/<class>/*.png|jpg); {_KERAS_HINT}"
    )


def _looks_gzip(path: Path) -> bool:
    """Sniff the gzip magic so a renamed tarball is still recognised."""
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


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
        _as_images(np.asarray(x_train), "keras x_train"),
        _as_labels(np.asarray(y_train), "keras y_train"),
        _as_images(np.asarray(x_test), "keras x_test"),
        _as_labels(np.asarray(y_test), "keras y_test"),
    )
    digester = hashlib.sha256()
    for arr in arrays:
        digester.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return RawData(*arrays, digest=f"sha256:{digester.hexdigest()}", kind="keras")


def _as_images(x: np.ndarray, what: str) -> np.ndarray:
    """Check an image array really is uint8 NHWC 32x32x3, as every consumer assumes."""
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{what}: expected images of shape (N, 32, 32, 3), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.uint8)


def _as_labels(y: np.ndarray, what: str) -> np.ndarray:
    """Flatten labels to int64 (N,) and reject anything outside the ten classes."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= len(CIFAR10_CLASSES)):
        raise DataError(
            f"{what}: labels must lie in 0..{len(CIFAR10_CLASSES) - 1}, "
            f"got {int(y.min())}..{int(y.max())}"
        )
    return y


# --------------------------------------------------------------------------- digests


def _file_sha256(path: Path) -> str:
    """Stream a file through sha256 so a 160 MB tarball is never held twice in memory."""
    digester = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            digester.update(block)
    return digester.hexdigest()


def _is_hidden(rel: PurePosixPath) -> bool:
    """Hidden files and macOS zip litter are not data and must not change a digest."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)


def _list_dir_files(root: Path) -> list[str]:
    """Sorted posix relative paths of the non-hidden regular files below `root`."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        base = Path(dirpath)
        for fname in filenames:
            if fname.startswith("."):
                continue
            out.append((base / fname).relative_to(root).as_posix())
    out.sort()
    return out


def _folder_digest(root: Path, rel_paths: Sequence[str] | None = None) -> str:
    """sha256 over sorted (relative path, file sha256) pairs: renames count, mtimes do not."""
    if rel_paths is None:
        rel_paths = _list_dir_files(root)
    digester = hashlib.sha256()
    for rel in sorted(rel_paths):
        digester.update(f"{rel}\0{_file_sha256(root / rel)}\n".encode())
    return f"sha256:{digester.hexdigest()}"


# --------------------------------------------------------------------------- pickled batches


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR batch pickle needs; anything else could run code."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    import _codecs
    import builtins

    reconstruct = multiarray._reconstruct
    allowed: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") under protocol 2.
        ("_codecs", "encode"): _codecs.encode,
    }
    for name in ("list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "str"):
        allowed[("builtins", name)] = getattr(builtins, name)
        allowed[("__builtin__", name)] = getattr(builtins, name)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array and plain-container globals.

    A downloaded batch file is untrusted input and an ordinary pickle can execute any
    function it names, so every other global is refused.
    """

    def __init__(self, fh: BinaryIO, member: str) -> None:
        super().__init__(fh, encoding="bytes")
        self._member = member
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global only if it is on the allow-list."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._member}: refusing to unpickle {module}.{name} (a CIFAR-10 batch "
                f"holds only numpy arrays and lists); use the official cifar-10-python.tar.gz"
            ) from None


def _unpickle(raw: bytes, member: str) -> dict[bytes, Any]:
    """Unpickle one batch file safely, turning every parse failure into a DataError."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), member).load()
    except DataError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from bad bytes
        raise DataError(
            f"{member}: not a readable CIFAR-10 batch pickle ({type(exc).__name__}: {exc}); "
            f"re-download cifar-10-python.tar.gz"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{member}: expected a dict batch, got {type(obj).__name__}")
    return obj


def _decode_batch(raw: bytes, member: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn one official batch into NHWC images and labels."""
    batch = _unpickle(raw, member)
    missing = [key.decode() for key in (b"data", b"labels") if key not in batch]
    if missing:
        raise DataError(
            f"{member}: batch lacks key(s) {', '.join(missing)}; re-download cifar-10-python.tar.gz"
        )
    data = np.asarray(batch[b"data"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(
            f"{member}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    labels = _as_labels(np.asarray(batch[b"labels"]), member)
    if labels.shape[0] != data.shape[0]:
        raise DataError(
            f"{member}: {data.shape[0]} images but {labels.shape[0]} labels; "
            f"re-download cifar-10-python.tar.gz"
        )
    # Rows are three 32x32 colour planes (R, G, B); the pipeline wants channels last.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _check_meta(raw: bytes, member: str) -> None:
    """If batches.meta is present, its class names must be CIFAR-10's, in order."""
    meta = _unpickle(raw, member)
    names = meta.get(b"label_names")
    if names is None:
        return
    decoded = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if decoded != CIFAR10_CLASSES:
        raise DataError(
            f"{member}: label_names {decoded} are not CIFAR-10's {CIFAR10_CLASSES}; "
            f"this looks like a different data set (CIFAR-100?)"
        )


def _assemble_batches(read: Callable[[str], bytes | None], where: str) -> RawData:
    """Shared tail of the folder and tarball loaders; `read` returns None for absent files.

    The returned RawData has no digest or kind yet; the caller knows those.
    """
    found: dict[str, bytes] = {}
    missing = []
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        raw = read(name)
        if raw is None:
            missing.append(name)
        else:
            found[name] = raw
    if missing:
        raise DataError(
            f"{where}: missing batch file(s) {', '.join(missing)}; "
            f"re-download or re-extract cifar-10-python.tar.gz"
        )
    meta = read(META_BATCH)
    if meta is not None:
        _check_meta(meta, f"{where}/{META_BATCH}")
    train = [_decode_batch(found[name], f"{where}/{name}") for name in TRAIN_BATCHES]
    x_test, y_test = _decode_batch(found[TEST_BATCH], f"{where}/{TEST_BATCH}")
    return RawData(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        digest="",
        kind="",
    )


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

    data = _assemble_batches(read, str(folder))
    names = [n for n in (*TRAIN_BATCHES, TEST_BATCH, META_BATCH) if (folder / n).is_file()]
    digest = _folder_digest(folder, names)
    return _finish(data, digest=digest, kind="batches-dir")


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
            f"re-download cifar-10-python.tar.gz or {_KERAS_HINT}"
        ) from exc
    data = _assemble_batches(members.get, str(path))
    return _finish(data, digest=f"sha256:{_file_sha256(path)}", kind="tar.gz")


def _finish(data: RawData, *, digest: str, kind: str) -> RawData:
    """Stamp digest and kind, and log what was loaded (one line per source in the DVC log)."""
    logger.info(
        "loaded %s: %d train, %d test images, %s",
        kind,
        len(data.y_train),
        len(data.y_test),
        digest,
    )
    return RawData(
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
        digest=digest,
        kind=kind,
    )


# --------------------------------------------------------------------------- class folders


def _find_tree_root(rel_paths: Sequence[str]) -> str | None:
    """Prefix ("" or "<top>/") under which train/ and test/ live, or None if neither does.

    Zips made by "compress this folder" wrap everything in one top-level folder, so that
    single wrapper is looked through as well.
    """
    tops = {PurePosixPath(p).parts[0] for p in rel_paths if "/" in p}
    if tops & set(SPLITS):
        return ""
    if len(tops) == 1:
        (top,) = tops
        inner = {
            PurePosixPath(p).parts[1]
            for p in rel_paths
            if p.startswith(top + "/") and len(PurePosixPath(p).parts) > 2
        }
        if inner & set(SPLITS):
            return top + "/"
    return None


def _plan_tree(
    rel_paths: Sequence[str], prefix: str, where: str
) -> dict[str, list[tuple[str, int]]]:
    """Map each split to its sorted (member, label) list, checking the class folders.

    Checks here rather than after decoding so a misnamed folder fails in milliseconds,
    not after a minute of JPEG decoding.
    """
    plan: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    seen: dict[str, set[str]] = {split: set() for split in SPLITS}
    skipped: list[str] = []
    label_of = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    for rel in sorted(rel_paths):
        if not rel.startswith(prefix):
            continue
        parts = PurePosixPath(rel[len(prefix) :]).parts
        if len(parts) < 2 or parts[0] not in SPLITS:
            continue
        split = parts[0]
        if len(parts) >= 3:
            seen[split].add(parts[1])
        if len(parts) != 3 or PurePosixPath(parts[2]).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(rel)
            continue
        if parts[1] in label_of:
            plan[split].append((rel, label_of[parts[1]]))
    if skipped:
        logger.warning(
            "%s: ignoring %d file(s) that are not <split>/<class>/<image>.png|jpg|jpeg, e.g. %s",
            where,
            len(skipped),
            skipped[0],
        )
    for split in SPLITS:
        if not plan[split]:
            raise DataError(
                f"{where}: split {prefix}{split}/ has no images; expected "
                f"{prefix}{split}/<class>/*.png|jpg|jpeg for the classes "
                f"{', '.join(CIFAR10_CLASSES)}"
            )
        present = {CIFAR10_CLASSES[label] for _, label in plan[split]}
        missing = [c for c in CIFAR10_CLASSES if c not in present]
        extra = sorted(seen[split] - set(CIFAR10_CLASSES))
        problems = []
        if missing:
            problems.append(f"missing class folder(s) with images: {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected folder(s): {', '.join(extra)}")
        if problems:
            raise DataError(
                f"{where}: {prefix}{split}/ has {'; '.join(problems)}; class folders must be "
                f"named exactly {', '.join(CIFAR10_CLASSES)}"
            )
    return plan


def _load_class_folders_dir(root: Path, *, workers: int) -> RawData:
    """Load train/<class>/* and test/<class>/* image files from a folder."""
    logger.info("loading CIFAR-10 class folders from %s", root)
    rel_paths = _list_dir_files(root)
    prefix = _find_tree_root(rel_paths)
    if prefix is None:  # pragma: no cover - load_source checked this already
        raise DataError(f"{root}: no train/ or test/ folder")
    plan = _plan_tree(rel_paths, prefix, str(root))
    arrays = _decode_plan(plan, lambda rel: (root / rel).read_bytes(), str(root), workers)
    data = RawData(*arrays, digest="", kind="")
    return _finish(data, digest=_folder_digest(root, rel_paths), kind="class-folders-dir")


def _load_class_folders_zip(path: Path, *, workers: int) -> RawData:
    """Load a zip of class folders, reading members in memory (the zip is never extracted)."""
    logger.info("loading CIFAR-10 class folders from %s", path)
    try:
        with zipfile.ZipFile(path) as zf:
            rel_paths = [
                info.filename
                for info in zf.infolist()
                if not info.is_dir() and not _is_hidden(PurePosixPath(info.filename))
            ]
            prefix = _find_tree_root(rel_paths)
            if prefix is None:
                raise DataError(
                    f"zip {str(path)!r} has no train/ or test/ folder (at the top or inside "
                    f"one wrapping folder); expected train/<class>/*.png|jpg and "
                    f"test/<class>/*.png|jpg"
                )
            plan = _plan_tree(rel_paths, prefix, str(path))
            arrays = _decode_plan(plan, zf.read, str(path), workers)
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{str(path)!r} is not a readable zip ({exc}); re-download it or {_KERAS_HINT}"
        ) from exc
    except (zlib.error, EOFError) as exc:
        raise DataError(
            f"{str(path)!r}: a member could not be decompressed ({exc}); re-download the zip"
        ) from exc
    data = RawData(*arrays, digest="", kind="")
    return _finish(data, digest=f"sha256:{_file_sha256(path)}", kind="class-folders-zip")


def _decode_plan(
    plan: dict[str, list[tuple[str, int]]],
    read: Callable[[str], bytes],
    where: str,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode both splits, returning x_train, y_train, x_test, y_test.

    One process pool serves both splits so workers start once. Decoding a 32x32 JPEG is
    mostly Python-level PIL overhead that holds the GIL (threads measured ~2x slower than
    one process), so parallelism needs processes.
    """
    total = sum(len(items) for items in plan.values())
    pool = None
    if workers > 1 and total > _DECODE_CHUNK:
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=_pool_context()
        )
    out: list[np.ndarray] = []
    try:
        for split in SPLITS:
            members = [rel for rel, _ in plan[split]]
            try:
                images = _decode_images(members, read, where, pool, workers, split)
            except concurrent.futures.process.BrokenProcessPool as exc:
                # A worker died (out of memory, or a spawn child that could not re-import
                # the caller's script): decoding in this process is slower but still works.
                logger.warning("%s: decode workers failed (%s); decoding in-process", where, exc)
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
                pool = None
                images = _decode_images(members, read, where, None, 1, split)
            out.append(images)
            out.append(np.fromiter((label for _, label in plan[split]), dtype=np.int64))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out[0], out[1], out[2], out[3]


def _pool_context() -> multiprocessing.context.BaseContext:
    """Fork where the OS has it, else spawn.

    Fork starts workers in milliseconds and, unlike spawn/forkserver, does not re-import the
    caller's __main__ (which breaks scripts without a main guard and stdin scripts). The
    workers only run PIL and numpy, never touching state inherited from other threads.
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _read_chunks(
    members: Sequence[str], read: Callable[[str], bytes]
) -> Iterator[list[tuple[str, bytes]]]:
    """Yield (member, bytes) chunks lazily, so reading overlaps with decoding in workers."""
    for start in range(0, len(members), _DECODE_CHUNK):
        yield [(rel, read(rel)) for rel in members[start : start + _DECODE_CHUNK]]


def _decode_images(
    members: Sequence[str],
    read: Callable[[str], bytes],
    where: str,
    pool: concurrent.futures.Executor | None,
    workers: int,
    split: str,
) -> np.ndarray:
    """Decode image files into one uint8 array, logging progress every ~10,000 images."""
    total = len(members)
    images = np.empty((total, *IMAGE_SHAPE), dtype=np.uint8)
    chunks = _read_chunks(members, read)
    if pool is None or total <= _DECODE_CHUNK:
        results: Iterator[np.ndarray] = (_decode_chunk(chunk, where) for chunk in chunks)
    else:
        results = _pool_map(pool, chunks, where, workers)
    done = 0
    next_log = _PROGRESS_EVERY
    for arr in results:
        images[done : done + len(arr)] = arr
        done += len(arr)
        if done >= next_log or done == total:
            logger.info("decoded %d/%d %s images from %s", done, total, split, where)
            next_log = (done // _PROGRESS_EVERY + 1) * _PROGRESS_EVERY
    return images


def _pool_map(
    pool: concurrent.futures.Executor,
    chunks: Iterator[list[tuple[str, bytes]]],
    where: str,
    workers: int,
) -> Iterator[np.ndarray]:
    """Submit chunks with a bounded look-ahead and yield results in order.

    The bound keeps memory flat for huge trees while giving every worker a queued chunk.
    """
    pending: list[concurrent.futures.Future[np.ndarray]] = []
    for chunk in chunks:
        pending.append(pool.submit(_decode_chunk, chunk, where))
        if len(pending) >= 2 * workers:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def _decode_chunk(chunk: Sequence[tuple[str, bytes]], where: str) -> np.ndarray:
    """Decode one chunk of (member, bytes); runs in worker processes, so module-level."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(chunk), *IMAGE_SHAPE), dtype=np.uint8)
    for i, (rel, raw) in enumerate(chunk):
        try:
            # Naming the formats skips PIL's probing of every plugin (~25% faster).
            with Image.open(io.BytesIO(raw), formats=("PNG", "JPEG")) as img:
                if img.size != IMAGE_SHAPE[:2]:
                    raise DataError(
                        f"{where}: image {rel} is {img.size[0]}x{img.size[1]}, CIFAR-10 images "
                        f"must be 32x32; resize it or remove it"
                    )
                out[i] = np.asarray(img.convert("RGB"))
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(
                f"{where}: image {rel} cannot be decoded ({type(exc).__name__}: {exc}); "
                f"replace or delete that file"
            ) from None
    return out


# --------------------------------------------------------------------------- splitting


def _allocate(counts: np.ndarray, total: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Split `total` across classes in proportion to `counts`, within [lo, hi] per class.

    Largest-remainder rounding gives an exact total; the bounds then enforce "every class
    on both sides" by moving single items, taking from classes most over their share.
    """
    ideal = counts * (total / counts.sum())
    alloc = np.floor(ideal).astype(np.int64)
    order = np.argsort(-(ideal - alloc), kind="stable")
    alloc[order[: total - int(alloc.sum())]] += 1
    if lo.sum() > total or hi.sum() < total:  # bounds infeasible: plain proportions
        lo = np.zeros_like(counts)
        hi = counts.copy()
    alloc = np.clip(alloc, lo, hi)
    while (excess := int(alloc.sum()) - total) != 0:
        if excess > 0:
            candidates = np.flatnonzero(alloc > lo)
            pick = candidates[np.argmax((alloc - ideal)[candidates])]
            alloc[pick] -= 1
        else:
            candidates = np.flatnonzero(alloc < hi)
            pick = candidates[np.argmax((ideal - alloc)[candidates])]
            alloc[pick] += 1
    return alloc


def _take_per_class(
    y: np.ndarray,
    pool: np.ndarray,
    classes: np.ndarray,
    alloc: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly pick alloc[c] indices of each class from `pool`; return (picked, rest)."""
    picked, rest = [], []
    for cls, n in zip(classes, alloc, strict=True):
        members = rng.permutation(pool[y[pool] == cls])
        picked.append(members[:n])
        rest.append(members[n:])
    return np.concatenate(picked), np.concatenate(rest)


def stratified_split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_size: int,
    limit: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out a class-stratified validation set, after optionally subsampling to `limit`.

    Returns x_train, y_train, x_val, y_val, each shuffled. The same seed and inputs always
    give the same split, so DVC can cache the prepare stage and runs stay comparable.
    `limit` exists for quick smoke runs: it keeps `limit` training images (stratified)
    before the validation images are taken from them.
    """
    y = np.asarray(y)
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} images but y has {len(y)} labels")
    if len(y) == 0:
        raise DataError("cannot split an empty training set; check `data.source`")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    k = len(classes)
    pool = np.arange(len(y))
    if limit is not None:
        if limit < k:
            raise DataError(
                f"data.limit={limit} is below the {k} classes present; set `data.limit` to "
                f"at least {k} (or null for all {len(y)} images)"
            )
        if limit < len(y):
            alloc = _allocate(counts, limit, np.ones_like(counts), counts)
            pool, _ = _take_per_class(y, pool, classes, alloc, rng)
            pool.sort()
            classes, counts = np.unique(y[pool], return_counts=True)
    n = len(pool)
    if val_size <= 0 or val_size >= n:
        raise DataError(
            f"data.val_size={val_size} must be between 1 and {n - 1} (the {n} training images "
            f"left after data.limit={limit}); change `data.val_size` or `data.limit`"
        )
    lo = np.ones_like(counts) if val_size >= k else np.zeros_like(counts)
    hi = np.maximum(counts - 1, 0) if n - val_size >= k else counts.copy()
    lo = np.minimum(lo, hi)
    alloc = _allocate(counts, val_size, lo, hi)
    val_idx, train_idx = _take_per_class(y, pool, classes, alloc, rng)
    train_idx = rng.permutation(train_idx)
    val_idx = rng.permutation(val_idx)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def class_counts(y: np.ndarray, classes: Sequence[str] = CIFAR10_CLASSES) -> dict[str, int]:
    """Images per class name (zeros included), for data reports and sanity checks."""
    y = np.asarray(y).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(
            f"labels span {int(y.min())}..{int(y.max())} but only {len(classes)} classes exist"
        )
    counts = np.bincount(y.astype(np.int64), minlength=len(classes))
    return {name: int(c) for name, c in zip(classes, counts, strict=True)}


# --------------------------------------------------------------------------- split files


def save_split(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write x and y to an uncompressed .npz atomically.

    Writing to a temporary file and renaming means an interrupted stage never leaves a
    truncated file that DVC or the next stage would take for a good one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            np.savez(fh, x=x, y=y)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an .npz written by `save_split`, with a fix hint if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared split {str(path)!r} not found; {_PREPARE_HINT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in ("x", "y") if key not in npz.files]
            if missing:
                raise DataError(
                    f"{str(path)!r} lacks array(s) {', '.join(missing)}; {_PREPARE_HINT}"
                )
            return npz["x"], npz["y"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"{str(path)!r} is not a readable .npz ({exc}); delete it and {_PREPARE_HINT}"
        ) from exc
