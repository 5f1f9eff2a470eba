"""Handoff on a graceful stop: every pending task moves to a peer with room.

A task being handed off is in neither bucket for a moment; ``moving`` holds a
future for it (the new holder's id, or None if it came back), so a drain or
get that arrives meanwhile waits for the move instead of answering
NOT_FOUND. ``moved`` remembers where each task went, so this node keeps
answering for its handoffs while it still serves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgpack

from ..errors import PlacementUnknownError
from ..task import Task, TaskState, TaskType
from .forward import Item
from .items import TYPES
from .membership import MemberState

if TYPE_CHECKING:
    from ..bucket import TaskBucket
    from .group import TaskBucketGroup

__all__ = ["Handoff"]

log = logging.getLogger("gobucket_py")


class Handoff:
    """The handoffs of one stopping :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        #: ``(bucket, task_id)`` -> future of the new holder's id (None: it stayed).
        self.moving: dict[tuple[str, str], asyncio.Future[str | None]] = {}
        #: ``(bucket, task_id)`` -> the node that took it.
        self.moved: dict[tuple[str, str], str] = {}

    def holder(self, bucket: str, task_id: str) -> asyncio.Future[str | None] | str | None:
        """Where a task of ours went: a node id, a future of one (in transit), or None."""
        key = (bucket, task_id)
        return self.moving.get(key) or self.moved.get(key)

    async def run(self, deadline: float) -> int:
        """Move every pending task to peers with room, until ``deadline``
        (loop time): what no peer can take yet is put back and offered again
        after a probe interval (peers report room as their tasks end). What
        is still here at the deadline runs here or is rescued by ``close``."""
        group = self.group
        loop = asyncio.get_running_loop()
        moved = kept = 0
        while True:
            jobs = [self._hand(name, bucket, taken, self._moving(name, taken.id))
                    for name, bucket in group.buckets.items()
                    for task in list(bucket) if task.state is TaskState.PENDING
                    if (taken := bucket.take_pending(task.id)) is not None]
            if not jobs:
                return moved
            done = sum(await asyncio.gather(*jobs))
            moved, kept = moved + done, len(jobs) - done
            wait = group.config.probe_interval
            if not kept or loop.time() + wait >= deadline or not any(
                    m.state is MemberState.ALIVE for m in group._members.members.values()):
                break
            await asyncio.sleep(wait)
        if kept:
            log.warning("pending tasks could not be handed off; they will run here or be "
                        "rescued event=handoff_incomplete node=%s moved=%d kept=%d",
                        group.node_id, moved, kept)
        return moved

    def _moving(self, name: str, task_id: str) -> asyncio.Future[str | None]:
        # Registered the moment the task leaves its bucket, so a drain that
        # arrives before the move starts waits for it instead of missing it.
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.moving[(name, task_id)] = future
        return future

    async def _hand(self, name: str, bucket: TaskBucket, task: Task,
                    future: asyncio.Future[str | None]) -> bool:
        group = self.group
        key = (name, task.id)
        target: str | None = None
        try:
            life_span = task.seconds_left
            run_after = task.seconds_to_run if task.type is TaskType.TIME_BOMB else 0.0
            if life_span > run_after:
                try:
                    payload = msgpack.packb(task.data, use_bin_type=True, datetime=False)
                except (TypeError, ValueError, OverflowError) as exc:
                    log.warning("task data is not serializable; not handed off "
                                "event=handoff_failed node=%s bucket=%s task_id=%s error=%s",
                                group.node_id, name, task.id, exc)
                else:
                    item: Item = (name, task.id, TYPES.index(task.type), payload, run_after,
                                  life_span)
                    try:
                        member, _ = await group._overflow.place(item, handoff=True)
                    except PlacementUnknownError as exc:
                        # The peer may hold it: keeping a copy here could run it twice.
                        log.warning("handoff outcome unknown; the task is left to that peer "
                                    "event=handoff_unknown node=%s peer=%s bucket=%s "
                                    "task_id=%s", group.node_id, exc.node_id, name, task.id)
                        target = exc.node_id
                    else:
                        target = None if member is None else member.node_id
            if target is None:
                bucket.restore(task)
            else:
                self.moved[key] = target
                origin = group._ended.origins.get(name, {}).get(task.id)
                bucket.handed_off(task)
                group._ended.moved(name, task.id, origin, target)
            return target is not None
        finally:
            del self.moving[key]
            future.set_result(target)
