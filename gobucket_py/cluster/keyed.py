"""A map keyed by ``(bucket, task id)``, kept as one dict per bucket.

The primary's records of its replicated tasks (their backup holders, the
placements in flight) take a key per task. As one dict per bucket, keyed by
the task id alone, a batch of a bucket's tasks is added with one ``update``
and no key tuple per task: at 100,000 tasks that is 100,000 fewer objects
for the garbage collector to count (they trigger its passes, and a full pass
walks every pending task). Single keys work as with a plain dict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar, overload

__all__ = ["ByBucket"]

V = TypeVar("V")
D = TypeVar("D")

Key = tuple[str, str]


class ByBucket(Generic[V]):
    """``(bucket, task id) -> value``, one dict per bucket (see the module)."""

    __slots__ = ("_by",)

    def __init__(self) -> None:
        self._by: dict[str, dict[str, V]] = {}

    def bucket(self, name: str) -> dict[str, V]:
        """The dict of one bucket (task id -> value), for bulk changes."""
        by = self._by.get(name)
        if by is None:
            by = self._by[name] = {}
        return by

    def __bool__(self) -> bool:
        return any(self._by.values())

    def __contains__(self, key: Key) -> bool:
        by = self._by.get(key[0])
        return by is not None and key[1] in by

    def __getitem__(self, key: Key) -> V:
        return self._by[key[0]][key[1]]

    def __setitem__(self, key: Key, value: V) -> None:
        self.bucket(key[0])[key[1]] = value

    @overload
    def get(self, key: Key) -> V | None: ...
    @overload
    def get(self, key: Key, default: D) -> V | D: ...

    def get(self, key: Key, default: object = None) -> object:
        """The value at ``key``, or ``default``."""
        by = self._by.get(key[0])
        return default if by is None else by.get(key[1], default)

    def pop(self, key: Key, default: D) -> V | D:
        """Remove and return the value at ``key``, or ``default``."""
        by = self._by.get(key[0])
        return default if by is None else by.pop(key[1], default)

    def items(self) -> Iterator[tuple[Key, V]]:
        """Every ``((bucket, task id), value)``."""
        for name, by in self._by.items():
            for task_id, value in by.items():
                yield (name, task_id), value
