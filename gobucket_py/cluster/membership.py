"""Who is in the cluster, and who is alive: the peer table and failure detection.

A simpler relative of SWIM, sized for clusters of a few to a few dozen nodes:

- **Direct probes.** Every ``probe_interval`` each node pings every known peer.
  The ping and its ack carry the sender's :class:`~.protocol.NodeHeader`
  (identity, boot id, incarnation, free capacity per bucket) and the member
  list (peer exchange), so capacity is never staler than one interval and a
  node that knows one seed learns the rest.
- **Indirect probes.** A missed ping is retried through up to
  ``indirect_probes`` other peers (``ping-req``), which tells a dead node from
  a broken link. If they fail too, the node becomes *suspect* -- unless the
  evidence is void (as in Lifeguard): it spoke to us while we probed it, or
  our own event loop stalled during the indirect round, so the timeouts
  measured our stall rather than its silence. A busy node is not a dead one.
- **Suspicion.** A suspect that answers anything within ``suspicion_timeout``
  is alive again; otherwise it is *dead*. A node that hears it is gossiped as
  suspect or dead bumps its incarnation to refute it.
- **Incarnations.** A new ``boot`` id for a known node id means it restarted:
  its old tasks are gone (``on_restart``).
- **Leaving.** A stopping node says so (``leaving`` in its header and a LEAVE
  message); peers mark it *left*, not dead, and stop routing to it.
- **Presumed lost.** A peer dead for ``lost_after`` seconds with the same boot
  id (it may only have been stalled or cut off until then) is *presumed lost*
  (``Member.lost``, ``on_lost``). If it speaks again with the same boot id it
  was not lost after all (``on_returned``, logged as
  ``event=peer_returned_after_lost``).
- **Pruning.** Dead peers (once presumed lost) and left peers are removed from
  the table ``prune_after`` seconds after they died or left (``on_pruned``):
  they are no longer probed, gossiped or retried, and gossip about an unknown
  node that is dead or left is ignored, so nothing resurrects them. The
  table stays bounded however many nodes come and go. A pruned seed's
  address stays on the join list: seeds are the configured cluster.
- **Node id clashes.** Two live nodes with one node id would make every peer
  see a "restart" at each message. A message whose node id belongs to a
  member heard from within the last few probe intervals at *another* address
  and with another boot id -- or that carries our own node id with another
  boot id -- is refused with a :class:`~gobucket_py.ProtocolError` (400)
  naming the node that holds the id, and logged at ERROR
  (``event=node_id_clash``) on both sides; the member's record is left
  alone. A restarted node is not a clash: at the same address it always is
  a restart, and at a new one it is accepted once the old instance has
  fallen silent.
- **Self-aliases.** A seed that answers with our own node id and boot id is
  this node under another name (``localhost`` for ``127.0.0.1``, the bind
  address for the advertised one); it is dropped from the join list for good
  (``event=seed_is_self``).

All durations are measured on the event loop's monotonic clock; wall-clock
time (``Member.last_heard``) is kept for display only, so a clock step never
hides a dead peer. Until they are pruned, dead peers are still probed every
``probe_interval`` and left ones retried every ``rejoin_interval`` (either may
come back); unreached seeds are retried every ``rejoin_interval`` for ever.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..config import GroupConfig
from ..errors import GobucketError, PeerError, ProtocolError
from ..observe.histogram import Histogram
from .protocol import Kind, NodeHeader, check_gossip
from .protocol import field as msg_field
from .transport import Transport

__all__ = ["CLASH_TEXT", "Member", "MemberCallback", "MemberState", "Membership", "PeerInfo",
           "RestartCallback"]

log = logging.getLogger("gobucket_py")

#: Part of the text of the 400 a node answers to a sender whose node id is
#: already used by another live node: "node id X is already used by the node
#: at ADDR (boot B)".
CLASH_TEXT = "is already used by the node at"
#: A node id clash is logged at most once per clashing address this often (s).
CLASH_LOG_INTERVAL = 10.0


class MemberState(StrEnum):
    """A peer's state as this node sees it."""

    #: Answers probes; tasks may be routed to it.
    ALIVE = "alive"
    #: Missed a direct and the indirect probes; may still refute.
    SUSPECT = "suspect"
    #: Did not refute in time. Its tasks are unreachable; after ``lost_after``
    #: seconds it is also presumed lost (``Member.lost``).
    DEAD = "dead"
    #: Announced a graceful stop; its pending tasks were handed off.
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A read-only view of one peer for users (``group.peers``)."""

    node_id: str
    address: str
    state: MemberState
    free: dict[str, int]
    #: Wall-clock time (``time.time()``) it was last heard from, for display.
    last_heard: float | None
    boot_id: str
    #: Seconds since it was last heard from, on the monotonic clock (immune
    #: to wall-clock steps); None if never heard or read outside the loop.
    heard_ago: float | None = None
    #: Dead for ``lost_after`` seconds with the same boot id: presumed lost.
    lost: bool = False


@dataclass(slots=True, eq=False)
class Member:
    """The mutable record this node keeps about one peer."""

    node_id: str
    addr: str
    boot: str
    incarnation: int = 0
    state: MemberState = MemberState.ALIVE
    #: Free slots per bucket as last reported by the peer itself.
    free: dict[str, int] = field(default_factory=dict)
    #: Forwards sent there that its last report may not include yet.
    inflight: dict[str, int] = field(default_factory=dict)
    #: Wall-clock time (``time.time()``) of the last direct evidence; for
    #: display only, never compared (the clock may step).
    last_heard: float | None = None
    #: Loop time (monotonic) of the last direct evidence; what logic uses.
    heard_at: float | None = None
    #: Loop time of the last state change.
    state_since: float = 0.0
    #: Dead for ``lost_after`` seconds with the same boot id: presumed lost.
    #: Cleared when it speaks again or restarts.
    lost: bool = False
    probing: bool = False

    def estimate(self, bucket: str) -> int:
        """Free slots for ``bucket``, minus what we sent since; -1 if it has no such bucket."""
        free = self.free.get(bucket)
        if free is None:
            return -1
        return free - self.inflight.get(bucket, 0)

    def info(self) -> PeerInfo:
        """A read-only snapshot (``heard_ago`` needs a running loop)."""
        heard_ago = None
        if self.heard_at is not None:
            try:
                now = asyncio.get_running_loop().time()
            except RuntimeError:
                pass
            else:
                heard_ago = max(0.0, now - self.heard_at)
        return PeerInfo(self.node_id, self.addr, self.state, dict(self.free), self.last_heard,
                        self.boot, heard_ago, self.lost)


#: Called as ``on_change(member, old_state)`` when a peer joins (old None),
#: changes state or restarts. Must not block.
ChangeCallback = Callable[[Member, MemberState | None], None]
#: Called as ``on_restart(member, was_state)`` when a known peer shows a new
#: boot id: its old tasks are gone. ``member`` already carries the new boot
#: id and address (and ``lost`` is False again); ``was_state`` is its state
#: before, so ``MemberState.LEFT`` means it had stopped gracefully (its
#: pending tasks were handed off) and ``DEAD``/``SUSPECT``/``ALIVE`` that it
#: stopped without saying so. Must not block.
RestartCallback = Callable[[Member, MemberState], None]
#: Called as ``callback(member)`` (``on_lost``, ``on_returned``,
#: ``on_pruned``). Must not block.
MemberCallback = Callable[[Member], None]


class Membership:
    """The peer table of one node and the loops that keep it true."""

    def __init__(self, *, node_id: str, boot: str, transport: Transport, config: GroupConfig,
                 capacity: Callable[[], dict[str, int]], seeds: list[str],
                 rng: random.Random | None = None) -> None:
        self.node_id = node_id
        self.boot = boot
        self.transport = transport
        self.config = config
        self.capacity = capacity
        self.incarnation = 0
        self.leaving = False
        self.members: dict[str, Member] = {}
        #: True once a peer's member list has been merged: until then this
        #: node does not know who could hold a task, so it cannot say "nowhere".
        self.joined = False
        self.seeds = list(dict.fromkeys(seeds))
        self._unreached = set(self.seeds)
        self.rng = rng or random.Random()
        self.on_change: ChangeCallback | None = None
        #: See :data:`RestartCallback`: ``on_restart(member, was_state)``.
        self.on_restart: RestartCallback | None = None
        #: ``on_lost(member)``: called once when a peer has been dead for
        #: ``lost_after`` seconds with the same boot id (``member.lost`` is set).
        self.on_lost: MemberCallback | None = None
        #: ``on_returned(member)``: a peer presumed lost spoke again with the
        #: same boot id (``member.lost`` is cleared; its state is already new).
        self.on_returned: MemberCallback | None = None
        #: ``on_pruned(member)``: a dead (presumed lost) or left peer was
        #: removed from ``members`` after ``prune_after`` seconds.
        self.on_pruned: MemberCallback | None = None
        #: Round-trip time of each successful direct probe (seconds).
        self.probe_rtt = Histogram()
        self._loops: list[asyncio.Task[None]] = []
        self._probes: set[asyncio.Task[None]] = set()
        #: The one pending timer of each member (suspicion expiry, presumed
        #: lost, or prune), cancelled on a state change and on stop.
        self._timers: dict[Member, asyncio.TimerHandle] = {}
        #: Addresses found to be this node itself; never joined again.
        self._aliases: set[str] = set()
        #: Addresses learned second-hand -> loop time of the last join attempt.
        self._learned: dict[str, float] = {}
        # node id -> (state, first heard, last heard): unknown nodes that
        # peers gossip as dead or left (see unreached()).
        self._rumours: dict[str, tuple[str, float, float]] = {}
        self._started = 0.0  # loop time of start()
        #: Clashing address -> loop time its node id clash was last logged.
        self._clash_logged: dict[str, float] = {}

    # -- messages --------------------------------------------------------------

    def header(self) -> list[Any]:
        """Our packed :class:`NodeHeader`, with fresh capacity."""
        return NodeHeader(self.node_id, self.boot, self.transport.address, self.incarnation,
                          self.leaving, self.capacity()).pack()

    def gossip(self) -> list[list[Any]]:
        """Member entries for peer exchange."""
        return [[m.node_id, m.boot, m.addr, m.incarnation, m.state.value]
                for m in self.members.values()]

    def _set_state(self, member: Member, state: MemberState) -> None:
        old = member.state
        if old is state:
            return
        member.state = state
        member.state_since = asyncio.get_running_loop().time()
        self._arm(member)
        bad = state in (MemberState.DEAD, MemberState.SUSPECT)
        level = logging.WARNING if bad else logging.INFO
        log.log(level, "peer %s event=peer_%s node=%s peer=%s addr=%s", state.value, state.value,
                self.node_id, member.node_id, member.addr)
        if self.on_change is not None:
            self.on_change(member, old)

    def _arm(self, member: Member) -> None:
        """(Re)start the timer of the member's current state, on loop time."""
        old = self._timers.pop(member, None)
        if old is not None:
            old.cancel()
        cfg = self.config
        since = member.state_since
        if member.state is MemberState.SUSPECT:  # expire on time, not at the next probe tick
            delay, then = cfg.suspicion_timeout, self._expire
        elif member.state is MemberState.DEAD:
            delay, then = cfg.lost_after, self._presume_lost
        elif member.state is MemberState.LEFT:
            delay, then = cfg.prune_after, self._prune
        else:
            return
        self._timers[member] = asyncio.get_running_loop().call_later(delay, then, member, since)

    def _current(self, member: Member, since: float) -> bool:
        """True if a timer armed at ``since`` still applies to ``member``."""
        self._timers.pop(member, None)
        return self.members.get(member.node_id) is member and member.state_since == since

    def _clash_window(self) -> float:
        """A member heard from this recently is alive: another node using its id clashes."""
        return 2 * self.config.probe_interval + self.config.probe_timeout

    def _log_clash(self, addr: str, message: str, *args: object) -> None:
        """Log an ERROR about a clash with ``addr``, at most once per CLASH_LOG_INTERVAL."""
        now = asyncio.get_running_loop().time()
        last = self._clash_logged.get(addr)
        if last is not None and now - last < CLASH_LOG_INTERVAL:
            return
        if len(self._clash_logged) >= 256:  # bounded whatever a hostile sender claims
            self._clash_logged = {a: t for a, t in self._clash_logged.items()
                                  if now - t < CLASH_LOG_INTERVAL}
        self._clash_logged[addr] = now
        log.error(message, *args)

    def heard(self, raw_header: object) -> Member | None:
        """Direct evidence: the sender of a message is alive (or leaving).

        Returns its record, or None when the message came from ourselves.
        Raises :class:`~gobucket_py.ProtocolError` (a 400 for a request) when
        the header is malformed or its node id is used by another live node
        (ours included): the sender is refused and the record is untouched.
        """
        h = NodeHeader.unpack(raw_header)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if h.node_id == self.node_id:
            if h.boot != self.boot:
                self._log_clash(
                    h.addr, "another node uses our node id; refusing it event=node_id_clash "
                    "node=%s addr=%s boot=%s other_addr=%s other_boot=%s", self.node_id,
                    self.transport.address, self.boot, h.addr, h.boot)
                raise ProtocolError(f"node id {h.node_id} {CLASH_TEXT} "
                                    f"{self.transport.address} (boot {self.boot})")
            self._unreached.discard(h.addr)
            return None
        member = self.members.get(h.node_id)
        if (member is not None and member.boot != h.boot and member.addr != h.addr
                and member.state in (MemberState.ALIVE, MemberState.SUSPECT)
                and member.heard_at is not None and now - member.heard_at < self._clash_window()):
            # Both are alive: two nodes share one node id. Not a restart.
            self._log_clash(
                h.addr, "two live nodes use one node id; refusing the newcomer "
                "event=node_id_clash node=%s peer=%s addr=%s boot=%s other_addr=%s "
                "other_boot=%s", self.node_id, h.node_id, member.addr, member.boot, h.addr,
                h.boot)
            raise ProtocolError(f"node id {h.node_id} {CLASH_TEXT} {member.addr} "
                                f"(boot {member.boot})")
        self._unreached.discard(h.addr)
        self._learned.pop(h.addr, None)
        returned = False
        if member is None:
            member = Member(h.node_id, h.addr, h.boot, h.incarnation,
                            state=MemberState.LEFT if h.leaving else MemberState.ALIVE)
            member.state_since = now
            self.members[h.node_id] = member
            self._arm(member)
            log.info("peer joined event=peer_joined node=%s peer=%s addr=%s", self.node_id,
                     h.node_id, h.addr)
            if self.on_change is not None:
                self.on_change(member, None)
        elif member.boot != h.boot:
            was = member.state
            log.warning("peer restarted event=peer_restarted node=%s peer=%s addr=%s "
                        "old_addr=%s was=%s", self.node_id, h.node_id, h.addr, member.addr,
                        was.value)
            member.boot = h.boot
            member.addr = h.addr
            member.incarnation = h.incarnation
            member.inflight.clear()
            member.lost = False
            if (MemberState.LEFT if h.leaving else MemberState.ALIVE) is was:
                member.state_since = now  # a new life in the same state: restart its timer
                self._arm(member)
            if self.on_restart is not None:
                self.on_restart(member, was)
        elif member.lost:
            returned, member.lost = True, False
        member.addr = h.addr
        member.incarnation = max(member.incarnation, h.incarnation)
        member.free = h.free
        member.heard_at = now
        member.last_heard = time.time()
        self._set_state(member, MemberState.LEFT if h.leaving else MemberState.ALIVE)
        if returned:
            log.warning("peer presumed lost is back with the same boot id "
                        "event=peer_returned_after_lost node=%s peer=%s addr=%s", self.node_id,
                        member.node_id, member.addr)
            if self.on_returned is not None:
                self.on_returned(member)
        return member

    def merge(self, raw_members: object) -> None:
        """Peer exchange: learn new members; accept dead/left news; refute suspicion."""
        self.merge_checked(check_gossip(raw_members))

    def merge_checked(self, entries: list[tuple[str, str, str, int, str]]) -> None:
        """:meth:`merge` for entries already validated by ``check_gossip``."""
        self.joined = True  # a peer's member list: this node knows who is out there
        for node_id, boot, addr, inc, state in entries:
            if node_id == self.node_id:
                if state in ("suspect", "dead") and boot == self.boot and inc >= self.incarnation:
                    self.incarnation = inc + 1  # refute: our next messages carry it
                continue
            member = self.members.get(node_id)
            if member is None:
                # Dead or left news about a node we do not know (or pruned)
                # does not make it a member: it must not bring a forgotten
                # node back. It is remembered as a rumour: that node may still
                # hold tasks, so for a while this node cannot say "nowhere".
                if state in ("alive", "suspect"):
                    self._learn(addr)
                else:
                    self._rumour(node_id, state)
                continue
            if boot != member.boot or inc < member.incarnation:
                continue
            if state in ("dead", "left") and member.state in (MemberState.ALIVE,
                                                                MemberState.SUSPECT):
                # Dead news about a node we still hear from directly needs a
                # newer incarnation; our own probes settle the rest.
                if (state == "left" or inc > member.incarnation
                        or member.state is MemberState.SUSPECT):
                    self._set_state(member, MemberState(state))

    def _learn(self, addr: str) -> None:
        """A node learned second-hand: probe it before trusting it with tasks.

        At most one attempt per ``rejoin_interval`` per address, and only
        while peers keep naming it: an address that never answers is not
        kept (only seeds are retried for ever).
        """
        if addr in self._aliases or addr == self.transport.address:
            return
        now = asyncio.get_running_loop().time()
        if addr in self._unreached:  # a seed: the join loop retries it anyway
            self._learned[addr] = now  # but peers say it is alive: it may hold tasks
            return
        last = self._learned.get(addr)
        if last is not None and now - last < self.config.rejoin_interval:
            return
        self._learned[addr] = now
        self._track(self._attempt(addr))

    def young(self) -> bool:
        """Started less than ``lost_after`` ago (peers may not have found it yet)."""
        return asyncio.get_running_loop().time() - self._started < self.config.lost_after

    def unreached(self) -> list[str]:
        """Nodes this node does not know that may hold tasks: addresses
        peers named as alive lately and not reached yet, nodes they name as
        dead (for ``lost_after`` after the first such rumour) or left (for
        ``stop_grace`` and two request timeouts: it may still be handing
        off), and seeds not reached since start (for ``lost_after``)."""
        now = asyncio.get_running_loop().time()
        cfg = self.config
        fresh = 2 * cfg.rejoin_interval
        leaving = cfg.stop_grace + 2 * cfg.request_timeout
        self._rumours = {n: r for n, r in self._rumours.items()
                         if now - r[2] < fresh and n not in self.members}
        rumours = [n for n, (state, first, _) in self._rumours.items()
                   if now - first < (cfg.lost_after if state == "dead" else leaving)]
        # Seeds never reached since this node started (it may have restarted
        # into a partition): presumed empty after lost_after, like a dead peer.
        seeds = ([a for a in self._unreached if a not in self._learned]
                 if now - self._started < cfg.lost_after else [])
        return list(self._learned) + rumours + seeds

    def _rumour(self, node_id: str, state: str) -> None:
        now = asyncio.get_running_loop().time()
        known = self._rumours.get(node_id)
        first = now if known is None or known[0] != state else known[1]
        self._rumours[node_id] = (state, first, now)

    def forget_unreached(self, addr: str) -> None:
        """Drop an address from the join list for good (it is ourselves)."""
        self._aliases.add(addr)
        self._unreached.discard(addr)
        self._learned.pop(addr, None)

    # -- probing -------------------------------------------------------------------

    async def ping(self, addr: str, timeout: float) -> Member | None:
        """One direct probe. Raises PeerError when it fails.

        Returns the record of the node that answered (which may not be the
        one expected at ``addr``), or None if it was ourselves.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await self.transport.call(
            addr, Kind.PING, {"v": 1, "from": self.header(), "members": self.gossip()}, timeout)
        self.probe_rtt.observe(loop.time() - started)
        member = self.heard(msg_field(reply, "from", list))
        self.merge(reply.get("members"))
        return member

    def _refused_as_clash(self, addr: str, exc: GobucketError) -> bool:
        """Log the peer's refusal of our node id (its 400), if that is what ``exc`` is."""
        text = str(exc)
        # A ProtocolError is our own refusal of the reply (already logged in heard).
        if isinstance(exc, ProtocolError) or CLASH_TEXT not in text:
            return False
        self._log_clash(addr, "a peer refuses us: our node id is used by another live node "
                        "event=node_id_clash node=%s addr=%s boot=%s peer_addr=%s error=%s",
                        self.node_id, self.transport.address, self.boot, addr, text)
        return True

    async def _probe(self, member: Member) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        since = began = loop.time()
        try:
            direct: GobucketError
            try:
                seen = await self.ping(member.addr, cfg.probe_timeout)
                if seen is member:
                    return
                # Another node answers at its address now: no evidence for it.
                direct = PeerError(f"{member.addr} is now node "
                                   f"{self.node_id if seen is None else seen.node_id}")
            except GobucketError as exc:
                self._refused_as_clash(member.addr, exc)
                direct = exc
            if member.state in (MemberState.DEAD, MemberState.LEFT):
                return
            started = loop.time()
            if await self._indirect(member):
                return
            if member.state is not MemberState.ALIVE:
                return
            if member.heard_at is not None and member.heard_at >= since:
                return  # it spoke to us meanwhile: alive, whatever the probes said
            took = loop.time() - started
            if took > cfg.probe_timeout * 1.5:  # the indirect round allows 1.25x
                log.info("own event loop stalled during a probe; not suspecting the peer "
                         "event=probe_inconclusive node=%s peer=%s took=%.3f", self.node_id,
                         member.node_id, took)
                return
            log.warning("direct and indirect probes failed event=probe_failed node=%s "
                        "peer=%s direct_took=%.3f indirect_took=%.3f heard_ago=%s error=%s",
                        self.node_id, member.node_id, started - began, took,
                        "-" if member.heard_at is None else
                        f"{loop.time() - member.heard_at:.3f}", direct)
            self._set_state(member, MemberState.SUSPECT)
        finally:
            member.probing = False

    async def _indirect(self, target: Member) -> bool:
        helpers = [m for m in self.members.values()
                   if m is not target and m.state is MemberState.ALIVE]
        helpers = self.rng.sample(helpers, min(len(helpers), self.config.indirect_probes))
        if not helpers:
            return False
        message = {"v": 1, "from": self.header(), "target": target.addr}
        # The helper's own probe takes up to probe_timeout; allow for the extra hop.
        timeout = self.config.probe_timeout * 1.25

        async def ask(helper: Member) -> bool:
            try:
                reply = await self.transport.call(helper.addr, Kind.PING_REQ, message, timeout)
            except GobucketError:
                return False
            ack = reply.get("ack")
            if not isinstance(ack, list):
                return False
            try:
                return self.heard(ack) is target  # not another node now at its address
            except PeerError:
                return False

        results = await asyncio.gather(*(ask(h) for h in helpers))
        return any(results)

    async def handle_ping_req(self, message: dict[str, Any]) -> dict[str, Any]:
        """Probe ``target`` for a peer; answer with its header, or no ack."""
        target = msg_field(message, "target", str)
        try:
            reply = await self.transport.call(
                target, Kind.PING, {"v": 1, "from": self.header(), "members": self.gossip()},
                self.config.probe_timeout)
            ack = reply.get("from")
            self.heard(ack)
        except GobucketError:
            ack = None
        return {"v": 1, "from": self.header(), "ack": ack}

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    def _spawn_probe(self, member: Member) -> None:
        if member.probing:
            return
        member.probing = True
        self._track(self._probe(member))

    async def _attempt(self, addr: str) -> None:
        try:
            member = await self.ping(addr, self.config.probe_timeout)
        except GobucketError as exc:
            if not self._refused_as_clash(addr, exc):
                log.debug("join attempt failed node=%s addr=%s error=%s", self.node_id, addr,
                          exc)
            return
        self._unreached.discard(addr)  # reached, whatever its spelling
        if member is None and addr not in self._aliases:
            # Our own node id and boot answered: this address is ourselves.
            self.forget_unreached(addr)
            if addr != self.transport.address:
                log.info("seed address is this node; not contacting it again "
                         "event=seed_is_self node=%s addr=%s seed=%s", self.node_id,
                         self.transport.address, addr)

    def _expire(self, member: Member, since: float) -> None:
        if self._current(member, since) and member.state is MemberState.SUSPECT:
            self._set_state(member, MemberState.DEAD)

    def _presume_lost(self, member: Member, since: float) -> None:
        if not self._current(member, since) or member.state is not MemberState.DEAD:
            return
        member.lost = True
        log.warning("peer dead too long with the same boot id; presumed lost "
                    "event=peer_lost node=%s peer=%s addr=%s dead_for=%.1f", self.node_id,
                    member.node_id, member.addr, self.config.lost_after)
        delay = max(0.0, since + self.config.prune_after - asyncio.get_running_loop().time())
        self._timers[member] = asyncio.get_running_loop().call_later(
            delay, self._prune, member, since)
        if self.on_lost is not None:
            self.on_lost(member)

    def _prune(self, member: Member, since: float) -> None:
        if not self._current(member, since) or member.state not in (MemberState.DEAD,
                                                                     MemberState.LEFT):
            return
        del self.members[member.node_id]
        # Seeds are the configured cluster: keep trying those no known node
        # holds (the pruned one's, under whatever spelling the seed list uses).
        held = {m.addr for m in self.members.values()}
        self._unreached.update(a for a in self.seeds
                               if a not in held and a not in self._aliases
                               and a != self.transport.address)
        log.info("peer forgotten event=peer_pruned node=%s peer=%s addr=%s state=%s",
                 self.node_id, member.node_id, member.addr, member.state.value)
        if self.on_pruned is not None:
            self.on_pruned(member)

    async def _probe_loop(self) -> None:
        cfg = self.config
        # Jitter so that nodes started together do not probe in lockstep.
        await asyncio.sleep(self.rng.uniform(0, cfg.probe_interval))
        while True:
            for member in list(self.members.values()):
                if member.state is not MemberState.LEFT:
                    self._spawn_probe(member)
            await asyncio.sleep(cfg.probe_interval)

    async def _join_once(self) -> None:
        own = self.transport.address
        self._unreached.discard(own)
        self._unreached -= self._aliases
        targets = list(self._unreached)
        targets += [m.addr for m in self.members.values() if m.state is MemberState.LEFT]
        now = asyncio.get_running_loop().time()
        self._learned = {a: t for a, t in self._learned.items()
                         if now - t < self.config.rejoin_interval}
        await asyncio.gather(*(self._attempt(a) for a in dict.fromkeys(targets)))

    async def _join_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.rejoin_interval * self.rng.uniform(0.8, 1.2))
            await self._join_once()

    async def start(self) -> None:
        """Contact the seeds once, then run the probe and rejoin loops."""
        self._started = asyncio.get_running_loop().time()
        await self._join_once()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._probe_loop()), loop.create_task(self._join_loop())]

    async def announce_leave(self) -> None:
        """Tell every reachable peer that we are leaving (best effort, bounded)."""
        self.leaving = True
        message = {"v": 1, "from": self.header()}
        targets = [m for m in self.members.values()
                   if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]

        async def tell(member: Member) -> None:
            try:
                await self.transport.call(member.addr, Kind.LEAVE, message,
                                          self.config.request_timeout)
            except GobucketError as exc:
                log.debug("leave not delivered node=%s peer=%s error=%s", self.node_id,
                          member.node_id, exc)

        await asyncio.gather(*(tell(m) for m in targets))

    async def stop(self) -> None:
        """Cancel the loops, the timers and in-flight probes and wait for them."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = [*self._loops, *self._probes]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._loops = []

    def alive(self) -> list[Member]:
        """Peers that may take tasks."""
        return [m for m in self.members.values() if m.state is MemberState.ALIVE]

    def reachable(self) -> list[Member]:
        """Peers worth asking about a task (alive or suspect)."""
        return [m for m in self.members.values()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]
