"""Where this node forwarded each task, until the task's deadline.

The origin of a forward remembers the peer (and its boot id) so that ``drain``
and ``get`` from the origin take one hop. A record lives until the task's
life span is over (plus a second), when the task cannot be live anywhere.
Records are expired in groups: one heap entry per batch of tasks that share
an expiry, so remembering a forwarded batch costs a dict store per task.
"""

from __future__ import annotations

import heapq
import itertools

__all__ = ["Route", "Routes"]

#: ``(node_id, boot_id, expiry)``: where a task went and until when (loop time).
Route = tuple[str, str, float]


class Routes:
    """Forwarded tasks by ``(bucket, task_id)``."""

    def __init__(self) -> None:
        self._where: dict[str, dict[str, Route]] = {}  # bucket -> task id -> route
        # (expiry, seq, bucket, task ids): drained tasks leave stale ids here,
        # counted by _queued and swept when they outnumber the records.
        self._expiry: list[tuple[float, int, str, list[str]]] = []
        self._queued = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(map(len, self._where.values()))

    def get(self, bucket: str, task_id: str) -> Route | None:
        """Where ``task_id`` went, if it is remembered."""
        where = self._where.get(bucket)
        return None if where is None else where.get(task_id)

    def add(self, bucket: str, node_id: str, boot: str, now: float, life_span: float,
            task_ids: list[str]) -> None:
        """Remember that ``task_ids`` (of one life span) went to ``node_id``."""
        expiry = now + life_span + 1.0
        route = (node_id, boot, expiry)
        where = self._where.get(bucket)
        if where is None:
            where = self._where[bucket] = {}
        for task_id in task_ids:
            where[task_id] = route
        heapq.heappush(self._expiry, (expiry, next(self._seq), bucket, task_ids))
        self._queued += len(task_ids)
        self.expire(now)

    def expire(self, now: float) -> None:
        """Forget every route whose task's deadline has passed."""
        if self._queued > 2 * len(self) + 1024:
            self._rebuild()
        heap = self._expiry
        while heap and heap[0][0] < now:
            _, _, bucket, task_ids = heapq.heappop(heap)
            self._queued -= len(task_ids)
            where = self._where[bucket]
            for task_id in task_ids:
                route = where.get(task_id)
                if route is not None and route[2] < now:
                    del where[task_id]

    def forget(self, bucket: str, task_id: str) -> None:
        """Drop one route (the task was drained or found gone)."""
        where = self._where.get(bucket)
        if where is not None:
            where.pop(task_id, None)

    def forget_node(self, node_id: str) -> int:
        """Drop every route to ``node_id`` (it restarted: its tasks are gone)."""
        lost = 0
        for where in self._where.values():
            gone = [task_id for task_id, route in where.items() if route[0] == node_id]
            for task_id in gone:
                del where[task_id]
            lost += len(gone)
        return lost

    def _rebuild(self) -> None:
        """One heap entry per live route (amortised O(1) per remembered task)."""
        self._expiry = [(route[2], next(self._seq), bucket, [task_id])
                        for bucket, where in self._where.items()
                        for task_id, route in where.items()]
        heapq.heapify(self._expiry)
        self._queued = len(self._expiry)
