"""TaskBucketGroup: the buckets of one node, shared with its peers.

``fill`` tries the local bucket first (GoBucket parity) and overflows to a
peer only when it is full; ``drain`` and ``get`` find a task wherever it
lives, and say "unknown" (an error to retry) rather than guess. ``stop``
hands every pending task to peers before it goes, so a rolling restart loses
nothing that had not started.

This module is the public surface and the wiring. Around it:

- :mod:`.membership`: who is alive (probes, suspicion, presumed lost);
- :mod:`.overflow`, :mod:`.placement`, :mod:`.forward`: placing what does
  not fit here, on which peer, in batches;
- :mod:`.batches`: forwards that cannot duplicate (dedupe and settle);
- :mod:`.routes`, :mod:`.ended`: where each forwarded task went, and the
  holders' notices of what ended there;
- :mod:`.lookup`: drain and get, with three-valued answers;
- :mod:`.handoff`: moving pending tasks on a graceful stop;
- :mod:`.serve`, :mod:`.items`, :mod:`.transport`: what this node answers,
  a task on the wire, HTTP.
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
from typing import Any, Literal

from ..bucket import TaskBucket
from ..config import GroupConfig
from ..errors import BucketClosedError, GobucketError, UnknownBucketError
from ..observe.events import EventFeed
from ..task import DrainResult, FillResult, TaskInfo, TaskType
from .auth import Keyring
from .batches import BatchLedger
from .ended import EndedNotices
from .forward import Forwarder, Item
from .handoff import Handoff
from .items import encode_item, task_times
from .lookup import Lookup
from .membership import Member, Membership, MemberState, PeerInfo
from .overflow import Overflow
from .routes import Routes
from .serve import PeerServer
from .transport import HttpTransport, Transport

__all__ = ["GroupState", "TaskBucketGroup"]

log = logging.getLogger("gobucket_py")

#: ``on_peer_schedule_failed(peer_id, bucket, task_id, error)``; may be async.
ScheduleFailed = Callable[[str, str, str, str], Any]
#: ``on_tasks_lost(peer_id, bucket, task_ids)``; may be async.
TasksLost = Callable[[str, str, list[str]], Any]


async def _call_lost(callback: TasksLost, peer_id: str, bucket: str, task_ids: list[str],
                     node_id: str) -> None:
    try:
        result = callback(peer_id, bucket, task_ids)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("on_tasks_lost raised node=%s", node_id)


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
        #: Called once per lost batch as ``(peer_id, bucket, task_ids)``:
        #: tasks this node forwarded to a peer that then crashed (came back
        #: with a new boot id) or stayed dead past ``config.lost_after``.
        #: A graceful handoff is never a loss. May be async; must not block.
        self.on_tasks_lost: TasksLost | None = None
        #: Tasks reported lost, per bucket.
        self.lost_counts: dict[str, int] = dict.fromkeys(self.buckets, 0)
        self._membership: Membership | None = None
        self._forwarder: Forwarder | None = None
        # Where this node forwarded each task, until the task's deadline.
        self._routes = Routes()
        # What this node did with each FILL batch it received (dedupe, settle).
        self._batches = BatchLedger()
        self._overflow = Overflow(self)
        self._lookup = Lookup(self)
        self._handoff = Handoff(self)
        self._ended = EndedNotices(self)
        self._background: set[asyncio.Task[Any]] = set()
        self._stopped: asyncio.Future[None] | None = None
        #: Recent membership changes, overflows and drains (for the dashboard).
        self.events = EventFeed()
        #: Fills per bucket: ``[local, forwarded, rejected]`` (ClusterFullError).
        self.fill_counts: dict[str, list[int]] = {name: [0, 0, 0] for name in self.buckets}
        #: Wall-clock time of ``start()``.
        self.started_at: float | None = None
        self._server = PeerServer(self)

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
        membership.on_lost = self._peer_lost
        membership.on_returned = self._peer_returned
        membership.on_pruned = self._lookup.forget_member
        self._routes.hold = self._unresolved
        membership.on_change = self._peer_changed
        self._membership = membership
        self._forwarder = Forwarder(self.transport, membership, self.config)
        self._forwarder.on_batch = self._forwarded_batch
        for bucket in self.buckets.values():
            bucket.node = self.node_id
            bucket.add_outcome_watcher(self._ended.task_ended)
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
        Fills already placing a task on a peer get their answer first (at
        most ``forward_timeout + settle_timeout`` more).
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
                handed = await self._handoff.run(deadline)
                grace = max(0.0, deadline - loop.time())
                await asyncio.gather(*(b.close(grace) for b in self.buckets.values()))
                await self._ended.flush()  # tell origins what ended here, before going
                assert self._forwarder is not None
                config = self.config
                # Let forwards in flight get their verdicts, so no caller is stranded.
                await self._forwarder.close(config.forward_timeout + config.settle_timeout)

                if self._background:
                    await asyncio.wait(list(self._background), timeout=config.request_timeout)
                await membership.stop()
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

    def _peer_restarted(self, member: Member, was: MemberState) -> None:
        if was is MemberState.LEFT:
            # It left gracefully: its tasks were handed off (drains find them).
            self._routes.forget_node(member.node_id)
            return
        self._report_lost(member.node_id, member.boot, "restarted", other=True)

    def _peer_lost(self, member: Member) -> None:
        self._report_lost(member.node_id, member.boot, "presumed lost")

    def _unresolved(self, node_id: str) -> bool:
        """Is ``node_id`` silent but not yet presumed lost (so routes to it stay)?"""
        membership = self._membership
        member = None if membership is None else membership.members.get(node_id)
        return member is not None and not member.lost and member.state in (
            MemberState.SUSPECT, MemberState.DEAD)

    def _peer_returned(self, member: Member) -> None:
        back = self._routes.unmark_lost(member.node_id, member.boot)
        if back:
            self.events.add("tasks_returned", f"{back} tasks presumed lost on "
                            f"{member.node_id} are live again", peer=member.node_id)
            log.warning("a peer presumed lost came back with the same boot id; the tasks "
                        "reported lost there may still run event=tasks_returned node=%s "
                        "peer=%s count=%d", self.node_id, member.node_id, back)

    def _report_lost(self, node_id: str, boot: str, why: str, *, other: bool = False) -> None:
        """Report once every task routed to ``node_id`` (in ``boot``; with
        ``other``, in any earlier boot) as lost."""
        for bucket, task_ids in self._routes.mark_lost(node_id, boot, other=other).items():
            self.lost_counts[bucket] = self.lost_counts.get(bucket, 0) + len(task_ids)
            self.events.add("tasks_lost", f"{len(task_ids)} tasks lost on {node_id} ({why})",
                            bucket=bucket, peer=node_id)
            log.warning("tasks forwarded to a peer are lost event=tasks_lost node=%s peer=%s "
                        "reason=%s bucket=%s count=%d", self.node_id, node_id,
                        why.replace(" ", "_"), bucket, len(task_ids))
            callback = self.on_tasks_lost
            if callback is not None:
                self._spawn(_call_lost(callback, node_id, bucket, task_ids, self.node_id))

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
        refused), :class:`PlacementUnknownError` (a peer may or may not
        have taken it: it was placed nowhere else; drain or get it to find
        out), :class:`BucketClosedError` while stopping, and ``TypeError``
        when an overflowing task's data is not msgpack-serializable. Fills
        that overflow in the same event-loop pass are placed together, as by
        :meth:`fill_many`.
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
        return await self._overflow.fill_one(bucket, item)

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

        await self._overflow.place_many(bucket, overflow(), results)
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

    # -- drain and get ---------------------------------------------------------------

    async def drain(self, bucket: str, task_id: str) -> DrainResult:
        """Cancel a task wherever it lives in the cluster.

        DRAINED: it had not started and will never run anywhere (also the
        answer when an earlier drain stopped it). CANCELLED: its on_execute
        was cancelled. FINISHED, FAILED, EXHAUSTED, RESCUED: it already
        ended that way (nothing was stopped). LOST: the node holding it
        crashed or is presumed lost (reported through ``on_tasks_lost``).
        NOT_FOUND: every node that could hold it answered that it does not
        (never filled, or ended longer ago than ``outcome_retention``).
        ``node_id`` says where it was.

        Raises :class:`PeerUnavailableError` when a node that may hold the
        task could not say (unreachable, timed out, answered with an error,
        or dead but maybe only stalled): the task may still be live, so try
        again. A retried drain is safe: if the first one was applied, the
        retry answers DRAINED.
        """
        return await self._lookup.drain(bucket, task_id)

    async def get(self, bucket: str, task_id: str) -> TaskInfo | None:
        """Describe a task wherever it lives, or None if no node has it.

        A task that ended recently is described with its terminal state
        (``type`` None); one whose holder was lost has state LOST. Raises
        :class:`PeerUnavailableError` when a node that may hold it could
        not say (see :meth:`drain`)."""
        return await self._lookup.get(bucket, task_id)
