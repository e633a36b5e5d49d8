"""Every alternative the mixture is compared with, built from the same frozen outputs.

Each is a distribution per image, so differences come from how the experts are
combined (or, for ``two_bases``, from a second network of the base's recipe), not
from the scoring. The oracle routing (true group) bounds what a better router could
do with these networks, and is not a control: it needs the labels. Its own control,
``oracle_two_bases``, is handed the same true group: the two bases' average cut to that
group's classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hmoe.mixture import Outputs, combine, ensemble, one_hot, route_weights
from hmoe.oracle import given_group

# Controls that a person could deploy instead of the mixture; two_bases only when a
# second base was trained (`controls.second_base`).
FAIR_CONTROLS = ("base", "product", "equal_gates", "ensemble", "two_bases")
ROUTED = ("hard", "soft", "oracle")  # the mixture under each routing
# Told the true group, as the oracle is; not deployable either (it needs the labels).
ORACLE_CONTROL = "oracle_two_bases"


def product(out: Outputs) -> np.ndarray:
    """Router x specialist without gates: sum_g r_g * ŝ_g (a distribution)."""
    return sum(out.router[:, g : g + 1] * s for g, s in enumerate(out.specs))


def equal_gates(out: Outputs, routing: str) -> np.ndarray:
    """The mixture with every gate fixed at 1/2 base, 1/2 specialist."""
    half = np.full((len(out.base), 2), 0.5, dtype=np.float32)
    return combine(route_weights(out.router, routing), [half] * len(out.specs), out.base, out.specs)


def all_probs(
    out: Outputs,
    weights: list[np.ndarray],
    true_group: np.ndarray,
    routing: str,
    second_base: np.ndarray | None = None,
    group_of_class: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """The mixture under every routing and every fair control, as distributions.

    ``second_base``: the second base's probabilities on the same images (with the same
    test-time views), when one was trained; the control averages it with the base.
    With ``group_of_class`` (each class's group) as well, ``oracle_two_bases`` is that
    average given ``true_group``, the oracle's fair control.
    """
    n_groups = out.router.shape[1]
    probs = {
        "hard": combine(route_weights(out.router, "hard"), weights, out.base, out.specs),
        "soft": combine(route_weights(out.router, "soft"), weights, out.base, out.specs),
        "oracle": combine(one_hot(true_group, n_groups), weights, out.base, out.specs),
        "base": out.base,
        "ensemble": ensemble(out.base, out.specs),
        "product": product(out),
        "equal_gates": equal_gates(out, routing),
    }
    if second_base is not None:
        probs["two_bases"] = (out.base + second_base) / 2
        if group_of_class is not None:
            probs[ORACLE_CONTROL] = given_group(probs["two_bases"], true_group, group_of_class)
    return probs
