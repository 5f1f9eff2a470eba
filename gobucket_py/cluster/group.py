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
import functools
import inspect
import ipaddress
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from ..bucket import TaskBucket
from ..codec import Codec, Serializer
from ..config import GroupConfig
from ..errors import (
    BucketClosedError,
    GobucketError,
    NoBackupRoomError,
    PeerUnavailableError,
    UnknownBucketError,
)
from ..observe.events import EventFeed
from ..task import DrainResult, FillResult, Task, TaskInfo, TaskType
from .addresses import check_peer
from .auth import Keyring
from .backups import Backups
from .batches import BatchLedger
from .ended import EndedNotices
from .forward import Forwarder, Item
from .handoff import Handoff
from .items import encode_item, task_times
from .lookup import Lookup
from .membership import Member, Membership, MemberState, PeerInfo
from .overflow import Overflow
from .protocol import MAX_NAME, is_name
from .replicas import Replicas
from .routes import Routes
from .serve import PeerServer
from .tls import TLSConfig
from .transport import HttpTransport, Transport
from .view import GroupView

if TYPE_CHECKING:
    from aiohttp import web

    from .mount import NodeApp

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
        log.exception("on_tasks_lost raised event=callback_error node=%s "
                      "callback=on_tasks_lost peer=%s bucket=%s tasks=%d", node_id, peer_id,
                      bucket, len(task_ids))


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

    ``peers`` are seed addresses (``host:port``, or ``dns:NAME:PORT`` for every
    A/AAAA record of a DNS name, looked up again every ``rejoin_interval``);
    the rest of the cluster is learned from them, and this node's own
    address is ignored if listed.
    ``port=0`` listens on a free port; ``port_fallback=True`` listens on
    ``port`` if it is free, else on a free one -- for each worker of a
    multi-process server (``uvicorn --workers N``) to be its own node, the
    first one on ``port`` and the seed of the others. With either, give
    ``advertise`` as a host alone: the real port is appended (the node id
    defaults to that address, so it is unique per worker).
    Without ``secret`` the node refuses to listen on a non-loopback address
    unless ``insecure=True``. ``tls`` (a :class:`~gobucket_py.TLSConfig`)
    makes peer traffic HTTPS, mutual TLS when it names a CA. ``transport`` replaces HTTP (e.g. a
    :class:`~gobucket_py.MemoryNetwork` transport in tests). ``serializer``
    (a :class:`~gobucket_py.Serializer`) carries task data types beyond the
    built-in ones (see :mod:`gobucket_py.codec`) wherever data travels; give
    every node, and every :class:`~gobucket_py.GroupClient`, the same one.
    """

    def __init__(
        self,
        buckets: Mapping[str, TaskBucket],
        peers: list[str] | tuple[str, ...] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 6666,
        port_fallback: bool = False,
        node_id: str | None = None,
        advertise: str | None = None,
        secret: str | Keyring | None = None,
        tls: TLSConfig | None = None,
        insecure: bool = False,
        config: GroupConfig | None = None,
        transport: Transport | None = None,
        rng: random.Random | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        self.config = config or GroupConfig()
        #: Packs task data wherever it leaves this node and unpacks what comes in.
        self.codec = Codec(serializer)
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
        if node_id is not None and not is_name(node_id):
            raise ValueError(f"node_id must be a non-empty string of at most {MAX_NAME} "
                             f"printable characters without spaces, got {node_id!r}")
        if isinstance(secret, str):
            secret = Keyring.parse(secret, max_skew=self.config.max_clock_skew)
        self.keyring = secret
        if transport is None:
            for peer in peers:
                check_peer(peer)
            if secret is None and not insecure and not _is_loopback(host):
                raise ValueError(
                    f"host: refusing to listen on {host!r} without a secret, because any "
                    "machine that reaches it could fill and drain tasks; pass secret=... "
                    "(or GOBUCKET_SECRET), or insecure=True on a trusted network")
            transport = HttpTransport(host, port, advertise=advertise, keyring=secret,
                                      max_body=self.config.max_body,
                                      port_fallback=port_fallback, tls=tls)
        self.transport = transport
        #: Trusts the network: a node without a secret may listen beyond
        #: loopback, or be mounted in an app (see :meth:`attach`).
        self.insecure = insecure
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
        # With replicas: the backups of tasks held here, and those held for peers.
        self._replicas = Replicas(self)
        self._backups = Backups(self)
        # Holders proven gone or presumed lost whose loss report waits for
        # backups to take their tasks over: node id -> loop time it ends.
        self._awaiting: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._stopped: asyncio.Future[None] | None = None
        #: Recent membership changes, overflows and drains (for the dashboard).
        self.events = EventFeed()
        #: Fills per bucket: ``[local, forwarded, rejected]`` (ClusterFullError).
        self.fill_counts: dict[str, list[int]] = {name: [0, 0, 0] for name in self.buckets}
        #: drain/get calls made here by answer: ``(op, result)`` -> count.
        self.lookup_counts: Counter[tuple[str, str]] = Counter()
        #: Tasks reported lost (``on_tasks_lost``), per peer that held them.
        self.lost_by_peer: Counter[str] = Counter()
        #: Tasks peers handed to this node as they stopped, per peer.
        self.handoffs_received: Counter[str] = Counter()
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

    @functools.cached_property
    def view(self) -> GroupView:
        """A read-only view of this node's figures (what the dashboard,
        ``/metrics`` and ``/v1/status`` show; see :mod:`.view`)."""
        return GroupView(self)

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

    def _is_member_host(self, host: str) -> bool:
        """Does a known member advertise an address on ``host``?"""
        if self._membership is None:
            return False
        return any(m.addr.rpartition(":")[0].strip("[]") == host
                   for m in self._membership.members.values())

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

    # -- in the user's own web app -----------------------------------------------

    def attach(self, app: web.Application, path: str = "/gobucket", *,
               pages_token: str | None = None) -> None:
        """Serve this node on an aiohttp app's own port, under ``path``.

        Adds the peer protocol (signed as on the node's own port), the
        dashboard, ``/metrics`` and ``/v1/status`` to ``app``, and starts
        and stops the group with it (``app.cleanup_ctx``). Call before the
        app runs. The group must be given ``advertise``, the address its
        peers reach the app at (``host:port``; ``path`` is appended), and a
        ``secret`` (or ``insecure=True``). Peers list it as
        ``host:port/gobucket``. With ``pages_token``, ``/metrics`` and
        ``/v1/status`` need it as a bearer token (see
        :func:`~gobucket_py.serve_pages`). Example::

            group = TaskBucketGroup(buckets, ["10.0.0.2:8080/gobucket"],
                                    advertise="10.0.0.1:8080", secret=secret)
            app = web.Application()
            group.attach(app)
            web.run_app(app, port=8080)
        """
        from .mount import attach

        attach(self, app, path, pages_token)

    def asgi(self, path: str = "/gobucket", *, pages_token: str | None = None) -> NodeApp:
        """An ASGI app serving this node, to mount at ``path`` in FastAPI or
        Starlette (``app.mount("/gobucket", group.asgi())``): the same routes
        and rules as :meth:`attach`. Mounted apps get no lifespan events, so
        start and stop the group in the outer app's lifespan::

            @contextlib.asynccontextmanager
            async def lifespan(app):
                async with group:
                    yield

            app = FastAPI(lifespan=lifespan)
            app.mount("/gobucket", group.asgi())

        Served as the top-level ASGI app instead, it runs the group's
        lifespan itself. ``pages_token`` is as for :meth:`attach`.
        """
        from .mount import NodeApp, mount

        return NodeApp(self, mount(self, path), pages_token)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen, contact the seeds, and start probing. Start once."""
        if self.state is not GroupState.NEW:
            raise RuntimeError(f"cannot start a group that is {self.state.value}")
        self.state = GroupState.RUNNING
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
        if isinstance(self.transport, HttpTransport):
            # Known members' hosts get past the connection cap (see cluster/guard.py).
            self.transport.limits.trusted = self._is_member_host
        self._forwarder = Forwarder(self.transport, membership, self.config)
        self._forwarder.on_batch = self._forwarded_batch
        self._replicas.install()
        for name, bucket in self.buckets.items():
            bucket.node = self.node_id
            bucket.add_outcome_watcher(self._ended.task_ended if name not in self._replicas.ks
                                       else self._task_ended)
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
                mounted = not getattr(self.transport, "listen", True)
                await membership.announce_leave(mounted=mounted)
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
                if mounted:  # its app stopped listening already: say when it is over
                    await membership.announce_leave(done=True)
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

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; ``stop`` waits for it, then cancels it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _task_ended(self, task: Task) -> None:
        self._ended.task_ended(task)
        self._replicas.task_ended(task)

    def _peer_changed(self, member: Member, old: MemberState | None) -> None:
        if self._replicas.ks or self._backups.records:
            if member.state is MemberState.DEAD:
                self._replicas.holder_gone(member.node_id, dead=True)
            elif member.state is MemberState.LEFT:
                self._replicas.holder_gone(member.node_id)
                self._backups.primary_left(member)
            elif member.state is MemberState.ALIVE and old in (MemberState.SUSPECT,
                                                               MemberState.DEAD):
                self._backups.primary_back(member)
                self._replicas.holder_back(member.node_id)
        new = member.state.value
        text = (f"{member.node_id} joined ({member.addr})" if old is None
                else f"{member.node_id}: {old.value} -> {new}")
        self.events.add("peer_joined" if old is None else f"peer_{new}", text,
                        peer=member.node_id)

    def _forwarded_batch(self, member: Member, accepted: int, sent: int, handoff: bool) -> None:
        what = "handoff" if handoff else "overflow"
        self.events.add_or_merge(what, member.node_id, accepted, sent)

    def _peer_restarted(self, member: Member, was: MemberState) -> None:
        self._replicas.holder_gone(member.node_id)  # its backups died with it
        if was is MemberState.LEFT:
            # It left gracefully: its tasks were handed off (drains find them).
            self._routes.forget_node(member.node_id)
            return
        self._backups.primary_gone(member, restarted=True)
        self._report_lost(member.node_id, member.boot, "restarted", other=True)

    def _peer_lost(self, member: Member) -> None:
        self._backups.primary_gone(member, restarted=False)
        self._report_lost(member.node_id, member.boot, "presumed lost")

    def awaiting_promotion(self, node_id: str) -> bool:
        """Is a loss report for ``node_id`` waiting for backups to take over?"""
        until = self._awaiting.get(node_id)
        return until is not None and asyncio.get_running_loop().time() < until

    def _unresolved(self, node_id: str) -> bool:
        """Is ``node_id`` silent but not yet presumed lost, or gone with its loss
        report waiting for backups to take over (so routes to it stay)?"""
        if self._awaiting and self.awaiting_promotion(node_id):
            return True
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

    def _report_lost(self, node_id: str, boot: str, why: str, *, other: bool = False,
                     waited: bool = False) -> None:
        """Report once every task routed to ``node_id`` (in ``boot``; with
        ``other``, in any earlier boot) as lost. With replicas, first wait
        ``promote_grace`` for backups to say they took tasks over."""
        if self._replicas.ks and not waited:
            loop = asyncio.get_running_loop()
            grace = self.config.promote_grace
            self._awaiting[node_id] = loop.time() + grace
            loop.call_later(grace, lambda: self._report_lost(node_id, boot, why, other=other,
                                                             waited=True))
            return
        if waited and self._awaiting.get(node_id, 0.0) <= asyncio.get_running_loop().time():
            self._awaiting.pop(node_id, None)
        if not self.running and self.state is not GroupState.STOPPING:
            return
        for bucket, task_ids in self._routes.mark_lost(node_id, boot, other=other).items():
            self._tell_lost(node_id, bucket, task_ids, why)

    def _report_lost_ids(self, node_id: str, bucket: str, task_ids: list[str], why: str) -> None:
        """Report these tasks routed to ``node_id`` as lost (each once)."""
        marked = self._routes.mark_lost_ids(bucket, task_ids)
        if marked:
            self._tell_lost(node_id, bucket, marked, why)

    def _tell_lost(self, node_id: str, bucket: str, task_ids: list[str], why: str) -> None:
        self.lost_counts[bucket] = self.lost_counts.get(bucket, 0) + len(task_ids)
        self.lost_by_peer[node_id] += len(task_ids)
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
        naming the type when its data could not travel to a peer (always
        for a task that overflows; for every task when
        ``config.check_payloads`` applies -- by default, whenever the group
        has peers). Fills that overflow in the same event-loop pass are
        placed together, as by :meth:`fill_many`.
        """
        local = self.buckets.get(bucket)
        if local is None or local.closed or self.state is not GroupState.RUNNING:
            local = self._open_bucket(bucket)  # raises why not
        if local.free > 0 or task_id in local:  # no exception on the overflow path
            if data is not None and self._checks_payloads():
                try:  # before the fill: a refused fill changes nothing
                    self.codec.pack(data)
                except TypeError as exc:
                    raise self._cannot_travel(bucket, task_id, exc) from exc
            task = local.fill_nowait(task_type, task_id, data, run_after=run_after,
                                     life_span=life_span)
            if task_type is TaskType.TIME_BOMB and bucket in self._replicas.ks:
                await self._back_up_one(local, task)
            self.fill_counts[bucket][0] += 1
            return FillResult(bucket, task_id, self.node_id, False, task)
        ra, ls = task_times(local, task_type, run_after, life_span)
        item = encode_item(bucket, task_id, data, task_type, ra, ls, self.codec)
        return await self._overflow.fill_one(bucket, item)

    def _checks_payloads(self) -> bool:
        """Must every fill's data be packable (``GroupConfig.check_payloads``)?"""
        check = self.config.check_payloads
        if check is None:  # whenever there is a peer the data may travel to
            return bool(self.seeds) or bool(self._membership and self._membership.members)
        return check

    def _cannot_travel(self, bucket: str, task_id: str, error: TypeError) -> TypeError:
        return TypeError(f"task {task_id!r} in bucket {bucket!r} was not accepted: its data "
                         f"could not travel to a peer: {error}")

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
        check, codec = self._checks_payloads(), self.codec

        def overflow() -> Iterator[tuple[int, Item]]:
            # Lazy, so the first batches are on the wire while later tasks
            # are still being read (and local room is checked as it is then).
            for task_id, data in pairs:
                try:
                    if local.free > 0 or task_id in local:
                        if check and data is not None:
                            try:
                                codec.pack(data)
                            except TypeError as exc:
                                raise self._cannot_travel(bucket, task_id, exc) from exc
                        task = local.fill_nowait(task_type, task_id, data,
                                                 run_after=run_after, life_span=life_span)
                        results.append(FillResult(bucket, task_id, self.node_id, False, task))
                        counts[0] += 1
                        continue
                    item = encode_item(bucket, task_id, data, task_type, ra, ls, codec)
                except (GobucketError, TypeError, ValueError) as exc:
                    results.append(exc)
                    continue
                results.append(None)
                yield len(results) - 1, item

        await self._overflow.place_many(bucket, overflow(), results)
        if task_type is TaskType.TIME_BOMB and bucket in self._replicas.ks:
            here = [(i, r.task) for i, r in enumerate(results)
                    if isinstance(r, FillResult) and r.task is not None]
            refused = await self._back_up(local, [task for _, task in here])
            for (index, _), error in zip(here, refused, strict=True):
                if error is not None:
                    results[index] = error
                    counts[0] -= 1
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    async def _back_up_one(self, local: TaskBucket, task: Task) -> None:
        """Back up one time-bomb filled here (with the others of this loop
        pass); raises NoBackupRoomError if it could not be (it is taken back)."""
        replicas = self._replicas
        if await replicas.protect_one(local.name, task, self.node_id):
            return
        if await replicas.withdraw(local, task):
            raise self._no_backup_room(local, task)

    def _no_backup_room(self, local: TaskBucket, task: Task) -> NoBackupRoomError:
        k = self._replicas.ks[local.name]
        return NoBackupRoomError(
            f"task {task.id!r} in bucket {local.name!r} was not accepted: it needs "
            f"{k} backup(s) on other alive nodes (replicas={k}) and too few peers had "
            "room (or its data is not serializable)")

    async def _back_up(self, local: TaskBucket, tasks: list[Task]) -> list[Exception | None]:
        """Back up time-bombs filled here; None for each that got its
        backups, else the error (it was taken back, not accepted)."""
        replicas = self._replicas
        done = await replicas.protect(local.name, tasks, self.node_id)
        failed = [task for task, ok in zip(tasks, done, strict=True) if not ok]
        taken = dict(zip(failed, await asyncio.gather(
            *(replicas.withdraw(local, task) for task in failed)), strict=True))
        return [self._no_backup_room(local, task) if taken.get(task) else None
                for task in tasks]

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
        try:
            result = await self._lookup.drain(bucket, task_id)
        except PeerUnavailableError:
            self.lookup_counts["drain", "unavailable"] += 1
            raise
        self.lookup_counts["drain", result.outcome.value] += 1
        return result

    async def get(self, bucket: str, task_id: str) -> TaskInfo | None:
        """Describe a task wherever it lives, or None if no node has it.

        A task that ended recently is described with its terminal state
        (``type`` None); one whose holder was lost has state LOST. Raises
        :class:`PeerUnavailableError` when a node that may hold it could
        not say (see :meth:`drain`)."""
        try:
            info = await self._lookup.get(bucket, task_id)
        except PeerUnavailableError:
            self.lookup_counts["get", "unavailable"] += 1
            raise
        self.lookup_counts["get", "none" if info is None else "found"] += 1
        return info
