"""How a sweep is recorded in MLflow (:class:`Record`): each configuration x seed as a
`dvc exp run` of the same params is, through the stages' own observer
(:class:`hmoe.observer.runs.Observer`), plus the sweep's tags. Imports MLflow only when
it is enabled and installed: the device machines have none, and the sweep must still
run there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hmoe.observer import finite
from hmoe.params import Params
from hmoe.sweep_plan import Pair

logger = logging.getLogger("hmoe.sweep")


class Record:
    """MLflow when importable, else nothing: the device machines have no MLflow, and
    the sweep must still run there.

    A configuration x seed is recorded as a `dvc exp run` is (:func:`.runs.pipeline`):
    a parent with every effective param, a child per stage with the stage's name, tags,
    params and metrics (the stages' own :class:`.runs.Observer`), plus the sweep's tags
    (its id, configuration, seed, and on each stage whether its outputs were reused).
    ``sweep_id`` names the sweep (its host and output folder, :func:`sweep_id`): a parent
    of the same sweep, configuration and seed still RUNNING when the pair starts again
    belongs to a process killed outright (SIGKILL, a lost node, a Ray retry), and is
    marked KILLED.
    """

    def __init__(
        self, experiment: str, enabled: bool = True, sweep_id: str = "", data_digest: str = ""
    ) -> None:
        self.experiment, self.sweep_id, self.observer = experiment, sweep_id, None
        self.data_digest = data_digest  # the sweep's own data: not reports/data.json's
        self.tags: dict[str, str] = {}
        if not enabled:
            return
        try:
            from hmoe.observer import runs  # imports MLflow
        except ImportError:
            logger.info("MLflow is not installed: the sweep is logged to its folder only")
            return
        self.runs = runs
        self.observer = runs.Observer(experiment)
        self._run: Any = None

    @contextlib.contextmanager
    def pair(self, pair: Pair, tags: Mapping[str, str] | None = None) -> Iterator[None]:
        """The pair's parent run around its stages."""
        if self.observer is None:
            yield
            return
        p = pair.params
        self.tags = {"sweep": "true", "sweep_id": self.sweep_id, "sweep_config": pair.config}
        self.tags |= {"seed": str(p.seed), "reused": "false", **(tags or {})}
        if self.data_digest:
            self.tags["data_digest"] = self.data_digest
        key = f"sweep-{self.sweep_id}-{pair.config}-s{p.seed}"
        name = f"{pair.config}-s{p.seed}"
        with self.runs.pipeline(self.experiment, name, key, p, self.tags) as self._run:
            yield

    def finish(self, metrics: Mapping[str, Any], reused: bool) -> None:
        """What the pair's parent ends with besides evaluate's (finite numbers: MLflow
        takes no NaN): the findings row's figures and whether a network was reused.
        """
        if self.observer is not None:
            self._run.metrics |= {k: float(v) for k, v in metrics.items() if finite(v)}
            self._run.tags |= {"reused": str(reused).lower()}

    def replay(self, params: Params, logged: Mapping[str, Any]) -> None:
        """A reused stage's runs, recorded again with what they were given, tagged so."""
        if self.observer is not None:
            self.observer.replay(params, logged, self.data_digest or None, {"reused": "true"})


def sweep_id(out: Path) -> str:
    """A sweep's identity in MLflow: the driver's host and output folder, hashed (a
    rerun into the same folder is the same sweep; another user's is not).
    """
    where = f"{socket.gethostname()}:{out.resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]
