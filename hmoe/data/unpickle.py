"""Read the official pickled CIFAR-10 batches without trusting them.

A downloaded batch file is untrusted input and an ordinary pickle can execute any function
it names, so batches go through an unpickler that resolves only numpy-array and
plain-container globals.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from hmoe.data.constants import CIFAR10_CLASSES, META_BATCH, TEST_BATCH, TRAIN_BATCHES, DataError
from hmoe.data.raw import RawData, as_labels

_REDOWNLOAD = "re-download cifar-10-python.tar.gz"


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
    """Unpickler that refuses every global not on the allow-list."""

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


def unpickle(raw: bytes, member: str) -> dict[bytes, Any]:
    """Unpickle one batch file safely, turning every parse failure into a DataError."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), member).load()
    except DataError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from bad bytes
        raise DataError(
            f"{member}: not a readable CIFAR-10 batch pickle ({type(exc).__name__}: {exc}); "
            f"{_REDOWNLOAD}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{member}: expected a dict batch, got {type(obj).__name__}; {_REDOWNLOAD}")
    return obj


def decode_batch(raw: bytes, member: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn one official batch into NHWC uint8 images and int64 labels."""
    batch = unpickle(raw, member)
    missing = [key.decode() for key in (b"data", b"labels") if key not in batch]
    if missing:
        raise DataError(f"{member}: batch lacks key(s) {', '.join(missing)}; {_REDOWNLOAD}")
    data = np.asarray(batch[b"data"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(
            f"{member}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    labels = as_labels(np.asarray(batch[b"labels"]), member)
    if labels.shape[0] != data.shape[0]:
        raise DataError(
            f"{member}: {data.shape[0]} images but {labels.shape[0]} labels; {_REDOWNLOAD}"
        )
    # Rows are three 32x32 colour planes (R, G, B); the pipeline wants channels last.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def check_meta(raw: bytes, member: str) -> None:
    """If batches.meta is present, its class names must be CIFAR-10's, in order."""
    names = unpickle(raw, member).get(b"label_names")
    if names is None:
        return
    decoded = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if decoded != CIFAR10_CLASSES:
        raise DataError(
            f"{member}: label_names {decoded} are not CIFAR-10's {CIFAR10_CLASSES}; "
            f"this looks like a different data set (CIFAR-100?)"
        )


def assemble_batches(read: Callable[[str], bytes | None], where: str) -> RawData:
    """Decode all batches via `read` (None for an absent file), shared by folder and tarball.

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
        check_meta(meta, f"{where}/{META_BATCH}")
    train = [decode_batch(found[name], f"{where}/{name}") for name in TRAIN_BATCHES]
    x_test, y_test = decode_batch(found[TEST_BATCH], f"{where}/{TEST_BATCH}")
    return RawData(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        digest="",
        kind="",
    )
