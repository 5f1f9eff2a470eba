"""TaskBucketGroup: the buckets of one node, shared with its peers.

``fill`` tries the local bucket first (GoBucket parity) and overflows to a
peer only when it is full; ``drain`` and ``get`` find a task wherever it
lives. ``stop`` hands every pending task to peers before it goes, so a rolling
restart loses nothing that had not started.

Around it: :mod:`.membership` (who is alive), :mod:`.placement` (which peer),
:mod:`.forward` (batched FILLs), :mod:`.items` (a task on the wire),
:mod:`.serve` (what this node answers) and :mod:`.transport` (HTTP).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Any, Literal, Protocol

import msgpack

from ..bucket import TaskBucket
from ..config import GroupConfig
from ..errors import (
    BucketClosedError,
    ClusterFullError,
    DuplicateTaskError,
    GobucketError,
    PeerUnavailableError,
    UnknownBucketError,
)
from ..observe.events import EventFeed
from ..task import DrainOutcome, DrainResult, FillResult, Task, TaskInfo, TaskState, TaskType
from .auth import Keyring
from .forward import Forwarder, Item
from .items import TYPES, encode_item, task_times, unpack_info
from .membership import Member, Membership, MemberState, PeerInfo
from .placement import candidates, pick
from .protocol import Kind
from .routes import Routes
from .serve import PeerServer
from .transport import HttpTransport, Transport

__all__ = ["GroupState", "TaskBucketGroup"]

log = logging.getLogger("gobucket_py")

_OUTCOMES = {o.value: o for o in DrainOutcome}

#: ``on_peer_schedule_failed(peer_id, bucket, task_id, error)``; may be async.
ScheduleFailed = Callable[[str, str, str, str], Any]


class Results(Protocol):
    """Where :meth:`TaskBucketGroup._place_many` puts each task's result."""

    def __setitem__(self, index: int, result: FillResult | Exception, /) -> None: ...


class _Waiting:
    """Single fills that overflowed in one loop pass: their items, and the
    callers' futures, each resolved as soon as its task is placed or refused."""

    __slots__ = ("futures", "items")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.futures: list[asyncio.Future[FillResult]] = []

    def __setitem__(self, index: int, result: FillResult | Exception) -> None:
        future = self.futures[index]
        if future.done():
            pass
        elif isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


class GroupState(StrEnum):
    """Lifecycle of a group; a stopped group cannot be started again."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TaskBucketGroup:
    """A node of a task-bucket cluster: local buckets plus peers.

    Example::

        buckets = {"backups": TaskBucket(BucketConfig(60, 30), Backup(), name="backups")}
        async with TaskBucketGroup(buckets, ["10.0.0.2:6666", "10.0.0.3:6666"],
                                   host="0.0.0.0", advertise="10.0.0.1:6666",
                                   secret=os.environ["GOBUCKET_SECRET"]) as group:
            placed = await group.fill("backups", "order-42", {"order": 42},
                                      task_type=TaskType.TIME_BOMB)
            print(placed.node_id, placed.forwarded)
            await group.drain("backups", "order-42")   # wherever it lives

    ``peers`` are seed addresses (``host:port``); the rest of the cluster is
    learned from them, and this node's own address is ignored if listed.
    Without ``secret`` the node refuses to listen on a non-loopback address
    unless ``insecure=True``. ``transport`` replaces HTTP (e.g. a
    :class:`~gobucket_py.MemoryNetwork` transport in tests).
    """

    def __init__(
        self,
        buckets: Mapping[str, TaskBucket],
        peers: list[str] | tuple[str, ...] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 6666,
        node_id: str | None = None,
        advertise: str | None = None,
        secret: str | Keyring | None = None,
        insecure: bool = False,
        config: GroupConfig | None = None,
        transport: Transport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or GroupConfig()
        if not isinstance(self.config, GroupConfig):
            raise TypeError("config must be a GroupConfig")
        if not buckets:
            raise ValueError("buckets must name at least one TaskBucket")
        for name, bucket in buckets.items():
            if not isinstance(bucket, TaskBucket):
                raise ValueError(f"buckets[{name!r}] must be a TaskBucket, "
                                 f"got {type(bucket).__name__}")
            if bucket.name != name:
                raise ValueError(f"buckets[{name!r}] is named {bucket.name!r}; create it with "
                                 f"TaskBucket(..., name={name!r})")
        self.buckets: dict[str, TaskBucket] = dict(buckets)
        if isinstance(peers, str) or not all(isinstance(p, str) and p for p in peers):
            raise ValueError("peers must be a list of 'host:port' strings")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        if node_id is not None and (not isinstance(node_id, str) or not node_id):
            raise ValueError(f"node_id must be a non-empty string, got {node_id!r}")
        if isinstance(secret, str):
            secret = Keyring.parse(secret, max_skew=self.config.max_clock_skew)
        self.keyring = secret
        if transport is None:
            for peer in peers:
                _, sep, port_text = peer.rpartition(":")
                if not sep or not port_text.isdigit():
                    raise ValueError(f"peers: {peer!r} is not 'host:port'")
            if secret is None and not insecure and not _is_loopback(host):
                raise ValueError(
                    f"host: refusing to listen on {host!r} without a secret, because any "
                    "machine that reaches it could fill and drain tasks; pass secret=... "
                    "(or GOBUCKET_SECRET), or insecure=True on a trusted network")
            transport = HttpTransport(host, port, advertise=advertise, keyring=secret,
                                      max_body=self.config.max_body)
        self.transport = transport
        self.seeds = list(peers)
        self._node_id = node_id
        self.boot_id = secrets.token_hex(8)
        self.rng = rng or random.Random()
        self.state = GroupState.NEW
        #: Called for each peer that rejected a task when no node could take
        #: it, as ``(peer_id, bucket, task_id, error)``. Never on success.
        self.on_peer_schedule_failed: ScheduleFailed | None = None
        self._membership: Membership | None = None
        self._forwarder: Forwarder | None = None
        # Where this node forwarded each task, until the task's deadline.
        self._routes = Routes()
        # Handoff on stop: tasks in transit, and where they went.
        self._moving: dict[tuple[str, str], asyncio.Future[str | None]] = {}
        self._moved: dict[tuple[str, str], str] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._stopped: asyncio.Future[None] | None = None
        #: Recent membership changes, overflows and drains (for the dashboard).
        self.events = EventFeed()
        #: Fills per bucket: ``[local, forwarded, rejected]`` (ClusterFullError).
        self.fill_counts: dict[str, list[int]] = {name: [0, 0, 0] for name in self.buckets}
        #: Wall-clock time of ``start()``.
        self.started_at: float | None = None
        self._server = PeerServer(self)
        # Overflowing single fills waiting for this loop pass's placement.
        self._overflow: dict[str, _Waiting] = {}

    # -- introspection ---------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id (its advertised address unless given)."""
        return self._node_id or self.transport.address

    @property
    def address(self) -> str:
        """``host:port`` as peers reach this node (final after ``start``)."""
        return self.transport.address

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``: the node takes new tasks."""
        return self.state is GroupState.RUNNING

    @property
    def peers(self) -> list[PeerInfo]:
        """Every peer this node knows, with state, free capacity and last heard."""
        if self._membership is None:
            return []
        return [m.info() for m in self._membership.members.values()]

    def capacity(self) -> dict[str, int]:
        """Free slots per local bucket (0 while stopping)."""
        if self.state is not GroupState.RUNNING:
            return dict.fromkeys(self.buckets, 0)
        return {name: b.free for name, b in self.buckets.items()}

    def _bucket(self, name: str) -> TaskBucket:
        bucket = self.buckets.get(name)
        if bucket is None:
            raise UnknownBucketError(f"unknown bucket {name!r} on node {self.node_id}")
        return bucket

    @property
    def _members(self) -> Membership:
        if self._membership is None:
            raise BucketClosedError(f"group is {self.state.value}, not running")
        return self._membership

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen, contact the seeds, and start probing. Start once."""
        if self.state is not GroupState.NEW:
            raise RuntimeError(f"cannot start a group that is {self.state.value}")
        self.state = GroupState.RUNNING
        if isinstance(self.transport, HttpTransport):
            from ..observe.web import add_routes  # the dashboard, /metrics and /v1/status
            add_routes(self.transport.app, self)
        try:
            await self.transport.start(self._server.handle)
        except BaseException:
            self.state = GroupState.STOPPED
            raise
        membership = Membership(node_id=self.node_id, boot=self.boot_id,
                                transport=self.transport, config=self.config,
                                capacity=self.capacity, seeds=self.seeds, rng=self.rng)
        membership.on_restart = self._peer_restarted
        membership.on_change = self._peer_changed
        self._membership = membership
        self._forwarder = Forwarder(self.transport, membership, self.config)
        self._forwarder.on_batch = self._forwarded_batch
        for bucket in self.buckets.values():
            bucket.node = self.node_id
        self.started_at = time.time()
        await membership.start()
        self.events.add("node_started", f"{self.node_id} started at {self.address}",
                        node=self.node_id)
        log.info("node started event=node_started node=%s addr=%s boot=%s seeds=%s",
                 self.node_id, self.address, self.boot_id, ",".join(self.seeds) or "-")

    async def stop(self) -> None:
        """Leave gracefully. Idempotent.

        Announce leaving, refuse new fills, hand every pending task to peers
        with room (with its remaining times; offered again every probe
        interval while none has room), give running tasks what is left of
        ``stop_grace`` seconds, rescue the rest (``on_panic``), then close.
        """
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            if self.state is GroupState.RUNNING:
                self.state = GroupState.STOPPING
                self.events.add("node_stopping", f"{self.node_id} is leaving",
                                node=self.node_id)
                membership = self._members
                await membership.announce_leave()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.config.stop_grace
                handed = await self._handoff(deadline)
                grace = max(0.0, deadline - loop.time())
                await asyncio.gather(*(b.close(grace) for b in self.buckets.values()))
                await membership.stop()
                assert self._forwarder is not None
                await self._forwarder.close()
                log.info("node stopped event=node_stopped node=%s handed_off=%d",
                         self.node_id, handed)
            for task in list(self._background):
                task.cancel()
            if self._background:
                await asyncio.wait(list(self._background))
            await self.transport.close()
        finally:
            self.state = GroupState.STOPPED
            self._stopped.set_result(None)

    async def __aenter__(self) -> TaskBucketGroup:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> Literal[False]:
        await self.stop()
        return False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _peer_changed(self, member: Member, old: MemberState | None) -> None:
        new = member.state.value
        text = (f"{member.node_id} joined ({member.addr})" if old is None
                else f"{member.node_id}: {old.value} -> {new}")
        self.events.add("peer_joined" if old is None else f"peer_{new}", text,
                        peer=member.node_id)

    def _forwarded_batch(self, member: Member, accepted: int, sent: int, handoff: bool) -> None:
        what = "handoff" if handoff else "overflow"
        self.events.add_or_merge(what, member.node_id, accepted, sent)

    def _peer_restarted(self, member: Member) -> None:
        lost = self._routes.forget_node(member.node_id)
        if lost:
            log.warning("peer restarted; tasks forwarded there are lost event=tasks_lost "
                        "node=%s peer=%s count=%d", self.node_id, member.node_id, lost)

    # -- fill ----------------------------------------------------------------------

    async def fill(
        self,
        bucket: str,
        task_id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: float | None = None,
        life_span: float | None = None,
    ) -> FillResult:
        """Place a task: here if the local bucket has room, else on a peer.

        Returns where it went. Raises :class:`UnknownBucketError`,
        :class:`DuplicateTaskError` (live here, or on the peer that was
        chosen), :class:`ClusterFullError` (no node could take it; the
        callback ``on_peer_schedule_failed`` is called for each peer that
        refused), :class:`BucketClosedError` while stopping, and
        ``TypeError`` when an overflowing task's data is not
        msgpack-serializable. Fills that overflow in the same event-loop
        pass are placed together, as by :meth:`fill_many`.
        """
        local = self.buckets.get(bucket)
        if local is None or local.closed or self.state is not GroupState.RUNNING:
            local = self._open_bucket(bucket)  # raises why not
        if local.free > 0 or task_id in local:  # no exception on the overflow path
            task = local.fill_nowait(task_type, task_id, data, run_after=run_after,
                                     life_span=life_span)
            self.fill_counts[bucket][0] += 1
            return FillResult(bucket, task_id, self.node_id, False, task)
        ra, ls = task_times(local, task_type, run_after, life_span)
        item = encode_item(bucket, task_id, data, task_type, ra, ls)
        # Overflowing fills issued in the same loop pass are placed together
        # (one two-choice pass, one batch per peer), like fill_many.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[FillResult] = loop.create_future()
        waiting = self._overflow.get(bucket)
        if waiting is None:
            waiting = self._overflow[bucket] = _Waiting()
            loop.call_soon(self._flush_overflow, bucket)
        waiting.items.append(item)
        waiting.futures.append(future)
        return await future

    def _flush_overflow(self, bucket: str) -> None:
        waiting = self._overflow.pop(bucket, None)
        if waiting is not None:
            self._spawn(self._place_waiting(bucket, waiting))

    async def _place_waiting(self, bucket: str, waiting: _Waiting) -> None:
        try:
            await self._place_many(bucket, enumerate(waiting.items), waiting)
        except asyncio.CancelledError:  # stop(): the callers are cancelled too
            for future in waiting.futures:
                future.cancel()
            raise
        except Exception as exc:  # a bug: say so, and let no caller hang
            log.exception("placing overflowing fills failed node=%s bucket=%s",
                          self.node_id, bucket)
            for future in waiting.futures:
                if not future.done():
                    future.set_exception(exc)

    async def fill_many(
        self,
        bucket: str,
        tasks: Mapping[str, Any] | Iterable[tuple[str, Any]],
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: float | None = None,
        life_span: float | None = None,
    ) -> list[FillResult | Exception]:
        """Fill many tasks of one type and timing: ``{task_id: data}`` or
        ``(task_id, data)`` pairs.

        Same placement as :meth:`fill` (local first, then peers), but the
        overflow is spread over peers in one pass and sent in batches, which
        is several times faster than one ``fill`` per task. Returns one entry
        per task, in order: a :class:`FillResult`, or the exception that
        ``fill`` would have raised for that task (one refused task does not
        stop the rest). Raises only for what concerns every task: an unknown
        or closed bucket, or bad ``task_type``/``run_after``/``life_span``.
        """
        local = self._open_bucket(bucket)
        counts = self.fill_counts[bucket]
        ra, ls = task_times(local, task_type, run_after, life_span)
        pairs = tasks.items() if isinstance(tasks, Mapping) else tasks
        results: list[FillResult | Exception | None] = []

        def overflow() -> Iterator[tuple[int, Item]]:
            # Lazy, so the first batches are on the wire while later tasks
            # are still being read (and local room is checked as it is then).
            for task_id, data in pairs:
                try:
                    if local.free > 0 or task_id in local:
                        task = local.fill_nowait(task_type, task_id, data,
                                                 run_after=run_after, life_span=life_span)
                        results.append(FillResult(bucket, task_id, self.node_id, False, task))
                        counts[0] += 1
                        continue
                    item = encode_item(bucket, task_id, data, task_type, ra, ls)
                except (GobucketError, TypeError, ValueError) as exc:
                    results.append(exc)
                    continue
                results.append(None)
                yield len(results) - 1, item

        await self._place_many(bucket, overflow(), results)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _open_bucket(self, name: str) -> TaskBucket:
        if self.state is not GroupState.RUNNING:
            raise BucketClosedError(f"node {self.node_id} is {self.state.value}; "
                                    "it accepts no new task")
        local = self._bucket(name)
        if local.closed:
            raise BucketClosedError(f"bucket {name!r} is closed")
        return local

    async def _place_many(self, bucket: str, overflow: Iterable[tuple[int, Item]],
                          results: Results) -> None:
        """Spread ``overflow`` over peers by two choices, all sent at once;
        what a peer refuses goes through :meth:`_place` like a single fill.
        Each result is stored in ``results[index]`` as soon as it is known.
        Serves ``fill_many``, and the single fills of one loop pass."""
        forwarder = self._forwarder
        assert forwarder is not None
        size, rng = self.config.batch_size, self.rng
        pool = candidates(self._members.members.values(), bucket)
        # Two choices on each candidate's room: its estimate (which counts
        # what was sent) minus what waits here to be sent. Each peer's share
        # goes out a batch at a time as it fills up, so replies are settled
        # while later batches are on the wire; replies bring fresh reports, so
        # room is re-read after each batch.
        room = {m: m.estimate(bucket) for m in pool}
        room_of = room.__getitem__
        waiting: dict[Member, tuple[list[int], list[Item]]] = {}
        sent: list[tuple[Member, list[int], list[Item],
                         asyncio.Future[list[str | GobucketError]]]] = []
        retry: list[tuple[int, Item, dict[str, str]]] = []
        for index, item in overflow:
            if not pool:
                retry.append((index, item, {}))
                continue
            member = pick(pool, room_of, rng)
            share = waiting.get(member)
            if share is None:
                share = waiting[member] = ([], [])
            share[0].append(index)
            share[1].append(item)
            room[member] -= 1
            if len(share[1]) >= size:
                del waiting[member]
                sent.append((member, *share, forwarder.send_many(member, share[1])))
                await asyncio.sleep(0)  # let the pumps put it on the wire
                for m in pool:
                    room[m] = m.estimate(bucket) - (len(waiting[m][1]) if m in waiting else 0)
                pool = [m for m in pool if room[m] > 0 and m.state is MemberState.ALIVE]
            elif room[member] <= 0:
                pool.remove(member)
        sent.extend((member, *share, forwarder.send_many(member, share[1]))
                    for member, share in waiting.items())
        for member, indexes, items, future in sent:
            retry.extend(self._settle_many(bucket, member, indexes, items, await future,
                                           results))

        async def again(index: int, item: Item, rejections: dict[str, str]) -> None:
            try:
                member, rejections = await self._place(item, rejections=rejections)
                if member is None:
                    results[index] = await self._cluster_full(item, rejections)
                else:
                    results[index] = FillResult(bucket, item[1], member.node_id, True)
                    self.fill_counts[bucket][1] += 1
            except GobucketError as exc:
                results[index] = exc

        if retry:
            await asyncio.gather(*(again(*r) for r in retry))

    def _settle_many(self, bucket: str, member: Member, indexes: list[int], items: list[Item],
                     outcomes: list[str | GobucketError], results: Results
                     ) -> list[tuple[int, Item, dict[str, str]]]:
        """Act on a peer's answers to one batch: fill in ``results`` for what
        it took (remembering where, by life span) or what cannot be retried;
        return what to try elsewhere."""
        node = member.node_id
        placed: dict[float, list[str]] = {}
        retry = []
        for index, item, outcome in zip(indexes, items, outcomes, strict=True):
            if outcome == "ok":
                results[index] = FillResult(bucket, item[1], node, True)
                ids = placed.get(item[5])
                if ids is None:
                    ids = placed[item[5]] = []
                ids.append(item[1])
                continue
            rejections: dict[str, str] = {}
            try:
                self._settle(member, item, outcome, rejections)  # not "ok": False or raises
                retry.append((index, item, rejections))
            except DuplicateTaskError as exc:
                results[index] = exc
        now = asyncio.get_running_loop().time()
        for life_span, ids in placed.items():
            self._routes.add(bucket, node, member.boot, now, life_span, ids)
            self.fill_counts[bucket][1] += len(ids)
        return retry

    async def _cluster_full(self, item: Item, rejections: dict[str, str]) -> ClusterFullError:
        """Report each refusal to ``on_peer_schedule_failed``; the error to raise."""
        bucket, task_id = item[0], item[1]
        self.fill_counts[bucket][2] += 1
        self.events.add("cluster_full", f"no node could take {task_id}", bucket=bucket,
                        task_id=task_id)
        log.warning("no node could take the task event=cluster_full node=%s bucket=%s "
                    "task_id=%s rejections=%d", self.node_id, bucket, task_id, len(rejections))
        for peer_id, error in rejections.items():
            await self._report_failure(peer_id, bucket, task_id, error)
        detail = "; ".join(f"{p}: {e}" for p, e in rejections.items()) or "no peer has room"
        return ClusterFullError(f"no node could take task {task_id!r} in bucket {bucket!r} "
                                f"(local bucket full; {detail})", rejections)

    async def _report_failure(self, peer_id: str, bucket: str, task_id: str, error: str) -> None:
        callback = self.on_peer_schedule_failed
        if callback is None:
            return
        try:
            result = callback(peer_id, bucket, task_id, error)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_peer_schedule_failed raised node=%s", self.node_id)

    async def _place(self, item: Item, *, handoff: bool = False,
                     rejections: dict[str, str] | None = None
                     ) -> tuple[Member | None, dict[str, str]]:
        """Try up to ``max_attempts`` peers (not those in ``rejections``);
        return the one that accepted, and who refused."""
        bucket = item[0]
        members, forwarder, rng = self._members.members, self._forwarder, self.rng
        assert forwarder is not None
        rejections = {} if rejections is None else rejections
        for _ in range(self.config.max_attempts - len(rejections)):
            pool = candidates(members.values(), bucket, rejections)
            if not pool:
                break
            member = pick(pool, lambda m: m.estimate(bucket), rng)
            try:
                outcome: str | GobucketError = await forwarder.send(member, item, handoff=handoff)
            except GobucketError as exc:
                outcome = exc
            if self._settle(member, item, outcome, rejections, handoff):
                return member, rejections
        return None, rejections

    def _settle(self, member: Member, item: Item, outcome: str | GobucketError,
                rejections: dict[str, str], handoff: bool = False) -> bool:
        """Act on a peer's answer to one forward: True if it took the task;
        else record why in ``rejections`` (raises DuplicateTaskError)."""
        bucket, task_id = item[0], item[1]
        if outcome == "ok":
            self._routes.add(bucket, member.node_id, member.boot,
                             asyncio.get_running_loop().time(), item[5], [task_id])
            return True
        if isinstance(outcome, PeerUnavailableError) and outcome.maybe_delivered:
            # It may have accepted: make sure it will not run.
            self._spawn(self._drain_on(member, bucket, task_id))
        elif outcome == "duplicate" and not handoff:
            raise DuplicateTaskError(f"task {task_id!r} is already live in bucket "
                                     f"{bucket!r} on node {member.node_id}")
        rejections[member.node_id] = str(outcome)
        return False

    # -- drain and get ---------------------------------------------------------------

    async def drain(self, bucket: str, task_id: str) -> DrainResult:
        """Cancel a task wherever it lives in the cluster.

        DRAINED: it had not started and will never run anywhere. CANCELLED:
        its on_execute was cancelled. NOT_FOUND: no node holds it (finished,
        never filled, or lost with a dead node). ``node_id`` says where it was.
        Raises :class:`PeerUnavailableError` when a peer that may hold the
        task could not be asked: the task may still be live, so try again.
        """
        outcome = self._bucket(bucket).drain_nowait(task_id)
        if outcome is not DrainOutcome.NOT_FOUND:
            self._routes.forget(bucket, task_id)
            self._drained(bucket, task_id, outcome, self.node_id)
            return DrainResult(outcome, task_id, self.node_id)
        reply = await self._ask(Kind.DRAIN, bucket, task_id, lambda r: r.get("outcome")
                                not in (None, DrainOutcome.NOT_FOUND.value))
        self._routes.forget(bucket, task_id)  # a definite answer: forget the route
        if reply is None:
            return DrainResult(DrainOutcome.NOT_FOUND, task_id, None)
        outcome, node = _OUTCOMES[reply["outcome"]], reply.get("node")
        self._drained(bucket, task_id, outcome, node)
        return DrainResult(outcome, task_id, node)

    def _drained(self, bucket: str, task_id: str, outcome: DrainOutcome, node: str | None
                 ) -> None:
        self.events.add("drain", f"{task_id} {outcome.value} on {node}", bucket=bucket,
                        task_id=task_id, peer=node)

    async def get(self, bucket: str, task_id: str) -> TaskInfo | None:
        """Describe a live task wherever it lives, or None. Raises
        :class:`PeerUnavailableError` when a peer that may hold it did not answer."""
        task = self._bucket(bucket).get(task_id)
        if task is not None:
            return TaskInfo.of(task, self.node_id)
        reply = await self._ask(Kind.GET, bucket, task_id, lambda r: r.get("task") is not None)
        if reply is None:
            return None
        return unpack_info(reply["task"])

    async def _ask(self, kind: Kind, bucket: str, task_id: str,
                   found: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """Ask the node this one forwarded the task to (one hop); failing
        that, every reachable peer at once. Returns the first positive reply."""
        membership = self._members
        message = {"v": 1, "from": membership.header(), "bucket": bucket, "id": task_id,
                   "follow": True}
        timeout = self.config.request_timeout
        record = self._routes.get(bucket, task_id)
        asked: set[str] = set()
        silent: list[str] = []  # peers that may hold the task but did not answer
        if record is not None:
            member = membership.members.get(record[0])
            if member is not None and member.boot == record[1] and member.state in (
                    MemberState.ALIVE, MemberState.SUSPECT):
                asked.add(member.node_id)
                try:
                    reply = await self.transport.call(member.addr, kind, message, timeout)
                except PeerUnavailableError:
                    silent.append(member.node_id)
                except GobucketError:
                    pass
                else:
                    # The holder answers for its handoffs too: its word is final.
                    return reply if found(reply) else None
        targets = [m for m in membership.reachable() if m.node_id not in asked]

        async def one(member: Member) -> dict[str, Any] | None:
            try:
                reply = await self.transport.call(member.addr, kind, message, timeout)
            except PeerUnavailableError:
                silent.append(member.node_id)
                return None
            except GobucketError:
                return None
            return reply if found(reply) else None

        for answer in await asyncio.gather(*(one(m) for m in targets)):
            if answer is not None:
                return answer
        if silent:
            raise PeerUnavailableError(
                f"could not reach {', '.join(sorted(silent))}; task {task_id!r} in bucket "
                f"{bucket!r} may still be live there: try again")
        return None

    async def _drain_on(self, member: Member, bucket: str, task_id: str) -> None:
        message = {"v": 1, "from": self._members.header(), "bucket": bucket, "id": task_id,
                   "follow": False}
        try:
            await self.transport.call(member.addr, Kind.DRAIN, message,
                                      self.config.request_timeout)
        except GobucketError as exc:
            log.warning("could not drain an ambiguous forward event=forward_ambiguous node=%s "
                        "peer=%s bucket=%s task_id=%s error=%s", self.node_id, member.node_id,
                        bucket, task_id, exc)

    # -- handoff -------------------------------------------------------------------

    async def _handoff(self, deadline: float) -> int:
        """Move every pending task to peers with room, until ``deadline``
        (loop time): what no peer can take yet is put back and offered again
        after a probe interval (peers report room as their tasks end). What
        is still here at the deadline runs here or is rescued by ``close``."""
        loop = asyncio.get_running_loop()
        moved = kept = 0
        while True:
            jobs = [self._hand(name, bucket, taken)
                    for name, bucket in self.buckets.items()
                    for task in list(bucket) if task.state is TaskState.PENDING
                    if (taken := bucket.take_pending(task.id)) is not None]
            if not jobs:
                return moved
            done = sum(await asyncio.gather(*jobs))
            moved, kept = moved + done, len(jobs) - done
            wait = self.config.probe_interval
            if not kept or loop.time() + wait >= deadline or not any(
                    m.state is MemberState.ALIVE for m in self._members.members.values()):
                break
            await asyncio.sleep(wait)
        if kept:
            log.warning("pending tasks could not be handed off; they will run here or be "
                        "rescued event=handoff_incomplete node=%s moved=%d kept=%d",
                        self.node_id, moved, kept)
        return moved

    async def _hand(self, name: str, bucket: TaskBucket, task: Task) -> bool:
        key = (name, task.id)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._moving[key] = future
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
                                self.node_id, name, task.id, exc)
                else:
                    item: Item = (name, task.id, TYPES.index(task.type), payload, run_after,
                                  life_span)
                    member, _ = await self._place(item, handoff=True)
                    if member is not None:
                        target = self._moved[key] = member.node_id
            if target is None:
                bucket.restore(task)
            else:
                bucket.handed_off(task)
            return target is not None
        finally:
            del self._moving[key]
            future.set_result(target)
