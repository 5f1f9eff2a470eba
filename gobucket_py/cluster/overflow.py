"""Overflow: placing tasks the local bucket has no room for on peers.

Two choices by free room (:mod:`.placement`), sent in batches
(:mod:`.forward`). Single fills that overflow in the same event-loop pass are
placed together, like one ``fill_many``. A peer that refuses a task is
recorded and the next one believed to have room tried (``max_attempts``
bounds the peers that fail otherwise than by answering "full"); when none
takes it the caller gets :class:`~gobucket_py.ClusterFullError`. A forward whose fate
could not be settled gives :class:`~gobucket_py.PlacementUnknownError`, and
the task is placed nowhere else (it may be on that peer; the route to it is
kept, so ``drain`` asks there).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from itertools import islice, repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..codec import PACKED_NONE
from ..errors import (
    ClusterFullError,
    DuplicateTaskError,
    GobucketError,
    PlacementUnknownError,
)
from ..task import FillResult, TaskType
from .columns import FillColumns
from .forward import Item, Unsettled
from .items import encode_item, task_times
from .membership import Member, MemberState
from .placement import candidates, pick
from .routes import Route, Sent, is_lost
from .wake import resolve

if TYPE_CHECKING:
    from ..bucket import TaskBucket
    from .group import TaskBucketGroup

__all__ = ["Overflow", "detached"]

T = TypeVar("T")

log = logging.getLogger("gobucket_py")

_BOMB, _IMMEDIATE = TaskType.TIME_BOMB, TaskType.IMMEDIATE
# (C-speed passes over a batch's (index, item) pairs and items.)
_FIRST, _SECOND, _LIFE_SPAN = itemgetter(0), itemgetter(1), itemgetter(5)


#: A holder's answers to a forward that say the id is not live there: a
#: bucket refuses a duplicate before it says full, and one that could not
#: get its backups was taken back.
_NOT_THERE = ("full", "no backup room")


class Results(Protocol):
    """Where :meth:`Overflow.place_many` puts each task's result."""

    def __setitem__(self, index: int, result: FillResult | Exception, /) -> None: ...


class _Waiting:
    """Single fills that overflowed in one loop pass: their ids and items
    (while they share one shape, only the shape: see :class:`.columns.FillColumns`),
    and the callers' futures, each resolved as soon as its task is placed or refused."""

    __slots__ = ("bucket", "code", "futures", "ids", "items", "life_span", "owner",
                 "run_after")

    def __init__(self, loop: asyncio.AbstractEventLoop, bucket: str) -> None:
        self.bucket = bucket
        #: Every fill's id, in order.
        self.ids: list[str] = []
        #: The shape all fills share (no data; ``code`` -1: none yet), or
        #: their items once they do not (then ``items`` is not None).
        self.code, self.run_after, self.life_span = -1, 0.0, 0.0
        self.items: list[Item] | None = None
        self.futures: list[asyncio.Future[FillResult]] = []
        #: Their ids' mark in ``Overflow._placing``, done when they are placed.
        self.owner: asyncio.Future[None] = asyncio.Future(loop=loop)

    def shaped(self, code: int, run_after: float, life_span: float) -> bool:
        """Take the shape of a first fill without data; False if there is
        one already (another), or an item."""
        if self.ids:
            return False
        self.code, self.run_after, self.life_span = code, run_after, life_span
        return True

    def add(self, item: Item) -> None:
        """Append a fill as an item (the fills are items from now on)."""
        if self.items is None:
            self.items = list(self.batch())
        self.items.append(item)
        self.ids.append(item[1])

    def batch(self) -> Sequence[Item]:
        """The fills' items: their :class:`.columns.FillColumns` while they
        share a shape, else a list."""
        if self.items is not None:
            return self.items
        return FillColumns(self.bucket, self.code, PACKED_NONE, self.run_after, self.life_span,
                           self.ids)

    def __setitem__(self, index: int, result: FillResult | Exception) -> None:
        future = self.futures[index]
        if future.done():
            pass
        elif isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)

    def placed(self, indexes: Sequence[int], bucket: str, node_id: str, ids: list[str]
               ) -> None:
        """``self[i] = FillResult(...)`` for each task a peer took, with the
        callers woken together (:func:`.wake.resolve`)."""
        futures = self.futures
        resolve(asyncio.get_running_loop(),
                futures[indexes.start:indexes.stop] if type(indexes) is range
                else list(map(futures.__getitem__, indexes)),
                [FillResult(bucket, task_id, node_id, True) for task_id in ids])


def _placed(results: Results, indexes: Sequence[int], bucket: str, node_id: str,
            ids: list[str]) -> None:
    """Store the results of tasks ``node_id`` took (all of a batch, usually)."""
    if type(results) is _Waiting:
        results.placed(indexes, bucket, node_id, ids)
    else:
        for index, task_id in zip(indexes, ids, strict=True):
            results[index] = FillResult(bucket, task_id, node_id, True)


def slack(local: TaskBucket) -> int:
    """``placement="balanced"``: how many more free slots a peer must have
    than this node's bucket for a task that fits here to go there (1% of
    the bucket's size): nodes even within that, with fewer round trips."""
    return max(1, local.config.max_bucket // 100)


class Overflow:
    """Places the overflow of one :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        # Overflowing single fills waiting for this loop pass's placement.
        self._waiting: dict[str, _Waiting] = {}
        # Ids being placed on peers from here, by bucket (from the fill to
        # its result): another fill of one waits for it to be placed, then
        # asks where it went (see held). The value: the mark of the fills
        # placing it (its owner), a future done when they are placed.
        self._placing: dict[str, dict[str, asyncio.Future[None]]] = {}
        #: By bucket: ``(ids being placed, routes by id)``, the two dicts
        #: :meth:`held` looks in, for a first look on the fill path
        #: (an id in neither is not held). See :meth:`view`.
        self.views: dict[str, tuple[dict[str, asyncio.Future[None]],
                                    dict[str, Route]]] = {}

    def fill_one(self, local: TaskBucket, task_id: str, data: Any, task_type: TaskType,
                 run_after: float | None, life_span: float | None,
                 placing: dict[str, asyncio.Future[None]]
                 ) -> asyncio.Future[FillResult]:
        """Place one task that overflows ``local`` (its wire form made here:
        ``TypeError``/``ValueError`` as :func:`.items.encode_item` and
        :func:`.items.task_times` raise them); fills issued in the same loop
        pass are placed together (one two-choice pass, one batch per peer),
        like fill_many. ``placing``: :meth:`placing` of its bucket (the id
        is not :meth:`held`); the id is marked there until it is placed."""
        bucket = local.name
        # The common case (no data, the bucket's times) inline, and no item
        # made: this is the path of every overflowing single fill, where a
        # call costs a few per cent of it.
        item: Item | None = None
        code, run_after_, life_span_ = -1, 0.0, 0.0
        if (data is None and run_after is None and life_span is None
                and type(task_id) is str and task_id):
            if task_type is _BOMB:
                code, run_after_, life_span_ = 1, local.config.run_after, local.config.life_span
            elif task_type is _IMMEDIATE:
                code, life_span_ = 0, local.config.life_span
        if code < 0:
            ra, ls = task_times(local, task_type, run_after, life_span)
            item = encode_item(bucket, task_id, data, task_type, ra, ls, self.group.codec)
        loop = asyncio.get_running_loop()
        # Not loop.create_future(): on asyncio's loop that is a Python call
        # around this, for nothing (every loop takes asyncio's futures).
        future: asyncio.Future[FillResult] = asyncio.Future(loop=loop)
        waiting = self._waiting.get(bucket)
        if waiting is None:
            waiting = self._waiting[bucket] = _Waiting(loop, bucket)
            loop.call_soon(self._flush, bucket)
        placing[task_id] = waiting.owner  # until its batch is placed (see held)
        if item is None and waiting.items is None and (
                (waiting.code == code and waiting.run_after == run_after_
                 and waiting.life_span == life_span_)
                or waiting.shaped(code, run_after_, life_span_)):
            waiting.ids.append(task_id)
        else:
            waiting.add(item if item is not None else
                        (bucket, task_id, code, PACKED_NONE, run_after_, life_span_))
        waiting.futures.append(future)
        return future

    def _flush(self, bucket: str) -> None:
        waiting = self._waiting.pop(bucket, None)
        if waiting is not None:
            self.group._spawn(self._place_waiting(bucket, waiting))

    async def _place_waiting(self, bucket: str, waiting: _Waiting) -> None:
        try:
            batch = waiting.batch()
            await self.place_many(bucket, batch if type(batch) is FillColumns
                                  else enumerate(batch), waiting)
        except (Exception, asyncio.CancelledError) as exc:  # stop(), or a bug: no caller hangs
            for future, task_id in zip(waiting.futures, waiting.ids, strict=True):
                if not future.done():
                    future.set_exception(self.interrupted(bucket, task_id))
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.exception("placing overflowing fills failed event=overflow_error node=%s "
                          "bucket=%s", self.group.node_id, bucket)
        finally:
            self.release(bucket, waiting.ids, waiting.owner)

    # -- one id at a time from this node ------------------------------------------

    def is_placing(self, bucket: str, task_id: str) -> bool:
        """Is ``task_id`` being placed on a peer from here now (from its fill
        to its result)?"""
        marks = self._placing.get(bucket)
        return marks is not None and task_id in marks

    def held(self, bucket: str, task_id: str) -> bool:
        """Is ``task_id`` being placed on a peer from here, or routed to
        one (forwarded from here, and not known to have ended, been lost,
        or passed its deadline)? Then a new fill of it must not go just
        anywhere: it may be live there (see :meth:`refill`)."""
        if type(task_id) is not str:
            return False  # the fill raises why
        placing = self._placing.get(bucket)
        if placing and task_id in placing:
            return True
        route = self.group._routes.get(bucket, task_id)
        return route is not None and self._may_hold(route)

    def _may_hold(self, route: Route) -> bool:
        """May the peer ``route`` names hold its task? Not if the task was
        reported lost, its route expired (``route[2]``: a second past its
        deadline, or later as its holder says, see ``Routes.extend``), or
        it is this node (a task handed back here: the local bucket says).
        A route to a holder that is dead but not presumed lost, or back
        only just, outlives its expiry (``Routes.hold``): the task may
        still be there."""
        if is_lost(route) or route[0] == self.group.node_id:
            return False
        if route[2] >= asyncio.get_running_loop().time():
            return True
        # Routes.expire re-arms such a route only when it runs (on the next
        # forward): its expiry may have passed meanwhile.
        hold = self.group._routes.hold
        return hold is not None and hold(route[0])

    def view(self, bucket: str) -> tuple[dict[str, asyncio.Future[None]],
                                         dict[str, Route]]:
        """``views[bucket]``, made if it is not there yet."""
        view = self.views.get(bucket)
        if view is None:
            view = self.views[bucket] = (self.placing(bucket), self.group._routes.of(bucket))
        return view

    def placing(self, bucket: str) -> dict[str, asyncio.Future[None]]:
        """The ids of ``bucket`` being placed from here, each with the mark
        of its placing (a future: a live view for callers that check and
        mark many at once). Mark an id only if it is not there, and
        :meth:`release` it with the same mark."""
        placing = self._placing.get(bucket)
        if placing is None:
            placing = self._placing[bucket] = {}
        return placing

    def release(self, bucket: str, task_ids: list[str], owner: asyncio.Future[None]) -> None:
        """The placing marked ``owner`` of ``task_ids`` is over: the fills
        of them that wait go on. (An id is marked only when it is not, so
        each mark is its placing's until this.)"""
        placing = self._placing.get(bucket)
        if placing is not None:
            deque(map(placing.pop, task_ids, repeat(None)), maxlen=0)
        if not owner.done():
            owner.set_result(None)

    async def refill(self, local: TaskBucket, task_id: str, data: Any, task_type: TaskType,
                     run_after: float | None, life_span: float | None) -> FillResult:
        """A fill of an id :meth:`held` here: once no other fill from here
        is placing it, ask the peer this node forwarded it to, if any. It
        answers "duplicate" (DuplicateTaskError: live there), takes it
        (the task is there again), or is full (the id is not live there:
        the fill goes on as any fill). If it cannot be asked, or its word
        is not certain, PlacementUnknownError: the task may still be live
        there, and it is placed nowhere else. So one id filled from one
        node is live on at most one node (unless a holder presumed lost
        comes back with it, see ``lost_after``)."""
        group = self.group
        bucket = local.name
        ra, ls = task_times(local, task_type, run_after, life_span)
        try:
            item = encode_item(bucket, task_id, data, task_type, ra, ls, group.codec)
        except TypeError as exc:
            raise TypeError(f"task {task_id!r} in bucket {bucket!r} was not accepted: this "
                            "node placed it on a peer before, where it may go again, and its "
                            f"data could not travel: {exc.__cause__ or exc}") from exc
        placing = self.placing(bucket)
        while (owner := placing.get(task_id)) is not None:  # its placing first
            if owner.done():  # (cannot happen: release unmarks first) no spin
                del placing[task_id]
                break
            await asyncio.shield(owner)
        route = group._routes.get(bucket, task_id)
        if route is not None and self._may_hold(route):
            # Marked now; asked in a task of its own: a caller that gives
            # up does not leave the answer unsettled (nor the id unmarked).
            mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            placing[task_id] = mine
            placed = await detached(group, self._ask_holder(item, route, mine))
            if placed is not None:
                return placed
        return await group.fill(bucket, task_id, data, task_type=task_type,
                                run_after=run_after, life_span=life_span)

    async def _ask_holder(self, item: Item, route: Route,
                          owner: asyncio.Future[None]) -> FillResult | None:
        """Send ``item`` to the node ``route`` names (where this node sent its
        id before): the result if it took it, None if it is full (so the id
        is not live there: the route is dropped). Raises DuplicateTaskError
        (live there) or PlacementUnknownError (it may be). The id is
        marked ``owner`` until the answer."""
        group = self.group
        bucket, task_id = item[0], item[1]
        try:
            node, boot = route[0], route[1]
            routes = group._routes
            member = group._members.members.get(node)
            if (bucket, task_id) in routes.unsettled:
                raise self._maybe_live(item, node, "the forward that took it there was not "
                                                   "settled")
            if member is None or member.boot != boot:
                raise self._maybe_live(item, node, "that node left or restarted, and whether "
                                                   "the task was taken over is not known yet")
            forwarder = group._forwarder
            assert forwarder is not None
            sent = forwarder.mark()
            try:
                outcome: str | GobucketError = await forwarder.send(member, item)
            except GobucketError as exc:
                outcome = exc
            except asyncio.CancelledError:  # stop(): the caller still gets an answer
                raise self.interrupted(bucket, task_id) from None
            rejections: dict[str, str] = {}
            if self._settle(member, item, outcome, rejections, sent=sent, boot=boot):
                group.fill_counts[bucket][1] += 1
                return FillResult(bucket, task_id, node, True)
            if rejections.get(node) in _NOT_THERE:
                if routes.get(bucket, task_id) == route:
                    routes.forget(bucket, task_id)
                return None
            raise self._maybe_live(item, node, rejections.get(node, "it restarted"))
        finally:
            self.release(bucket, [task_id], owner)

    def _maybe_live(self, item: Item, node: str, why: str) -> PlacementUnknownError:
        return PlacementUnknownError(
            f"task {item[1]!r} in bucket {item[0]!r} may still be live on node {node}, where "
            f"this node forwarded it, and it could not be asked ({why}). It was placed "
            "nowhere; drain or get it to find out", node_id=node, task_id=item[1])

    def interrupted(self, bucket: str, task_id: str) -> PlacementUnknownError:
        """The error of a task whose placement this node's stop cut short."""
        return PlacementUnknownError(
            f"node {self.group.node_id} stopped while placing task {task_id!r} in bucket "
            f"{bucket!r}; it may have been placed on a peer: drain or get it to find out",
            node_id=self.group.node_id, task_id=task_id)

    async def place_many(self, bucket: str, overflow: Iterable[tuple[int, Item]] | FillColumns,
                         results: Results, spill: list[int] | None = None) -> None:
        """Spread ``overflow`` (``(index, item)`` pairs, or items of one shape
        indexed from 0) over peers by two choices, all sent at once;
        what a peer refuses goes through :meth:`place` like a single fill.
        Each result is stored in ``results[index]`` as soon as it is known.
        Serves ``fill_many``, and the single fills of one loop pass. With
        ``spill``, the index of each task no peer took goes there (its
        result stays None: it has room here, see ``placement="balanced"``)
        instead of a ClusterFullError."""
        group = self.group
        forwarder = group._forwarder
        assert forwarder is not None
        size, rng = group.config.batch_size, group.rng
        pool = candidates(group._members.members.values(), bucket)
        # Two choices on each candidate's room: its estimate (which counts
        # what was sent) minus what waits here to be sent. Each peer's share
        # goes out a batch at a time as it fills up, so replies are settled
        # while later batches are on the wire; replies bring fresh reports, so
        # room is re-read after each batch.
        room = {m: m.estimate(bucket) for m in pool}
        room_of = room.__getitem__
        # Each peer's share: indexes, and items (or ids, for items of one shape).
        waiting: dict[Member, tuple[list[int], list[Any]]] = {}
        # (peer, indexes, items, its verdicts, when sent, peer's boot id then)
        sent: list[tuple[Member, Sequence[int], Sequence[Item],
                         asyncio.Future[list[str | GobucketError]], Sent, str]] = []
        retry: list[tuple[int, Item, dict[str, str]]] = []
        pairs: Iterable[tuple[int, Any]] = overflow
        batch_of: Callable[[list[Any]], Sequence[Item]] = _same
        item_of: Callable[[Any], Item] = _same
        if type(overflow) is FillColumns:
            # Items of one shape: slices while there is one candidate; with
            # more, each share holds ids and goes out as columns of them.
            start = await self._place_slices(bucket, overflow, pool, room, sent)
            pairs = zip(range(start, len(overflow)), overflow.ids[start:], strict=True)
            batch_of, item_of = overflow.like, overflow.item
        pairs = iter(pairs)
        for index, each in pairs:
            if not pool:
                retry.append((index, item_of(each), {}))
                continue
            member = pick(pool, room_of, rng)
            share = waiting.get(member)
            if share is None:
                share = waiting[member] = ([], [])
            share[0].append(index)
            share[1].append(each)
            room[member] -= 1
            if len(pool) == 1 and (more := min(size - len(share[1]), room[member])) > 0:
                # One candidate: the rest of its batch is taken at once.
                taken = list(islice(pairs, more))
                share[0].extend(map(_FIRST, taken))
                share[1].extend(map(_SECOND, taken))
                room[member] -= len(taken)
            if len(share[1]) >= size:
                del waiting[member]
                batch, at = batch_of(share[1]), forwarder.mark()
                sent.append((member, share[0], batch, forwarder.send_many(member, batch), at,
                             member.boot))
                await asyncio.sleep(0)  # let the pumps put it on the wire
                for m in pool:
                    room[m] = m.estimate(bucket) - (len(waiting[m][1]) if m in waiting else 0)
                pool = [m for m in pool if room[m] > 0 and m.state is MemberState.ALIVE]
            elif room[member] <= 0:
                pool.remove(member)
        at = forwarder.mark()
        for member, (indexes, share_items) in waiting.items():
            batch = batch_of(share_items)
            sent.append((member, indexes, batch, forwarder.send_many(member, batch), at,
                         member.boot))

        async def settle(member: Member, indexes: Sequence[int], items: Sequence[Item],
                         future: asyncio.Future[list[str | GobucketError]], at: Sent,
                         boot: str) -> None:
            retry.extend(self._settle_many(bucket, member, indexes, items, await future,
                                           results, at, boot))

        # Each batch is settled as its reply comes: a slow peer holds back only its own.
        if len(sent) == 1:
            await settle(*sent[0])
        else:
            await asyncio.gather(*(settle(*each) for each in sent))

        async def again(index: int, item: Item, rejections: dict[str, str]) -> None:
            try:
                member, rejections = await self.place(item, rejections=rejections)
                if member is None and spill is not None:
                    spill.append(index)
                elif member is None:
                    results[index] = self._cluster_full(item, rejections)
                else:
                    results[index] = FillResult(bucket, item[1], member.node_id, True)
                    group.fill_counts[bucket][1] += 1
            except GobucketError as exc:
                results[index] = exc

        if retry:
            await asyncio.gather(*(again(*r) for r in retry))

    async def _place_slices(
            self, bucket: str, columns: FillColumns, pool: list[Member],
            room: dict[Member, int],
            sent: list[tuple[Member, Sequence[int], Sequence[Item],
                             asyncio.Future[list[str | GobucketError]], Sent, str]]
    ) -> int:
        """:meth:`place_many`'s loop for items of one shape while there is
        one candidate (the common case: one peer, single fills): its
        batches are slices of ``columns``, no item is made. Updates ``pool``
        and ``room`` as that loop does; returns the index of the first item
        not sent (``len(columns)`` if all were)."""
        forwarder = self.group._forwarder
        assert forwarder is not None
        size = self.group.config.batch_size
        start, end = 0, len(columns)
        while start < end and len(pool) == 1:
            member = pool[0]
            # As the loop would: at least one item, then what its room takes.
            stop = start + max(1, min(size, room[member], end - start))
            part, at = columns[start:stop], forwarder.mark()
            sent.append((member, range(start, stop), part, forwarder.send_many(member, part), at,
                         member.boot))
            room[member] -= stop - start
            if stop - start >= size and stop < end:
                await asyncio.sleep(0)  # let the pumps put it on the wire
                room[member] = member.estimate(bucket)
                pool[:] = [m for m in pool if room[m] > 0 and m.state is MemberState.ALIVE]
            elif room[member] <= 0:
                pool.clear()
            start = stop
        return start

    def _settle_many(self, bucket: str, member: Member, indexes: Sequence[int],
                     items: Sequence[Item],
                     outcomes: list[str | GobucketError], results: Results, sent: Sent,
                     boot: str) -> list[tuple[int, Item, dict[str, str]]]:
        """Act on a peer's answers to one batch (sent when ``sent`` says
        to its incarnation ``boot``): fill in ``results`` for what it took
        (remembering where, by life span) or what cannot be retried; return
        what to try elsewhere."""
        node = member.node_id
        group = self.group
        if outcomes.count("ok") == len(items):  # the common case: the peer took them all
            shaped = type(items) is FillColumns
            # (A slice's own ids: also its wire message's, packed already;
            # the routes keep the list, so nothing may change it after this.)
            ids = items.ids if type(items) is FillColumns else list(map(_SECOND, items))
            _placed(results, indexes, bucket, node, ids)
            life_span = items[0][5]
            placed: dict[float, list[str]] = {life_span: ids}
            if not shaped and list(map(_LIFE_SPAN, items)).count(life_span) != len(items):
                placed = {}
                for item in items:
                    placed.setdefault(item[5], []).append(item[1])
            self._remember(bucket, member, placed, sent, boot)
            return []
        placed = {}
        retry = []
        for index, item, outcome in zip(indexes, items, outcomes, strict=True):
            if outcome == "ok" or isinstance(outcome, Unsettled):
                placed.setdefault(item[5], []).append(item[1])
                results[index] = (_unknown(member, item, outcome)
                                  if isinstance(outcome, Unsettled)
                                  else FillResult(bucket, item[1], node, True))
                continue
            rejections: dict[str, str] = {}
            try:
                self._settle(member, item, outcome, rejections, sent=sent,
                             boot=boot)  # False or raises
                retry.append((index, item, rejections))
            except DuplicateTaskError as exc:
                results[index] = exc
        self._remember(bucket, member, placed, sent, boot)
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, Unsettled) and outcome.slot is not None:
                group._routes.unsure(bucket, item[1], outcome.slot, False,
                                     (member.node_id, boot))
        return retry

    def _remember(self, bucket: str, member: Member, placed: dict[float, list[str]],
                  sent: Sent, boot: str) -> None:
        """Route each placed id (by life span) to ``member`` in incarnation
        ``boot``, and count them."""
        group = self.group
        now = asyncio.get_running_loop().time()
        for life_span, ids in placed.items():
            group._routes.add(bucket, member.node_id, boot, now, life_span, ids, sent)
            group.fill_counts[bucket][1] += len(ids)
        self._still_there(member, boot)

    def _still_there(self, member: Member, boot: str) -> None:
        """Routes to ``member`` in ``boot`` were just added: if that
        incarnation restarted or was presumed lost while the forward was on
        its way, its loss was reported without them; report them now."""
        if member.boot != boot or member.lost:
            self.group._losses.gone_already(member.node_id, boot)

    def _cluster_full(self, item: Item, rejections: dict[str, str]) -> ClusterFullError:
        """Report each refusal to ``on_peer_schedule_failed`` (in a task
        started now); the error to raise."""
        group = self.group
        bucket, task_id = item[0], item[1]
        group.fill_counts[bucket][2] += 1
        group.events.add_counted("cluster_full", "refused: no node had room", task_id,
                                 bucket=bucket)
        log.warning("no node could take the task event=cluster_full node=%s bucket=%s "
                    "task_id=%s rejections=%d", group.node_id, bucket, task_id, len(rejections))
        if rejections and group.on_peer_schedule_failed is not None:
            # In a task of its own: a callback that fills an id this
            # placing holds waits for it, and this placing must not wait
            # for the callback.
            group._spawn(self._report_failures(bucket, task_id, rejections))
        detail = "; ".join(f"{p}: {e}" for p, e in rejections.items()) or self._no_peer()
        return ClusterFullError(f"no node could take task {task_id!r} in bucket {bucket!r} "
                                f"(local bucket full; {detail})", rejections)

    def _no_peer(self) -> str:
        """Why no peer was asked: none known (a typo'd seed?), none alive, or none had room."""
        group = self.group
        members = group._members.members
        if not members:
            seeds = ", ".join(group.seeds)
            return ("no peers known: " + (f"no seed has answered ({seeds}); check their "
                                          "addresses and ports" if seeds
                                          else "no seeds were given"))
        if not any(m.state is MemberState.ALIVE for m in members.values()):
            return f"no peer is alive ({len(members)} known)"
        return "no peer has room"

    async def _report_failures(self, bucket: str, task_id: str,
                               rejections: dict[str, str]) -> None:
        for peer_id, error in rejections.items():
            await self._report_failure(peer_id, bucket, task_id, error)

    async def _report_failure(self, peer_id: str, bucket: str, task_id: str, error: str) -> None:
        group = self.group
        callback = group.on_peer_schedule_failed
        if callback is None:
            return
        try:
            result = callback(peer_id, bucket, task_id, error)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_peer_schedule_failed raised event=callback_error node=%s "
                          "callback=on_peer_schedule_failed peer=%s bucket=%s task_id=%s",
                          group.node_id, peer_id, bucket, task_id)

    def roomier(self, local: TaskBucket) -> Member | None:
        """``placement="balanced"``: the peer a task that fits here should go
        to, or None to keep it here. Only if a peer drawn at random has more
        room than this node (by ``slack`` slots): then the better of two
        peers drawn at random, if it has more room than this node."""
        group = self.group
        bucket = local.name
        pool = candidates(group._members.members.values(), bucket)
        if not pool or group._forwarder is None:
            return None
        rng = group.rng
        if rng.choice(pool).estimate(bucket) <= local.free + slack(local):
            return None  # as much room here as a peer drawn at random: it stays
        member = pick(pool, lambda m: m.estimate(bucket), rng)  # where: two choices
        return member if member.estimate(bucket) > local.free else None

    def offer(self, member: Member, item: Item) -> Coroutine[Any, Any, bool]:
        """One try at ``member`` (see :meth:`roomier`), queued at once (the
        next choice counts it); the coroutine returned awaits the answer:
        True if it took the task. It raises DuplicateTaskError, or
        PlacementUnknownError when the peer may or may not have taken it
        (the group stopped meanwhile, say)."""
        group = self.group
        assert group._forwarder is not None
        sent, boot = group._forwarder.mark(), member.boot
        return self._offered(member, item, group._forwarder.send(member, item), sent, boot)

    async def _offered(self, member: Member, item: Item, verdict: asyncio.Future[str],
                       sent: Sent, boot: str) -> bool:
        try:
            outcome: str | GobucketError = await verdict
        except GobucketError as exc:
            outcome = exc
        except asyncio.CancelledError:  # stop(): the caller still gets an answer
            raise self.interrupted(item[0], item[1]) from None
        if self._settle(member, item, outcome, {}, sent=sent, boot=boot):
            self.group.fill_counts[item[0]][1] += 1
            return True
        return False

    async def place(self, item: Item, *, handoff: bool = False,
                    rejections: dict[str, str] | None = None
                    ) -> tuple[Member | None, dict[str, str]]:
        """Try peers believed to have room (not those in ``rejections``),
        each at most once, until one takes the task, none is left, or
        ``max_attempts`` of them failed otherwise than by answering "full";
        return the one that accepted, and who refused. Raises
        PlacementUnknownError when a peer may or may not have taken it.

        A "full" answer does not count against ``max_attempts``: it is cheap
        (one batched round trip), it refreshes that peer's free-room figure,
        and it says nothing of the others, whose figures may be as stale. So
        near a full cluster a fill goes on until every peer believed to have
        room was asked, and ClusterFullError means the cluster is full."""
        group = self.group
        bucket = item[0]
        members, forwarder, rng = group._members.members, group._forwarder, group.rng
        assert forwarder is not None
        rejections = {} if rejections is None else rejections
        failed = sum(reason != "full" for reason in rejections.values())
        while failed < group.config.max_attempts:
            pool = candidates(members.values(), bucket, rejections)
            if not pool:
                break
            member = pick(pool, lambda m: m.estimate(bucket), rng)
            sent, boot = forwarder.mark(), member.boot
            try:
                outcome: str | GobucketError = await forwarder.send(member, item, handoff=handoff)
            except GobucketError as exc:
                outcome = exc
            if self._settle(member, item, outcome, rejections, handoff, sent=sent, boot=boot):
                return member, rejections
            if rejections.get(member.node_id, "full") != "full":
                failed += 1
        return None, rejections

    def _settle(self, member: Member, item: Item, outcome: str | GobucketError,
                rejections: dict[str, str], handoff: bool = False, *, sent: Sent,
                boot: str) -> bool:
        """Act on a peer's answer to one forward (sent when ``sent`` says
        to its incarnation ``boot``): True if it took the task; else record
        why in ``rejections`` (raises DuplicateTaskError, or
        PlacementUnknownError when it may have taken it)."""
        bucket, task_id = item[0], item[1]
        if outcome == "ok" or isinstance(outcome, Unsettled):
            routes = self.group._routes
            routes.add(bucket, member.node_id, boot,
                       asyncio.get_running_loop().time(), item[5], [task_id], sent)
            self._still_there(member, boot)
            if isinstance(outcome, Unsettled):
                if outcome.slot is not None:
                    routes.unsure(bucket, task_id, outcome.slot, handoff,
                                  (member.node_id, boot))
                raise _unknown(member, item, outcome)
            return True
        if outcome == "restarted" and member.boot != boot:
            return False  # its new incarnation (known from this answer) was not asked
        if outcome == "duplicate" and not handoff:
            raise DuplicateTaskError(f"task {task_id!r} is already live in bucket "
                                     f"{bucket!r} on node {member.node_id}")
        rejections[member.node_id] = str(outcome)
        return False


def _unknown(member: Member, item: Item, cause: GobucketError) -> PlacementUnknownError:
    return PlacementUnknownError(
        f"task {item[1]!r} may or may not be on node {member.node_id}: {cause}. It was "
        "placed nowhere else; drain or get it to find out", node_id=member.node_id,
        task_id=item[1])


def _same(value: T) -> T:
    return value


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # its caller may be gone: no "never retrieved" warning


async def detached(group: TaskBucketGroup, placing: Coroutine[Any, Any, T]) -> T:
    """Await ``placing`` in a task of its own, which cancelling the caller
    does not cancel: a placement under way settles its forwards and keeps
    their routes either way (the caller's cancel is not a peer's answer)."""
    task = group._spawn(placing)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)
