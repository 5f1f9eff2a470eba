"""Who is in the cluster, and who is alive: the peer table and failure detection.

SWIM with Lifeguard, so that a node's cost does not grow with the cluster:

- **Probes.** Every ``probe_interval`` a node pings *one* peer, the next of
  a shuffled round over the alive and suspect members (shuffled again when
  it ends; a newcomer is put at a random place in the current round). Each
  ping and ack carries the sender's :class:`~.protocol.NodeHeader`
  (identity, boot id, incarnation, its own free capacity per bucket) and a
  few piggybacked membership updates -- never the whole member list.
- **Indirect probes.** A missed ping is retried through up to
  ``indirect_probes`` other peers (``ping-req``), which tells a dead node from
  a broken link; a ping lost as a UDP datagram is also retried over HTTP at
  the same time (a lost or queued datagram is not a dead peer, and a
  two-node cluster has no helpers). If they fail too, the node becomes *suspect* -- unless the
  evidence is void: it spoke to us while we probed it, or our own event loop
  stalled during the indirect round, so the timeouts measured our stall
  rather than its silence. A busy node is not a dead one.
- **Dissemination.** Joins, suspicions, deaths, leaves and refutations go
  into a bounded queue (:class:`~.gossip.Broadcasts`) and ride on the next
  probes and acks, each about ``4 * log10(N+1)`` times. Every
  :func:`~.gossip.sync_interval` (20 s up to 30 nodes, then growing with N)
  a node swaps whole member lists with one random peer, which repairs what
  the piggyback missed; a joining node does so with its seeds (then it
  knows who is out there: :attr:`Membership.joined`).
- **Suspicion (Lifeguard).** A suspect that answers anything, or refutes
  with a higher incarnation, is alive again; otherwise it is *dead* after
  :func:`~.gossip.suspicion_timeout`: ``suspicion_timeout`` up to 10 nodes,
  growing with ``log10(N)``, and down to half of that as other nodes
  independently confirm the suspicion (a node that hears of a suspicion
  probes the suspect itself with a probability that gives about 3 such
  checks at any N). Suspicion and death news about a peer that spoke to us
  within the last probe round is ignored (we have newer evidence). A node
  that hears it is suspected bumps its incarnation to refute it. *Local
  health*: failed probes and having to refute raise a multiplier (up to
  ``MAX_HEALTH``) that stretches this node's probe interval and timeouts,
  so a slow node accuses others less; each successful probe lowers it.
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
- **DNS seeds.** A seed ``dns:NAME:PORT`` is every A/AAAA record of
  ``NAME`` (see :mod:`.discovery`), looked up at start and at every rejoin
  round; what it finds is joined like a seed, except this node's own
  address. An address that leaves the name is no longer retried.
- **Unreached seeds.** A seed that has failed every join attempt for
  ``SEED_WARN_ROUNDS`` rejoin intervals (10 s with the defaults) is logged
  once at WARNING (``event=seed_unreachable``, with the last error), and
  once at INFO when it answers (``event=seed_reached``): a typo'd seed is
  not silent, and a seed that stays down is not logged every round.

All durations are measured on the event loop's monotonic clock; wall-clock
time (``Member.last_heard``) is kept for display only, so a clock step never
hides a dead peer. Until they are pruned, dead and left peers are retried
every ``rejoin_interval`` (either may come back); unreached seeds are
retried every ``rejoin_interval`` for ever.
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
from .discovery import Discovery, parse_dns
from .gossip import SUSPICION_CONFIRMATIONS, Broadcasts, suspicion_timeout, sync_interval
from .protocol import Kind, NodeHeader, check_gossip
from .protocol import field as msg_field
from .transport import Transport

__all__ = ["CLASH_TEXT", "SEED_WARN_ROUNDS", "Member", "MemberCallback", "MemberState",
           "Membership", "PeerInfo", "RestartCallback"]

log = logging.getLogger("gobucket_py")

#: Part of the text of the 400 a node answers to a sender whose node id is
#: already used by another live node: "node id X is already used by the node
#: at ADDR (boot B)".
CLASH_TEXT = "is already used by the node at"
#: A node id clash is logged at most once per clashing address this often (s).
CLASH_LOG_INTERVAL = 10.0
#: A seed that failed every join attempt for this many ``rejoin_interval`` s
#: (10 s with the defaults) is logged at WARNING: long enough for the nodes
#: of a cluster started together to come up, short enough that a typo'd seed
#: is noticed before the first overflow.
SEED_WARN_ROUNDS = 5
#: Lifeguard's local health multiplier goes up to this (probes then wait up
#: to 1 + MAX_HEALTH times longer).
MAX_HEALTH = 8
#: Peers that failure news and refutations are pushed to at once.
PUSH_FANOUT = 3
#: Seconds between two whole member-list swaps with a random peer, up to 30
#: nodes (then growing with N, see :func:`~.gossip.sync_interval`).
SYNC_INTERVAL = 20.0


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
    #: While SUSPECT: loop time the suspicion began here, and the nodes that
    #: suspect it (the first one, then independent confirmations).
    suspected_at: float = 0.0
    suspectors: set[str] = field(default_factory=set)
    #: Nodes whose suspicion of it was set aside (it had just spoken to us)
    #: -> loop time: confirmations if our own probe then fails.
    doubted_by: dict[str, float] = field(default_factory=dict)

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
        #: Seed addresses as given; ``dns:`` seeds are in ``discovery``.
        self.seeds = [s for s in dict.fromkeys(seeds) if parse_dns(s) is None]
        dns = [d for d in map(parse_dns, seeds) if d is not None]
        #: The ``dns:`` seeds and what they resolved to (None without any).
        self.discovery = Discovery(dns, node_id) if dns else None
        self._unreached = set(self.seeds)
        # Seed address -> loop time of the first failed join attempt of the
        # current episode, and the seeds already warned about in it.
        self._seed_failing: dict[str, float] = {}
        self._seed_warned: set[str] = set()
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
        #: Membership updates waiting to ride on probes and acks.
        self.broadcasts = Broadcasts()
        # The probe order: members shuffled, one taken per probe_interval.
        self._ring: list[Member] = []
        self._ring_pos = 0
        # Subjects of failure news waiting to be pushed (see _push_soon).
        self._pushing: set[str] | None = None
        #: Lifeguard's local health: 0 (healthy) to MAX_HEALTH. Raised when
        #: our probes fail or we must refute a suspicion of ourselves (both
        #: hint that this node is the slow one), lowered by each probe that
        #: succeeds; probe intervals and timeouts are stretched by 1 + it.
        self.health = 0

    # -- messages --------------------------------------------------------------

    def header(self) -> list[Any]:
        """Our packed :class:`NodeHeader`, with fresh capacity."""
        return NodeHeader(self.node_id, self.boot, self.transport.address, self.incarnation,
                          self.leaving, self.capacity()).pack()

    def gossip(self) -> list[list[Any]]:
        """Every member entry: the full-state sync (a join, and every
        :func:`~.gossip.sync_interval`), never an ordinary probe."""
        return [[m.node_id, m.boot, m.addr, m.incarnation, m.state.value]
                for m in self.members.values()]

    def updates(self) -> list[list[Any]]:
        """The recent membership updates one message carries (piggyback)."""
        return self.broadcasts.take(len(self.members) + 1)

    def _broadcast(self, member: Member, by: str | None = None) -> None:
        """Queue ``member``'s current state for dissemination; news of a
        failure is also pushed at once (see :meth:`_push_soon`)."""
        self.broadcasts.add([member.node_id, member.boot, member.addr, member.incarnation,
                             member.state.value, by or self.node_id])
        if member.state in (MemberState.SUSPECT, MemberState.DEAD):
            self._push_soon(member.node_id)

    def _broadcast_self(self) -> None:
        self.broadcasts.add([self.node_id, self.boot, self.transport.address,
                             self.incarnation, "left" if self.leaving else "alive",
                             self.node_id])
        self._push_soon(self.node_id)  # a refutation: before the suspicion runs out

    def _push_soon(self, subject: str) -> None:
        """Send the queued updates now to ``PUSH_FANOUT`` random alive peers
        (not ``subject``), instead of waiting for the next probes: failure
        news and refutations then spread in round trips, not probe
        intervals. Only on such events, so an idle cluster sends nothing
        more; the pushes of one loop pass go together."""
        if self._pushing is not None:
            self._pushing.add(subject)
            return
        self._pushing = {subject}
        asyncio.get_running_loop().call_soon(self._push)

    def _push(self) -> None:
        subjects, self._pushing = self._pushing or set(), None
        peers = [m for m in self.members.values()
                 if m.state is MemberState.ALIVE and m.node_id not in subjects]
        for member in self.rng.sample(peers, min(PUSH_FANOUT, len(peers))):
            self._track(self._push_to(member))

    async def _push_to(self, member: Member) -> None:
        try:
            await self.ping(member.addr, self.config.probe_timeout)
        except GobucketError:
            pass  # no evidence either way: probes decide who is alive

    def _set_state(self, member: Member, state: MemberState) -> None:
        old = member.state
        if old is state:
            return
        member.state = state
        member.state_since = asyncio.get_running_loop().time()
        if state is not MemberState.SUSPECT:
            member.suspectors.clear()
        self._arm(member)
        if state is not MemberState.SUSPECT:  # a suspicion is sent with who suspects
            self._broadcast(member)
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
            timeout = suspicion_timeout(cfg.suspicion_timeout, len(self.members) + 1,
                                        len(member.suspectors) - 1)
            now = asyncio.get_running_loop().time()
            delay, then = max(0.0, member.suspected_at + timeout - now), self._expire
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
        if self._seed_failing:
            self._seed_answered(h.addr)
        returned = False
        if member is None:
            member = Member(h.node_id, h.addr, h.boot, h.incarnation,
                            state=MemberState.LEFT if h.leaving else MemberState.ALIVE)
            member.state_since = now
            self.members[h.node_id] = member
            self._arm(member)
            self._broadcast(member)
            # Probed within this round, not only after the next shuffle.
            self._ring.insert(self.rng.randint(self._ring_pos, len(self._ring)), member)
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
            self._broadcast(member)  # its new boot id: others learn it restarted
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

    def merge(self, raw_members: object, *, full: bool = True) -> None:
        """Apply member entries: a whole member list (``full``, a sync) or
        piggybacked updates; see :meth:`merge_checked`."""
        self.merge_checked(check_gossip(raw_members), full=full)

    def merge_checked(self, entries: list[tuple[str, str, str, int, str, str]], *,
                      full: bool = True) -> None:
        """Apply entries already validated by ``check_gossip``: learn new
        nodes, take suspicions, deaths and leaves, refute our own suspicion.
        ``full``: a peer's whole member list, after which this node knows
        who is out there (:attr:`joined`)."""
        if full:
            self.joined = True
        for node_id, boot, addr, inc, state, by in entries:
            if node_id == self.node_id:
                if state in ("suspect", "dead") and boot == self.boot and inc >= self.incarnation:
                    self.incarnation = inc + 1  # refute: our next messages carry it
                    self.health = min(MAX_HEALTH, self.health + 1)
                    self._broadcast_self()
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
            if boot != member.boot:
                if state in ("alive", "suspect"):
                    self._learn(addr)  # restarted, say others: see for ourselves
                continue
            if inc < member.incarnation:
                continue
            current = member.state
            if (current is MemberState.ALIVE and state in ("suspect", "dead")
                    and self._spoke_lately(member)):
                # It spoke to us since that probe failed: a busy node, not a dead
                # one -- but it may have died since: see for ourselves (and if our
                # probe fails too, their word counts as confirmations).
                if by and len(member.doubted_by) < 16:
                    member.doubted_by[by] = asyncio.get_running_loop().time()
                self._spawn_probe(member)
                continue
            if state == "alive":
                if inc > member.incarnation:
                    member.incarnation = inc
                    if current is MemberState.SUSPECT:
                        self._set_state(member, MemberState.ALIVE)  # it refuted
                    elif current is MemberState.DEAD:
                        self._learn(member.addr)  # back, say others: see for ourselves
            elif state == "suspect":
                if current is MemberState.ALIVE:
                    member.incarnation = inc
                    self._suspect(member, by)
                elif current is MemberState.SUSPECT and inc == member.incarnation:
                    self._confirm(member, by)
            elif state == "dead":
                if current is MemberState.SUSPECT or (current is MemberState.ALIVE
                                                      and inc > member.incarnation):
                    member.incarnation = inc
                    self._set_state(member, MemberState.DEAD)
                elif current is MemberState.ALIVE:
                    # Dead news about a node we took for alive, same incarnation:
                    # a suspicion here (it may refute), not a death.
                    self._suspect(member, by)
            elif state == "left" and current in (MemberState.ALIVE, MemberState.SUSPECT):
                self._set_state(member, MemberState.LEFT)

    def _spoke_lately(self, member: Member) -> bool:
        """Did ``member`` send us a message after any probe whose failure a
        peer could be reporting now began? (A probe round lasts up to about
        ``2.25 * probe_timeout``, after up to one ``probe_interval``.)"""
        if member.heard_at is None:
            return False
        return asyncio.get_running_loop().time() - member.heard_at < self._round()

    def _round(self) -> float:
        """The longest a probe round whose failure a peer reports now can
        have lasted: up to one ``probe_interval``, then ``2.25 * probe_timeout``."""
        return self.config.probe_interval + 3 * self.config.probe_timeout

    def _suspect(self, member: Member, by: str) -> None:
        """``by`` suspects ``member`` (ALIVE here): it becomes SUSPECT, and
        the suspicion is passed on. Heard from a peer, this node also probes
        it itself, with a probability that gives about
        ``SUSPICION_CONFIRMATIONS`` such checks per suspicion at any size:
        independent confirmations are what shorten the timeout."""
        now = member.suspected_at = asyncio.get_running_loop().time()
        member.suspectors = {by, *(n for n, t in member.doubted_by.items()
                                   if now - t < 2 * self._round())}
        member.doubted_by.clear()
        self._set_state(member, MemberState.SUSPECT)
        self._broadcast(member, by)
        if by != self.node_id and self.rng.random() < (
                2 * SUSPICION_CONFIRMATIONS / max(1, len(self.members))):
            self._spawn_probe(member)

    def _confirm(self, member: Member, by: str) -> None:
        """Another node suspects ``member`` too: the timeout shrinks (Lifeguard)."""
        if by in member.suspectors or len(member.suspectors) > SUSPICION_CONFIRMATIONS:
            return
        member.suspectors.add(by)
        self._arm(member)
        self._broadcast(member, by)

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
        self._track(self._attempt(addr, sync=False))

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

    def _ping_message(self, sync: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"v": 1, "from": self.header(), "updates": self.updates()}
        if sync:  # a join or an anti-entropy round: whole lists both ways
            message["members"] = self.gossip()
            message["sync"] = True
        return message

    async def ping(self, addr: str, timeout: float, *, sync: bool = False,
                   stream: bool = False) -> Member | None:
        """One direct probe; with ``sync``, the two nodes swap their whole
        member lists too; with ``stream``, never as a datagram. Raises
        PeerError when it fails.

        Returns the record of the node that answered (which may not be the
        one expected at ``addr``), or None if it was ourselves.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        call = self.transport.call_stream if stream else self.transport.call
        reply = await call(addr, Kind.PING, self._ping_message(sync), timeout)
        self.probe_rtt.observe(loop.time() - started)
        updates = check_gossip(reply.get("updates"))
        members = check_gossip(reply.get("members")) if "members" in reply else None
        member = self.heard(msg_field(reply, "from", list))
        self.merge_checked(updates, full=False)
        if members is not None:
            self.merge_checked(members, full=True)
        return member

    def handle_ping(self, message: dict[str, Any]) -> dict[str, Any]:
        """Answer a PING: our header and updates, and our whole member list
        if the sender sent its own (``sync``)."""
        updates = check_gossip(message.get("updates"))
        # A whole list: a sync (or an older node, which sends it on every ping).
        members = check_gossip(message.get("members")) if "members" in message else None
        self.heard(message.get("from"))
        self.merge_checked(updates, full=False)
        reply: dict[str, Any] = {"v": 1, "from": self.header(), "updates": self.updates()}
        if members is not None:
            self.merge_checked(members, full=True)
            reply["members"] = self.gossip()
        return reply

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

    def _probe_timeout(self) -> float:
        """``probe_timeout`` stretched by our local health (Lifeguard)."""
        return self.config.probe_timeout * (1 + self.health)

    async def _probe(self, member: Member) -> None:
        loop = asyncio.get_running_loop()
        since = began = loop.time()
        timeout = self._probe_timeout()
        try:
            direct: GobucketError
            try:
                seen = await self.ping(member.addr, timeout)
                if seen is member:
                    self.health = max(0, self.health - 1)
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
            second = [self._indirect(member, timeout)]
            if self.transport.by_datagram(member.addr):
                second.append(self._stream_probe(member, timeout))
            if any(await asyncio.gather(*second)):
                return
            if member.state not in (MemberState.ALIVE, MemberState.SUSPECT):
                return
            if member.heard_at is not None and member.heard_at >= since:
                return  # it spoke to us meanwhile: alive, whatever the probes said
            took = loop.time() - started
            if took > timeout * 1.5:  # the indirect round allows 1.25x
                log.info("own event loop stalled during a probe; not suspecting the peer "
                         "event=probe_inconclusive node=%s peer=%s took=%.3f", self.node_id,
                         member.node_id, took)
                return
            log.warning("direct and indirect probes failed event=probe_failed node=%s "
                        "peer=%s direct_took=%.3f indirect_took=%.3f heard_ago=%s error=%s",
                        self.node_id, member.node_id, started - began, took,
                        "-" if member.heard_at is None else
                        f"{loop.time() - member.heard_at:.3f}", direct)
            self.health = min(MAX_HEALTH, self.health + 1)
            if member.state is MemberState.SUSPECT:
                self._confirm(member, self.node_id)  # a check of a suspicion heard
            else:
                self._suspect(member, self.node_id)
        finally:
            member.probing = False

    async def _stream_probe(self, target: Member, timeout: float) -> bool:
        """Probe ``target`` again over HTTP, alongside the indirect round.

        A datagram may be lost, or wait in a busy peer's socket buffer; a
        stream probe tells that from a dead peer even with no helpers (a
        two-node cluster), as memberlist's TCP fallback does.
        """
        try:
            return await self.ping(target.addr, timeout, stream=True) is target
        except GobucketError:
            return False

    async def _indirect(self, target: Member, probe_timeout: float) -> bool:
        helpers = [m for m in self.members.values()
                   if m is not target and m.state is MemberState.ALIVE]
        if len(helpers) > self.config.indirect_probes:
            helpers = self.rng.sample(helpers, self.config.indirect_probes)
        if not helpers:
            return False
        message = {"v": 1, "from": self.header(), "target": target.addr,
                   "updates": self.updates()}
        # The helper's own probe takes up to probe_timeout; allow for the extra hop.
        timeout = probe_timeout * 1.25

        async def ask(helper: Member) -> bool:
            try:
                reply = await self.transport.call(helper.addr, Kind.PING_REQ, message, timeout)
                self.merge(reply.get("updates"), full=False)
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
        self.merge_checked(check_gossip(message.get("updates")), full=False)
        try:
            reply = await self.transport.call(target, Kind.PING, self._ping_message(False),
                                              self.config.probe_timeout)
            ack = reply.get("from")
            self.heard(ack)
            self.merge_checked(check_gossip(reply.get("updates")), full=False)
        except GobucketError:
            ack = None
        return {"v": 1, "from": self.header(), "ack": ack, "updates": self.updates()}

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    def _spawn_probe(self, member: Member) -> None:
        if member.probing:
            return
        member.probing = True
        self._track(self._probe(member))

    def seed_addresses(self) -> set[str]:
        """The configured cluster: the seed addresses, and what the ``dns:``
        seeds resolved to last."""
        found = set() if self.discovery is None else self.discovery.addresses()
        return found.union(self.seeds)

    def _seed_failed(self, addr: str, exc: GobucketError) -> None:
        """Count a failed join attempt of a seed; WARNING once per episode."""
        if addr not in self.seeds and (self.discovery is None
                                       or addr not in self.discovery.addresses()):
            return
        now = asyncio.get_running_loop().time()
        first = self._seed_failing.setdefault(addr, now)
        warn_after = SEED_WARN_ROUNDS * self.config.rejoin_interval
        if now - first < warn_after or addr in self._seed_warned:
            return
        self._seed_warned.add(addr)
        log.warning("seed not reachable; check its address and port (the peer port, not an "
                    "app's) event=seed_unreachable node=%s seed=%s failing_for=%.1f "
                    "alive_peers=%d error=%s", self.node_id, addr, now - first,
                    len(self.alive()), exc)

    def _seed_answered(self, addr: str) -> None:
        """A seed's failure episode (if any) is over."""
        first = self._seed_failing.pop(addr, None)
        if first is not None and addr in self._seed_warned:
            self._seed_warned.discard(addr)
            log.info("seed reached event=seed_reached node=%s seed=%s after=%.1f",
                     self.node_id, addr, asyncio.get_running_loop().time() - first)

    async def _attempt(self, addr: str, *, sync: bool = True) -> None:
        """Contact ``addr`` (a seed, or a node we were told of, or a dead or
        left member that may be back); ``sync``: swap whole member lists."""
        try:
            member = await self.ping(addr, self.config.probe_timeout, sync=sync)
        except GobucketError as exc:
            if not self._refused_as_clash(addr, exc):
                log.debug("join attempt failed event=join_attempt_failed node=%s addr=%s "
                          "error=%s", self.node_id, addr, exc)
                self._seed_failed(addr, exc)
            return
        self._seed_answered(addr)
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
        self._unreached.update(a for a in self.seed_addresses()
                               if a not in held and a not in self._aliases
                               and a != self.transport.address)
        log.info("peer forgotten event=peer_pruned node=%s peer=%s addr=%s state=%s",
                 self.node_id, member.node_id, member.addr, member.state.value)
        if self.on_pruned is not None:
            self.on_pruned(member)

    def _next_target(self) -> Member | None:
        """The next member to probe: a shuffled round over the alive and
        suspect ones (SWIM), shuffled again when it ends. Dead and left
        members are retried by the join loop instead."""
        for _ in range(2):
            ring = self._ring
            while self._ring_pos < len(ring):
                member = ring[self._ring_pos]
                self._ring_pos += 1
                if (self.members.get(member.node_id) is member
                        and member.state in (MemberState.ALIVE, MemberState.SUSPECT)):
                    return member
            self._ring = [m for m in self.members.values()
                          if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]
            self.rng.shuffle(self._ring)
            self._ring_pos = 0
        return None

    async def _probe_loop(self) -> None:
        cfg = self.config
        # Jitter so that nodes started together do not probe in lockstep.
        await asyncio.sleep(self.rng.uniform(0, cfg.probe_interval))
        while True:
            member = self._next_target()
            if member is not None:
                self._spawn_probe(member)
            await asyncio.sleep(cfg.probe_interval * (1 + self.health))

    async def _sync_loop(self) -> None:
        """Anti-entropy: now and then, swap whole member lists with one
        random alive peer (what piggybacked updates missed is repaired)."""
        cfg = self.config
        while True:
            wait = sync_interval(SYNC_INTERVAL, len(self.members) + 1)
            await asyncio.sleep(wait * self.rng.uniform(0.5, 1.5))
            alive = self.alive()
            if alive:
                member = self.rng.choice(alive)
                try:
                    await self.ping(member.addr, cfg.request_timeout, sync=True)
                except GobucketError as exc:
                    log.debug("member list sync failed event=sync_failed node=%s peer=%s "
                              "error=%s", self.node_id, member.node_id, exc)

    async def _discover(self) -> None:
        """Look the ``dns:`` seeds up again: join new addresses, drop gone ones."""
        assert self.discovery is not None
        before = self.discovery.addresses()
        found = await self.discovery.refresh()
        held = {m.addr for m in self.members.values()}
        own = self.transport.address
        self._unreached.update(a for a in found
                               if a not in held and a not in self._aliases and a != own)
        for addr in before - found:
            if addr not in self.seeds:  # left the name (scaled down, rescheduled)
                self._unreached.discard(addr)
                self._seed_failing.pop(addr, None)
                self._seed_warned.discard(addr)

    async def _join_once(self) -> None:
        if self.discovery is not None:
            await self._discover()
        own = self.transport.address
        self._unreached.discard(own)
        self._unreached -= self._aliases
        seeds = list(self._unreached)  # a join: whole member lists both ways
        back = [m.addr for m in self.members.values()  # may be back: a plain ping
                if m.state in (MemberState.LEFT, MemberState.DEAD) and m.addr not in seeds]
        now = asyncio.get_running_loop().time()
        self._learned = {a: t for a, t in self._learned.items()
                         if now - t < self.config.rejoin_interval}
        await asyncio.gather(*(self._attempt(a) for a in dict.fromkeys(seeds)),
                             *(self._attempt(a, sync=False) for a in dict.fromkeys(back)))

    async def _join_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.rejoin_interval * self.rng.uniform(0.8, 1.2))
            await self._join_once()

    async def start(self) -> None:
        """Contact the seeds once, then run the probe and rejoin loops."""
        self._started = asyncio.get_running_loop().time()
        await self._join_once()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._probe_loop()), loop.create_task(self._join_loop()),
                       loop.create_task(self._sync_loop())]

    async def announce_leave(self, **flags: bool) -> None:
        """Tell every reachable peer that we are leaving (best effort,
        bounded); ``flags`` go in the message (see ``PeerServer``'s LEAVE)."""
        self.leaving = True
        message = {"v": 1, "from": self.header(), **flags}
        targets = [m for m in self.members.values()
                   if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]

        async def tell(member: Member) -> None:
            try:
                await self.transport.call(member.addr, Kind.LEAVE, message,
                                          self.config.request_timeout)
            except GobucketError as exc:
                log.debug("leave not delivered event=leave_not_delivered node=%s peer=%s "
                          "error=%s", self.node_id, member.node_id, exc)

        await asyncio.gather(*(tell(m) for m in targets))

    async def stop(self) -> None:
        """Cancel the loops, the timers, in-flight probes and DNS lookups and wait
        for them."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = [*self._loops, *self._probes]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._loops = []
        if self.discovery is not None:
            await self.discovery.close()

    def alive(self) -> list[Member]:
        """Peers that may take tasks."""
        return [m for m in self.members.values() if m.state is MemberState.ALIVE]

    def reachable(self) -> list[Member]:
        """Peers worth asking about a task (alive or suspect)."""
        return [m for m in self.members.values()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]
