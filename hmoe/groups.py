"""The partition of the classes into named groups: one type, one to/from-dict pair.

Every stage, the sweep and the served pyfunc speak of groups through :class:`Groups`;
on disk and in MLflow a partition is the mapping ``{group: [class, ...]}`` that
:meth:`Groups.to_dict` writes and :meth:`Groups.from_dict` validates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hmoe.data.constants import CIFAR10_CLASSES

AUTO = "auto"  # the old spelling of `groups: N` (learned), refused with the new one


class GroupsError(ValueError):
    """An invalid partition; the message names the group and the fix."""


@dataclass(frozen=True)
class Groups:
    """A partition of the classes into named groups, in the order they were given."""

    names: tuple[str, ...]
    members: tuple[tuple[str, ...], ...]
    classes: tuple[str, ...] = CIFAR10_CLASSES

    @classmethod
    def from_dict(cls, raw: Any, classes: Sequence[str] = CIFAR10_CLASSES) -> Groups:
        """Validate a mapping group name -> class names (every group >= 2 classes)."""
        fix = (
            "give a mapping group name -> list of class names, e.g. artificial: "
            "[airplane, ship], or `groups: N` to learn N groups"
        )
        if not isinstance(raw, Mapping) or len(raw) < 2:
            raise GroupsError(f"`groups` needs at least 2 groups; {fix}")
        seen: dict[str, str] = {}
        for name, members in raw.items():
            if not isinstance(members, list | tuple) or not members:
                raise GroupsError(f"`groups.{name}` must be a non-empty list of class names; {fix}")
            if len(members) < 2:
                raise GroupsError(
                    f"`groups.{name}` has one class: its specialist would have nothing to tell "
                    "apart; merge it into another group"
                )
            for c in members:
                if c not in classes:
                    raise GroupsError(
                        f"`groups.{name}` names unknown class {c!r}; classes are {list(classes)}"
                    )
                if c in seen:
                    raise GroupsError(
                        f"class {c!r} is in both `groups.{seen[c]}` and `groups.{name}`; "
                        "each class must be in exactly one group"
                    )
                seen[c] = str(name)
        missing = [c for c in classes if c not in seen]
        if missing:
            raise GroupsError(f"classes {missing} are in no group; add each to one of `groups`")
        return cls(
            names=tuple(str(n) for n in raw),
            members=tuple(tuple(m) for m in raw.values()),
            classes=tuple(classes),
        )

    def to_dict(self) -> dict[str, list[str]]:
        """The partition as plain data (params.yaml's form): group -> class names."""
        return {n: list(m) for n, m in zip(self.names, self.members, strict=True)}

    def index(self, group: str) -> int:
        if group not in self.names:
            raise GroupsError(f"unknown group {group!r}; groups are {list(self.names)}")
        return self.names.index(group)

    def class_ids(self, group: str) -> tuple[int, ...]:
        """Global label ids of ``group``'s classes, in the group's order."""
        return tuple(self.classes.index(c) for c in self.members[self.index(group)])

    def group_of_label(self) -> tuple[int, ...]:
        """Group index of every global label (a lookup table, label -> group)."""
        table = [0] * len(self.classes)
        for g, name in enumerate(self.names):
            for cid in self.class_ids(name):
                table[cid] = g
        return tuple(table)

    def labels(self, y):
        """Group index of every label in ``y`` (the router's targets)."""
        import numpy as np

        return np.asarray(self.group_of_label(), dtype=np.int64)[y]
