"""Ray tasks for `python -m hmoe.sweep FILE --engine ray` (the `ray` extra).

    python -m hmoe.sweep sweeps/hierarchy.yaml --seeds 5 --out sweeps/out --engine ray \\
        --address HEAD:6379 --gpus-per-task 1

:func:`hmoe.sweep.run_sweep_ray` plans the sweep and writes its findings; this module
only moves work: it connects (to ``--address``, else a local Ray without dashboard or
usage stats), ships the repository (the driver's working folder, less what .gitignore
and :data:`EXCLUDES` leave out) so every node runs the driver's code, puts the splits
in the object store once, and runs one task per item (a reuse group), each:

- in a fresh worker process (``max_calls=1``): Keras's global dtype policy and a GPU's
  memory do not leak from one task into the next;
- with its CPUs, GPUs (Ray sets CUDA_VISIBLE_DEVICES) and memory requested, so Ray
  never packs more onto a node than it holds;
- retried (``max_retries``) when its worker or node dies; an exception in the code is
  not retried: it would fail again.

Tasks are spread over the nodes. Nothing here imports Keras or hmoe's pipeline code;
the task's function is passed in.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("hmoe.sweep_ray")

INSTALL = "pip install -e '.[ray]'"
# Never shipped to the workers (beside what .gitignore leaves out): git's and DVC's
# stores, which can be large and no task reads.
EXCLUDES = (".git", ".dvc/cache", ".dvc/tmp")


class RayEngineError(ValueError):
    """A bad Ray option or a missing extra; the message says what to do."""


@dataclass(frozen=True)
class RayOptions:
    """Where the tasks run and what each one asks for."""

    address: str | None = None  # a running cluster's HOST:PORT; None: a local Ray
    cpus: int = 1  # and so TensorFlow's threads
    gpus: float = 0.0
    memory_gib: float = 4.0
    max_retries: int = 3

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RayOptions:
        """The command line's options, checked (defaults for what it leaves out)."""
        given = {
            "address": args.address or os.environ.get("RAY_ADDRESS") or None,  # as `ray` does
            "cpus": args.cpus_per_task,
            "gpus": args.gpus_per_task,
            "memory_gib": args.memory_per_task,
            "max_retries": args.max_retries,
        }
        options = cls(**{k: v for k, v in given.items() if v is not None})
        for name, value, least in (
            ("--cpus-per-task", options.cpus, 1),
            ("--gpus-per-task", options.gpus, 0),
            ("--memory-per-task", options.memory_gib, 0),
            ("--max-retries", options.max_retries, 0),
        ):
            if value < least:
                raise RayEngineError(f"{name} must be at least {least}, not {value}")
        return options


def run_tasks(
    fn: Callable[[Any, Any, dict[str, Any]], Any],
    items: Sequence[Any],
    shared: Any,
    options: RayOptions,
    out: Path,
) -> Iterator[tuple[Any, Any]]:
    """``fn(item, shared, where)`` as one Ray task per item; yields (item, result) as
    each task finishes, or (item, the error) when it failed for good. ``where`` is the
    task's node, attempt (0, then 1 for its first retry) and process id. ``out``, the
    driver's output folder, is not shipped.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing sent anywhere
    if not options.address:  # read when Ray is imported: set before that
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        _local_token()
    ray = _ray()
    connect(ray, options, out)
    try:
        _warn_if_no_node_fits(ray, options)
        shared_ref = ray.put(shared)  # once; each worker maps it from its node's store
        remote = ray.remote(
            num_cpus=options.cpus,
            num_gpus=options.gpus,
            memory=int(options.memory_gib * 2**30),
            max_calls=1,
            max_retries=options.max_retries,
            retry_exceptions=False,
            scheduling_strategy="SPREAD",
        )(_task)
        pending = {remote.remote(fn, item, shared_ref): item for item in items}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(ready[0])
            try:
                yield item, ray.get(ready[0])
            except ray.exceptions.RayError as err:
                yield item, err
    finally:
        ray.shutdown()


def _task(fn: Callable[[Any, Any, dict[str, Any]], Any], item: Any, shared: Any) -> Any:
    """In the worker: say where it runs, then run ``fn``."""
    return fn(item, shared, where())


def where() -> dict[str, Any]:
    """This task's node (IP and the start of Ray's node id: one host may run several
    nodes), attempt and process id.
    """
    import ray

    node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    return {"node": node, "attempt": _attempt(), "pid": os.getpid()}


def _attempt() -> int:
    """0 for a task's first run, n for its n-th retry. Ray has no public call for it:
    its core worker's is used (present since at least 2.40); -1 where it is missing.
    """
    import ray

    try:
        worker = ray._private.worker.global_worker.core_worker
        return int(worker.get_current_task_attempt_number())
    except AttributeError:
        return -1


def connect(ray: Any, options: RayOptions, out: Path) -> None:
    """ray.init: the cluster at ``options.address``, else a local Ray; the driver's
    folder is the tasks' working folder on every node (the same code everywhere).
    """
    root = Path.cwd().resolve()
    excludes = list(EXCLUDES)
    if out.resolve().is_relative_to(root):
        excludes.append(out.resolve().relative_to(root).as_posix())
    runtime_env = {"working_dir": str(root), "excludes": excludes}
    if options.address:
        ray.init(address=options.address, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, runtime_env=runtime_env, logging_level=logging.WARNING)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    logger.info(
        "Ray %s: %d node(s), %s CPUs, %s GPUs",
        options.address or "local", len(nodes),
        ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0),
    )  # fmt: skip


def _local_token() -> None:
    """A local Ray's ports open on every interface (its gRPC servers bind them all):
    token authentication (Ray >= 2.5x; older ones ignore it) keeps others out.
    """
    if os.environ.get("RAY_AUTH_MODE", "token") != "token":
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _warn_if_no_node_fits(ray: Any, options: RayOptions) -> None:
    """Ray queues a task no node can hold without a word in the driver's log."""
    need = {"CPU": options.cpus, "GPU": options.gpus, "memory": options.memory_gib * 2**30}
    for node in ray.nodes():
        have = node.get("Resources", {})
        if node["Alive"] and all(have.get(k, 0) >= v for k, v in need.items() if v):
            return
    logger.warning(
        "no node of this cluster can run a task now (each needs %d CPU, %g GPU, %g GiB): "
        "the tasks wait for one (an autoscaler may add it)",
        options.cpus, options.gpus, options.memory_gib,
    )  # fmt: skip


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayEngineError(f"--engine ray needs the ray extra: {INSTALL}") from None
    return ray
