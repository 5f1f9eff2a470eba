"""Ended notices: a holder tells each origin which of its forwarded tasks ended.

The origin of a forward keeps a route to the holder until the task's
deadline. If the holder then crashes, the origin reports the tasks routed
there as lost -- so it must know which of them had already ended, or it
would report finished tasks as lost (and a task would get an outcome *and* a
loss report). The holder remembers the origin of each task it accepted by
forward, and when one ends sends the origin an ENDED notice (batched: one
request per origin every ``FLUSH`` seconds at most); the origin then drops
the route. A task handed off on a graceful stop is reported as moved, and
the origin's route follows it.

A task may also stay pending here past its deadline: a replicated
time-bomb's start gate waits for its backups' word (see :mod:`.replicas`),
and the origin's route would expire a second after the deadline -- a fill
of the id again there would then place a second task of it. While such a
gate waits, the origin is told the task is still here (a reschedule's
"extended", with a few seconds left), so it keeps the route
(:class:`GateKeepalive`).

A notice names, for each task, the FILL batch that brought it (the origin's
batch number; 0 for a task that came otherwise, handed off or taken over):
an id may be forwarded here again once its earlier task ended, while the
notice about that one is on its way, and the origin must not take it for
the new task's (see :mod:`.routes`). On the wire the numbers go as runs,
``[batch, count, ...]`` per bucket: the tasks of one batch mostly end
together.

Notices are idempotent and best effort: one that cannot be delivered is
retried with the next batch while the origin is alive or suspect, and
dropped once it is dead or gone. The window between a task's end and its
notice (``FLUSH`` plus a round trip) is the only time a crash can still
report an ended task as lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from itertools import compress, count, islice, pairwise
from operator import ne
from typing import TYPE_CHECKING, Any

from ..errors import GobucketError, ProtocolError
from ..task import Task, TaskState
from .columns import FillBatch
from .membership import MemberState
from .protocol import SLICE_ITEMS, Kind
from .routes import Route

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["EndedNotices", "GateKeepalive", "Notice"]

#: A checked ENDED notice: ended ids by bucket (with the batches that
#: brought them, as runs: see :func:`_runs` and :meth:`.Routes.ended`),
#: moves, promotions, reschedules and "still here" words (``[bucket, id,
#: seconds, batch]``, batch -1 if not named), ends of tasks handed to the sender (with
#: the node, and its boot id, that handed them), and whether the sender
#: names batches (else: an earlier version).
Notice = tuple[list[tuple[str, list[str], list[int]]], list[list[Any]], list[list[str]],
               list[list[Any]], list[list[str]], bool]

log = logging.getLogger("gobucket_py")

#: Seconds between notices to one origin: ends are batched, yet an origin
#: learns of them long before it could detect a crash (~2 s).
FLUSH = 0.05


class EndedNotices:
    """Both sides of ENDED notices for one :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        #: bucket -> task id -> (origin node id, number of the origin's batch
        #: that brought it, 0 if not known), for tasks accepted by forward.
        self.origins: dict[str, dict[str, tuple[str, int]]] = {}
        #: ``(bucket, task_id)`` -> the node (and its boot id) that handed the
        #: task off to this one: its origin's route may still point there
        #: (see :meth:`handed`).
        self.via: dict[tuple[str, str], tuple[str, str]] = {}
        # (bucket, task_id) -> its ``origins`` entry, forgotten while a drain
        # from its origin is on (see forget): still its origin for "still
        # here" words (a gate that starts meanwhile, a reschedule), not for
        # its end's notice (the drain's answer tells it).
        self._draining: dict[tuple[str, str], tuple[str, int]] = {}
        # origin -> bucket -> (ended task ids, their batches); origin -> [bucket, id, via node,
        # its boot] (handed here by it); origin -> [bucket, id, node, boot]
        # (+ [sender boot, batch, index] for a handoff that could not be settled)
        self._ended: dict[str, dict[str, tuple[list[str], list[int]]]] = {}
        self._ended_via: dict[str, list[list[str]]] = {}
        self._moved: dict[str, list[list[Any]]] = {}
        # origin -> [bucket, id, primary]: tasks this node took over as a backup
        self._promoted: dict[str, list[list[str]]] = {}
        # origin -> (bucket, id) -> (the task, rescheduled here: its new
        # deadline; seconds the origin is to keep its route at least, for
        # a task whose gate waits: see ``still_pending``; the batch that
        # brought it, as in ``origins``)
        self._extended: dict[str, dict[tuple[str, str], tuple[Task, float, int]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    # -- the holder's side --------------------------------------------------------------

    def origin_of(self, bucket: str, task_id: str) -> str | None:
        """The node that forwarded this task here, if it was."""
        where = self.origins.get(bucket)
        entry = None if where is None else where.get(task_id)
        return None if entry is None else entry[0]

    def accepted(self, bucket: str, task_id: str, origin: str) -> None:
        """A task arrived from ``origin``, not in one of its FILL batches
        (handed off or taken over here)."""
        where = self.origins.get(bucket)
        if where is None:
            where = self.origins[bucket] = {}
        where[task_id] = (origin, 0)

    def accepted_batch(self, items: Iterable[tuple[Any, ...]], verdicts: list[str],
                       origin: str, batch: int = 0) -> None:
        """The tasks of one FILL batch (number ``batch`` of ``origin``'s, 0
        if not given) that this node took (verdict ``"ok"``)."""
        origins = self.origins
        entry = (origin, batch)
        if (isinstance(items, FillBatch) and items.shared(0)
                and verdicts.count("ok") == len(verdicts)):  # the common case: at C speed
            where = origins.get(items.columns[0][0])
            if where is None:
                where = origins[items.columns[0][0]] = {}
            where.update(dict.fromkeys(items.columns[1], entry))
        else:
            bucket = where = None
            for item, verdict in zip(items, verdicts, strict=True):
                if verdict == "ok":
                    if item[0] != bucket:
                        bucket = item[0]
                        where = origins.get(bucket)
                        if where is None:
                            where = origins[bucket] = {}
                    where[item[1]] = entry  # type: ignore[index]
        if origin in self._ended or origin in self._ended_via:
            self._renewed(origin)

    def _again(self, origin: str) -> Callable[[str, str], bool]:
        """Is a task of this id, forwarded by ``origin``, live here now? Then
        a notice for ``origin`` about the id is about an earlier task (a
        task's entry goes when it ends), which ``origin`` let go of before it
        placed the id again: its fill asked this node, or the route had
        ended or expired. Sent, the notice would be taken for the new
        task's and drop its route, and a crash here would then go
        unreported for it."""
        origins = self.origins

        def again(bucket: str, task_id: str) -> bool:
            where = origins.get(bucket)
            entry = None if where is None else where.get(task_id)
            return entry is not None and entry[0] == origin

        return again

    def _renewed(self, origin: str) -> None:
        """Drop the notices waiting for ``origin`` about ids it has forwarded
        here again (see :meth:`_again`)."""
        again = self._again(origin)
        pending = self._ended.get(origin, {})
        for bucket, (ids, batches) in list(pending.items()):
            kept = _left(bucket, ids, batches, again)
            if not kept[0]:
                del pending[bucket]
            elif len(kept[0]) < len(ids):
                pending[bucket] = kept
        if origin in self._ended and not pending:
            del self._ended[origin]
        via = [entry for entry in self._ended_via.get(origin, ()) if not again(*entry[:2])]
        if via:
            self._ended_via[origin] = via
        else:
            self._ended_via.pop(origin, None)

    def handed(self, bucket: str, task_id: str, origin: str, via: tuple[str, str]) -> None:
        """A task ``origin`` had forwarded was handed off here by ``via`` (a
        node that stopped, and its boot id). When it ends, ``origin`` is told
        -- naming ``via``, since the notice may overtake ``via``'s own word of
        the move."""
        self.accepted(bucket, task_id, origin)
        self.via[(bucket, task_id)] = via

    def forget(self, bucket: str, task_id: str, asker: str
               ) -> tuple[tuple[str, int], tuple[str, str] | None] | None:
        """``asker`` is draining the task: if it is the task's origin, it
        learns the outcome from the answer and needs no notice. Returns
        what was forgotten, for :meth:`unforget` if the drain's answer is
        not definite (None if nothing was)."""
        where = self.origins.get(bucket)
        entry = None if where is None else where.get(task_id)
        if entry is None or entry[0] != asker:
            return None
        del where[task_id]  # type: ignore[union-attr]  # entry implies where
        via = self.via.pop((bucket, task_id), None) if self.via else None
        self._draining[(bucket, task_id)] = entry
        return entry, via

    def drain_answered(self, bucket: str, task_id: str,
                       forgotten: tuple[tuple[str, int], tuple[str, str] | None] | None) -> None:
        """The drain that :meth:`forget` was for answered: its origin knows."""
        if forgotten is not None and self._draining.get((bucket, task_id)) is forgotten[0]:
            del self._draining[(bucket, task_id)]

    def unforget(self, bucket: str, task_id: str, task: Task | None,
                 forgotten: tuple[tuple[str, int], tuple[str, str] | None] | None) -> None:
        """The drain that :meth:`forget` was for gave no definite answer
        (``Unknown``): its origin learns nothing from it, so ``task`` (as
        it was before the drain) is its origin's again -- its end is
        notified, and while its gate waits the origin is told it is still
        here (a route lapsed would let a fill of the id again through the
        origin place a second task). A task that ended meanwhile is
        notified now."""
        if forgotten is None:
            return
        self.drain_answered(bucket, task_id, forgotten)  # (it did not, but it is over)
        if task is None:
            return
        where = self.origins.setdefault(task.bucket, {})
        if task.id in where:
            return  # (not this task's: it was forwarded here again since)
        entry, via = forgotten
        where[task.id] = entry
        if via is not None:
            self.via[(task.bucket, task.id)] = via
        if task.state.terminal:
            self.task_ended(task)

    def task_ended(self, task: Task) -> None:
        """A bucket's ``on_outcome``: queue a notice if the task was forwarded here."""
        where = self.origins.get(task.bucket)
        if not where:
            return
        entry = where.pop(task.id, None)
        via = self.via.pop((task.bucket, task.id), None) if self.via else None
        if entry is None or task.state is TaskState.HANDED_OFF:
            return  # not forwarded here; or moved, which Handoff reports with its target
        origin = entry[0]
        if via is not None:  # (and in ``ended`` too, for an origin of an earlier version)
            self._ended_via.setdefault(origin, []).append([task.bucket, task.id, *via])
        per_bucket = self._ended.get(origin)
        if per_bucket is None:
            per_bucket = self._ended[origin] = {}
        pending = per_bucket.get(task.bucket)
        if pending is None:
            pending = per_bucket[task.bucket] = ([], [])
        pending[0].append(task.id)
        pending[1].append(entry[1])
        self._arm()

    def moved(self, bucket: str, task_id: str, origin: str | None, node: str,
              slot: tuple[str, int, int] | None = None, boot: str | None = None) -> None:
        """A task forwarded here from ``origin`` was handed off to ``node``
        (``slot``: the handoff batch could not be settled; the origin
        settles it later, and reports the task lost if ``node`` never took
        it), or taken over by it as a backup (in ``boot``)."""
        if boot is None:
            member = self.group._members.members.get(node)
            boot = None if member is None else member.boot
        if origin is None or boot is None:
            return
        entry: list[Any] = [bucket, task_id, node, boot]
        if slot is not None:
            entry.extend(slot)
        self._moved.setdefault(origin, []).append(entry)
        self._arm()

    def rescheduled(self, task: Task, was: float = 0.0) -> None:
        """A bucket's reschedule watcher: a task forwarded here now ends
        later (or sooner); its origin keeps its route until the new deadline
        (past the old one, a crash here would otherwise go unreported)."""
        self._extend(task, 0.0)

    def still_pending(self, task: Task, keep: float, origin: tuple[str, int]) -> None:
        """The start gate of a task forwarded here (by ``origin``: its node
        and the batch that brought it) still waits (see
        :class:`GateKeepalive`): its origin keeps its route at least
        ``keep`` seconds more, past the task's deadline if need be -- the
        task is still pending here, and a fill of its id again through the
        origin must come here (where it is a duplicate), not go elsewhere."""
        self._extend(task, keep, origin)

    def _extend(self, task: Task, keep: float, origin: tuple[str, int] | None = None) -> None:
        if origin is None:
            origin = self._origin_entry(task)
            if origin is None:
                return
        queued = self._extended.setdefault(origin[0], {})
        key = (task.bucket, task.id)
        was = queued.get(key)
        if was is not None and was[0] is task:
            keep = max(keep, was[1])
        queued[key] = (task, keep, origin[1])
        self._arm()

    def _origin_entry(self, task: Task) -> tuple[str, int] | None:
        """``task``'s origin and the batch that brought it, if it came by
        forward -- also while a drain from its origin has it forgotten."""
        where = self.origins.get(task.bucket) if self.origins else None
        entry = None if where is None else where.get(task.id)
        if entry is None and self._draining:
            entry = self._draining.get((task.bucket, task.id))
        return entry

    def promoted(self, bucket: str, task_id: str, origin: str, primary: str) -> None:
        """This node took over, as its backup, a task ``origin`` had
        forwarded to ``primary`` (which died): the origin's route follows."""
        self._promoted.setdefault(origin, []).append([bucket, task_id, primary])
        self._arm()

    def keep_routed(self, task: Task) -> GateKeepalive | None:
        """While ``task``'s start gate waits, keep its origin's route (see
        :class:`GateKeepalive`); None if it was not forwarded here. Cancel
        what this returns once the gate has answered."""
        origin = self._origin_entry(task)
        if origin is None:
            return None
        period = self.group.config.probe_interval
        # A word keeps the route until the next one, and the time a slow
        # delivery of that one may take (the origin adds its second).
        return GateKeepalive(self, task, origin, period,
                             period + self.group.config.request_timeout)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH, self._flush)

    def _flush(self) -> None:
        self._timer = None
        members = self.group._members.members
        waiting = False
        for origin in self._origins():
            member = members.get(origin)
            if member is not None and member.state is MemberState.DEAD and not member.lost:
                waiting = True  # it may only be stalled or cut off: tell it when it is back
                continue
            parts = self._take(origin)
            if member is None or member.state not in (MemberState.ALIVE, MemberState.SUSPECT):
                continue  # gone, leaving or presumed lost: nobody to tell
            self.group._spawn(self._send(origin, member.addr, parts))
        if waiting and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.group.config.probe_interval, self._flush)

    async def flush(self) -> None:
        """Send every pending notice now and wait for the answers (on stop:
        this node's last word to the origins, bounded by request_timeout
        per message: a large notice goes as several)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        members = self.group._members.members
        sends = []
        for origin in self._origins():
            parts = self._take(origin)
            member = members.get(origin)
            if member is not None and member.state is not MemberState.LEFT and not member.lost:
                sends.append(self._send(origin, member.addr, parts, retry=False))
        await asyncio.gather(*sends)

    def _origins(self) -> set[str]:
        return (set(self._ended) | set(self._ended_via) | set(self._moved)
                | set(self._promoted) | set(self._extended))

    def _take(self, origin: str) -> dict[str, Any]:
        """The notices waiting for ``origin``, taken off the queues, as the
        fields of an ENDED message. A task still pending here that was
        rescheduled, or whose gate waits, is reported ("extended") with its
        seconds left, read now (the nodes' clocks are not compared), or the
        seconds its origin is to keep its route, if more; and the batch
        that brought it ("extended_batches", a field of its own: a node of
        an earlier version checks each entry is [bucket, id, seconds]).
        An ended one is left out: its end is in "ended". (Under
        ``"_extended"``, not sent: the entries as queued, for
        :meth:`_requeue`.)"""
        ended = self._ended.pop(origin, {})
        parts: dict[str, Any] = {"ended": {bucket: ids for bucket, (ids, _) in ended.items()},
                                 "moved": self._moved.pop(origin, []),
                                 "batches": {bucket: _runs(batches)
                                             for bucket, (_, batches) in ended.items()}}
        kept = [(key, entry) for key, entry in self._extended.pop(origin, {}).items()
                if not entry[0].state.terminal]
        for name, queued in (("via", self._ended_via.pop(origin, [])),
                             ("promoted", self._promoted.pop(origin, []))):
            if queued:
                parts[name] = queued
        if kept:
            parts["extended"] = [[bucket, task_id, max(task.seconds_left, keep)]
                                 for (bucket, task_id), (task, keep, _) in kept]
            parts["extended_batches"] = [entry[2] for _, entry in kept]
            parts["_extended"] = kept
        return parts

    async def _send(self, origin: str, addr: str, parts: dict[str, Any], *,
                    retry: bool = True) -> None:
        group = self.group
        # In slices that fit a request, one after the other: the origin
        # applies them in the order one message's fields would be.
        pieces = _split(parts, group.config.max_body)
        while pieces:
            message = {"v": 1, "from": group._members.header(),
                       **{name: value for name, value in pieces[0].items()
                          if name != "_extended"}}
            try:
                await group.transport.call(addr, Kind.ENDED, message,
                                           group.config.request_timeout)
            except GobucketError as exc:  # try again with the next batch
                log.debug("ended notice not delivered event=ended_not_delivered node=%s "
                          "origin=%s error=%s", group.node_id, origin, exc)
                if retry:
                    for piece in pieces:
                        self._requeue(origin, piece)
                return
            del pieces[0]

    def _requeue(self, origin: str, parts: dict[str, Any]) -> None:
        """Queue the notices of an undelivered message again, for the next
        batch -- but not the ends of ids that ``origin`` has forwarded here
        again meanwhile (see :meth:`_again`; the message may have been
        applied, its answer lost)."""
        again = self._again(origin)
        for bucket, ids in parts["ended"].items():
            kept = _left(bucket, ids, _expand(parts["batches"][bucket]), again)
            if kept[0]:
                pending = self._ended.setdefault(origin, {}).setdefault(bucket, ([], []))
                pending[0].extend(kept[0])
                pending[1].extend(kept[1])
        self._moved.setdefault(origin, []).extend(parts["moved"])
        via = [entry for entry in parts.get("via", ()) if not again(entry[0], entry[1])]
        if via:
            self._ended_via.setdefault(origin, []).extend(via)
        if "promoted" in parts:
            self._promoted.setdefault(origin, []).extend(parts["promoted"])
        for key, (task, keep, batch) in parts.get("_extended", ()):  # read again when sent:
            if not task.state.terminal:  # fewer seconds left; as long kept
                queued = self._extended.setdefault(origin, {})
                was = queued.get(key)
                if was is not None and was[0] is task:
                    keep = max(keep, was[1])
                if was is None or was[0] is task:  # (else: a newer task's word)
                    queued[key] = (task, keep, batch)
        self._arm()

    # -- the origin's side ----------------------------------------------------------------

    @staticmethod
    def check(message: dict[str, Any]) -> Notice:
        """Validate an ENDED notice (``ProtocolError``, a 400, if malformed)."""
        ended, moved = message.get("ended"), message.get("moved")
        promoted = _strings(message, "promoted", 3, "each promotion is [bucket, id, primary]")
        via = _strings(message, "via", 4, "each 'via' entry is [bucket, id, node that handed "
                       "it here, its boot id]")
        if not isinstance(ended, dict) or not isinstance(moved, list):
            raise ProtocolError("ended notice needs 'ended' (a map) and 'moved' (a list)")
        numbered = "batches" in message
        numbers = message.get("batches", {})
        if not isinstance(numbers, dict):
            raise ProtocolError("ended notice: 'batches' is a map of bucket to batch numbers")
        checked: list[tuple[str, list[str], list[int]]] = []
        for bucket, ids in ended.items():
            if not isinstance(bucket, str) or not isinstance(ids, list) or not all(
                    isinstance(i, str) for i in ids):
                raise ProtocolError("ended notice: each bucket maps to a list of task ids")
            if not numbered:
                checked.append((bucket, ids, [-1, len(ids)]))
                continue
            runs = numbers.get(bucket)
            if (not isinstance(runs, list) or len(runs) % 2
                    or not all(type(v) is int and v >= 0 for v in runs)
                    or 0 in runs[1::2] or sum(runs[1::2]) != len(ids)):
                raise ProtocolError("ended notice: 'batches' gives each bucket's ended tasks' "
                                    "batch numbers as runs [batch, count, ...], in the order "
                                    "of 'ended' (ints >= 0, counts >= 1)")
            checked.append((bucket, ids, runs))
        for entry in moved:
            if (not isinstance(entry, list) or len(entry) not in (4, 7)
                    or not all(isinstance(v, str) for v in entry[:5])
                    or not all(type(v) is int for v in entry[5:])):
                raise ProtocolError("ended notice: each move is [bucket, id, node, boot] "
                                    "or [bucket, id, node, boot, sender boot, batch, index]")
        extended = message.get("extended", [])
        if not isinstance(extended, list) or not all(
                isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                and isinstance(e[1], str) and type(e[2]) in (int, float)
                and math.isfinite(e[2]) for e in extended):
            raise ProtocolError("ended notice: each reschedule is [bucket, id, seconds left]")
        # The batches that brought them (absent from a node of an earlier version).
        extended_batches = message.get("extended_batches")
        if extended_batches is None:
            extended_batches = [-1] * len(extended)
        elif (not isinstance(extended_batches, list) or len(extended_batches) != len(extended)
                or not all(type(v) is int and v >= 0 for v in extended_batches)):
            raise ProtocolError("ended notice: 'extended_batches' gives the batch number "
                                "(an int >= 0) of each reschedule, in the order of 'extended'")
        extended = [[*e, batch] for e, batch in zip(extended, extended_batches, strict=True)]
        return checked, moved, promoted, extended, via, numbered

    def apply(self, sender: str, sender_boot: str, notice: Notice) -> None:
        """Drop the routes of tasks ``sender`` says ended; move those it
        handed off (and settle those it could not settle) or took over;
        keep those it rescheduled, or says are still there (a start gate
        waits), for the seconds it names. A task that
        ended after a handoff comes with the node that handed it to
        ``sender``: its route may still point there (this notice overtook
        that node's word of the move)."""
        checked, moved, promoted, extended, via, numbered = notice
        group = self.group
        routes = group._routes
        now = asyncio.get_running_loop().time()
        # A number above any this node sent: a task an earlier incarnation
        # of it forwarded (its clock stepped back since), nothing routed now.
        last = math.inf if group._forwarder is None else group._forwarder.seq
        for bucket, ids, runs in checked:
            start = 0
            for index in range(0, len(runs), 2):
                batch, stop = runs[index], start + runs[index + 1]
                if batch <= last:
                    routes.ended_many(bucket, ids[start:stop], sender, now, batch)
                start = stop
        for bucket, task_id, handed_by, boot in via:  # (came by handoff: no batch of ours)
            routes.ended(bucket, task_id, sender, now, via=(handed_by, boot),
                         batch=0 if numbered else -1)
        # A word that comes before the route may have overtaken the verdict
        # of the forward (its reply lost, the batch being settled): a move
        # told by a stopping node (it takes no new forward: the word is
        # about the task it had), a takeover of an id this node is placing.
        member = group._members.members.get(sender) if moved else None
        stopping = (member is not None and member.boot == sender_boot
                    and member.state is MemberState.LEFT)
        for bucket, task_id, node, boot, *rest in moved:
            slot = (rest[0], rest[1], rest[2]) if rest else None
            route = routes.move(bucket, task_id, sender, node, boot, slot, sender_boot,
                                early=now if stopping else None)
            if route is not None:
                self.followed(bucket, task_id, route)
        placing = group._overflow.is_placing
        for bucket, task_id, primary in promoted:
            route = routes.move(bucket, task_id, primary, sender, sender_boot,
                                early=now if placing(bucket, task_id) else None)
            if route is not None:  # (followed on to where later notices say it went)
                group._losses.gone_already(route[0], route[1])
        for bucket, task_id, left, batch in extended:
            if batch <= last:  # (above any batch sent: the clock stepped back, as for ends)
                routes.extend(bucket, task_id, sender, now, left, sender_boot)

    def followed(self, bucket: str, task_id: str, route: Route) -> None:
        """A route was moved by a word of a handoff or a takeover (and
        followed on to where later words say it went: ``route``): settle the
        handoff if its holder could not, else report the task if that holder
        is gone."""
        group = self.group
        if (bucket, task_id) in group._routes.unsettled:
            group._spawn(group._lookup.resolve(bucket, task_id))
        else:
            group._losses.gone_already(route[0], route[1])


class GateKeepalive:
    """Tells the origin of a task whose start gate waits that the task is
    still pending here (:meth:`EndedNotices.still_pending`), then every
    ``period`` seconds until cancelled. Each word keeps the route ``keep``
    seconds (and a second) from when it arrives, so a word late or lost
    does not let it lapse before the next.

    The route lapses a second after the task's deadline, so the first word
    goes ``keep`` seconds before it -- if the gate still waits then: one
    that answers at once (the common case) sends none. With less than
    ``keep`` seconds left when the gate starts, the first word waits for
    the deadline, short of half a second (less, for a shorter window);
    and once the gate waits for a majority or a silent holder
    (:meth:`waits`), at once. The origin is the one the task came from
    when its gate started (a drain from it forgets it here for a while:
    see :meth:`EndedNotices.unforget`)."""

    __slots__ = ("_keep", "_notices", "_origin", "_period", "_task", "_timer", "_told")

    def __init__(self, notices: EndedNotices, task: Task, origin: tuple[str, int],
                 period: float, keep: float) -> None:
        self._notices, self._task, self._origin = notices, task, origin
        self._period, self._keep, self._told = period, keep, False
        left = task.seconds_left
        delay = left - keep if left >= keep else left - min(0.5, left / 2)
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._tell)

    def waits(self) -> None:
        """The gate waits now, for a time with no bound (no majority, or a
        silent holder): with less than ``keep`` seconds to the deadline and
        no word yet, the first one goes at once."""
        if not self._told and self._task.seconds_left < self._keep:
            self._timer.cancel()
            self._tell()

    def _tell(self) -> None:
        self._told = True
        self._notices.still_pending(self._task, self._keep, self._origin)
        self._timer = asyncio.get_running_loop().call_later(self._period, self._tell)

    def cancel(self) -> None:
        """The gate answered: the task runs, or it will not here (it ends,
        and its end is notified; or a backup took it over, whose word moves
        the route)."""
        self._timer.cancel()


def _split(parts: dict[str, Any], max_body: int) -> list[dict[str, Any]]:
    """An ENDED message's ``parts`` (see ``EndedNotices._take``) as one or
    more messages that each fit a request, in the order the origin applies
    their fields (ended, via, moved, promoted, extended): sent one after the
    other, they do what the one message would."""
    budget, most = max(1, max_body // 4), SLICE_ITEMS
    ended: dict[str, list[str]] = parts["ended"]
    lists = [(name, parts.get(name, [])) for name in ("via", "moved", "promoted")]
    extended = parts.get("extended", [])
    items = sum(map(len, ended.values())) + sum(len(v) for _, v in lists) + len(extended)
    # (Characters, not bytes: a quarter of max_body leaves room for any.)
    weight = 32 * items + sum(sum(map(len, ids)) for ids in ended.values()) + sum(
        len(str(v)) for _, entries in (*lists, ("extended", extended))
        for entry in entries for v in entry)
    if items <= most and weight <= budget:  # (the usual case)
        return [parts]
    pieces: list[dict[str, Any]] = []
    piece: dict[str, Any] = {}
    used = count = 0

    def room(size: int) -> dict[str, Any]:
        nonlocal piece, used, count
        if count and (used + size > budget or count >= most):
            pieces.append(piece)
            piece, used, count = {}, 0, 0
        if not piece:
            piece.update(ended={}, batches={}, moved=[])
        used += size
        count += 1
        return piece

    for bucket, ids in ended.items():
        for task_id, batch in zip(ids, _expand(parts["batches"][bucket]), strict=True):
            at = room(len(task_id.encode()) + 16)
            at["ended"].setdefault(bucket, []).append(task_id)
            at["batches"].setdefault(bucket, []).append(batch)
    for name, entries in lists:
        for entry in entries:
            room(sum(len(str(v).encode()) for v in entry) + 16).setdefault(name, []).append(entry)
    for index, entry in enumerate(extended):
        at = room(sum(len(str(v).encode()) for v in entry) + 32)
        for name in ("extended", "extended_batches", "_extended"):
            at.setdefault(name, []).append(parts[name][index])
    if piece:
        pieces.append(piece)
    for at in pieces:
        at["batches"] = {bucket: _runs(batches) for bucket, batches in at["batches"].items()}
    return pieces


def _left(bucket: str, ids: list[str], batches: list[int],
          again: Callable[[str, str], bool]) -> tuple[list[str], list[int]]:
    """The ends of ``ids`` (with their batches) that are not about an id
    forwarded here again (see ``EndedNotices._again``)."""
    kept = [pair for pair in zip(ids, batches, strict=True) if not again(bucket, pair[0])]
    return [pair[0] for pair in kept], [pair[1] for pair in kept]


def _runs(batches: list[int]) -> list[int]:
    """``batches`` as runs: ``[batch, count, batch, count, ...]`` (the
    boundaries found at C speed: a run is mostly a whole batch)."""
    if not batches:
        return []
    starts = [0, *compress(count(1), map(ne, batches, islice(batches, 1, None))), len(batches)]
    runs: list[int] = []
    for start, stop in pairwise(starts):
        runs += (batches[start], stop - start)
    return runs


def _expand(runs: list[int]) -> list[int]:
    """The batch numbers that :func:`_runs` made ``runs`` of."""
    batches: list[int] = []
    for index in range(0, len(runs), 2):
        batches += [runs[index]] * runs[index + 1]
    return batches


def _strings(message: dict[str, Any], name: str, width: int, what: str) -> list[list[str]]:
    """Field ``name`` of an ENDED notice: a list of lists of ``width`` strings (or absent)."""
    value = message.get(name, [])
    if not isinstance(value, list) or not all(
            isinstance(e, list) and len(e) == width and all(isinstance(v, str) for v in e)
            for e in value):
        raise ProtocolError(f"ended notice: {what}")
    return value
