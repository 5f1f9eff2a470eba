"""Forwarding tasks to peers, with concurrent forwards coalesced into batches.

Each peer has a queue; up to ``batch_concurrency`` pumps per peer send what
has queued as one ``FILL`` request of at most ``batch_size`` items, so a burst
of overflowing fills costs a few round trips instead of one each. Every item
gets its own result. A forward is counted in the peer's ``inflight`` estimate
from the moment it is queued until its reply (which carries fresh capacity)
arrives, so placement never trusts a report that cannot include it.

A batch whose reply does not come (a timeout, a dropped connection, a 5xx)
may or may not have been applied. Before its tasks may go anywhere else the
batch is *settled* with the same peer (SETTLE, see :mod:`.batches`): the
peer answers the verdicts it gave, or voids the batch for good. If the peer
cannot be asked within ``settle_timeout``, each task gets a
:class:`~gobucket_py.PlacementUnknownError`: it may be there, so it is
placed nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from ..config import GroupConfig
from ..errors import GobucketError, PeerError, PeerUnavailableError, ProtocolError
from ..observe.histogram import Histogram
from .columns import Columns, FillColumns, join_fill, pack_columns, pack_fill, pack_stamps
from .membership import Member, Membership, StaleBootError
from .protocol import Kind, field
from .routes import Sent
from .transport import Transport

__all__ = ["BACKUP", "FILL", "HANDOFF", "Forwarder", "Unsettled"]

#: A FILL item (see :mod:`.items`): ``(bucket, task_id, type, packed data,
#: run_after, life_span)``. A tuple of atoms, which the garbage collector
#: soon stops tracking.
Item = tuple[Any, ...]


#: Where a forwarded item went in the wire protocol: ``(sender boot id,
#: batch sequence number, index in the batch)``. SETTLE names a batch so.
BatchSlot = tuple[str, int, int]


class Unsettled(PeerUnavailableError):
    """The verdict on a task whose batch may or may not have been taken
    (see ``Forwarder._settle``): it must not be placed anywhere else.
    ``slot`` names the item's batch, to settle it later."""

    def __init__(self, message: str, slot: BatchSlot | None = None) -> None:
        super().__init__(message)
        self.slot = slot


def first_batch() -> int:
    """The number before a new incarnation's first batch: the wall clock in
    microseconds. A node that restarts numbers its batches above those of
    its earlier incarnation (far fewer than one a microsecond), so an ended
    notice about a task that incarnation forwarded is taken for an earlier
    task's. (Should the clock step back, such a number is above any this
    incarnation sent, and is ignored for that: see ``EndedNotices.apply``.)"""
    return time.time_ns() // 1000


#: What a batch carries (``Forwarder.send_many``'s ``mode``): overflowing
#: tasks, tasks handed off by a stopping node, or backups of tasks held here.
FILL, HANDOFF, BACKUP = 0, 1, 2

#: Shortest wait between settle attempts, so a deadline a hair away is not
#: chased with zero-length timeouts.
_TICK = 0.001


#: Backup batches carry up to this many times ``batch_size`` items (backups
#: are small and sent in bulk, and each request costs both sides), but no
#: more than :data:`BACKUP_BATCH` unless ``batch_size`` is bigger: a holder
#: stores a backup batch in one loop pass.
BACKUP_BATCH_FACTOR = 4
BACKUP_BATCH = 1024


def _limit(config: GroupConfig, mode: int) -> int:
    """Items per batch in ``mode``."""
    size = config.batch_size
    return max(size, min(size * BACKUP_BATCH_FACTOR, BACKUP_BATCH)) if mode == BACKUP else size


def _budget(config: GroupConfig) -> int:
    """Bytes per batch (see :func:`_weight`): at most half of ``max_body``, and
    so little that one peer's ``batch_concurrency`` batches in flight take at
    most half of what a receiver reads at once (4 x ``max_body``)."""
    return min(config.max_body // 2, 2 * config.max_body // config.batch_concurrency)


def _ambiguous(error: GobucketError) -> bool:
    """Could the failed request have been applied?"""
    if isinstance(error, PeerUnavailableError):
        return error.maybe_delivered
    return isinstance(error, PeerError) and (error.status or 0) >= 500


def _restarted(reply: dict[str, Any], boot: str) -> bool:
    """Was ``reply`` given by another incarnation than ``boot`` (the peer
    restarted at the same address, and this node has not heard of it yet)?
    Such a node never saw a batch sent to its predecessor: its "void" says
    nothing about what the predecessor took (and may have run)."""
    header = reply.get("from")
    return isinstance(header, list) and len(header) > 1 and header[1] != boot


def _refuse(sink: asyncio.Future[str] | _Group, offset: int, count: int) -> None:
    """Verdicts for items that were never sent (the node is stopping)."""
    error: GobucketError = PeerUnavailableError("this node is stopping",
                                                maybe_delivered=False)
    if isinstance(sink, _Group):
        sink.settle(offset, [error] * count)
    elif not sink.done():
        sink.set_exception(error)


class _Group:
    """The items of one :meth:`Forwarder.send_many` call: one future for all."""

    __slots__ = ("future", "remaining", "results")

    def __init__(self, future: asyncio.Future[list[str | GobucketError]], size: int) -> None:
        self.future = future
        self.results: list[str | GobucketError] = [""] * size
        self.remaining = size

    def settle(self, offset: int, results: list[str] | list[GobucketError]) -> None:
        """Verdicts for the items from ``offset`` on."""
        self.results[offset:offset + len(results)] = results
        self.remaining -= len(results)
        if not self.remaining and not self.future.done():
            self.future.set_result(self.results)


#: Items queued for one peer, and where their verdicts go: a future for one
#: item (``send``), or a group and the items' offset in it (``send_many``).
#: A pump splits an entry that does not fit in its batch.
Entry = tuple[Sequence[Item], "asyncio.Future[str] | _Group", int]


class _Queue:
    """The entries waiting for one incarnation of a peer (boot id ``boot``:
    the one they are meant for), and how many items they hold."""

    __slots__ = ("boot", "entries", "items", "pumps")

    def __init__(self, boot: str) -> None:
        self.boot = boot
        self.entries: deque[Entry] = deque()
        self.items = 0
        self.pumps = 0

    def take(self, limit: int, budget: int) -> list[Entry]:
        """Up to ``limit`` items from the front, as entries, weighing at most
        ``budget`` bytes (see :func:`_weight`; the first item always goes)."""
        batch: list[Entry] = []
        entries = self.entries
        full = False
        while entries and limit and not full:
            items, sink, offset = entries[0]
            count = min(len(items), limit)
            weight = _weight(items, count)
            if weight > budget:  # big payloads: the batch ends where the budget does
                full = True
                count, weight = _fitting(items, count, budget)
                if not count:
                    if batch:
                        break
                    count = 1  # alone, however big
            budget -= weight
            limit -= count
            if count == len(items):
                batch.append(entries.popleft())
            else:
                batch.append((items[:count], sink, offset))
                entries[0] = (items[count:], sink, offset + count)
        self.items -= sum(len(entry[0]) for entry in batch)
        return batch


#: Bytes counted per item besides its data and id (type, times, framing).
_ITEM_BYTES = 40
_DATA, _ID = itemgetter(3), itemgetter(1)


def _data_and_ids(items: Sequence[Item], count: int) -> tuple[list[bytes], list[str]]:
    """The packed data and the ids of the first ``count`` items."""
    if isinstance(items, Columns):
        return items.payloads[:count], items.ids[:count]
    if type(items) is FillColumns:
        return [items.data] * count, items.ids[:count]
    head = items[:count]
    return list(map(_DATA, head)), list(map(_ID, head))


def _weight(items: Sequence[Item], count: int) -> int:
    """About how many bytes the first ``count`` items take on the wire."""
    data, ids = _data_and_ids(items, count)
    return sum(map(len, data)) + sum(map(len, ids)) + _ITEM_BYTES * count


def _fitting(items: Sequence[Item], count: int, budget: int) -> tuple[int, int]:
    """How many of the first ``count`` items fit in ``budget`` bytes, and their weight."""
    used = 0
    data_column, ids = _data_and_ids(items, count)
    for taken, (data, task_id) in enumerate(zip(data_column, ids, strict=True)):
        weight = len(data) + len(task_id) + _ITEM_BYTES
        if used + weight > budget:
            return taken, used
        used += weight
    return count, used


class Forwarder:
    """Per-peer batching of FILL requests."""

    def __init__(self, transport: Transport, membership: Membership, config: GroupConfig) -> None:
        self.transport = transport
        self.membership = membership
        self.config = config
        #: By (peer, its boot id when queued, mode).
        self._queues: dict[tuple[str, str, int], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: The number of the last batch sent (each gets the next one; SETTLE
        #: names a batch by it, and a holder's ended notice names the batch
        #: that brought each task, see :meth:`mark`).
        self.seq = first_batch()
        #: Peers (node id, boot) that take FILL batches as ``items`` only.
        self._rows: set[tuple[str, str]] = set()
        #: ``(bucket, task_id)`` -> the node that forwarded a task being
        #: handed off (set by :class:`~.handoff.Handoff`): its new holder
        #: tells that node when the task ends.
        self.origins: dict[tuple[str, str], str] = {}
        #: Set by :meth:`close`: nothing more is sent.
        self.closed = False
        #: Round-trip time of each FILL batch (seconds).
        self.latency = Histogram()
        #: Called as ``on_batch(member, accepted, sent, handoff)`` after each reply.
        self.on_batch: Callable[[Member, int, int, bool], None] | None = None

    def mark(self) -> Sent:
        """When a forward is queued: the loop time and the last batch
        number used. Its batch, and any later one, has a higher number; an
        ended notice naming a batch up to this one is about an earlier task
        of the id (see :meth:`.Routes.ended`)."""
        return asyncio.get_running_loop().time(), self.seq

    def send(self, member: Member, item: Item, *, handoff: bool = False) -> asyncio.Future[str]:
        """Queue ``item`` for ``member``; the future gets the peer's verdict
        (``"ok"``, ``"full"``, ``"duplicate"``, ``"closed"``, ``"restarted"``, ...) or a
        :class:`~gobucket_py.PeerError`."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._enqueue(member, HANDOFF if handoff else FILL, [item], future)
        return future

    def send_many(self, member: Member, items: Sequence[Item], *, mode: int = 0
                  ) -> asyncio.Future[list[str | GobucketError]]:
        """Queue several items (of one bucket) for ``member``; one future gets
        every verdict or error, in order. Cheaper than ``send`` per item.
        ``mode``: :data:`FILL` (overflow) or :data:`BACKUP` (backups of
        tasks held here, see :mod:`.replicas`)."""
        future: asyncio.Future[list[str | GobucketError]] = (
            asyncio.get_running_loop().create_future())
        if items:
            self._enqueue(member, mode, items, _Group(future, len(items)))
        else:
            future.set_result([])
        return future

    def _enqueue(self, member: Member, mode: int, items: Sequence[Item],
                 sink: asyncio.Future[str] | _Group) -> None:
        """Count ``items`` (of one bucket) in flight, queue them, and start
        pumps: one per batch waiting, up to ``batch_concurrency``."""
        if self.closed:
            _refuse(sink, 0, len(items))
            return
        bucket = items[0][0]
        if mode != BACKUP:
            member.inflight[bucket] = member.inflight.get(bucket, 0) + len(items)
        key = (member.node_id, member.boot, mode)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(member.boot)
        queue.entries.append((items, sink, 0))
        queue.items += len(items)
        config = self.config
        want = min(config.batch_concurrency, -(-queue.items // _limit(config, mode)))
        while queue.pumps < want:
            queue.pumps += 1
            task = asyncio.get_running_loop().create_task(self._pump(member, queue, mode))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, member: Member, queue: _Queue, mode: int) -> None:
        try:
            while queue.entries:
                await asyncio.sleep(0)  # let fills issued in this loop pass join the batch
                batch = queue.take(_limit(self.config, mode), _budget(self.config))
                if batch:
                    await self._send_batch(member, queue.boot, batch, mode)
        finally:
            queue.pumps -= 1
            if not queue.pumps and not queue.entries and queue.boot != member.boot:
                self._queues.pop((member.node_id, queue.boot, mode), None)  # it restarted

    async def _send_batch(self, member: Member, boot: str, batch: list[Entry],
                          mode: int) -> None:
        """Send one batch to incarnation ``boot`` of ``member`` (the one it
        was queued for, whatever this node has heard since) and resolve it."""
        items = batch[0][0] if len(batch) == 1 else join_fill([entry[0] for entry in batch])
        self.seq = seq = self.seq + 1
        # "to": the incarnation meant. A node restarted at the same address
        # refuses the batch ("restarted"), so a route is only ever kept under
        # the incarnation that took its task (and its loss only reported then).
        message: dict[str, Any] = {"v": 1, "from": self.membership.header(),
                                   "handoff": mode == HANDOFF, "batch": seq,
                                   "to": boot}
        if mode == HANDOFF and self.origins:
            origins = [self.origins.get((item[0], item[1])) for item in items]
            if origins.count(None) != len(origins):
                message["origins"] = origins
        if mode == BACKUP:  # column by column (see .columns)
            message["backup"] = True
            message["cols"] = pack_columns(items)
            message["stamps"] = pack_stamps(items)
        elif (member.node_id, boot) in self._rows:
            message["items"] = list(items)
        else:
            message["cols"] = pack_fill(items)
        error: GobucketError | None = None
        results: list[Any] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        answered = False
        try:
            try:
                reply = await self._call(member, message, items)
                answered = True
                self.latency.observe(loop.time() - started)
                results = self._results(member, reply, len(items))
                try:
                    self.membership.heard(reply.get("from"))  # fresh capacity, with this batch
                except StaleBootError as exc:
                    if exc.boot != boot:
                        raise
                    # The boot it was sent to answered, then died (its successor
                    # was heard first). Its verdicts stand: what it took is
                    # reported lost with its routes (Overflow._still_there); a
                    # backup it took died with it, so the successor is asked.
                    if mode == BACKUP:
                        results = ["restarted"] * len(items)
            except GobucketError as exc:
                error = exc
                if answered or _ambiguous(exc):
                    settled = await self._settle(member, boot, seq, len(items), exc)
                    if isinstance(settled, list):
                        error, results = None, settled
                    else:
                        error = settled
        except asyncio.CancelledError:  # close(): the batch is in flight, its fate unknown
            self._resolve(member, batch, Unsettled(
                "the node stopped while the batch was in flight"), [], seq, mode)
            raise
        if self.on_batch is not None and mode != BACKUP:
            self.on_batch(member, 0 if error else results.count("ok"), len(items),
                          mode == HANDOFF)
        self._resolve(member, batch, error, results, seq, mode)

    async def _call(self, member: Member, message: dict[str, Any], items: Sequence[Item]
                    ) -> dict[str, Any]:
        """Send one FILL batch. A peer of an earlier version refuses ``cols``
        with a 400 (having taken nothing): it gets ``items`` then, from now on."""
        timeout = self.config.forward_timeout
        try:
            return await self.transport.call(member.addr, Kind.FILL, message, timeout)
        except PeerError as exc:
            if exc.status != 400 or "backup" in message or "cols" not in message:
                raise
            rows = {key: value for key, value in message.items() if key != "cols"}
            rows["items"] = list(items)
            reply = await self.transport.call(member.addr, Kind.FILL, rows, timeout)
            self._rows.add((member.node_id, message["to"]))
            return reply

    def _resolve(self, member: Member, batch: list[Entry], error: GobucketError | None,
                 results: list[Any], seq: int, mode: int) -> None:
        """Give each entry of ``batch`` its verdicts (or ``error``; an
        unsettled item's error names its place in the batch)."""
        inflight = member.inflight
        position = 0
        boot = self.membership.boot
        for chunk, sink, offset in batch:
            bucket, count = chunk[0][0], len(chunk)
            if mode != BACKUP:
                inflight[bucket] = max(0, inflight.get(bucket, 0) - count)
            errors: list[GobucketError] | None = None
            if isinstance(error, Unsettled):
                errors = [Unsettled(str(error), (boot, seq, position + i)) for i in range(count)]
            elif error is not None:
                errors = [error] * count
            if isinstance(sink, _Group):
                sink.settle(offset, errors if errors is not None
                            else results[position:position + count])
            elif sink.done():
                pass
            elif errors is not None:
                sink.set_exception(errors[0])
            else:
                sink.set_result(results[position])
            position += count

    @staticmethod
    def _results(member: Member, reply: dict[str, Any], count: int) -> list[str]:
        results = field(reply, "results", list)
        if len(results) != count or not set(map(type, results)) <= {str}:
            raise ProtocolError(f"peer {member.addr} answered {len(results)} results "
                                f"for {count} items")
        return results

    async def _settle(self, member: Member, boot: str, seq: int, count: int,
                      cause: GobucketError) -> list[str] | GobucketError:
        """Find out what ``member`` did with batch ``seq``: its verdicts, or
        (void, or it restarted) an error that lets the tasks go elsewhere, or
        -- if it cannot be asked within ``settle_timeout`` -- the marker
        error for "may be there" (:class:`Unsettled`)."""
        loop = asyncio.get_running_loop()
        config = self.config
        deadline = loop.time() + config.settle_timeout
        message = {"v": 1, "from": self.membership.header(), "batch": seq}
        last: GobucketError = cause
        while (left := deadline - loop.time()) > _TICK:
            if member.boot != boot:  # it restarted: whatever it took is gone, but an
                # immediate task may have started there first: still "may have"
                return Unsettled(f"{cause}; then peer {member.node_id} restarted before it "
                                 "could say whether it took (and ran) the batch")
            try:
                reply = await self.transport.call(member.addr, Kind.SETTLE, message,
                                                  min(config.request_timeout, left))
                if _restarted(reply, boot):  # answered by its new incarnation
                    return Unsettled(f"{cause}; then peer {member.node_id} restarted before "
                                     "it could say whether it took (and ran) the batch")
                if reply.get("void") is True:
                    return PeerUnavailableError(f"{cause} (settled: not taken)",
                                                maybe_delivered=False)
                if reply.get("pending") is not True:
                    return self._results(member, reply, count)
                last = PeerUnavailableError(f"peer {member.node_id} is still taking the batch")
            except GobucketError as exc:
                last = exc
            await asyncio.sleep(max(_TICK, min(config.probe_interval, deadline - loop.time())))
        return Unsettled(f"{cause}; then could not ask whether it took the batch within "
                          f"{config.settle_timeout:g}s: {last}")

    async def settle(self, member: Member, slot: BatchSlot, timeout: float) -> bool:
        """Ask ``member`` once whether it took the item at ``slot`` (a batch
        sent by this node or, after a handoff, by another): True if it took
        it; False if not -- a batch not seen yet is void from now on, so it
        never will. Raises :class:`~gobucket_py.GobucketError` if it cannot say."""
        boot, seq, index = slot
        holder = member.boot  # the incarnation the caller means (a batch sent to it)
        message = {"v": 1, "from": self.membership.header(), "batch": seq, "boot": boot}
        reply = await self.transport.call(member.addr, Kind.SETTLE, message, timeout)
        if _restarted(reply, holder):
            raise PeerUnavailableError(f"peer {member.node_id} restarted: its new incarnation "
                                       "cannot say what the old one took")
        if reply.get("void") is True:
            return False
        if reply.get("pending") is True:
            raise PeerUnavailableError(f"peer {member.node_id} is still taking the batch")
        results = field(reply, "results", list)
        if not 0 <= index < len(results):
            raise ProtocolError(f"peer {member.addr} settled {len(results)} results; "
                                f"asked for item {index}")
        return bool(results[index] == "ok")

    async def close(self, grace: float = 0.0) -> None:
        """Wait up to ``grace`` seconds for batches in flight to be answered
        (or settled), then stop: a batch still in flight gets
        :class:`Unsettled` verdicts, anything queued or sent later is
        refused at once (never sent). No caller is left waiting."""
        if self._tasks and grace > 0:
            await asyncio.wait(list(self._tasks), timeout=grace)
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for queue in self._queues.values():
            for items, sink, offset in queue.entries:
                _refuse(sink, offset, len(items))
            queue.entries.clear()
            queue.items = 0
