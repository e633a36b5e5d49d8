"""Training that a killed process can resume exactly.

Keras' ``BackupAndRestore`` restores the weights, the optimizer and the epoch
counter, but not what else decides the next epochs: the order of the batches, the
augmentation's random state, the early-stopping state with its best weights, and
the lookahead average. Here each of those is either a function of (seed, epoch) or
saved beside the backup at every epoch's end, so a resumed run trains the same
epochs on the same batches as an uninterrupted one and keeps the same best weights.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import keras
import numpy as np

from hmoe.data.storage import atomic_write

logger = logging.getLogger(__name__)


def reseed(seed: int) -> None:
    """Python's, NumPy's and the backend's generators from ``seed`` (Keras's global
    seed): the pipeline's one way to seed them. A stage seeds before its first Keras
    work (:func:`hmoe.edge.runtime.setup`); a step reseeds right before it builds a
    network, so the network depends on its seed alone, not on what the caller drew
    before (loading networks from disk draws initialiser seeds).
    """
    keras.utils.set_random_seed(seed)


class EpochBatches(keras.utils.PyDataset):
    """Training batches (images, one-hot labels) in an order set by (seed, epoch) alone.

    ``y`` holds integer labels, or (N, n_classes) target distributions (distillation).

    :class:`EpochSeeds` tells it the epoch before each epoch starts, so a run resumed
    at epoch k draws epoch k's batches, not epoch 0's.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, n_classes: int, seed: int):
        super().__init__()
        self.x, self.y, self.batch_size, self.n_classes, self.seed = (
            x,
            y,
            batch_size,
            n_classes,
            seed,
        )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def __len__(self) -> int:
        """Full batches only (one short batch when there are fewer images than that): a
        fixed batch shape is compiled once.
        """
        return max(1, len(self.x) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        y = self.y[idx]
        return self.x[idx], y if y.ndim == 2 else keras.utils.to_categorical(y, self.n_classes)


class EpochSeeds(keras.callbacks.Callback):
    """At each epoch's start: the batch order and every random layer's seed state from
    (seed, epoch), so no random state has to survive a restart.
    """

    def __init__(self, seed: int, batches: EpochBatches | None = None):
        super().__init__()
        self.seed, self.batches = seed, batches

    def on_epoch_begin(self, epoch, logs=None):
        if self.batches is not None:
            self.batches.set_epoch(epoch)
        # A fresh stream per epoch: Keras advances the state's second word per draw, so
        # [seed, epoch] would replay the previous epoch's draws shifted by one.
        start = int(np.random.default_rng([self.seed, epoch]).integers(2**31))
        for layer in self.model.layers:
            gen = getattr(layer, "seed_generator", None)
            if gen is not None:
                gen.state.assign(np.array([start, 0], dtype=gen.state.dtype))


class BestKeeper(keras.callbacks.Callback):
    """Early stopping that ends with the best epoch's weights, its state saved in
    ``state_dir`` (when given) at every epoch's end and reloaded on resume.
    """

    def __init__(self, monitor: str, patience: int, state_dir: Path | None = None):
        super().__init__()
        self.monitor, self.patience, self.state_dir = monitor, patience, state_dir
        self.best, self.best_epoch, self.wait, self.weights = -math.inf, -1, 0, None

    def _files(self) -> tuple[Path, Path] | None:
        if self.state_dir is None:
            return None
        return self.state_dir / "best.json", self.state_dir / "best_weights.npz"

    def on_train_begin(self, logs=None):
        files = self._files()
        if files and files[0].is_file() and files[1].is_file():
            state = json.loads(files[0].read_text())
            self.best, self.best_epoch, self.wait = state["best"], state["epoch"], state["wait"]
            with np.load(files[1]) as f:
                self.weights = [f[f"w{i}"] for i in range(len(f.files))]
            logger.info("resumed early stopping: best %s %.4f at epoch %d", self.monitor,
                        self.best, self.best_epoch + 1)  # fmt: skip

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {})[self.monitor])
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.weights = self.model.get_weights()
            self._save_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True
        self._save_state()

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)

    def _save_weights(self):
        files = self._files()
        if files:
            arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
            atomic_write(files[1], lambda tmp: np.savez(tmp, **arrays))

    def _save_state(self):
        files = self._files()
        if files:
            state = {"best": self.best, "epoch": self.best_epoch, "wait": self.wait}
            atomic_write(files[0], lambda tmp: tmp.write_text(json.dumps(state)))


def completed_epochs(backup_dir: Path) -> int:
    """Epochs a killed run finished, from Keras' backup metadata (0: a fresh start)."""
    meta = Path(backup_dir) / "training_metadata.json"
    if not meta.is_file():
        return 0
    return int(json.loads(meta.read_text()).get("epoch", 0))


class StopOnNaN(keras.callbacks.Callback):
    """Stop when an epoch's loss is not finite (an epoch-level check: a batch-level
    callback would force a device sync after every step).
    """

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; nothing trained is worth keeping."""
