"""`python -m hmoe.sweep --engine ray` on a real Ray cluster of two nodes on this
machine (tests/support/raycluster.py: `ray start --head`, then `ray start --address`),
never a mock: the tiny sweep of tests/pipeline/test_sweep.py, one task's worker killed
with SIGKILL while it trains, compared number for number with that tier's in-process
run (`tiny_sweep`) at the same thread count (one: each node has one CPU).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from hmoe.teamstack import stop_tree
from tests.support import netns, raycluster
from tests.support.shared import (
    EXPERIMENT,
    ONE_THREAD,
    SWEEP,
    SWEEP_CMD,
    SWEEP_FILE,
    clone,
    sweep_parents,
)
from tests.support.tiers import has_module, need, need_loopback_only
from tests.support.tinyrepo import base_env, run

pytestmark = pytest.mark.ray
RAY_INSTALL = "pip install -e '.[dev,ray]'"
PAIRS = [("default", 42), ("default", 43), ("finetuned_hard", 42), ("finetuned_hard", 43)]


@pytest.fixture(scope="module")
def repo(tiny_project, tmp_path_factory):
    need(has_module("ray"), f"the ray tier needs the ray extra: {RAY_INSTALL}")
    need_loopback_only()
    root = tmp_path_factory.mktemp("ray")
    env = base_env(root / "repo") | ONE_THREAD
    repo = clone(tiny_project, root / "repo", env)
    (repo / SWEEP_FILE).write_text(yaml.safe_dump(SWEEP))
    return repo, env


@pytest.fixture(scope="module")
def in_process(tiny_sweep):
    """The same sweep in one process on one thread (the sweep tier's run): the numbers
    to match.
    """
    return pd.read_csv(tiny_sweep.repo / "out/findings.csv")


@pytest.fixture(scope="module")
def cluster(repo):
    _, env = repo
    with raycluster.cluster(env, nodes=2, cpus=1) as c:
        yield c


@pytest.fixture(scope="module")
def ray_sweep(repo, cluster):
    """The sweep through the cluster with MLflow; the first task to open a run is
    SIGKILLed then. Returns the findings, the killed run, the TensorFlow libraries the
    driver had loaded at that moment, and the driver's log.
    """
    path, _ = repo
    cmd = [*SWEEP_CMD, "--out", "rayout", "--engine", "ray", "--address", cluster.address]
    log_file = path / "ray-sweep.log"
    with log_file.open("w") as log:
        driver = subprocess.Popen(
            [*cmd, "--memory-per-task", "1"],
            cwd=path, env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            killed, driver_tf = _kill_a_training_worker(path, driver)
            driver.wait(timeout=1200)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{log_file.read_text()[-4000:]}") from None
        finally:
            if driver.poll() is None:
                stop_tree(driver)
    text = log_file.read_text()
    assert driver.returncode == 0, text[-4000:]
    return pd.read_csv(path / "rayout/findings.csv"), killed, driver_tf, text


def _client(path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")


def _kill_a_training_worker(path: Path, driver: subprocess.Popen, timeout: float = 900):
    """SIGKILL the worker of the first RUNNING parent run (its `pid` tag)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the sweep ended before a worker could be killed"
        running = [r for r in sweep_parents(path) if r.info.status == "RUNNING"]
        if running:
            maps = psutil.Process(driver.pid).memory_maps()
            driver_tf = [m.path for m in maps if "tensorflow" in m.path.lower()]
            os.kill(int(running[0].data.tags["pid"]), signal.SIGKILL)
            return running[0], driver_tf
        time.sleep(0.5)
    raise AssertionError(f"no task opened an MLflow run within {timeout} s")


def test_every_row_once_from_both_nodes(ray_sweep):
    frame, killed, _, _ = ray_sweep
    assert sorted(zip(frame["config"], frame["seed"], strict=True)) == PAIRS
    assert frame["node"].nunique() == 2
    seed = int(killed.data.tags["seed"])
    attempts = frame.set_index(["config", "seed"])["attempt"]
    for config, s in PAIRS:  # the killed task's group ran again, the other once
        assert attempts[(config, s)] == (1 if s == seed else 0)


def test_a_configuration_reusing_the_base_trains_none(ray_sweep):
    frame = ray_sweep[0].set_index(["config", "seed"])
    for seed in (42, 43):
        assert frame.loc[("default", seed), "base_s"] > 0
        assert frame.loc[("finetuned_hard", seed), "base_s"] == 0
        assert frame.loc[("finetuned_hard", seed), "specialists_s"] > 0


def test_accuracies_and_saved_files_equal_the_in_process_run(
    ray_sweep, in_process, repo, tiny_sweep
):
    ray_frame = ray_sweep[0].set_index(["config", "seed"]).sort_index()
    local = in_process.set_index(["config", "seed"]).sort_index()
    columns = [c for c in local if c.endswith("accuracy")]
    assert len(columns) > 10
    pd.testing.assert_frame_equal(ray_frame[columns], local[columns])
    for folder in ("labels", "evidence"):  # every prediction and probability, bit for bit
        mine = sorted((repo[0] / "rayout" / folder).glob("*.npz"))
        theirs = tiny_sweep.repo / "out" / folder
        assert [f.name for f in mine] == sorted(f.name for f in theirs.glob("*.npz"))
        for f in mine:
            with np.load(f) as a, np.load(theirs / f.name) as b:
                assert sorted(a.files) == sorted(b.files)
                for k in a.files:
                    np.testing.assert_array_equal(a[k], b[k], err_msg=f"{folder}/{f.name}: {k}")


def test_the_killed_run_is_marked_killed_and_its_retry_finished(ray_sweep, repo):
    _, killed, _, _ = ray_sweep
    path, _ = repo
    parents = sweep_parents(path)
    mine = (killed.data.tags["sweep_config"], killed.data.tags["seed"])
    by_pair: dict[tuple[str, str], list] = {}
    for run_ in parents:
        by_pair.setdefault((run_.data.tags["sweep_config"], run_.data.tags["seed"]), []).append(
            run_
        )
    assert len(by_pair) == 4
    for pair, runs in by_pair.items():
        statuses = sorted(r.info.status for r in runs)
        assert statuses == (["FINISHED", "KILLED"] if pair == mine else ["FINISHED"]), pair
    retry = next(r for r in by_pair[mine] if r.info.status == "FINISHED")
    assert retry.data.tags["resumes_runs"] == killed.info.run_id
    assert retry.data.tags["attempt"] == "1"
    client = _client(path)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def test_nothing_leaves_this_machine_and_the_driver_loads_no_tensorflow(ray_sweep, cluster):
    _, _, driver_tf, _ = ray_sweep
    assert driver_tf == []
    head_log = cluster.logs[0].read_text()
    assert "Usage stats collection is disabled" in head_log
    local = {
        ipaddress.ip_address(a.address.split("%")[0])
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family in (2, 10)  # AF_INET, AF_INET6
    }
    procs = cluster.processes()
    assert len(procs) >= 8  # two raylets, the GCS, agents...
    # Ray's servers bind every interface: that is safe only where every interface is
    # loopback. Each listening socket of the cluster is in this session's namespace,
    # whose only interface is lo, and not in the machine's own.
    assert netns.interfaces() == ["lo"] and netns.namespace() != os.environ[netns.OUTER]
    sockets = netns.listening([p.pid for p in procs])
    assert len(sockets) >= 4, sockets
    assert {ns for *_, ns in sockets} == {netns.namespace()}, sockets
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            if c.raddr:
                ip = ipaddress.ip_address(c.raddr.ip)
                ip = getattr(ip, "ipv4_mapped", None) or ip
                assert ip in local, (proc.name(), c)
            if c.status == psutil.CONN_LISTEN:
                assert c.laddr.port != 8265, f"{proc.name()} serves a dashboard"


def test_a_rerun_skips_finished_rows(ray_sweep, repo, cluster):
    path, _ = repo
    cmd = [*SWEEP_CMD, "--out", "rayout", "--engine", "ray", "--address", cluster.address]
    log = run(cmd, path, cluster.env, timeout=600)
    assert log.count("already in") == 4 and "reuse group" not in log
    assert len(pd.read_csv(path / "rayout/findings.csv")) == 4
