"""Fills: the local-first half of ``fill`` and ``fill_many``.

A task goes into the local bucket while it has room; the rest overflows to
peers (:mod:`.overflow`). Before a task is accepted here its data is
checked to be packable when it may have to travel (``check_payloads``), so
a refused fill changes nothing. With replicas, a time-bomb filled here is
accepted only once it has its backups on other nodes (:mod:`.replicas`);
if it cannot get them it is taken back and the caller gets
:class:`~gobucket_py.NoBackupRoomError`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import BucketClosedError, GobucketError, NoBackupRoomError
from ..task import FillResult, Task, TaskType
from .backups import TOMB_KEEP
from .forward import Item
from .items import encode_item, task_times
from .overflow import detached, slack
from .placement import candidates

if TYPE_CHECKING:
    from ..bucket import TaskBucket
    from .group import TaskBucketGroup

__all__ = ["Fills", "cannot_travel"]

#: Tasks per slice of a replicated ``fill_many``: filled here, then their
#: backups sent while the next slice is filled.
_SLICE = 1024


def cannot_travel(bucket: str, task_id: str, error: TypeError) -> TypeError:
    """The error for a task whose data could not be packed for a peer."""
    return TypeError(f"task {task_id!r} in bucket {bucket!r} was not accepted: its data "
                     f"could not travel to a peer: {error}")


class Fills:
    """The local fills of one :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        #: The fills :meth:`started` (a strong reference while they run).
        self.running: set[asyncio.Task[Any]] = set()

    def checks_payloads(self) -> bool:
        """Must every fill's data be packable (``GroupConfig.check_payloads``)?"""
        group = self.group
        check = group.config.check_payloads
        if check is None:  # whenever there is a peer the data may travel to
            return bool(group.seeds) or bool(group._membership and group._membership.members)
        return check

    async def many(self, bucket: str, tasks: Mapping[str, Any] | Iterable[tuple[str, Any]],
                   task_type: TaskType, run_after: float | None,
                   life_span: float | None) -> list[FillResult | Exception]:
        """The body of :meth:`~gobucket_py.TaskBucketGroup.fill_many`.

        What concerns every task is checked first; then the tasks are placed
        in a task of their own, which a cancelled caller does not cancel: a
        forward on the wire is settled and its route kept (so ``drain`` and
        loss reports find the task) whether or not anyone waits for it."""
        local = self.group._open_bucket(bucket)
        ra, ls = task_times(local, task_type, run_after, life_span)
        return await detached(self.group, self._many(local, tasks, task_type, run_after,
                                                     life_span, ra, ls))

    async def _many(self, local: TaskBucket, tasks: Mapping[str, Any] | Iterable[tuple[str, Any]],
                    task_type: TaskType, run_after: float | None, life_span: float | None,
                    ra: float, ls: float) -> list[FillResult | Exception]:
        # Each task being placed holds its id in ``results`` until its result
        # is known: if the group stops meanwhile it gets PlacementUnknownError.
        results: list[FillResult | Exception | str | None] = []
        pairs = iter(tasks.items() if isinstance(tasks, Mapping) else tasks)
        try:
            return await self._place_many(local, pairs, task_type, run_after, life_span,
                                          ra, ls, results)
        except asyncio.CancelledError:  # stop(): nobody is left waiting without an answer
            overflow = self.group._overflow
            unread = BucketClosedError(f"node {self.group.node_id} stopped before this task "
                                       "was filled")
            return [*(overflow.interrupted(local.name, r) if isinstance(r, str)
                      else unread if r is None else r for r in results),
                    *(unread for _ in pairs)]

    async def _place_many(self, local: TaskBucket, pairs: Iterator[tuple[str, Any]],
                          task_type: TaskType, run_after: float | None, life_span: float | None,
                          ra: float, ls: float, results: list[FillResult | Exception | str | None]
                          ) -> list[FillResult | Exception]:
        # ``sending``: the ids this call sends to peers (held until they are
        # placed); ``again``: those already held here (forwarded from here,
        # or twice in this call), filled one by one once these are placed.
        # ``owner``: their mark in Overflow.placing.
        sending: list[str] = []
        again: list[tuple[int, str, Any]] = []
        overflow = self.group._overflow
        owner: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            await self._place_all(local, pairs, task_type, run_after, life_span, ra, ls,
                                  results, sending, again, owner)
        finally:
            overflow.release(local.name, sending, owner)
        if again:
            async def refill(index: int, task_id: str, data: Any) -> None:
                try:
                    results[index] = await overflow.refill(local, task_id, data, task_type,
                                                           run_after, life_span)
                except (GobucketError, TypeError, ValueError) as exc:
                    results[index] = exc

            await asyncio.gather(*(refill(*each) for each in again))
        return _done(results)

    async def _place_all(self, local: TaskBucket, pairs: Iterator[tuple[str, Any]],
                         task_type: TaskType, run_after: float | None, life_span: float | None,
                         ra: float, ls: float, results: list[FillResult | Exception | str | None],
                         sending: list[str], again: list[tuple[int, str, Any]],
                         owner: asyncio.Future[None]) -> None:
        group = self.group
        bucket = local.name
        counts = group.fill_counts[bucket]
        check, codec, node_id = self.checks_payloads(), group.codec, group.node_id
        held = group._overflow.held
        placing, routed = group._overflow.view(bucket)

        def overflow(pairs: Iterable[tuple[str, Any]], here: list[int] | None = None,
                     filled: list[Task] | None = None, keep: int | None = None
                     ) -> Iterator[tuple[int, Item]]:
            # Lazy, so the first batches are on the wire while later tasks
            # are still being read (and local room is checked as it is then).
            # ``here``/``filled``: the index and task of each one filled here;
            # ``keep``: how many may stay here (placement="balanced").
            for task_id, data in pairs:
                try:
                    if (type(task_id) is str and (task_id in placing or task_id in routed)
                            and held(bucket, task_id)):
                        results.append(task_id)  # see Overflow.held: after the others
                        again.append((len(results) - 1, task_id, data))
                        continue
                    if (local.free > 0 and (keep is None or keep > 0)) or task_id in local:
                        if keep is not None:
                            keep -= 1
                        if check and data is not None:
                            try:
                                codec.pack(data)
                            except TypeError as exc:
                                raise cannot_travel(bucket, task_id, exc) from exc
                        task = local.fill_nowait(task_type, task_id, data,
                                                 run_after=run_after, life_span=life_span)
                        if here is not None and filled is not None:
                            here.append(len(results))
                            filled.append(task)
                        results.append(FillResult(bucket, task_id, node_id, False, task))
                        counts[0] += 1
                        continue
                    item = encode_item(bucket, task_id, data, task_type, ra, ls, codec)
                except (GobucketError, TypeError, ValueError) as exc:
                    results.append(exc)
                    continue
                results.append(task_id)
                placing[task_id] = owner
                sending.append(task_id)
                yield len(results) - 1, item

        replicated = task_type is TaskType.TIME_BOMB and bucket in group._replicas.ks
        if group._balanced:
            # This node keeps the share that leaves it as much free room as the
            # cluster's average (give or take the slack); the rest is spread
            # over peers by two choices; what no peer takes stays here if it can.
            listed = list(pairs)
            pool = candidates(group._members.members.values(), bucket)
            total = local.free + sum(max(0, m.estimate(bucket)) for m in pool)
            even = (total - len(listed)) / (len(pool) + 1)
            keep = max(0, min(len(listed), int(local.free - even) + slack(local)))
            here: list[int] = []
            filled: list[Task] = []
            spill: list[int] = []
            await group._overflow.place_many(bucket, overflow(listed, here, filled, keep),
                                             results, spill)
            for index in spill:
                task_id, data = listed[index]
                try:
                    if local.free <= 0:
                        item = encode_item(bucket, task_id, data, task_type, ra, ls, codec)
                        results[index] = group._overflow._cluster_full(item, {})
                        continue
                    task = local.fill_nowait(task_type, task_id, data, run_after=run_after,
                                             life_span=life_span)
                except (GobucketError, TypeError, ValueError) as exc:
                    results[index] = exc
                    continue
                results[index] = FillResult(bucket, task_id, node_id, False, task)
                counts[0] += 1
                here.append(index)
                filled.append(task)
            if replicated and filled:
                await self._back_up_slice(local, results, here, filled)
            return
        if not replicated:
            await group._overflow.place_many(bucket, overflow(pairs), results)
            return
        # Replicated: a slice at a time, each slice's backups on the wire
        # while the next slice is filled (the peers store as this node fills).
        backing: list[asyncio.Task[None]] = []
        source = iter(pairs)
        try:
            while True:
                part = list(itertools.islice(source, _SLICE))
                if not part:
                    break
                at: list[int] = []
                tasks_here: list[Task] = []
                await group._overflow.place_many(bucket, overflow(part, at, tasks_here), results)
                backing.append(asyncio.create_task(
                    self._back_up_slice(local, results, at, tasks_here)))
                await asyncio.sleep(0)  # the slice's backups go out
            await asyncio.gather(*backing)
        finally:
            # Cancelled (or failed): the slices still being backed up stop with
            # it, as one unsliced backup would have.
            for pending in backing:
                if not pending.done():
                    pending.cancel()

    async def _back_up_slice(self, local: TaskBucket,
                             results: list[FillResult | Exception | str | None],
                             indexes: list[int], tasks: list[Task]) -> None:
        """Back up ``tasks``, filled here for ``results[indexes]`` (one slice of
        a ``fill_many``; two lists, not pairs: fewer objects for the GC to
        track); a task that cannot be is refused there."""
        refused = await self.back_up(local, tasks)
        if refused.count(None) == len(refused):
            return
        counts = self.group.fill_counts[local.name]
        for index, error in zip(indexes, refused, strict=True):
            if error is not None:
                results[index] = error
                counts[0] -= 1

    def here(self, local: TaskBucket, task_id: str, data: Any, task_type: TaskType,
             run_after: float | None, life_span: float | None) -> Task | None:
        """The local half of a single fill: the task filled here if
        ``local`` has room (or the id is live here: DuplicateTaskError),
        else None (it overflows). Raises for bad arguments, or data that
        cannot travel (before anything is filled)."""
        if local.fits(task_id):  # no exception on the overflow path
            if data is not None and self.checks_payloads():
                try:  # before the fill: a refused fill changes nothing
                    self.group.codec.pack(data)
                except TypeError as exc:
                    raise cannot_travel(local.name, task_id, exc) from exc
            return local.fill_nowait(task_type, task_id, data, run_after=run_after,
                                     life_span=life_span)
        return None

    def started(self, fill: Coroutine[Any, Any, FillResult]) -> asyncio.Task[FillResult]:
        """``fill`` in a task started now, held here until it is done (see
        :meth:`~gobucket_py.TaskBucketGroup.fill_future`)."""
        task = asyncio.get_running_loop().create_task(fill)
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return task

    async def elsewhere(self, local: TaskBucket, task_id: str, data: Any, task_type: TaskType,
                        run_after: float | None, life_span: float | None) -> FillResult | None:
        """``placement="balanced"``: place a task that fits here on a peer
        with more room, if one takes it; None to keep it here."""
        group = self.group
        member = group._overflow.roomier(local)  # decided before any packing
        if member is None:
            return None
        ra, ls = task_times(local, task_type, run_after, life_span)
        try:
            item = encode_item(local.name, task_id, data, task_type, ra, ls, group.codec)
        except TypeError:
            return None  # it cannot travel: here (checked as the local fill checks it)
        overflow = group._overflow
        # Marked until the answer (see Overflow.held), by the task that
        # waits for it: a caller that gives up does not unmark it early.
        owner: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        overflow.placing(local.name)[task_id] = owner

        answer = overflow.offer(member, item)  # queued now: the next choice counts it

        async def offered() -> bool:
            try:
                return await answer
            finally:
                overflow.release(local.name, [task_id], owner)

        if not await detached(group, offered()):
            return None
        return FillResult(local.name, task_id, member.node_id, True)

    async def back_up_one(self, local: TaskBucket, task: Task) -> None:
        """Back up one time-bomb filled here (with the others of this loop
        pass); raises NoBackupRoomError if it could not be (it is taken back)."""
        group = self.group
        replicas = group._replicas
        answer = replicas.protect_one(local.name, task, group.node_id)
        try:
            if await answer:
                return
        except asyncio.CancelledError:
            # The answer came (no backups), then the cancel: take it back
            # for this caller (a cancelled answer is, by the protecting task).
            if answer.done() and not answer.cancelled() and not answer.result():
                group._spawn(replicas.abandoned(local, task))
            raise
        # Shielded: a caller cancelled now leaves the task taken back or kept
        # (and backed up anew), not half-withdrawn.
        if await asyncio.shield(replicas.withdraw(local, task)):
            raise self._no_backup_room(local, task)

    async def back_up(self, local: TaskBucket, tasks: list[Task]) -> list[Exception | None]:
        """Back up time-bombs filled here; None for each that got its
        backups, else the error (it was taken back, not accepted)."""
        group = self.group
        replicas = group._replicas
        done = await replicas.protect(local.name, tasks, group.node_id)
        if all(done):
            return [None] * len(tasks)
        failed = [task for task, ok in zip(tasks, done, strict=True) if not ok]
        taken = dict(zip(failed, await asyncio.gather(
            *(replicas.withdraw(local, task) for task in failed)), strict=True))
        return [self._no_backup_room(local, task) if taken.get(task) else None
                for task in tasks]

    def _no_backup_room(self, local: TaskBucket, task: Task) -> NoBackupRoomError:
        replicas = self.group._replicas
        k = replicas.ks[local.name]
        why = "too few peers had room (or its data is not serializable)"
        if replicas.refused_as_ended(local.name, task.id):
            why = ("too few peers took one: some refused it because they hold word that an "
                   "earlier task of this id from this node started or was drained (kept "
                   f"{TOMB_KEEP:.0f} s, or that long past that task's deadline, so that a "
                   "late or stale copy of its backup is never run) or was taken over by a "
                   "backup (kept longer); with replicas, fill each run of a job with its "
                   "own id")
        return NoBackupRoomError(
            f"task {task.id!r} in bucket {local.name!r} was not accepted: it needs "
            f"{k} backup(s) on other alive nodes (replicas={k}) and {why}")


def _done(results: list[FillResult | Exception | str | None]) -> list[FillResult | Exception]:
    """``results`` once every task in it has its result."""
    assert not any(r is None or isinstance(r, str) for r in results)
    return results  # type: ignore[return-value]
