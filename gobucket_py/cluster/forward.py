"""Forwarding tasks to peers, with concurrent forwards coalesced into batches.

Each peer has a queue; up to ``batch_concurrency`` pumps per peer send what
has queued as one ``FILL`` request of at most ``batch_size`` items, so a burst
of overflowing fills costs a few round trips instead of one each. Every item
gets its own result. A forward is counted in the peer's ``inflight`` estimate
from the moment it is queued until its reply (which carries fresh capacity)
arrives, so placement never trusts a report that cannot include it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from ..config import GroupConfig
from ..errors import GobucketError, ProtocolError
from ..observe.histogram import Histogram
from .membership import Member, Membership
from .protocol import Kind, field
from .transport import Transport

__all__ = ["Forwarder"]

#: A FILL item (see :mod:`.items`): ``(bucket, task_id, type, packed data,
#: run_after, life_span)``. A tuple of atoms, which the garbage collector
#: soon stops tracking.
Item = tuple[Any, ...]


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
Entry = tuple[list[Item], "asyncio.Future[str] | _Group", int]


class _Queue:
    """The entries waiting for one peer, and how many items they hold."""

    __slots__ = ("entries", "items", "pumps")

    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()
        self.items = 0
        self.pumps = 0

    def take(self, limit: int) -> list[Entry]:
        """Up to ``limit`` items from the front, as entries."""
        batch: list[Entry] = []
        entries = self.entries
        while entries and limit:
            items, sink, offset = entries[0]
            if len(items) <= limit:
                batch.append(entries.popleft())
                limit -= len(items)
            else:
                batch.append((items[:limit], sink, offset))
                entries[0] = (items[limit:], sink, offset + limit)
                limit = 0
        self.items -= sum(len(entry[0]) for entry in batch)
        return batch


class Forwarder:
    """Per-peer batching of FILL requests."""

    def __init__(self, transport: Transport, membership: Membership, config: GroupConfig) -> None:
        self.transport = transport
        self.membership = membership
        self.config = config
        self._queues: dict[tuple[str, bool], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Round-trip time of each FILL batch (seconds).
        self.latency = Histogram()
        #: Called as ``on_batch(member, accepted, sent, handoff)`` after each reply.
        self.on_batch: Callable[[Member, int, int, bool], None] | None = None

    def send(self, member: Member, item: Item, *, handoff: bool = False) -> asyncio.Future[str]:
        """Queue ``item`` for ``member``; the future gets the peer's verdict
        (``"ok"``, ``"full"``, ``"duplicate"``, ``"closed"``, ...) or a
        :class:`~gobucket_py.PeerError`."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._enqueue(member, handoff, [item], future)
        return future

    def send_many(self, member: Member, items: list[Item]
                  ) -> asyncio.Future[list[str | GobucketError]]:
        """Queue several items (of one bucket) for ``member``; one future gets
        every verdict or error, in order. Cheaper than ``send`` per item."""
        future: asyncio.Future[list[str | GobucketError]] = (
            asyncio.get_running_loop().create_future())
        if items:
            self._enqueue(member, False, items, _Group(future, len(items)))
        else:
            future.set_result([])
        return future

    def _enqueue(self, member: Member, handoff: bool, items: list[Item],
                 sink: asyncio.Future[str] | _Group) -> None:
        """Count ``items`` (of one bucket) in flight, queue them, and start
        pumps: one per batch waiting, up to ``batch_concurrency``."""
        bucket = items[0][0]
        member.inflight[bucket] = member.inflight.get(bucket, 0) + len(items)
        key = (member.node_id, handoff)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        queue.entries.append((items, sink, 0))
        queue.items += len(items)
        config = self.config
        want = min(config.batch_concurrency, -(-queue.items // config.batch_size))
        while queue.pumps < want:
            queue.pumps += 1
            task = asyncio.get_running_loop().create_task(self._pump(member, queue, handoff))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, member: Member, queue: _Queue, handoff: bool) -> None:
        try:
            while queue.entries:
                await asyncio.sleep(0)  # let fills issued in this loop pass join the batch
                batch = queue.take(self.config.batch_size)
                if batch:
                    await self._send_batch(member, batch, handoff)
        finally:
            queue.pumps -= 1

    async def _send_batch(self, member: Member, batch: list[Entry], handoff: bool) -> None:
        items = batch[0][0] if len(batch) == 1 else [i for entry in batch for i in entry[0]]
        message = {"v": 1, "from": self.membership.header(), "handoff": handoff,
                   "items": items}
        error: GobucketError | None = None
        results: list[Any] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            reply = await self.transport.call(member.addr, Kind.FILL, message,
                                              self.config.forward_timeout)
            self.latency.observe(loop.time() - started)
            results = field(reply, "results", list)
            if len(results) != len(items) or not all(type(r) is str for r in results):
                raise ProtocolError(f"peer {member.addr} answered {len(results)} results "
                                    f"for {len(items)} items")
            self.membership.heard(reply.get("from"))  # fresh capacity, includes this batch
        except GobucketError as exc:
            error = exc
        if self.on_batch is not None:
            self.on_batch(member, 0 if error else results.count("ok"), len(items), handoff)
        inflight = member.inflight
        position = 0
        for chunk, sink, offset in batch:
            bucket, count = chunk[0][0], len(chunk)
            inflight[bucket] = max(0, inflight.get(bucket, 0) - count)
            if isinstance(sink, _Group):
                sink.settle(offset, [error] * count if error is not None
                            else results[position:position + count])
            elif sink.done():
                pass
            elif error is not None:
                sink.set_exception(error)
            else:
                sink.set_result(results[position])
            position += count

    async def close(self) -> None:
        """Cancel pumps still running (their callers get CancelledError)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for queue in self._queues.values():
            for _, sink, _ in queue.entries:
                future = sink.future if isinstance(sink, _Group) else sink
                if not future.done():
                    future.cancel()
            queue.entries.clear()
            queue.items = 0
