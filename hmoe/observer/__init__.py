"""All MLflow code: what the stages' runs record, for `dvc repro` and the sweep alike.

- :mod:`.tracking`: runs, parents, datasets and the store (knows only MLflow);
- :mod:`.registry`: registered versions, the champion rule and lineage (only MLflow);
- :mod:`.runs`: the observer a stage is given (:class:`~.runs.Observer`), which knows
  the pipeline and passes values to the two above;
- :mod:`.sweep`: a sweep's pairs recorded as `dvc exp run`s (:class:`~.sweep.Record`).

No stage lists this package in its DVC deps, and nothing in the pipeline reads from it:
editing how runs are logged retrains nothing. Importing this package alone loads no
MLflow (the sweep imports :mod:`.sweep` where MLflow is not installed).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def finite(v: Any) -> bool:
    """A number MLflow takes as a metric (no bool, no NaN or infinity)."""
    number = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
    return number and bool(np.isfinite(float(v)))
