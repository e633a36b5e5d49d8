"""The report as a person sees it: rendered by a real headless Chromium (the
distribution's package, driven by selenium), every figure loaded, the provenance table
first, then the results and the lift tables.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hmoe.edge.store import FileStore
from hmoe.report import write_report
from tests.support.tiers import has_module, need

PROVENANCE = {
    "run": "commit 0123456789",
    "MLflow parent run": "abc123",
    "params that differ from params.yaml at HEAD": "seed=1",
    "data": "cifar10-jpeg.zip (class folders, sha256:00ff)",
    "machine": "AMD EPYC x2 (avx512f avx512_bf16)",
}


@pytest.fixture
def report(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 10, 200))
    router = rng.dirichlet([1, 1], 200).astype(np.float32)
    gates = [rng.dirichlet([1, 1], 200).astype(np.float32) for _ in range(2)]
    history = pd.DataFrame({"epoch": [0, 1], "accuracy": [0.3, 0.5], "val_accuracy": [0.4, 0.6]})
    metrics = {
        "mixture_accuracy": 0.7, "base_accuracy": 0.69, "vs_base_diff": 0.01,
        "vs_base_ci_low": -0.01, "vs_base_ci_high": 0.03, "vs_base_only_a": 5,
        "vs_base_only_b": 3, "vs_base_mcnemar_p": 0.7, "cost_inference_mmacs_hard": 600.0,
    }  # fmt: skip
    save(write_report(
        tmp_path, metrics=metrics, y=y, base_pred=y, mix_pred=pred, router_probs=router,
        gate_ws=gates, classes=[f"c{i}" for i in range(10)], group_names=["a", "b"],
        histories={"base": history, "router": history}, best_control="two_bases",
        partition={"a": ["c0", "c1"], "b": [f"c{i}" for i in range(2, 10)]},
        provenance=PROVENANCE,
    ))  # fmt: skip
    return tmp_path / "report.html"


def test_report_markdown_opens_with_provenance(report):
    md = (report.parent / "report.md").read_text()
    assert md.index("## Provenance") < md.index("## Results") < md.index("## Figures")
    assert "| MLflow parent run | abc123 |" in md and "## Costs" in md


def test_report_renders_in_headless_chromium_with_every_figure_loaded(report):
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    need(
        has_module("selenium") and bool(chromium) and bool(driver_bin),
        "the browser test needs selenium (pip install -e '.[dev]') and Chromium "
        "(apt-get install chromium chromium-driver)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        browser.set_window_size(1200, 900)
        browser.get(report.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), "
            "i.complete && i.naturalWidth > 0]);"
        )
        tables = browser.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => t.innerText);"
        )
        headings = browser.execute_script(
            "return Array.from(document.querySelectorAll('h2')).map(h => h.innerText);"
        )
        browser.save_screenshot(str(report.parent / "screenshot.png"))
    finally:
        browser.quit()
    assert sorted(src for src, _ in images) == [
        "confusion.png", "curves.png", "per_class.png", "routing_gates.png",
    ]  # fmt: skip
    assert all(ok for _, ok in images), images
    assert headings[0] == "Provenance" and "Results (test split)" in headings
    assert "abc123" in tables[0] and "AMD EPYC" in tables[0]
    assert any("mixture" in t and "70.00 %" in t for t in tables)
    assert (report.parent / "screenshot.png").stat().st_size > 10_000


def save(files):
    """Write a report's files (path -> writer or text) as the evaluate stage's store does."""
    for path, value in files.items():
        FileStore().write(path, value)
    return list(files)
