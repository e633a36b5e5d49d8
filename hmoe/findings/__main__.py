"""``python -m hmoe.findings FOLDER``: rebuild a sweep's findings from its files."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from hmoe.findings import read_findings, write_findings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Rebuild a sweep's findings.md and findings.png from its findings.csv."
    )
    parser.add_argument("folder", type=Path, help="the sweep's output folder")
    parser.add_argument(
        "--reference", help="the configuration the others are compared with (default: first)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    csv = args.folder / "findings.csv"
    if not csv.is_file():
        raise SystemExit(f"hmoe.findings: {csv} not found (run `python -m hmoe.sweep` first)")
    frame = read_findings(csv)
    configs = list(dict.fromkeys(frame["config"]))
    reference = args.reference or configs[0]
    if reference not in configs:
        raise SystemExit(f"hmoe.findings: --reference {reference!r} is not one of {configs}")
    write_findings(frame, args.folder, reference)
    print((args.folder / "findings.md").read_text())  # noqa: T201  (a CLI's output)


if __name__ == "__main__":
    main()
