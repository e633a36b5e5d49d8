"""Turn a params profile (nested overrides) into `dvc exp run -S` flags.

    dvc exp run $(python -m hmoe.profile profiles/gpu.yaml)

The profile is validated against params.yaml first, so a typo fails here rather
than being silently added by `-S`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hmoe import paths
from hmoe.params import flatten, parse_params


def merged(base: Mapping[str, Any], profile: Mapping[str, Any]) -> dict[str, Any]:
    """params.yaml with the profile's values laid over it (a deep merge)."""
    out = dict(base)
    for key, value in profile.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m hmoe.profile PROFILE.yaml")
    profile = yaml.safe_load(Path(args[0]).read_text()) or {}
    parse_params(merged(yaml.safe_load(paths.PARAMS.read_text()), profile))
    flags = [f"-S {k}={yaml.safe_dump(v).splitlines()[0]}" for k, v in flatten(profile).items()]
    print(" ".join(flags))  # noqa: T201  (output is meant for the shell)


if __name__ == "__main__":
    main()
