"""Class-folder trees (train/<class>/*.png|jpg, test/<class>/...): planning and decoding.

The same planner serves a folder on disk and a zip read in memory, and it checks the class
folders before any image is decoded, so a misnamed folder fails in milliseconds rather than
after a minute of JPEG decoding.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import io
import logging
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from hmoe.data.constants import CIFAR10_CLASSES, IMAGE_SHAPE, IMAGE_SUFFIXES, SPLITS, DataError

logger = logging.getLogger(__name__)

# Images per decode task: big enough that pickling a chunk to a worker is cheap next to
# decoding it, small enough that 60k images still spread evenly over a few workers.
_DECODE_CHUNK = 2000
_PROGRESS_EVERY = 10_000

Plan = dict[str, list[tuple[str, int]]]
"""Split name -> sorted (member path, label) pairs."""


# --------------------------------------------------------------------------- listing


def is_hidden(rel: PurePosixPath) -> bool:
    """Hidden files and macOS zip litter are not data and must not change a digest."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)


def list_dir_files(root: Path) -> list[str]:
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


# --------------------------------------------------------------------------- planning


def find_tree_root(rel_paths: Sequence[str]) -> str | None:
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


def plan_tree(rel_paths: Sequence[str], prefix: str, where: str) -> Plan:
    """Map each split to its sorted (member, label) list, checking the class folders."""
    plan: Plan = {split: [] for split in SPLITS}
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
        _check_split(plan[split], seen[split], f"{prefix}{split}/", where)
    return plan


def _check_split(items: list[tuple[str, int]], seen: set[str], split_dir: str, where: str) -> None:
    """One split must have images in exactly the ten class folders."""
    if not items:
        raise DataError(
            f"{where}: split {split_dir} has no images; expected "
            f"{split_dir}<class>/*.png|jpg|jpeg for the classes {', '.join(CIFAR10_CLASSES)}"
        )
    present = {CIFAR10_CLASSES[label] for _, label in items}
    missing = [c for c in CIFAR10_CLASSES if c not in present]
    extra = sorted(seen - set(CIFAR10_CLASSES))
    problems = []
    if missing:
        problems.append(f"missing class folder(s) with images: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected folder(s): {', '.join(extra)}")
    if problems:
        raise DataError(
            f"{where}: {split_dir} has {'; '.join(problems)}; class folders must be "
            f"named exactly {', '.join(CIFAR10_CLASSES)}"
        )


# --------------------------------------------------------------------------- decoding


def decode_plan(
    plan: Plan, read: Callable[[str], bytes], where: str, workers: int
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
    from PIL import Image, UnidentifiedImageError  # lazy: only class-folder sources need PIL

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
