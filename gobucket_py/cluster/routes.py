"""Where this node forwarded each task, until the task's deadline.

The origin of a forward remembers the peer (and its boot id) so that ``drain``
and ``get`` from the origin take one hop. A record lives until the task's
life span is over (plus a second), when the task cannot be live anywhere
-- or longer, while its holder says it is still there (rescheduled, or its
start gate waits: :meth:`Routes.extend`). Records are expired in groups:
one heap entry per batch of tasks that share an expiry, so remembering a
forwarded batch costs a dict store per task.

One id may be forwarded to the same holder again once its earlier task
ended there, while the holder's ended notice about that task is still on
its way. The notice names the batch that brought the task (0 for a task
that came to it otherwise: handed off, or taken over as a backup), and a
route keeps the number of the last batch sent before its own forward (see
``Forwarder.mark``): a notice naming a batch up to that one is about an
earlier task of the id, and leaves the route alone.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Route", "Routes", "Sent", "is_lost"]

#: ``(node_id, boot_id, expiry, mark)``: where a task went, until when (loop
#: time), and the last batch number this node had used before it sent the
#: task there (the batch that took it has a higher one); 0 if it got there
#: otherwise (moved), or that is not known.
Route = tuple[str, str, float, int]

#: When a forward was queued: ``(loop time, last batch number used)``.
Sent = tuple[float, int]

#: Prefix of the boot id of a route whose holder crashed or is presumed lost:
#: the task was reported lost, and drains of it answer LOST until its
#: deadline (or until a presumed-lost holder returns, see ``unmark_lost``).
_LOST = "!"


def is_lost(route: Route) -> bool:
    """Was the task on this route reported lost?"""
    return route[1].startswith(_LOST)


#: A kept word about a holder: ``(holder, its boot or "" for any, the node it
#: moved the task to or "" if it ended there, that node's boot)``.
Notice = tuple[str, str, str, str]

#: Ended notices kept for routes not added yet (a few seconds' worth).
EARLY_MAX = 10_000

#: How long a word of a move that came before its route is kept (seconds): a
#: forward is settled well within it (``request_timeout`` plus
#: ``settle_timeout``), and a stale word is not applied to a later forward.
EARLY_KEEP = 30.0


def _bound(table: dict[tuple[str, str], Any]) -> None:
    """Drop the oldest half of a table of kept words once it passes ``EARLY_MAX``."""
    if len(table) > EARLY_MAX:
        for key in list(table)[:EARLY_MAX // 2]:
            del table[key]


class Routes:
    """Forwarded tasks by ``(bucket, task_id)``."""

    def __init__(self) -> None:
        #: ``hold(node_id)``: True while a route to that node must outlive
        #: its task's deadline (the node is dead but not yet presumed lost:
        #: its tasks are reported lost, not silently forgotten; or it is
        #: back only just: its word that a task is still there may be
        #: coming, see ``ended.GateKeepalive``).
        self.hold: Callable[[str], bool] | None = None
        # Ended notices that arrived before their route: (bucket, id) ->
        # (node, loop time it arrived, the batch it names: see ``ended``).
        self._early: dict[tuple[str, str], tuple[str, float, int]] = {}
        self._where: dict[str, dict[str, Route]] = {}  # bucket -> task id -> route
        # Words about a holder a route does not point at yet (they overtook
        # the word of an earlier move): (bucket, id) -> [(notice, the slot
        # of a handoff from that holder that could not be settled)],
        # applied when a move points the route at that holder.
        self._later: dict[tuple[str, str], list[tuple[Notice, tuple[str, int, int] | None]]] = {}
        # Words of a move that came before the route itself (the forward's
        # verdict was still on its way): ``(bucket, id)`` -> (loop time the
        # last came, the same entries as ``_later``), applied when a route to
        # their holder is added within EARLY_KEEP (see add).
        self._early_moves: dict[tuple[str, str], tuple[
            float, list[tuple[Notice, tuple[str, int, int] | None]]]] = {}
        #: ``moved_early(bucket, task_id, route)``: a route just added was
        #: moved on by such words (to ``route``), as ``EndedNotices.apply``
        #: would have moved it.
        self.moved_early: Callable[[str, str, Route], None] | None = None
        #: How long such words are kept (s): ``EARLY_KEEP``, or longer if a
        #: forward may take longer to settle (see ``lifecycle.start``).
        self.early_keep = EARLY_KEEP
        #: Routes to a holder that may or may not have taken the task (its
        #: forward could not be settled): ``(bucket, id)`` -> ``(slot,
        #: handoff)``, the batch slot to settle before trusting a "not here"
        #: from it, and whether the task was accepted before (a handoff: if
        #: the holder did not take it, it is lost) or not (a fill that raised
        #: PlacementUnknownError: then it was never placed).
        self.unsettled: dict[tuple[str, str], tuple[tuple[str, int, int], bool]] = {}
        # (expiry, seq, bucket, task ids): drained tasks leave stale ids here,
        # counted by _queued and swept when they outnumber the records.
        self._expiry: list[tuple[float, int, str, list[str]]] = []
        self._queued = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(map(len, self._where.values()))

    def of(self, bucket: str) -> dict[str, Route]:
        """The routes of ``bucket`` by task id (a live view: read it only)."""
        where = self._where.get(bucket)
        if where is None:
            where = self._where[bucket] = {}
        return where

    def get(self, bucket: str, task_id: str) -> Route | None:
        """Where ``task_id`` went, if it is remembered."""
        where = self._where.get(bucket)
        return None if where is None else where.get(task_id)

    def add(self, bucket: str, node_id: str, boot: str, now: float, life_span: float,
            task_ids: list[str], sent: Sent | None = None) -> None:
        """Remember that ``task_ids`` (of one life span) went to ``node_id``,
        forwarded when ``sent`` says: an ended notice from it that names a
        later batch (or, naming none, arrived since then) is theirs -- it
        overtook the verdict -- and they are not remembered; any other is
        about an earlier task of the same id, and is dropped."""
        expiry = now + life_span + 1.0
        route = (node_id, boot, expiry, 0 if sent is None else sent[1])
        where = self._where.get(bucket)
        if where is None:
            where = self._where[bucket] = {}
        given = task_ids
        if self._early:
            task_ids = [t for t in task_ids if not self._overtaken(bucket, t, node_id, sent)]
        if self._later:  # a new task of the id: notices of moves are of an earlier one
            for task_id in task_ids:
                self._later.pop((bucket, task_id), None)
        where.update(dict.fromkeys(task_ids, route))
        if self.unsettled:
            for task_id in task_ids:
                self.unsettled.pop((bucket, task_id), None)
        if self._early_moves:
            for task_id in given:  # (one that ended there has nothing to follow)
                kept = self._early_moves.pop((bucket, task_id), None)
                if (kept is not None and now - kept[0] <= self.early_keep
                        and where.get(task_id) is route):
                    self._catch_up(bucket, task_id, where, route, kept[1])
        heapq.heappush(self._expiry, (expiry, next(self._seq), bucket, task_ids))
        self._queued += len(task_ids)
        self.expire(now)

    def expire(self, now: float) -> None:
        """Forget every route whose task's deadline has passed (a route
        extended since its entry was pushed is pushed again at its new
        expiry; one to a holder ``hold`` names is looked at again in a
        second)."""
        if self._queued > 2 * len(self) + 1024:
            self._rebuild()
        heap, hold = self._expiry, self.hold
        held: list[tuple[str, str]] = []
        later: list[tuple[float, str, str]] = []
        while heap and heap[0][0] < now:
            expiry, _, bucket, task_ids = heapq.heappop(heap)
            self._queued -= len(task_ids)
            where = self._where[bucket]
            for task_id in task_ids:
                route = where.get(task_id)
                if route is None:
                    continue
                if route[2] >= now:
                    if route[2] > expiry:  # extended (see :meth:`extend`): due then
                        later.append((route[2], bucket, task_id))
                    continue
                if hold is not None and not is_lost(route) and hold(route[0]):
                    held.append((bucket, task_id))
                else:
                    del where[task_id]
                    if self.unsettled:
                        self.unsettled.pop((bucket, task_id), None)
        for expiry, bucket, task_id in later:  # (an entry of a newer forward may be
            heapq.heappush(heap, (expiry, next(self._seq), bucket, [task_id]))  # there too)
            self._queued += 1
        for bucket, task_id in held:  # looked at again in a second
            node, boot, _, mark = self._where[bucket][task_id]
            self._where[bucket][task_id] = (node, boot, now + 1.0, mark)
            heapq.heappush(heap, (now + 1.0, next(self._seq), bucket, [task_id]))
            self._queued += 1

    def extend(self, bucket: str, task_id: str, node_id: str, now: float, left: float,
               boot: str | None = None) -> None:
        """``node_id`` (in ``boot``; None: not checked) says the task is
        still there, for ``left`` seconds more at least: it was rescheduled
        (its deadline is that far), or its start gate waits (see
        ``ended.GateKeepalive``; maybe past its deadline). Keep its route
        (if it is routed there, in that boot, and not reported lost) until
        then, plus a second, if that is later than now kept.

        The batch that brought the task is not compared with the route's
        mark (as :meth:`ended_many` does): a fill of the id again that the
        holder could not answer (PlacementUnknownError) re-adds the route
        with a later mark while the earlier task may still wait at its gate
        there, and its words must keep the route. A late word about an
        earlier task keeps a route a few seconds longer at worst: the holder
        is asked, and says.

        Only the route changes: the heap entry that comes due at its
        earlier expiry is pushed again at the new one (:meth:`expire`), so
        words repeated while a gate waits cost no memory."""
        where = self._where.get(bucket)
        route = None if where is None else where.get(task_id)
        expiry = now + left + 1.0
        if (route is None or route[0] != node_id or expiry <= route[2] or is_lost(route)
                or (boot is not None and route[1] != boot)):
            return
        where[task_id] = (route[0], route[1], expiry, route[3])  # type: ignore[index]

    def forget(self, bucket: str, task_id: str) -> None:
        """Drop one route (the task was drained or found gone)."""
        where = self._where.get(bucket)
        if where is not None:
            where.pop(task_id, None)
        if self.unsettled:
            self.unsettled.pop((bucket, task_id), None)

    def unsure(self, bucket: str, task_id: str, slot: tuple[str, int, int],
               handoff: bool, holder: tuple[str, str] | None = None) -> None:
        """The route to ``task_id`` is to a holder that may not have taken it
        (``holder``: the node and boot it was sent to; a route no longer
        there was moved on, or ended, by that holder's own word, which came
        first: it had the task, and nothing is left to settle)."""
        if holder is not None:
            route = self.get(bucket, task_id)
            if route is None or route[:2] != holder:
                return
        self.unsettled[(bucket, task_id)] = (slot, handoff)

    def _overtaken(self, bucket: str, task_id: str, node_id: str, sent: Sent | None) -> bool:
        """Did ``node_id``'s ended notice for this task, forwarded when
        ``sent`` says, arrive before its route? (Any notice for the id goes:
        it is used or stale.)"""
        early = self._early.pop((bucket, task_id), None)
        if early is None or early[0] != node_id:
            return False
        if sent is None:
            return True
        return early[2] > sent[1] if early[2] >= 0 and sent[1] else early[1] >= sent[0]

    def ended(self, bucket: str, task_id: str, node_id: str, now: float,
              via: tuple[str, str] | None = None, batch: int = -1) -> None:
        """``node_id`` says the task ended there (``via``: after that node, in
        that boot, handed it to ``node_id``; ``batch``: the batch of this
        node's that brought it, 0 if none did, -1 if the notice does not say:
        a node of an earlier version): drop its route, to either -- unless
        the route is of a forward there after that batch (the notice is about
        an earlier task of the id). A notice that overtakes the route (the
        forward's verdict is still being settled) is kept for a while, so the
        route is never added."""
        where = self._where.get(bucket)
        route = None if where is None else where.get(task_id)
        if route is None and via is not None:  # before the route to ``via``, maybe
            self.keep_early(bucket, task_id, (via[0], via[1], "", ""), None, now)
        if route is None or via is None or route[0] == node_id:
            self.ended_many(bucket, [task_id], node_id, now, batch)
        elif route[:2] == via:  # the move's own word comes later (the route is this task's:
            self.ended_many(bucket, [task_id], route[0], now)  # ``via`` stopped, then)
        elif not is_lost(route):  # moved more than once: the earlier words come later
            self._keep(bucket, task_id, (via[0], via[1], "", ""))

    def ended_many(self, bucket: str, task_ids: Iterable[str], node_id: str, now: float,
                   batch: int = -1) -> None:
        """:meth:`ended` for each of ``task_ids`` (one batch's), with no ``via``."""
        where = self._where.get(bucket) or {}
        get, unsettled = where.get, self.unsettled
        for task_id in task_ids:
            route = get(task_id)
            if route is None:
                self._ended_early(bucket, task_id, node_id, now, batch)
            elif route[0] == node_id and not route[1].startswith(_LOST) and not (
                    route[3] and 0 <= batch <= route[3]):  # (else: about an earlier task)
                del where[task_id]
                if unsettled:
                    unsettled.pop((bucket, task_id), None)

    def _ended_early(self, bucket: str, task_id: str, node_id: str, now: float,
                     batch: int) -> None:
        """Keep an ended notice that came before its route (see :meth:`add`)."""
        early = self._early
        kept = early.get((bucket, task_id))
        if kept is None or kept[0] != node_id or kept[2] <= batch:
            early[(bucket, task_id)] = (node_id, now, batch)  # (the latest task's)
        _bound(early)

    def move(self, bucket: str, task_id: str, from_node: str, node_id: str, boot: str,
             slot: tuple[str, int, int] | None = None, from_boot: str = "", *,
             early: float | None = None) -> Route | None:
        """A task routed to ``from_node`` (in ``from_boot``, "" if unknown)
        was handed off to ``node_id`` (in ``boot``; ``slot``: the handoff
        could not be settled), or taken over by it. Returns the route now,
        None if it did not move. A notice that overtook an earlier move's
        (the route points elsewhere) is kept, and applied when that move is.
        ``early``: the loop time now, if with no route yet the word may have
        overtaken the verdict of this node's forward of the task (the caller
        knows: see ``EndedNotices.apply``); it is kept, and applied if the
        route to ``from_node`` is added within ``early_keep``."""
        where = self._where.get(bucket)
        route = None if where is None else where.get(task_id)
        if where is None or route is None:
            if early is not None:
                self.keep_early(bucket, task_id, (from_node, from_boot, node_id, boot), slot,
                                early)
            return None
        if is_lost(route):
            return None
        if route[0] != from_node or from_boot not in ("", route[1]):
            self._keep(bucket, task_id, (from_node, from_boot, node_id, boot), slot)
            return None
        route = where[task_id] = (node_id, boot, route[2], 0)
        if slot is not None:
            self.unsettled[(bucket, task_id)] = (slot, True)
        elif self.unsettled:
            self.unsettled.pop((bucket, task_id), None)
        return self._follow(bucket, task_id, where, route)

    def _keep(self, bucket: str, task_id: str, notice: Notice,
              slot: tuple[str, int, int] | None = None) -> None:
        """Keep a word about a holder the route does not point at yet."""
        later = self._later
        kept = later.setdefault((bucket, task_id), [])
        if (notice, slot) not in kept:
            kept.append((notice, slot))
        _bound(later)

    def keep_early(self, bucket: str, task_id: str, notice: Notice,
                   slot: tuple[str, int, int] | None, now: float) -> None:
        """Keep a word of a move (or of an end after a handoff) that may have
        overtaken the verdict of this node's forward of the task: applied if
        the route to its holder is added within ``early_keep``."""
        early = self._early_moves
        was = early.pop((bucket, task_id), None)
        kept = [] if was is None or now - was[0] > self.early_keep else was[1]
        if (notice, slot) not in kept:
            kept.append((notice, slot))
        early[(bucket, task_id)] = (now, kept)  # (last: the newest)
        _bound(early)

    def _catch_up(self, bucket: str, task_id: str, where: dict[str, Route], route: Route,
                  kept: list[tuple[Notice, tuple[str, int, int] | None]]) -> None:
        """Apply words of a move that came before the route ``route`` just
        added (from its holder: see :meth:`keep_early`), as :meth:`move`
        would have; the others wait in ``_later`` for the route to reach
        their holder."""
        self._later.setdefault((bucket, task_id), []).extend(kept)
        moved = self._follow(bucket, task_id, where, route)
        if moved is not None and moved != route and self.moved_early is not None:
            self.moved_early(bucket, task_id, moved)

    def _follow(self, bucket: str, task_id: str, where: dict[str, Route], route: Route
                ) -> Route | None:
        """Apply the kept notices about the holder ``route`` now points at,
        an end first (then it ended there), else a move (then again, about
        the next); the route then, None if the task ended."""
        key = (bucket, task_id)
        later = self._later.get(key) if self._later else None
        while later:
            held = [e for e in later if e[0][0] == route[0] and e[0][1] in ("", route[1])]
            if not held:
                break
            entry = next((e for e in held if not e[0][2]), held[0])
            later.remove(entry)
            notice, slot = entry
            if self.unsettled:  # it had the task: the handoff to it is settled
                self.unsettled.pop(key, None)
            if slot is not None:  # the handoff on from it is not
                self.unsettled[key] = (slot, True)
            if not notice[2]:  # it ended there
                del where[task_id]
                self._later.pop(key, None)
                return None
            route = where[task_id] = (notice[2], notice[3], route[2], 0)
        if later is not None and not later:
            del self._later[key]
        return route

    def mark_lost_ids(self, bucket: str, task_ids: list[str]) -> list[str]:
        """Mark the routes of ``task_ids`` LOST; return those not marked before."""
        where = self._where.get(bucket, {})
        marked = []
        for task_id in task_ids:
            route = where.get(task_id)
            if route is not None and not is_lost(route):
                where[task_id] = (route[0], _LOST + route[1], route[2], route[3])
                marked.append(task_id)
            self.unsettled.pop((bucket, task_id), None)
        return marked

    def held_by(self, nodes: set[str]) -> dict[str, int]:
        """How many routes point at each of ``nodes`` (tasks placed there
        and not known to have ended). A pass over every route: for scrapes."""
        counts = dict.fromkeys(nodes, 0)
        for where in self._where.values():
            for node, *_ in where.values():
                if node in counts:
                    counts[node] += 1
        return counts

    def forget_node(self, node_id: str, boots: set[str]) -> list[tuple[str, str, Route]]:
        """Drop every route to ``node_id`` in one of ``boots`` (incarnations
        that left gracefully and said they were done: their tasks moved or
        ended). Return the other routes to it not reported lost, as
        ``(bucket, task id, route)``."""
        rest: list[tuple[str, str, Route]] = []
        for bucket, where in self._where.items():
            gone = []
            for task_id, route in where.items():
                if route[0] != node_id:
                    continue
                if route[1] in boots:
                    gone.append(task_id)
                elif not is_lost(route):
                    rest.append((bucket, task_id, route))
            for task_id in gone:
                del where[task_id]
                if self.unsettled:
                    self.unsettled.pop((bucket, task_id), None)
        return rest

    def mark_lost(self, node_id: str, boot: str, *, other: bool = False
                  ) -> dict[str, list[str]]:
        """The tasks routed to ``node_id`` in boot ``boot`` (with ``other``:
        in any boot but ``boot``, the new one) are lost: it crashed, or is
        presumed lost. Mark their routes LOST and return them by bucket, each
        task once (a route already marked is not returned)."""
        lost: dict[str, list[str]] = {}
        for bucket, where in self._where.items():
            ids = [task_id for task_id, (node, was, *_) in where.items()
                   if node == node_id and not was.startswith(_LOST)
                   and (was != boot if other else was == boot)]
            for task_id in ids:
                _, was, expiry, mark = where[task_id]
                where[task_id] = (node_id, _LOST + was, expiry, mark)
            if ids:
                lost[bucket] = ids
        return lost

    def unmark_lost(self, node_id: str, boot: str) -> int:
        """A presumed-lost holder came back with the same boot id: its tasks
        were not lost after all. Route them to it again; return how many."""
        marked = _LOST + boot
        count = 0
        for where in self._where.values():
            for task_id, (node, was, expiry, mark) in where.items():
                if node == node_id and was == marked:
                    where[task_id] = (node, boot, expiry, mark)
                    count += 1
        return count

    def _rebuild(self) -> None:
        """One heap entry per live route (amortised O(1) per remembered task)."""
        self._expiry = [(route[2], next(self._seq), bucket, [task_id])
                        for bucket, where in self._where.items()
                        for task_id, route in where.items()]
        heapq.heapify(self._expiry)
        self._queued = len(self._expiry)
