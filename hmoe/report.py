"""The one-minute report: PNG figures plus Markdown and HTML pages, the evaluate
stage's plot tables, and the provenance the report opens with.

Plotting and formatting are pure, over arrays the evaluate stage already has; files
are written by :func:`write_report` (which returns them), :func:`write_run_report`
and :func:`write_plot_tables`. Provenance (git, params, data, machine) is read here;
what it takes from MLflow (the parent run, stage wall times) is passed in.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from hmoe import gitrev, paths
from hmoe.metrics import FIGURES, HEADLINE, per_class_accuracy
from hmoe.params import Params, ParamsError, flatten, parse_params
from hmoe.report_figures import (
    confusion_figure,
    curves_figure,
    per_class_figure,
    routing_gates_figure,
    save_figure,
)

if TYPE_CHECKING:
    from hmoe.groups import Groups
    from hmoe.pipeline import DeclaredStage
    from hmoe.steps.evaluate import Evaluation

logger = logging.getLogger(__name__)

# Rows that are differences of two accuracies (in points), not accuracies (in %).
DIFFERENCES = {"routing_loss", "lift_over_base", "lift_over_ensemble"}
# Rows with a paired 95 % interval: the row's key -> the prefix of its paired metrics.
INTERVALS = {"lift_over_base": "vs_base"}


CAPTIONS = {
    "confusion.png": "Confusion matrices on the test split, base (left) and mixture (right): "
    "rows are the true class, columns the predicted one.",
    "per_class.png": "Test accuracy per class, base against mixture.",
    "routing_gates.png": "Left: the share of each true class the router sends to each group "
    "(a perfect router puts 1.00 in its group's column). Right: the mean weight each group's "
    "gate puts on its specialist, per true class.",
    "curves.png": "Training curves of every network this run trained: train (dashed) and "
    "validation (solid) accuracy per epoch.",
}


def write_report(
    out_dir: Path,
    *,
    metrics: Mapping[str, float],
    y: np.ndarray,
    base_pred: np.ndarray,
    mix_pred: np.ndarray,
    router_probs: np.ndarray,
    gate_ws: Sequence[np.ndarray],
    classes: Sequence[str],
    group_names: Sequence[str],
    histories: Mapping[str, pd.DataFrame],
    best_control: str | None = None,
    partition: Mapping[str, Sequence[str]] | None = None,
    partition_source: str = "params",
    provenance: Mapping[str, str] | None = None,
) -> dict[Path, Any]:
    """The figures, report.md and report.html, by path (each a writer or its text, for
    a stage's store): provenance first, then the results with their intervals and
    costs, then the captioned figures.
    """
    figures = {
        "confusion.png": confusion_figure(y, base_pred, mix_pred, classes),
        "per_class.png": per_class_figure(y, base_pred, mix_pred, classes),
        "curves.png": curves_figure(histories),
        "routing_gates.png": routing_gates_figure(y, router_probs, gate_ws, classes, group_names),
    }
    written: dict[Path, Any] = {
        out_dir / name: functools.partial(save_figure, f) for name, f in figures.items()
    }
    prov = list((provenance or {}).items())
    md = ["# hmoe report", "", "## Provenance", "", "| what | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in prov]
    md += _results_table(metrics, group_names, best_control)
    lift = _lift_table(metrics, best_control)
    md += lift
    costs = [(k, v) for k, v in metrics.items() if k.startswith("cost_")]
    if costs:
        md += ["", "## Costs", "", "| cost | value |", "|---|---|"]
        md += [f"| {k.removeprefix('cost_')} | {v:,.1f} |" for k, v in costs]
    if partition:
        md += ["", f"## Groups ({partition_source})", "", "| group | classes |", "|---|---|"]
        md += [f"| {g} | {', '.join(members)} |" for g, members in partition.items()]
    md += ["", "## Figures"]
    for name in figures:
        md += ["", f"![{name}]({name})", "", f"*{CAPTIONS.get(name, name)}*"]
    written[out_dir / "report.md"] = "\n".join(md) + "\n"
    written[out_dir / "report.html"] = _html(md)
    return written


def percent(value: float) -> str:
    """An accuracy as people read it: 0.8881 -> 88.81 %."""
    return f"{100 * value:.2f} %"


def points(value: float) -> str:
    """A difference of two accuracies in percentage points, signed: +0.52 points."""
    return f"{100 * value:+.2f} points"


def interval(metrics: Mapping[str, float], prefix: str) -> str:
    """A paired 95 % interval in points (``<prefix>_ci_low`` .. ``_ci_high``)."""
    low, high = metrics[f"{prefix}_ci_low"], metrics[f"{prefix}_ci_high"]
    return f"{100 * low:+.2f} .. {100 * high:+.2f} points"


def _results_table(
    metrics: Mapping[str, float], group_names: Sequence[str], best_control: str | None
) -> list[str]:
    """Accuracies in %, differences in points, each with its paired 95 % interval
    where the evaluation computed one.
    """
    rows = []
    for key, label in FIGURES.items():
        if key not in metrics:
            continue
        value = points(metrics[key]) if key in DIFFERENCES else percent(metrics[key])
        prefix = INTERVALS.get(key)
        ci = interval(metrics, prefix) if prefix and f"{prefix}_ci_low" in metrics else ""
        rows.append((label, value, ci))
    if "vs_best_control_diff" in metrics:
        label = f"lift over best control ({best_control})"
        value = points(metrics["vs_best_control_diff"])
        rows.append((label, value, interval(metrics, "vs_best_control")))
    rows += [
        (f"specialist {g} (on its classes)", percent(metrics[f"specialist_{g}_accuracy"]), "")
        for g in group_names
        if f"specialist_{g}_accuracy" in metrics
    ]
    head = ["", "## Results (test split)", "", "| figure | value | paired 95 % interval |"]
    return [*head, "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]


def _lift_table(metrics: Mapping[str, float], best_control: str | None) -> list[str]:
    """Paired statistics of the mixture's lift (bootstrap 95 % interval, McNemar p)."""
    against = [("vs_base", "base"), ("vs_best_control", f"best control ({best_control})")]
    lines = [
        "",
        "## Is the lift real? (paired, on the same test images)",
        "",
        "| mixture vs | difference | 95 % interval | only mixture right | only other right "
        "| McNemar p |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in against:
        if f"{key}_diff" not in metrics:
            continue
        lines.append(
            f"| {label} | {points(metrics[f'{key}_diff'])} | {interval(metrics, key)} | "
            f"{metrics[f'{key}_only_a']:.0f} | {metrics[f'{key}_only_b']:.0f} | "
            f"{metrics[f'{key}_mcnemar_p']:.3g} |"
        )
    return lines if len(lines) > 5 else []


def _html(md: Sequence[str]) -> str:
    """A small, dependency-free rendering of the report's Markdown lines: headings,
    tables, figures with captions.
    """
    out, table = [], []

    def flush() -> None:
        if not table:
            return
        cells = [[c.strip() for c in row.strip("|").split("|")] for row in table]
        head, body = cells[0], [r for r in cells[1:] if not set("".join(r)) <= {"-"}]
        out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                   + "</tr></thead><tbody>" + "".join(
                       "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                       for r in body) + "</tbody></table>")  # fmt: skip
        table.clear()

    for line in md:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            out.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(src)}">')
        elif line.startswith("*") and line.endswith("*"):
            out.append(f"<figcaption>{html.escape(line.strip('*'))}</figcaption></figure>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:.2em .6em;text-align:left}img{max-width:100%}figcaption{color:#444}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>hmoe report</title>"
        f"<style>{style}</style></head><body>{''.join(out)}</body></html>\n"
    )


# -- the evaluate stage's files and provenance ---------------------------------------


def plot_tables(
    y: np.ndarray, labels: Mapping[str, np.ndarray], classes: list[str]
) -> dict[Path, Any]:
    """DVC's plot tables, as writers by path: confusion rows (its `confusion` template)
    and per-class accuracy of the base and the mixture.
    """
    names = np.asarray(classes)
    confusion_rows = pd.DataFrame({"actual": names[y], "predicted": names[labels["mixture"]]})
    per_class = pd.DataFrame(
        {
            "class": classes,
            "base": per_class_accuracy(y, labels["base"], len(classes)),
            "mixture": per_class_accuracy(y, labels["mixture"], len(classes)),
        }
    )
    return {
        paths.CONFUSION: lambda tmp: confusion_rows.to_csv(tmp, index=False),
        paths.PER_CLASS: lambda tmp: per_class.to_csv(tmp, index=False, float_format="%.4f"),
    }


def history_deps(stage: DeclaredStage) -> dict[str, Path]:
    """The epoch logs ``stage`` reads (dvc.yaml's deps named history), by the stage that
    wrote them: one figure panel per network. No list of stages here: a new training
    stage's log is drawn once evaluate lists it.
    """
    found = {}
    for dep in map(Path, stage.deps):
        if dep.name in ("history.csv", "history"):
            found[dep.parent.name.removeprefix("train_").replace("_", " ")] = dep
    return found


def run_report(
    result: Evaluation,
    y: np.ndarray,
    groups: Groups,
    record: Mapping[str, Any],
    histories: Mapping[str, pd.DataFrame],
    provenance: Mapping[str, str],
) -> dict[Path, Any]:
    """The pipeline run's report (reports/report/) from the evaluation, the groups'
    record and the networks' epoch logs (label -> table; an empty one is left out).
    """
    return write_report(
        paths.REPORT,
        metrics=result.metrics,
        y=y,
        base_pred=result.labels["base"],
        mix_pred=result.labels["mixture"],
        router_probs=result.router_probs,
        gate_ws=result.gate_weights,
        classes=list(groups.classes),
        group_names=groups.names,
        histories={k: v for k, v in histories.items() if len(v)},
        best_control=result.best_control,
        partition=groups.to_dict(),
        partition_source=record["source"],
        provenance=provenance,
    )


def provenance(
    params: Params, data: Mapping[str, Any], parent: str, walls: Mapping[str, float]
) -> dict[str, str]:
    """Which run, code, params, data (``prepare``'s record), machine and runtime the
    report comes from; ``parent`` (the MLflow parent run) and ``walls`` (stage wall
    seconds) come from the tracking store.
    """
    import keras

    from hmoe.edge import runtime
    from hmoe.edge.runtime import resolve_jit

    run = os.environ.get("DVC_EXP_NAME")
    commit = gitrev.commit(short=True)
    changed = changed_params(params)
    compiled = resolve_jit(params.train.jit_compile)[0]
    policy = keras.mixed_precision.global_policy().name
    return {
        "run": f"DVC experiment {run} (baseline {commit})" if run else f"commit {commit}",
        "MLflow parent run": parent,
        "params that differ from params.yaml at HEAD": ", ".join(
            f"{k}={v}" for k, v in changed.items()
        )
        or "none",
        "data": f"{data['source']} ({data['kind']}, {data['digest']})",
        "split sizes": ", ".join(f"{k} {v:,}" for k, v in data["sizes"].items()),
        "machine": runtime.machine(),
        "backend, precision, compiled": f"{keras.backend.backend()}, {policy}, {compiled}",
        "stage wall times (s)": ", ".join(f"{k} {v:.0f}" for k, v in walls.items()) or "n/a",
    }


def changed_params(params: Params) -> dict[str, Any]:
    """The params (dotted keys) whose values differ from params.yaml as committed at
    HEAD: what `dvc exp run -S` or an edit changed for this run.
    """
    try:
        text = subprocess.run(
            ["git", "show", f"HEAD:{paths.PARAMS}"], capture_output=True, text=True, check=True
        ).stdout
        committed = flatten(parse_params(yaml.safe_load(text)))
    except (OSError, subprocess.CalledProcessError, ParamsError):
        return {}
    now = flatten(params)
    return {k: v for k, v in now.items() if committed.get(k) != v}


def headline(metrics: Mapping[str, float], best_control: str) -> str:
    """The run's result in one log line: the headline (:data:`hmoe.metrics.HEADLINE`)
    and the mixture's paired difference from the base.
    """
    figures = ", ".join(
        f"{k.removesuffix('_accuracy')} {metrics[k]:.4f}" for k in HEADLINE if k in metrics
    )
    return (
        f"test accuracy: {figures}; mixture - base {metrics['vs_base_diff']:+.4f} (95 % CI "
        f"{metrics['vs_base_ci_low']:+.4f} .. {metrics['vs_base_ci_high']:+.4f}, McNemar "
        f"p={metrics['vs_base_mcnemar_p']:.3g}); best control {best_control}"
    )
