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

    def settle(self, index: int, result: str | GobucketError) -> None:
        self.results[index] = result
        self.remaining -= 1
        if not self.remaining and not self.future.done():
            self.future.set_result(self.results)


#: A queued item and where its verdict goes: a future (``send``), or a group
#: and the item's index in it (``send_many``).
Entry = tuple[Item, "asyncio.Future[str] | _Group", int]


class Forwarder:
    """Per-peer batching of FILL requests."""

    def __init__(self, transport: Transport, membership: Membership, config: GroupConfig) -> None:
        self.transport = transport
        self.membership = membership
        self.config = config
        self._queues: dict[tuple[str, bool], deque[Entry]] = {}
        self._pumps: dict[tuple[str, bool], int] = {}
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
        member.inflight[item[0]] = member.inflight.get(item[0], 0) + 1
        queue = self._queue(member, handoff)
        queue.append((item, future, -1))
        if self._pumps.get((member.node_id, handoff), 0) < self.config.batch_concurrency:
            self._pump_up(member, handoff)  # (only while pumps are below the cap)
        return future

    def send_many(self, member: Member, items: list[Item]
                  ) -> asyncio.Future[list[str | GobucketError]]:
        """Queue several items (of one bucket) for ``member``; one future gets
        every verdict or error, in order. Cheaper than ``send`` per item."""
        future: asyncio.Future[list[str | GobucketError]] = (
            asyncio.get_running_loop().create_future())
        group = _Group(future, len(items))
        if items:
            bucket = items[0][0]
            member.inflight[bucket] = member.inflight.get(bucket, 0) + len(items)
            self._queue(member, False).extend(
                (item, group, index) for index, item in enumerate(items))
            self._pump_up(member, False)
        else:
            future.set_result([])
        return future

    def _queue(self, member: Member, handoff: bool) -> deque[Entry]:
        key = (member.node_id, handoff)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        return queue

    def _pump_up(self, member: Member, handoff: bool) -> None:
        """Start pumps for the queue: one per batch waiting, up to batch_concurrency."""
        key = (member.node_id, handoff)
        queue = self._queues[key]
        want = min(self.config.batch_concurrency, -(-len(queue) // self.config.batch_size))
        loop = asyncio.get_running_loop()
        while self._pumps.get(key, 0) < want:
            self._pumps[key] = self._pumps.get(key, 0) + 1
            task = loop.create_task(self._pump(key, member, queue, handoff))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, key: tuple[str, bool], member: Member, queue: deque[Entry],
                    handoff: bool) -> None:
        try:
            while queue:
                await asyncio.sleep(0)  # let fills issued in this loop pass join the batch
                batch = [queue.popleft() for _ in range(min(len(queue), self.config.batch_size))]
                if batch:
                    await self._send_batch(member, batch, handoff)
        finally:
            self._pumps[key] -= 1

    async def _send_batch(self, member: Member, batch: list[Entry], handoff: bool) -> None:
        message = {"v": 1, "from": self.membership.header(), "handoff": handoff,
                   "items": [item for item, _, _ in batch]}
        error: GobucketError | None = None
        results: list[Any] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            reply = await self.transport.call(member.addr, Kind.FILL, message,
                                              self.config.forward_timeout)
            self.latency.observe(loop.time() - started)
            results = field(reply, "results", list)
            if len(results) != len(batch) or not all(isinstance(r, str) for r in results):
                raise ProtocolError(f"peer {member.addr} answered {len(results)} results "
                                    f"for {len(batch)} items")
            self.membership.heard(reply.get("from"))  # fresh capacity, includes this batch
        except GobucketError as exc:
            error = exc
        if self.on_batch is not None:
            self.on_batch(member, 0 if error else results.count("ok"), len(batch), handoff)
        inflight = member.inflight
        for item, _, _ in batch:
            bucket = item[0]
            inflight[bucket] = max(0, inflight.get(bucket, 0) - 1)
        for position, (_, sink, index) in enumerate(batch):
            result: str | GobucketError = error if error is not None else results[position]
            if isinstance(sink, _Group):
                sink.settle(index, result)
            elif sink.done():
                continue
            elif isinstance(result, GobucketError):
                sink.set_exception(result)
            else:
                sink.set_result(result)

    async def close(self) -> None:
        """Cancel pumps still running (their callers get CancelledError)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for queue in self._queues.values():
            for _, sink, _ in queue:
                future = sink.future if isinstance(sink, _Group) else sink
                if not future.done():
                    future.cancel()
            queue.clear()
