"""Handoff on a graceful stop: every pending task moves to a peer with room.

A task being handed off is in neither bucket for a moment; ``moving`` holds a
future for it (the new holder's id, or None if it came back), so a drain or
get that arrives meanwhile waits for the move instead of answering
NOT_FOUND. ``moved`` remembers where each task went, so this node keeps
answering for its handoffs while it still serves.

A task taken out for a handoff always ends up somewhere: on the peer that
took it, or back in its bucket (to run here, or be rescued with
``on_panic``). Data travels packed by the group's codec, so ``datetime``,
``UUID``... move like anything else; a task whose data cannot be packed is
put back at once and reported (``event=handoff_refused``), never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import GobucketError, PlacementUnknownError
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
        #: Moves in ``moved`` that could not be settled: the node may not have it.
        self.unsure: set[tuple[str, str]] = set()

    def holder(self, bucket: str, task_id: str) -> asyncio.Future[str | None] | str | None:
        """Where a task of ours went: a node id, a future of one (in transit), or None."""
        key = (bucket, task_id)
        return self.moving.get(key) or self.moved.get(key)

    async def run(self, deadline: float) -> int:
        """Move every pending task to peers with room, until ``deadline``
        (loop time): what no peer can take yet is put back and offered again
        after a probe interval (peers report room as their tasks end). What
        is still here at the deadline runs here or is rescued by ``close``.
        A task whose data cannot be packed is never offered: it is reported
        at once (``event=handoff_refused``) and left here, so it runs here
        or gets ``on_panic``; it does not hold the stop up."""
        group = self.group
        loop = asyncio.get_running_loop()
        moved = kept = 0
        refused: set[tuple[str, str]] = set()
        while True:
            jobs = [self._hand(name, bucket, taken, self._moving(name, taken.id), deadline,
                               refused)
                    for name, bucket in group.buckets.items()
                    for task in list(bucket) if task.state is TaskState.PENDING
                    and (name, task.id) not in refused
                    if (taken := bucket.take_pending(task.id)) is not None]
            if not jobs:
                kept = 0
                break
            outcomes = await asyncio.gather(*jobs)
            moved += outcomes.count(True)
            kept = outcomes.count(False)
            wait = group.config.probe_interval
            if not kept or loop.time() + wait >= deadline or not any(
                    m.state is MemberState.ALIVE for m in group._members.members.values()):
                break
            await asyncio.sleep(wait)
        if kept:
            log.warning("pending tasks could not be handed off; they will run here or be "
                        "rescued event=handoff_incomplete node=%s moved=%d kept=%d",
                        group.node_id, moved, kept)
        if refused:
            log.warning("pending tasks were not handed off: their data cannot be packed; they "
                        "will run here or be rescued (on_panic) event=handoff_incomplete "
                        "node=%s moved=%d not_serializable=%d", group.node_id, moved,
                        len(refused))
        return moved

    def _moving(self, name: str, task_id: str) -> asyncio.Future[str | None]:
        # Registered the moment the task leaves its bucket, so a drain that
        # arrives before the move starts waits for it instead of missing it.
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.moving[(name, task_id)] = future
        return future

    async def _hand(self, name: str, bucket: TaskBucket, task: Task,
                    future: asyncio.Future[str | None], deadline: float,
                    refused: set[tuple[str, str]]) -> bool | None:
        """Offer one task taken from ``bucket`` to the peers: True if one has
        it now, False if it is back in the bucket (offered again later), None
        if its data cannot be packed (back in the bucket, reported, not
        offered again). Whatever happens, the task ends up here or there."""
        group = self.group
        key = (name, task.id)
        target: str | None = None
        slot: tuple[str, int, int] | None = None
        payload: bytes | None = None
        try:
            life_span = task.seconds_left
            run_after = task.seconds_to_run if task.type is TaskType.TIME_BOMB else 0.0
            took: str | None = None
            certain = True
            if name in group._replicas.ks and task.type is TaskType.TIME_BOMB:
                # A backup holder may have taken it over already (it saw this
                # node dead): then it is there, and must not move elsewhere.
                took, certain = await group._replicas.release(name, task.id)
            if took is not None:
                target = took
            elif not certain:
                pass  # stays here, offered again; if still unsure at close, left to them
            elif life_span > run_after:
                try:
                    payload = group.codec.pack(task.data)
                except TypeError as exc:
                    refused.add(key)
                    group.events.add_counted("handoff_refused", "not handed off: data not "
                                             "serializable", task.id, bucket=name)
                    log.warning("task data is not serializable; not handed off, it will run "
                                "here or be rescued event=handoff_refused node=%s bucket=%s "
                                "task_id=%s error=%s", group.node_id, name, task.id, exc)
                else:
                    item: Item = (name, task.id, TYPES.index(task.type), payload, run_after,
                                  life_span)
                    origins = None if group._forwarder is None else group._forwarder.origins
                    origin = group._ended.origin_of(name, task.id)
                    if origins is not None and origin is not None:
                        origins[key] = origin  # the new holder tells it when the task ends
                    try:
                        member, _ = await group._overflow.place(item, handoff=True)
                    except PlacementUnknownError as exc:
                        target, slot = await self._unsettled(name, task.id, exc, deadline)
                    else:
                        target = None if member is None else member.node_id
                    finally:
                        if origins is not None:
                            origins.pop(key, None)
        except Exception:  # a bug must not lose the task: it stays here
            log.exception("handoff of a task failed; it stays here event=handoff_error "
                          "node=%s bucket=%s task_id=%s", group.node_id, name, task.id)
            target = None
        finally:
            try:
                if target is None:
                    bucket.restore(task)
                else:
                    self.moved[key] = target
                    if slot is not None:
                        self.unsure.add(key)
                    origin = group._ended.origin_of(name, task.id)
                    bucket.handed_off(task)
                    group._ended.moved(name, task.id, origin, target, slot)
            finally:
                del self.moving[key]
                future.set_result(target)
        if target is not None:
            return True
        return None if key in refused else False

    async def _unsettled(self, bucket: str, task_id: str, error: PlacementUnknownError,
                         deadline: float) -> tuple[str | None, tuple[str, int, int] | None]:
        """A handoff whose batch could not be settled: keep asking the peer
        until ``deadline``. Returns ``(target, None)`` if it took the task,
        ``(None, None)`` if it did not (the task stays here), and
        ``(target, slot)`` if it still cannot say: the task is left to it
        (a copy here could run twice) and reported as unsettled."""
        group = self.group
        routes, forwarder = group._routes, group._forwarder
        pending = routes.unsettled.get((bucket, task_id))
        member = group._members.members.get(error.node_id)
        loop = asyncio.get_running_loop()
        route = routes.get(bucket, task_id)
        if (pending is not None and member is not None and forwarder is not None
                and route is not None):
            # Only the incarnation the batch went to can say (route[1]; one
            # restarted since cannot, and a lost one is marked so).
            slot, boot = pending[0], route[1]
            while (left := deadline - loop.time()) > 0 and member.boot == boot:
                try:
                    took = await forwarder.settle(member, slot,
                                                  min(group.config.request_timeout, left))
                except GobucketError:
                    await asyncio.sleep(min(group.config.probe_interval,
                                            max(0.0, deadline - loop.time())))
                    continue
                if not took:
                    routes.forget(bucket, task_id)
                    return None, None
                routes.unsettled.pop((bucket, task_id), None)
                return error.node_id, None
        group.events.add("handoff_unknown", f"{task_id} may or may not be on "
                         f"{error.node_id}", bucket=bucket, task_id=task_id,
                         peer=error.node_id)
        log.warning("handoff outcome unknown; the task is left to that peer "
                    "event=handoff_unknown node=%s peer=%s bucket=%s task_id=%s",
                    group.node_id, error.node_id, bucket, task_id)
        return error.node_id, None if pending is None else pending[0]
