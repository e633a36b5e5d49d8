"""The assembled mixture as an MLflow pyfunc model (``hmoe-mixture``).

A fresh process loads it with ``mlflow.pyfunc.load_model("models:/hmoe-mixture/N")``
and calls ``predict`` on uint8 images (N, 32, 32, 3); it returns one probability
column per class name plus a ``label`` column with the predicted class name. The
pyfunc applies the same test-time views as `evaluate`, so it scores the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from hmoe.data.constants import IMAGE_SHAPE

CONFIG = "config"


def mixture_config(groups, mixture_params) -> dict[str, Any]:
    """What the pyfunc needs besides the networks: classes, groups, routing, TTA."""
    return {
        "classes": list(groups.classes),
        "groups": {n: list(m) for n, m in zip(groups.names, groups.members, strict=True)},
        "routing": mixture_params.routing,
        "tta": mixture_params.tta,
    }


def to_images(model_input: Any) -> np.ndarray:
    """Accept an (N, 32, 32, 3) array, or a DataFrame of flattened pixel rows."""
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.to_numpy()
    x = np.asarray(model_input)
    if x.ndim == 2 and x.shape[1] == int(np.prod(IMAGE_SHAPE)):
        x = x.reshape((-1, *IMAGE_SHAPE))
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {x.shape}")
    if x.dtype != np.uint8:
        if x.min() < 0 or x.max() > 255:
            raise ValueError("pixel values must be in 0..255")
        x = x.astype(np.uint8)
    return x


class MixturePyfunc(mlflow.pyfunc.PythonModel):
    """Loads the frozen networks (safe_mode=True) and runs the routed mixture."""

    def load_context(self, context) -> None:
        from hmoe import modelset
        from hmoe.params import Groups

        arts = context.artifacts
        cfg = json.loads(Path(arts[CONFIG]).read_text())
        groups = Groups(
            names=tuple(cfg["groups"]),
            members=tuple(tuple(m) for m in cfg["groups"].values()),
            classes=tuple(cfg["classes"]),
        )
        files = {name: Path(p) for name, p in arts.items() if name != CONFIG}
        self.classes = list(cfg["classes"])
        self.mixture = modelset.load_mixture(
            groups, routing=cfg["routing"], tta=cfg.get("tta", 0), files=files
        )

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        probs = self.mixture.predict_proba(to_images(model_input))
        return predictions_frame(probs, self.classes)


def predictions_frame(probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(probs.astype(np.float64), columns=classes)
    frame["label"] = [classes[i] for i in np.argmax(probs, axis=1)]
    return frame
