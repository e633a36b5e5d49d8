"""Screenshots of `mlflow ui` as a user meets it, for docs/tracking.md.

Starts `mlflow ui` on 127.0.0.1 over a repository's SQLite store (telemetry off), opens
it in headless Chromium (the distribution's, as tests/unit/test_report_browser.py) and
saves three views: the experiment as it opens, the experiment opened with
``?workflowType=machine_learning``, and the compare view of a sweep pair beside the
`dvc repro` parent of the same params. Stops the server by its process id.

    python scripts/mlflow_screens.py REPO_WITH_MLFLOW_DB OUT_DIR [--experiment NAME]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from mlflow.tracking import MlflowClient

logger = logging.getLogger("mlflow_screens")
PORT = 5077


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--experiment", default="hmoe")
    args = parser.parse_args()
    uri = f"sqlite:///{args.repo.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(args.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    pairs = sorted(
        (r for r in parents if r.data.tags.get("sweep") == "true"),
        key=lambda r: (r.data.tags.get("reused") != "false", r.info.start_time),
    )  # a pair that trained all its networks (not one that reused another's)
    pair = pairs[0]
    dvc = next(r for r in parents if r.data.tags.get("sweep") != "true")
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(PORT)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"http://127.0.0.1:{PORT}/health")
        base = f"http://127.0.0.1:{PORT}/#/experiments/{exp.experiment_id}"
        ids = quote(json.dumps([pair.info.run_id, dvc.info.run_id]))
        views = {
            "mlflow-opens.png": base,
            "mlflow-runs.png": f"{base}/runs?workflowType=machine_learning",
            "mlflow-compare.png": f"http://127.0.0.1:{PORT}/#/compare-runs?runs={ids}"
            f"&experiments={quote(json.dumps([exp.experiment_id]))}",
        }
        _shoot(views, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _shoot(views: dict[str, str], out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name, url in views.items():
            tall = name == "mlflow-compare.png"  # down to the params table
            browser.set_window_size(1500, 2600 if tall else 950)
            browser.get(url)
            time.sleep(8)  # the UI loads its runs asynchronously
            browser.save_screenshot(str(out / name))
            logger.info("%s: asked %s, shown %s", name, url, browser.current_url)
    finally:
        browser.quit()


if __name__ == "__main__":
    main()
