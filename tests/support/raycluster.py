"""A real Ray cluster on this machine: a head and more nodes joining it, each started
with `ray start` as a team would on its hosts (docs/team.md), for the ray tier and for
trying the Ray engine by hand.

    python -m tests.support.raycluster      # two nodes; prints the address; Ctrl-C stops

`ray start` leaves its processes running as daemons, and `ray stop` would stop every Ray
on the machine, another user's too: each process started here carries a marker in its
environment, and is stopped, with its descendants (workers and agents rename
themselves, which hides their environment), by process id. Token authentication keeps
the cluster's ports, which Ray's gRPC servers open on every interface, to this user;
usage stats and the dashboard are off, so nothing is sent anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from hmoe.teamstack import free_port

logger = logging.getLogger(__name__)

MARK = "HMOE_RAY_CLUSTER"  # the environment variable each process of a cluster carries


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its address, the environment a driver needs (the token), the
    folder of its nodes' files and the `ray start` output of each node.
    """

    address: str
    env: dict[str, str]
    temp: Path
    logs: tuple[Path, ...]

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (none of another)."""
        return processes(self.env[MARK])


@contextlib.contextmanager
def cluster(
    env: Mapping[str, str], nodes: int = 2, cpus: int = 1, store_mb: int = 256
) -> Iterator[Cluster]:
    """``nodes`` Ray nodes of ``cpus`` CPUs each on this machine; stopped on exit."""
    # Ray's socket paths must stay under 107 bytes: a short folder of its own in /tmp
    temp = Path(tempfile.mkdtemp(prefix="hr-", dir="/tmp"))
    env = dict(env) | {
        MARK: secrets.token_hex(8),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_enable_metrics_collection": "0",  # no exporter (and its agent) to start
        # Ray starts workers at nice 15 (below its own daemons); next to the suite's
        # other workers that starves them, so the tier's tasks run at normal priority.
        "RAY_worker_niceness": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    port = free_port()
    address = f"127.0.0.1:{port}"
    logs = []
    try:
        head = ["--head", f"--port={port}", "--include-dashboard=false"]
        head += [f"--ray-client-server-port={free_port()}"]
        for i in range(nodes):
            joins = head if i == 0 else [f"--address={address}"]
            common = [f"--num-cpus={cpus}", f"--object-store-memory={store_mb * 10**6}"]
            logs.append(_start(temp / f"n{i}", [*joins, *common], env))
        _wait_for_nodes(address, nodes, env)
        yield Cluster(address, env, temp, tuple(logs))
    finally:
        stop(env[MARK])
        shutil.rmtree(temp, ignore_errors=True)


def _start(folder: Path, args: list[str], env: Mapping[str, str]) -> Path:
    """`ray start` for one node on loopback, its ports free ones; returns its output file."""
    folder.mkdir(parents=True)
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--metrics-export-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", *args,
        "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={folder}",
        *(f"{k}={v}" for k, v in ports.items()),
    ]  # fmt: skip
    log = folder / "ray-start.log"
    with log.open("w") as out:
        proc = subprocess.run(cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`ray start` failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return log


def _wait_for_nodes(address: str, nodes: int, env: Mapping[str, str], timeout: float = 60) -> None:
    """Until ``nodes`` nodes are alive (a driver sees them all from its first task)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", probe, address],
            env=dict(env), capture_output=True, text=True, check=False,
        )  # fmt: skip
        if out.stdout.strip().splitlines()[-1:] == [str(nodes)]:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not have {nodes} nodes in {timeout} s")


def processes(mark: str) -> list[psutil.Process]:
    """The processes whose environment carries ``mark``, and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARK) == mark:
                for p in [proc, *proc.children(recursive=True)]:
                    found[p.pid] = p
    return [p for p in found.values() if _alive(p)]


def stop(mark: str, timeout: float = 5) -> None:
    """SIGTERM to every process of the cluster, SIGKILL to what is left after ``timeout``."""
    family = processes(mark)
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in family):
        time.sleep(0.2)
    for p in family:
        if _alive(p):
            with contextlib.suppress(psutil.Error):
                p.kill()
    logger.info("stopped %d Ray processes", len(family))


def _alive(p: psutil.Process) -> bool:
    """Running and not a zombie (daemons' zombies wait for init to reap them)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main() -> None:
    """Until Ctrl-C or SIGTERM (also when started in the background, where the shell
    has SIGINT ignored), then stop the cluster.
    """
    logging.basicConfig(level=logging.INFO)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with cluster(os.environ) as c:
        print(f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={c.env['RAY_AUTH_TOKEN']}")
        print(f"python -m hmoe.sweep FILE --engine ray --address {c.address} ...")
        print(f"Ctrl-C or kill {os.getpid()} stops the cluster", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
