"""What a caller adds around each network's training, without the steps knowing it.

A stage passes hooks (:class:`hmoe.edge.networks.NetworkHooks`) that open the network's
run, log its epochs, keep a resumable backup and write the network through the stage's
store; a test passes none. The steps stay pure: every file a hook writes is the caller's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the hooks' types alone: a stage that trains nothing loads no Keras
    import keras


@dataclass(frozen=True)
class NetworkJob:
    """One network a step is about to train (what a hook needs to name and key it)."""

    name: str  # base, second_base, router, specialist@<group>, gates
    seed: int
    n_outputs: int
    n_train: int
    n_val: int
    init_from_base: bool  # built from the trained base's layers
    monitor: str = "val_accuracy"  # the epoch log's figure the kept epoch is chosen by
    mode: str = "max"  # ...at its max (accuracy) or min (loss)
    # Whether a killed run resumes it from its last epoch, exactly (hmoe.resume). The
    # gates cannot: Keras's own shuffle and early stopping keep state no backup holds,
    # and the gates' epochs take seconds on their precomputed inputs.
    resumable: bool = True
    parallel: bool = True  # trained data-parallel when train.distribute says so


@dataclass
class Fit:
    """A caller's additions to one network's training."""

    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)
    state_dir: Path | None = None  # resume state (hmoe.resume), None: not resumable
    # train.jit_compile as the caller resolved it for this machine
    # (hmoe.edge.runtime.resolve_jit); False, uncompiled, is what auto gives on TF CPUs
    jit_compile: bool = False


class Hooks:
    """No additions: the steps' default (tests, and whatever needs nothing around them)."""

    @contextlib.contextmanager
    def network(self, job: NetworkJob) -> Iterator[Fit]:
        """Entered around one network's build and training."""
        yield Fit()

    def finished(
        self,
        job: NetworkJob,
        model: keras.Model | Sequence[keras.Model],
        summary: dict[str, Any],
    ) -> dict[str, Any]:
        """Called with the trained network (or the networks trained jointly: the gates)
        inside :meth:`network`; returns the summary (a resuming caller rebuilds it from
        every attempt's epoch log).
        """
        return summary


NO_HOOKS = Hooks()
