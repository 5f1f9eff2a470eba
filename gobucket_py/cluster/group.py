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
- :mod:`.fills`: the local-first half of fill, payload checks, and the
  backups a time-bomb filled here needs (with :mod:`.replicas`,
  :mod:`.backups`);
- :mod:`.reactions`, :mod:`.losses`: what the group does when a peer
  changes, restarts or is presumed lost, and reporting the tasks lost there;
- :mod:`.lifecycle`, :mod:`.handoff`: the group's states, starting (the
  membership and forwarding callbacks are wired there), the ordered
  graceful stop, and moving pending tasks to peers as it goes;
- :mod:`.arguments`: checks of the constructor's arguments;
- :mod:`.serve`, :mod:`.items`, :mod:`.transport`: what this node answers,
  a task on the wire, HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ..bucket import TaskBucket
from ..codec import Codec, Serializer
from ..config import GroupConfig
from ..errors import BucketClosedError, PeerUnavailableError, UnknownBucketError
from ..observe.events import EventFeed
from ..task import DrainResult, FillResult, TaskInfo, TaskType
from . import lifecycle
from .arguments import check_arguments, check_listen, check_options
from .auth import Keyring
from .backups import Backups
from .batches import BatchLedger
from .ended import EndedNotices
from .fills import Fills, cannot_travel
from .forward import Forwarder
from .handoff import Handoff
from .lifecycle import GroupState
from .lookup import Lookup
from .losses import Losses, TasksLost
from .membership import Membership, PeerInfo
from .overflow import Overflow
from .protocol import new_boot_id
from .reactions import PeerReactions
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

#: ``on_peer_schedule_failed(peer_id, bucket, task_id, error)``; may be async.
ScheduleFailed = Callable[[str, str, str, str], Any]


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
        self.buckets = check_arguments(self.config, buckets, peers, port, node_id)
        check_options(host=host, port_fallback=port_fallback, insecure=insecure, secret=secret,
                      advertise=advertise, tls=tls, transport=transport)
        if isinstance(secret, str):
            secret = Keyring.parse(secret, max_skew=self.config.max_clock_skew)
        self.keyring = secret
        if transport is None:
            check_listen(peers, host, secret, insecure)
            transport = HttpTransport(host, port, advertise=advertise, keyring=secret,
                                      max_body=self.config.max_body,
                                      port_fallback=port_fallback, tls=tls)
        self.transport = transport
        #: Trusts the network: a node without a secret may listen beyond
        #: loopback, or be mounted in an app (see :meth:`attach`).
        self.insecure = insecure
        self.seeds = list(peers)
        self._node_id = node_id
        self.boot_id = new_boot_id()
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
        self._views = self._overflow.views  # (read on every fill)
        self._lookup = Lookup(self)
        self._handoff = Handoff(self)
        self._ended = EndedNotices(self)
        # With replicas: the backups of tasks held here, and those held for peers.
        self._replicas = Replicas(self)
        self._backups = Backups(self)
        # Local fills; reporting tasks lost on a gone holder; what membership says.
        self._fills = Fills(self)
        #: placement="balanced": fills that fit here may go to a peer with more room.
        self._balanced = self.config.placement == "balanced"
        self._losses = Losses(self)
        self._reactions = PeerReactions(self)
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
        """This node's id (its advertised address unless given: over HTTP,
        ``""`` until :meth:`start` has bound the port)."""
        return self._node_id or self.transport.address

    @property
    def address(self) -> str:
        """``host:port`` as peers reach this node (over HTTP, ``""`` until
        :meth:`start` has bound the port)."""
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
        """Free slots per local bucket (0 unless running: before start,
        while stopping, after stop)."""
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
        """Listen, contact the seeds, and start probing. Start once: a
        second start raises RuntimeError; a port that cannot be bound raises
        OSError (see ``port_fallback``)."""
        await lifecycle.start(self)

    async def stop(self) -> None:
        """Leave gracefully. Idempotent.

        Announce leaving, refuse new fills, hand every pending task to peers
        with room (with its remaining times; offered again every probe
        interval while none has room), give running tasks what is left of
        ``stop_grace`` seconds, rescue the rest (``on_panic``), then close.
        Fills already placing a task on a peer get their answer first (at
        most ``forward_timeout + settle_timeout`` more).
        """
        await lifecycle.stop(self)

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

    # -- lost tasks (see losses.py) ----------------------------------------------

    def awaiting_promotion(self, node_id: str) -> bool:
        """Is a loss report for ``node_id`` waiting for backups to take over?"""
        return self._losses.awaiting_promotion(node_id)

    def _report_lost_ids(self, node_id: str, bucket: str, task_ids: list[str], why: str) -> None:
        """Report these tasks routed to ``node_id`` as lost (each once)."""
        self._losses.report_ids(node_id, bucket, task_ids, why)

    # -- fill --------------------------------------------------------------------

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

        Returns where it went. An id this node is placing, or forwarded to
        a peer, goes back to that peer first (one id filled from one node
        is live on at most one node). Raises :class:`UnknownBucketError`,
        :class:`DuplicateTaskError` (live here, on the peer it went to
        before, or on the peer that was chosen), :class:`ClusterFullError`
        (no node could take it; the callback ``on_peer_schedule_failed``
        is called for each peer that refused), :class:`PlacementUnknownError`
        (a peer may or may not have taken it, or may still hold the id
        from before: it was placed nowhere else; drain or get it to find
        out), :class:`BucketClosedError` unless the group is running
        (before start, while stopping, after stop), ``ValueError`` or
        ``TypeError`` for a bad ``task_id``, ``task_type``, ``run_after``
        or ``life_span``, and ``TypeError`` naming the type when its data
        could not travel to a peer (always for a task that overflows, or
        whose id is held as above; for every task when
        ``config.check_payloads`` applies -- by default, whenever the group
        has peers). Fills that overflow in the same event-loop pass are
        placed together, as by :meth:`fill_many`. To place many tasks from
        one coroutine, :meth:`fill_many`, or :meth:`fill_future` for
        ``asyncio.gather``, cost less per task.
        """
        local = self.buckets.get(bucket)
        if local is None or local.closed or self.state is not GroupState.RUNNING:
            local = self._open_bucket(bucket)  # raises why not
        # Forwarded from here, or being placed? (Two dict lookups first: this
        # is every fill's path.)
        placing, routed = self._views.get(bucket) or self._overflow.view(bucket)
        if (type(task_id) is str and (task_id in placing or task_id in routed)
                and self._overflow.held(bucket, task_id)):
            return await self._overflow.refill(local, task_id, data, task_type, run_after,
                                               life_span)
        if self._balanced and local.free > 0 and task_id not in local:
            placed = await self._fills.elsewhere(local, task_id, data, task_type, run_after,
                                                 life_span)
            if placed is not None:
                return placed
            if self._overflow.held(bucket, task_id):  # another fill of it, meanwhile
                return await self._overflow.refill(local, task_id, data, task_type,
                                                   run_after, life_span)
        # The body of Fills.here, inline: this is the path a single
        # awaited fill takes, and a call costs ~4% of it.
        if local.fits(task_id):  # no exception on the overflow path
            if data is not None and self._fills.checks_payloads():
                try:  # before the fill: a refused fill changes nothing
                    self.codec.pack(data)
                except TypeError as exc:
                    raise cannot_travel(bucket, task_id, exc) from exc
            task = local.fill_nowait(task_type, task_id, data, run_after=run_after,
                                     life_span=life_span)
            if task_type is TaskType.TIME_BOMB and bucket in self._replicas.ks:
                await self._fills.back_up_one(local, task)
            self.fill_counts[bucket][0] += 1
            return FillResult(bucket, task_id, self.node_id, False, task)
        return await self._overflow.fill_one(local, task_id, data, task_type, run_after,
                                             life_span, placing)

    def fill_future(
        self,
        bucket: str,
        task_id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: float | None = None,
        life_span: float | None = None,
    ) -> asyncio.Future[FillResult]:
        """:meth:`fill` started now: the :class:`asyncio.Future` of its answer.

        For many fills at once from one coroutine: ``asyncio.gather`` takes
        futures as they are, where it wraps each coroutine of :meth:`fill`
        in an asyncio task first (most of what a fill costs in that
        pattern). The task is in the local bucket, or queued for a peer,
        when this returns; with replicas or ``placement="balanced"`` its
        placement runs in a task started now instead, as
        ``asyncio.create_task(group.fill(...))`` would. Call it from the
        group's event loop. The future's result is the :class:`FillResult`,
        its exception what :meth:`fill` raises (never raised by the call,
        so ``gather(..., return_exceptions=True)`` gets each one); one
        nobody retrieves is logged by asyncio. Cancelling the future is
        cancelling an ``await`` of :meth:`fill`: the answer is given up; a
        task already placed or sent stays where it went (drain and get find
        it), except one that could not get its backups (replicas), which is
        taken back as its fill would have been.
        """
        try:
            if self._balanced or (task_type is TaskType.TIME_BOMB
                                  and bucket in self._replicas.ks):
                return self._fills.started(self.fill(bucket, task_id, data, task_type=task_type,
                                                     run_after=run_after, life_span=life_span))
            local = self.buckets.get(bucket)
            if local is None or local.closed or self.state is not GroupState.RUNNING:
                local = self._open_bucket(bucket)  # raises why not
            placing, routed = self._views.get(bucket) or self._overflow.view(bucket)
            if (type(task_id) is str and (task_id in placing or task_id in routed)
                    and self._overflow.held(bucket, task_id)):  # as in fill
                return self._fills.started(self._overflow.refill(
                    local, task_id, data, task_type, run_after, life_span))
            here = self._fills.here(local, task_id, data, task_type, run_after, life_span)
            if here is None:
                return self._overflow.fill_one(local, task_id, data, task_type, run_after,
                                               life_span, placing)  # its own future
        except Exception as exc:  # the future's, as a coroutine would raise it when awaited
            failed: asyncio.Future[FillResult] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        self.fill_counts[bucket][0] += 1
        future: asyncio.Future[FillResult] = asyncio.get_running_loop().create_future()
        future.set_result(FillResult(bucket, task_id, self.node_id, False, here))
        return future

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
        return await self._fills.many(bucket, tasks, task_type, run_after, life_span)

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
        retry answers DRAINED. Raises :class:`UnknownBucketError` for a
        bucket this node does not have, and :class:`BucketClosedError`
        before :meth:`start`. (NOT_FOUND has the exceptions listed in the
        README's "Known limits": a holder that restarted forgets what ended
        there; a seed never reached is presumed to hold nothing after
        ``lost_after``.)
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
        not say; other errors as for :meth:`drain`."""
        try:
            info = await self._lookup.get(bucket, task_id)
        except PeerUnavailableError:
            self.lookup_counts["get", "unavailable"] += 1
            raise
        self.lookup_counts["get", "none" if info is None else "found"] += 1
        return info
