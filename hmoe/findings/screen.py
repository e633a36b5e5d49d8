"""The specialist screen (issue 43): does a specialist design know more about its group
than the base does? Read from val only, from each design's saved per-image evidence
(:mod:`hmoe.evidence`) and costs (``scripts/screen_collect.py``), so the test split
chooses nothing.

For each design and group, on the val images of that group, every network is scored
*within the group*: its argmax over the group's classes alone, so a specialist (which
knows no other class) and the base are asked the same question. The condition any
hierarchy needs is a positive specialist-minus-base difference; its 95 % interval is a
paired t-interval over those images. Diversity is the correlation of in-group errors
with the base's (phi coefficient), beside a second base's: a specialist adds more to a
mixture than a second base only if its errors correlate less. The mixture is scored on
val with the run's own gates and with every gate at 1/2 (``gates.kind: fixed``), beside
the two bases' average.

    python -m hmoe.findings.screen OUT      # OUT/evidence/*.npz, OUT/costs/*.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hmoe.evidence import SplitEvidence, load_evidence
from hmoe.findings.cascades import Key, _files
from hmoe.findings.tables import _row, header
from hmoe.stats import t_interval

logger = logging.getLogger("hmoe.findings")


def in_group_correct(probs: np.ndarray, y: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """For the images whose label is in the group: is the argmax over the group's own
    classes right? (N_group,) booleans."""
    ids = np.asarray(class_ids)
    mine = np.isin(y, ids)
    return ids[np.argmax(probs[mine][:, ids], axis=1)] == y[mine]


def error_correlation(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Pearson correlation of two networks' error indicators (phi coefficient); NaN when
    either makes no error or only errors."""
    a, b = (~np.asarray(a_correct)).astype(float), (~np.asarray(b_correct)).astype(float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def group_row(ev: SplitEvidence, g: int, name: str, class_ids: Sequence[int]) -> dict:
    """One group's in-group figures for one design (val evidence)."""
    base = in_group_correct(ev.base, ev.y, class_ids)
    spec = in_group_correct(ev.specialists[g], ev.y, class_ids)
    mean, lo, hi, _ = t_interval(spec.astype(float) - base.astype(float))
    row = {
        f"{name}_images": len(base),
        f"{name}_specialist": float(spec.mean()),
        f"{name}_base": float(base.mean()),
        f"{name}_diff": mean,
        f"{name}_diff_low": lo,
        f"{name}_diff_high": hi,
        f"{name}_errcorr_specialist": error_correlation(spec, base),
    }
    if ev.second_base is not None:
        second = in_group_correct(ev.second_base, ev.y, class_ids)
        row[f"{name}_errcorr_second_base"] = error_correlation(second, base)
    return row


def design_row(key: Key, ev: SplitEvidence, ids: Mapping[str, Sequence[int]], cost: dict) -> dict:
    """Every figure of one design x seed: costs, each group's condition, the mixture."""
    config, seed = key
    specs = cost["specialists"]
    row: dict = {
        "config": config,
        "seed": seed,
        "start": cost["params"].get("specialists.start"),
        "train_gmacs_specialists": sum(s["train_gmacs"] for s in specs.values()),
        "train_gmacs_base": cost["base"]["train_gmacs"],
        "inference_mmacs_specialists": sum(
            s["inference_mmacs_trunk_shared"] for s in specs.values()
        ),
        "inference_mmacs_base": cost["base"]["inference_mmacs"],
        "epochs": ",".join(str(specs[g]["epochs_run"]) for g in ids),
    }
    for g, name in enumerate(ids):
        row |= group_row(ev, g, name, ids[name])
    y = ev.y
    row["val_base"] = _acc(ev.base, y)
    row["val_mixture_own_gates"] = _acc(ev.mixture("soft"), y)
    fixed = [np.full_like(w, 0.5) for w in ev.gates]
    row["val_mixture_fixed_gates"] = _acc(_with_gates(ev, fixed).mixture("soft"), y)
    row["gate_kind"] = cost["params"].get("gates.kind")
    row["gate_weights"] = ",".join(f"{float(np.mean(w)):.2f}" for w in ev.gates)
    if ev.second_base is not None:
        row["val_two_bases"] = _acc((ev.base + ev.second_base) / 2, y)
    return row


def screen_table(out: Path) -> pd.DataFrame:
    """One row per design x seed found in ``out`` (evidence and costs both present)."""
    rows = []
    for key, path in _files(out / "evidence").items():
        cost_file = out / "costs" / path.with_suffix(".json").name
        if not cost_file.is_file():
            logger.warning("%s has no costs file: left out", path.name)
            continue
        cost = json.loads(cost_file.read_text())
        with np.load(path) as f:
            ids = {str(g): [int(i) for i in f[f"class_ids_{g}"]] for g in f["groups"]}
        rows.append(design_row(key, load_evidence(path)["val"], ids, cost))
    if not rows:
        raise FileNotFoundError(f"no design with evidence and costs under {out}")
    return pd.DataFrame(rows)


def screen_markdown(table: pd.DataFrame) -> str:
    """The screen as a markdown table: one row per design, each group's condition."""
    groups = [c[: -len("_diff")] for c in table.columns if c.endswith("_diff")]
    head = ["design", "start", "epochs", "train GMACs (x base)", "inference MMACs/img"]
    for g in groups:
        head += [f"{g}: spec / base", f"{g}: diff [95 % CI]", f"{g}: err corr spec (2nd base)"]
    head += ["val mixture, 1/2 gates", "val mixture, own gates", "val two bases"]
    lines = header(head)
    for _, r in table.iterrows():
        ratio = r["train_gmacs_specialists"] / r["train_gmacs_base"]
        cells = [
            f"{r['config']} (s{r['seed']})",
            str(r["start"]),
            str(r["epochs"]),
            f"{r['train_gmacs_specialists']:,.0f} ({ratio:.2f})",
            f"{r['inference_mmacs_specialists']:.1f}",
        ]
        for g in groups:
            second = r.get(f"{g}_errcorr_second_base", float("nan"))
            cells += [
                f"{100 * r[f'{g}_specialist']:.2f} / {100 * r[f'{g}_base']:.2f} %",
                f"{100 * r[f'{g}_diff']:+.2f} [{100 * r[f'{g}_diff_low']:+.2f}, "
                f"{100 * r[f'{g}_diff_high']:+.2f}]",
                f"{r[f'{g}_errcorr_specialist']:.2f} ({second:.2f})",
            ]
        cells += [
            f"{100 * r['val_mixture_fixed_gates']:.2f} %",
            f"{100 * r['val_mixture_own_gates']:.2f} % ({r['gate_kind']}: {r['gate_weights']})",
            f"{100 * r.get('val_two_bases', float('nan')):.2f} %",
        ]
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def _with_gates(ev: SplitEvidence, gates: Sequence[np.ndarray]) -> SplitEvidence:
    import dataclasses

    return dataclasses.replace(ev, gates=tuple(gates))


def _acc(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == y))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The specialist screen's table, from val.")
    parser.add_argument("folder", type=Path, help="with evidence/ and costs/ per design")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    table = screen_table(args.folder)
    table.to_csv(args.folder / "screen.csv", index=False)
    text = screen_markdown(table)
    (args.folder / "screen.md").write_text(text)
    logger.info("wrote %s and screen.md:\n%s", args.folder / "screen.csv", text)


if __name__ == "__main__":
    main()
