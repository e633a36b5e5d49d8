"""`hmoe predict IMAGE... [--model URI]`: classify image files with the served mixture.

    hmoe predict cat.png truck.jpg                       # models:/hmoe-mixture@champion
    hmoe predict *.png --model models:/hmoe-mixture/3
    hmoe predict img.jpg --model mlartifacts/1/models/m-.../artifacts   # a local model folder

Images of any size and mode are converted to RGB and resized to 32x32 (with a note).
The registry URI is resolved against `MLFLOW_TRACKING_URI` (default: the repository's
SQLite store), like every other hmoe command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger("hmoe.cli")
DEFAULT_MODEL = "models:/hmoe-mixture@champion"


def read_images(files: Sequence[Path]) -> tuple[np.ndarray, list[str]]:
    """uint8 (N, 32, 32, 3) from image files, and a note per file that was converted."""
    from PIL import Image, UnidentifiedImageError

    images, notes = [], []
    for path in files:
        try:
            with Image.open(path) as img:
                if img.size != (32, 32) or img.mode != "RGB":
                    notes.append(f"{path}: {img.size[0]}x{img.size[1]} {img.mode} -> 32x32 RGB")
                rgb = img.convert("RGB")
                if rgb.size != (32, 32):
                    rgb = rgb.resize((32, 32), Image.Resampling.BICUBIC)
                images.append(np.asarray(rgb, dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as err:
            raise SystemExit(f"hmoe predict: cannot read {path} as an image ({err})") from None
    return np.stack(images), notes


def load(uri: str):
    import mlflow

    from hmoe import paths
    from hmoe.observer import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri(paths.repo_root()))
    try:
        return mlflow.pyfunc.load_model(uri)
    except Exception as err:  # registry, network and file errors all end the command here
        raise SystemExit(
            f"hmoe predict: cannot load model {uri!r} ({type(err).__name__}: {err}); "
            "check --model and MLFLOW_TRACKING_URI"
        ) from None


def table(files: Sequence[Path], frame) -> str:
    rows = [("file", "class", "probability", "group", "group prob.", "specialist weight")]
    for path, (_, r) in zip(files, frame.iterrows(), strict=True):
        rows.append(
            (
                str(path),
                r["label"],
                f"{r[r['label']]:.3f}",
                r["group"],
                f"{r['group_probability']:.3f}",
                f"{r['specialist_weight']:.3f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hmoe", description="hmoe command line")
    sub = parser.add_subparsers(dest="command", required=True)
    pred = sub.add_parser("predict", help="classify image files with the mixture")
    pred.add_argument("images", nargs="+", type=Path)
    pred.add_argument("--model", default=DEFAULT_MODEL, help=f"model URI (default {DEFAULT_MODEL})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise SystemExit(f"hmoe predict: no such file: {', '.join(missing)}")
    x, notes = read_images(args.images)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)  # noqa: T201  (a CLI's output)
    frame = load(args.model).predict(x)
    print(table(args.images, frame))  # noqa: T201


if __name__ == "__main__":
    main()
