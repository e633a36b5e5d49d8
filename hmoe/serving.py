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


def mixture_config(groups, mixture_params, gate_input: str = "probs") -> dict[str, Any]:
    """What the pyfunc needs besides the networks: classes, groups, routing, TTA and
    what the gates see (``gates.inputs``).
    """
    return {
        "classes": list(groups.classes),
        "groups": groups.to_dict(),
        "routing": mixture_params.routing,
        "tta": mixture_params.tta,
        "router_fusion": mixture_params.router_fusion,
        "gate_input": gate_input,
    }


MAX_BATCH = 1024  # images per request: bounds a request's memory and latency


class InputError(ValueError):
    """A request the model cannot answer; the message says what is expected."""


def to_images(model_input: Any, *, max_batch: int = MAX_BATCH) -> np.ndarray:
    """Accept (N, 32, 32, 3) pixel values 0..255 (any numeric dtype holding integers),
    or a DataFrame of flattened pixel rows; refuse everything else with a message.
    """
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.to_numpy()
    try:
        x = np.asarray(model_input)
    except ValueError as err:  # ragged nesting
        raise InputError(f"images must be a rectangular array: {err}") from None
    if x.size == 0:
        raise InputError("empty batch: send at least one (32, 32, 3) image")
    if x.ndim == 2 and x.shape[1] == int(np.prod(IMAGE_SHAPE)):
        x = x.reshape((-1, *IMAGE_SHAPE))
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise InputError(
            f"expected images of shape (N, 32, 32, 3) with pixel values 0..255, got shape "
            f"{x.shape}; resize to 32x32 RGB first"
        )
    if len(x) > max_batch:
        raise InputError(f"batch of {len(x)} images is over the cap of {max_batch}; split it")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"pixel values must be numbers 0..255, got dtype {x.dtype}")
    if x.dtype == np.uint8:
        return x
    if np.isnan(x).any() or x.min() < 0 or x.max() > 255:
        raise InputError("pixel values must be in 0..255 (uint8 RGB)")
    if not np.array_equal(x, np.round(x)):
        hint = " (images scaled to [0, 1]: multiply by 255)" if x.max() <= 1 else ""
        raise InputError(f"pixel values must be integers 0..255, got fractions{hint}")
    return x.astype(np.uint8)


class MixturePyfunc(mlflow.pyfunc.PythonModel):
    """Loads the frozen networks (safe_mode=True) and runs the routed mixture."""

    def load_context(self, context) -> None:
        from hmoe.gates import GateInput
        from hmoe.groups import Groups
        from hmoe.mixture import load_mixture

        arts = context.artifacts
        cfg = json.loads(Path(arts[CONFIG]).read_text())
        groups = Groups.from_dict(cfg["groups"], cfg["classes"])
        files = {name: Path(p) for name, p in arts.items() if name != CONFIG}
        self.classes = list(cfg["classes"])
        self.mixture = load_mixture(
            groups,
            files,
            routing=cfg["routing"],
            tta=cfg.get("tta", 0),
            gate_input=GateInput(cfg["gate_input"]),
            router_fusion=cfg.get("router_fusion", "none"),
        )

        self.group_names = list(groups.names)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        try:
            images = to_images(model_input)
        except InputError as err:
            # An MlflowException's message is what the scoring server puts in the 4xx
            # response's "message"; any other exception becomes a generic one there.
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        pred = self.mixture.predict_details(images)
        return predictions_frame(pred, self.classes, self.group_names)


def predictions_frame(pred, classes: list[str], group_names: list[str]) -> pd.DataFrame:
    """One row per image: every class's probability, the class name, the group the
    router chose with its probability, and the weight that group's gate put on its
    specialist.
    """
    frame = pd.DataFrame(pred.probs.astype(np.float64), columns=classes)
    frame["label"] = [classes[i] for i in np.argmax(pred.probs, axis=1)]
    frame["group"] = [group_names[g] for g in pred.group]
    frame["group_probability"] = pred.group_prob.astype(np.float64)
    frame["specialist_weight"] = pred.specialist_weight.astype(np.float64)
    return frame
