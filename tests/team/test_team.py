"""Team mode with real servers: PostgreSQL + S3 (SeaweedFS) + `mlflow server`, a DVC S3
remote, a git remote for experiments, and the champion served over HTTP; the tiny
pipeline runs here on Keras's JAX backend (`KERAS_BACKEND=jax dvc repro`, compiled).

One end-to-end `dvc repro` covers two axes, as the pipeline tier's covers the others:
that one runs TensorFlow against the default SQLite store, this one JAX against the
servers. Neither the store nor the backend decides what the other checks (the model
files travel as files; the runs are the same calls), so a third repro, JAX on SQLite,
would catch nothing these two miss. Without the jax extra the repro runs on
TensorFlow and the JAX checks skip (or fail under HMOE_REQUIRE_ALL_TIERS=1).

Everything runs on loopback ports; every process the tier starts is stopped by PID
(hmoe.teamstack.stop_tree), also when a check fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from hmoe import teamstack
from tests.support import netns
from tests.support.shared import EXPERIMENT, clone
from tests.support.tiers import (
    JAX_INSTALL,
    has_module,
    has_postgres,
    has_weed,
    need,
    need_loopback_only,
)
from tests.support.tinyrepo import base_env, run

pytestmark = pytest.mark.team
JAX = has_module("jax")
TEAM_INSTALL = "pip install -e '.[dev,team]' and PostgreSQL's server (apt-get install postgresql)"
MODELS = {"hmoe-base", "hmoe-router", "hmoe-mixture"}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    ready = has_module("psycopg") and has_module("boto3") and has_weed() and has_postgres()
    need(ready, f"the team tier needs the team extra and PostgreSQL: {TEAM_INSTALL}")
    need_loopback_only()
    with teamstack.stack(tmp_path_factory.mktemp("stack")) as env:
        yield dict(env)


def test_every_server_listens_on_loopback_in_a_loopback_only_namespace(services):
    """PostgreSQL, the S3 server and `mlflow server`: each listening socket is on
    127.0.0.1 or ::1, inside this session's namespace, whose only interface is lo."""
    assert netns.interfaces() == ["lo"]
    assert netns.namespace() != os.environ[netns.OUTER]  # not the machine's own
    # mlflow server and weed are this process's children; pg_ctl daemonises PostgreSQL,
    # whose postmaster is found by its data folder (hmoe.teamstack's `hmoe-pg-*`)
    postmasters = [
        p.pid
        for p in psutil.process_iter()
        if _quiet(lambda p=p: p.name() == "postgres" and "hmoe-pg-" in " ".join(p.cmdline()))
    ]
    sockets = netns.listening(netns.descendants() + postmasters)
    ports = {port for _, _, port, _ in sockets}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"):
        assert int(services[var].rsplit(":", 1)[1]) in ports, (var, sockets)
    assert postmasters and any(name == "postgres" for name, *_ in sockets), sockets
    for name, address, port, ns in sockets:
        assert address in ("127.0.0.1", "::1"), (name, address, port)
        assert ns == netns.namespace(), (name, port)


def _quiet(check) -> bool:
    """``check()``, False for a process that ended or hides itself meanwhile."""
    try:
        return bool(check())
    except psutil.Error:
        return False


def _add_remote(repo: Path, services: dict, env: dict) -> None:
    """DVC's S3 remote: URL and endpoint committed, credentials only in .dvc/config.local."""
    bucket, endpoint = services["HMOE_S3_BUCKET"], services["MLFLOW_S3_ENDPOINT_URL"]
    run(["dvc", "remote", "add", "-f", "-d", "store", f"s3://{bucket}/dvc"], repo, env)
    run(["dvc", "remote", "modify", "store", "endpointurl", endpoint], repo, env)
    for key, var in (
        ("access_key_id", "AWS_ACCESS_KEY_ID"),
        ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ):
        run(["dvc", "remote", "modify", "--local", "store", key, services[var]], repo, env)


@pytest.fixture(scope="module")
def team(tiny_project, tmp_path_factory, services):
    """The tiny pipeline run against the stack, pushed to the DVC and git remotes."""
    root = tmp_path_factory.mktemp("team")
    backend = "jax" if JAX else "tensorflow"
    env = base_env(root / "repo", KERAS_BACKEND=backend)
    env |= {"MLFLOW_TRACKING_URI": services["MLFLOW_TRACKING_URI"]}
    env |= {k: v for k, v in services.items() if k.startswith(("AWS_", "MLFLOW_S3"))}
    repo = clone(tiny_project, root / "repo", env)
    _add_remote(repo, services, env)
    origin = root / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root, env)
    run(["git", "remote", "add", "origin", str(origin)], repo, env)
    log = run(["dvc", "repro"], repo, env, timeout=1200)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny run"], repo, env)
    run(["dvc", "push"], repo, env)
    run(["git", "push", "-q", "origin", "main"], repo, env)
    return {"root": root, "repo": repo, "origin": origin, "env": env, "log": log}


def _client(services):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=services["MLFLOW_TRACKING_URI"])


def test_runs_models_and_artifacts_land_on_the_server(team, services):
    client = _client(services)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hmoe_role") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len([r for r in runs if r.data.tags.get("hmoe_role") == "stage"]) == 8
    names = {m.name for m in client.search_registered_models()}
    assert names >= MODELS
    champion = client.get_model_version_by_alias("hmoe-mixture", "champion")
    assert champion.source.startswith(("models:/", "mlflow-artifacts:"))
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=services["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=services["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=services["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="hmoe", Prefix="mlflow/")
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("report.md") for k in keys)
    assert any(k.endswith(".keras") for k in keys)
    dvc_keys = s3.list_objects_v2(Bucket="hmoe", Prefix="dvc/").get("KeyCount", 0)
    assert dvc_keys >= 10  # splits and every model file


def test_every_stage_runs_compiled_on_jax_and_is_tracked(team, services):
    need(JAX, JAX_INSTALL)
    assert "compiled True (auto: JAX compiles every step)" in team["log"]
    details = json.loads((team["repo"] / "reports/eval/details.json").read_text())
    assert details["mixture_rows_sum_max_error"] < 1e-4
    client = _client(services)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    base = next(r for r in runs if r.info.run_name == "train_base")
    assert base.data.params["keras_backend"] == "jax"
    assert base.data.params["jit_compile_used"] == "True"


def test_teammate_clone_pulls_and_has_nothing_to_rerun(team, services):
    clone = team["root"] / "clone"
    env = team["env"] | {"PYTHONPATH": str(clone)}
    run(["git", "clone", "-q", str(team["origin"]), str(clone)], team["root"], env)
    for key, var in (
        ("access_key_id", "AWS_ACCESS_KEY_ID"),
        ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ):
        run(["dvc", "remote", "modify", "--local", "store", key, services[var]], clone, env)
    assert not (clone / "models").exists()  # an empty cache and workspace
    run(["dvc", "pull"], clone, env)
    assert (clone / "models/base.keras").is_file()
    status = run(["dvc", "status"], clone, env)
    assert "up to date" in status, status
    assert "Running stage" not in run(["dvc", "repro"], clone, env)


def test_experiments_travel_through_the_git_remote(team):
    """An experiment's commit reaches a second clone through the git remote. A tracking
    setting is the cheapest change that makes one: it retrains nothing (which stages a
    change reruns is the pipeline tier's check).
    """
    repo, env = team["repo"], team["env"]
    cmd = ["dvc", "exp", "run", "-S", "mlflow.experiment=team-exp", "-n", "team-exp"]
    out = run(cmd, repo, env)
    assert "Running stage" not in out
    run(["dvc", "exp", "push", "origin", "team-exp"], repo, env)
    other = team["root"] / "other"
    run(["git", "clone", "-q", str(team["origin"]), str(other)], team["root"], env)
    run(["dvc", "exp", "pull", "origin", "team-exp"], other, env | {"PYTHONPATH": str(other)})
    assert "team-exp" in run(["dvc", "exp", "list", "--all-commits"], other, env)
    shown = run(["dvc", "exp", "show", "--csv", "--no-pager"], other, env)
    assert "team-exp" in shown and "mixture_accuracy" in shown.splitlines()[0]


def _post(url: str, payload) -> tuple[int, str]:
    import requests

    body = payload if isinstance(payload, str) else json.dumps(payload)
    r = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=120)
    return r.status_code, r.text


@pytest.fixture(scope="module")
def served(team, services):
    """`mlflow models serve` of the champion, through the tracking server."""
    port = teamstack.free_port()
    log = team["root"] / "serve.log"
    env = team["env"] | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_DISABLE_TELEMETRY": "true",  # a server we start sends no usage statistics
    }
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/hmoe-mixture@champion",
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=team["root"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        teamstack.wait_http(f"http://127.0.0.1:{port}/ping", 180, proc, "mlflow models serve", log)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        teamstack.stop_tree(proc)


@pytest.fixture(scope="module")
def answers(team, served) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The test split's images and labels, and the served champion's answer for them
    (its rows, in order).
    """
    with np.load(team["repo"] / "data/prepared/test.npz") as npz:
        x, y = npz["x"], npz["y"]
    status, text = _post(served, {"inputs": x.tolist()})
    assert status == 200, text[:500]
    return x, y, json.loads(text)["predictions"]


def test_the_served_champion_scores_what_evaluate_reports(team, answers):
    """The champion, loaded in a fresh process (`mlflow models serve`) through the
    tracking server and S3, on the backend it trained on: each class's probability (rows
    sum to 1), the label, the routed group and its gate's weight; its accuracy on the
    test split is evaluate's (same TTA, same routing).
    """
    _, y, rows = answers
    columns = list(rows[0])
    classes = columns[:10]
    assert classes[0] == "airplane" and len(classes) == 10
    assert columns[10:] == ["label", "group", "group_probability", "specialist_weight"]
    for row in rows:
        assert sum(row[c] for c in classes) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == max(classes, key=row.get)
        assert row["group"] in ("artificial", "natural")
        assert 0 <= row["specialist_weight"] <= 1 and 0 < row["group_probability"] <= 1
    accuracy = np.mean(np.array([classes.index(r["label"]) for r in rows]) == y)
    reported = json.loads((team["repo"] / "reports/metrics.json").read_text())
    assert accuracy == pytest.approx(reported["mixture_accuracy"])


def test_instances_get_the_answer_inputs_get(served, answers):
    """MLflow's other tensor payload, `instances`, on a smaller batch: the same labels
    and groups, and the same probabilities to float precision.
    """
    x, _, rows = answers
    status, text = _post(served, {"instances": x[:8].tolist()})
    assert status == 200, text[:500]
    got = json.loads(text)["predictions"]
    assert [(r["label"], r["group"]) for r in got] == [(r["label"], r["group"]) for r in rows[:8]]
    np.testing.assert_allclose(
        [r["airplane"] for r in got], [r["airplane"] for r in rows[:8]], atol=1e-5
    )


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"inputs": (np.full((2, 32, 32, 3), 0.5)).tolist()}, "multiply by 255"),
        ({"inputs": np.zeros((2, 28, 28, 3)).tolist()}, "32"),
        ({"inputs": np.zeros((0, 32, 32, 3)).tolist()}, "empty batch"),
        ({"inputs": np.zeros((1025, 32, 32, 3), dtype=np.uint8).tolist()}, "cap of 1024"),
        ({"inputs": np.full((1, 32, 32, 3), 300).tolist()}, "0..255"),
        ("{not json", ""),
    ],
)
def test_malformed_requests_get_a_4xx_that_says_what_is_expected(served, payload, needle):
    status, text = _post(served, payload)
    assert 400 <= status < 500, (status, text[:300])
    if needle:  # the response's message itself says what is expected (not a traceback)
        assert needle in json.loads(text)["message"], text[:500]
    ok, _ = _post(served, {"inputs": np.zeros((1, 32, 32, 3), dtype=np.uint8).tolist()})
    assert ok == 200  # the server keeps serving
