"""Who is in the cluster, and who is alive: the peer table and failure detection.

SWIM with Lifeguard, so that a node's cost does not grow with the cluster.
:class:`Membership` is the peer table of one node, the messages that carry
it, and every rule that changes a member's state; its parts live beside it:

- :mod:`.member`: the records (:class:`Member`, :class:`MemberState`,
  :class:`PeerInfo`) and the callbacks' signatures.
- :mod:`.probing`: one probe target per ``probe_interval``, in a rotation
  by node id, indirect probes (``ping-req``) and the stream fallback, the void
  evidence that suspects no one, Lifeguard's local health.
- :mod:`.suspicion`: Lifeguard suspicion (a timeout that scales with
  ``log10(N)`` and shortens with independent confirmations), then death,
  *presumed lost* and pruning: one timer per member.
- :mod:`.joining`: seeds (``dns:`` ones too), the join, rejoin and
  anti-entropy sync loops, nodes learned second-hand, rumours of unknown
  nodes, self-aliases, unreached seeds.
- :mod:`.gossip`: the piggyback queue and the arithmetic of timeouts and
  intervals.

The table's own rules:

- **Dissemination.** Joins, suspicions, deaths, leaves and refutations go
  into a bounded queue (:class:`~.gossip.Broadcasts`) and ride on the next
  probes and acks, each about ``4 * log10(N+1)`` times; failure news and
  refutations are also pushed at once to a few peers. Every
  :func:`~.gossip.sync_interval` a node swaps whole member lists with one
  random peer, which repairs what the piggyback missed; a joining node does
  so with its seeds (then it knows who is out there: :attr:`Membership.joined`).
- **Refutation.** A node that hears it is suspected (or dead) bumps its
  incarnation to refute it; a suspect that answers anything, or refutes
  with a higher incarnation, is alive again. Suspicion and death news about
  a peer that spoke to us within the last probe round is ignored (we have
  newer evidence), but checked with a probe of our own.
- **Incarnations.** A new ``boot`` id for a known node id means it restarted:
  its old tasks are gone (``on_restart``). A message from a boot this node
  saw replaced (until its successor is presumed lost, or has left and been
  silent as long), or that started earlier (boot ids carry their start
  time) while the successor is alive, at the address its successor uses,
  is a late one from a process that is
  gone (its successor could not have taken the address while it lived):
  refused with :class:`StaleBootError`, not a restart back to it. At
  another address it is judged as below: a clash while the successor
  speaks, else a restart (a paused process that came back).
- **Leaving.** A stopping node says so (``leaving`` in its header and a LEAVE
  message); peers mark it *left*, not dead, and stop routing to it. A boot
  that left stays left: its messages without the word were sent before it
  stopped, read late.
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

All durations are measured on the event loop's monotonic clock; wall-clock
time (``Member.last_heard``) is kept for display only, so a clock step never
hides a dead peer. Until they are pruned, dead and left peers are retried
every ``rejoin_interval`` (either may come back); unreached seeds are
retried every ``rejoin_interval`` for ever.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..config import GroupConfig
from ..errors import GobucketError, ProtocolError
from ..observe.histogram import Histogram
from .discovery import Discovery, parse_dns
from .gossip import SUSPICION_CONFIRMATIONS as SUSPICION_CONFIRMATIONS
from .gossip import Broadcasts
from .joining import SEED_WARN_ROUNDS, Joiner
from .joining import SYNC_INTERVAL as SYNC_INTERVAL
from .member import (
    RETIRED_BOOTS,
    ChangeCallback,
    Member,
    MemberCallback,
    MemberState,
    PeerInfo,
    RestartCallback,
)
from .probing import MAX_HEALTH as MAX_HEALTH
from .probing import Prober
from .protocol import Kind, NodeHeader, boot_started, check_gossip
from .protocol import field as msg_field
from .suspicion import Suspicions
from .transport import Transport

__all__ = ["CLASH_TEXT", "SEED_WARN_ROUNDS", "Member", "MemberCallback", "MemberState",
           "Membership", "PeerInfo", "RestartCallback", "StaleBootError"]

log = logging.getLogger("gobucket_py")

#: Part of the text of the 400 a node answers to a sender whose node id is
#: already used by another live node: "node id X is already used by the node
#: at ADDR (boot B)".
CLASH_TEXT = "is already used by the node at"
#: A node id clash is logged at most once per clashing address this often (s).
CLASH_LOG_INTERVAL = 10.0
#: Peers that failure news and refutations are pushed to at once.
PUSH_FANOUT = 3


def _earlier(boot: str, than: str) -> bool:
    """Did ``boot`` start before ``than`` (both made by ``new_boot_id``)?"""
    a, b = boot_started(boot), boot_started(than)
    return a is not None and b is not None and a < b


class StaleBootError(ProtocolError):
    """A message from an earlier boot of a peer, one this node saw replaced
    or that started before the current one (see :meth:`Membership.heard`);
    ``boot`` is that boot id."""

    def __init__(self, message: str, *, boot: str) -> None:
        super().__init__(message)
        self.boot = boot


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
        #: Loop time this node last refuted a suspicion (or death) of itself.
        self.refuted_at = -math.inf
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
        #: Clashing address -> loop time its node id clash was last logged.
        self._clash_logged: dict[str, float] = {}
        #: Membership updates waiting to ride on probes and acks.
        self.broadcasts = Broadcasts()
        # Subjects of failure news waiting to be pushed (see _push_soon).
        self._pushing: set[str] | None = None
        self._prober = Prober(self)
        self._suspicions = Suspicions(self)
        self._joiner = Joiner(self)

    @property
    def health(self) -> int:
        """Lifeguard's local health, 0 (healthy) to ``MAX_HEALTH`` (see :mod:`.probing`)."""
        return self._prober.health

    @health.setter
    def health(self, value: int) -> None:
        self._prober.health = value

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

    async def handle_ping_req(self, message: dict[str, Any]) -> dict[str, Any]:
        """Probe ``target`` for a peer; answer with its header, or no ack."""
        return await self._prober.handle_ping_req(message)

    # -- dissemination ---------------------------------------------------------

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

    # -- the table -------------------------------------------------------------

    def _set_state(self, member: Member, state: MemberState) -> None:
        old = member.state
        if old is state:
            return
        member.state, member.was = state, old
        member.state_since = asyncio.get_running_loop().time()
        self._prober.changed()
        if state is not MemberState.SUSPECT:
            member.suspectors.clear()
        self._suspicions.arm(member)
        if state is not MemberState.SUSPECT:  # a suspicion is sent with who suspects
            self._broadcast(member)
        bad = state in (MemberState.DEAD, MemberState.SUSPECT)
        level = logging.WARNING if bad else logging.INFO
        log.log(level, "peer %s event=peer_%s node=%s peer=%s addr=%s", state.value, state.value,
                self.node_id, member.node_id, member.addr)
        if self.on_change is not None:
            self.on_change(member, old)

    def heard(self, raw_header: object) -> Member | None:
        """Direct evidence: the sender of a message is alive (or leaving).

        Returns its record, or None when the message came from ourselves.
        Raises :class:`~gobucket_py.ProtocolError` (a 400 for a request) when
        the header is malformed or its node id is used by another live node
        (ours included), and :class:`StaleBootError` when it comes from an
        earlier boot of the peer (see the module docstring): the sender is
        refused and the record is untouched.
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
            self._joiner.pending.discard(h.addr)
            return None
        member = self.members.get(h.node_id)
        if member is not None and member.boot != h.boot and self._stale(member, h, now):
            log.info("message from a peer's earlier boot refused event=stale_boot node=%s "
                     "peer=%s addr=%s boot=%s current_boot=%s", self.node_id, h.node_id,
                     h.addr, h.boot, member.boot)
            raise StaleBootError(f"node {h.node_id}: a message from its earlier boot {h.boot} "
                                 f"(it restarted as boot {member.boot})", boot=h.boot)
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
        self._joiner.reached(h.addr)
        returned = restarted = False
        if member is None:
            member = Member(h.node_id, h.addr, h.boot, h.incarnation,
                            state=MemberState.LEFT if h.leaving else MemberState.ALIVE)
            member.state_since = member.met_at = now
            self.members[h.node_id] = member
            self._suspicions.arm(member)
            self._broadcast(member)
            self._prober.changed()  # a newcomer: in the schedule from the next tick
            log.info("peer joined event=peer_joined node=%s peer=%s addr=%s", self.node_id,
                     h.node_id, h.addr)
            if self.on_change is not None:
                self.on_change(member, None)
        elif member.boot != h.boot:
            restarted = True
            was = member.state
            log.warning("peer restarted event=peer_restarted node=%s peer=%s addr=%s "
                        "old_addr=%s was=%s", self.node_id, h.node_id, h.addr, member.addr,
                        was.value)
            member.retired = (*member.retired, member.boot)[-RETIRED_BOOTS:]
            member.boot = h.boot
            member.met_at = now
            member.addr = h.addr
            member.incarnation = h.incarnation
            member.inflight.clear()
            member.lost = False
            if (MemberState.LEFT if h.leaving else MemberState.ALIVE) is was:
                member.state_since = now  # a new life in the same state: restart its timer
                self._suspicions.arm(member)
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
        if restarted or h.leaving or member.state is not MemberState.LEFT:
            # (A boot that left never comes back: a message of it without
            # the word is one it sent before it stopped, read late.)
            self._set_state(member, MemberState.LEFT if h.leaving else MemberState.ALIVE)
        if restarted:
            member.was = None  # a new life: what it held before is reported lost
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
                    self.refuted_at = asyncio.get_running_loop().time()
                    self._prober.penalize()
                    self._broadcast_self()
                continue
            member = self.members.get(node_id)
            if member is None:
                # Dead or left news about a node we do not know (or pruned)
                # does not make it a member: it must not bring a forgotten
                # node back. It is remembered as a rumour: that node may still
                # hold tasks, so for a while this node cannot say "nowhere".
                if state in ("alive", "suspect"):
                    self._joiner.learn(addr)
                else:
                    self._joiner.rumour(node_id, state)
                continue
            if boot != member.boot:
                if state in ("alive", "suspect"):
                    self._joiner.learn(addr)  # restarted, say others: see for ourselves
                continue
            if inc < member.incarnation:
                continue
            current = member.state
            if (current is MemberState.ALIVE and state in ("suspect", "dead")
                    and self._suspicions.spoke_lately(member)):
                # It spoke to us since that probe failed: a busy node, not a dead
                # one -- but it may have died since: see for ourselves (and if our
                # probe fails too, their word counts as confirmations).
                if by and len(member.doubted_by) < 16:
                    member.doubted_by[by] = asyncio.get_running_loop().time()
                self._prober.spawn(member)
                continue
            if state == "alive":
                if inc > member.incarnation:
                    member.incarnation = inc
                    if current is MemberState.SUSPECT:
                        self._set_state(member, MemberState.ALIVE)  # it refuted
                    elif current is MemberState.DEAD:
                        self._joiner.learn(member.addr)  # back, say others: see for ourselves
            elif state == "suspect":
                if current is MemberState.ALIVE:
                    member.incarnation = inc
                    self._suspicions.suspect(member, by)
                elif current is MemberState.SUSPECT and inc == member.incarnation:
                    self._suspicions.confirm(member, by)
            elif state == "dead":
                if current is MemberState.SUSPECT or (current is MemberState.ALIVE
                                                      and inc > member.incarnation):
                    member.incarnation = inc
                    self._set_state(member, MemberState.DEAD)
                elif current is MemberState.ALIVE:
                    # Dead news about a node we took for alive, same incarnation:
                    # a suspicion here (it may refute), not a death.
                    self._suspicions.suspect(member, by)
            elif state == "left" and current in (MemberState.ALIVE, MemberState.SUSPECT):
                self._set_state(member, MemberState.LEFT)

    # -- node id clashes -------------------------------------------------------

    def _stale(self, member: Member, h: NodeHeader, now: float) -> bool:
        """Is ``h`` (another boot than ``member``'s) from a process that is
        gone -- a reply or request in flight when it died, read late? Taken
        for a restart back to it, it would tell the replicas the live boot
        is gone. So if it speaks from the address its successor uses, and
        either that boot was replaced here (until the successor is presumed
        lost, or has left and been silent as long: a successor that is
        merely suspect may be alive behind a slow link, and taking the old
        boot back would let the replicas take its tasks over at once), or it
        started earlier while the successor is alive or spoke lately. (Only
        then, for a start time: a wall clock set back between two starts
        orders them the wrong way, and the live boot must not be locked out
        once the dead one is silent and suspected.)"""
        if member.addr != h.addr:
            return False
        if h.boot in member.retired:  # (a LEFT successor is never presumed lost)
            silent_left = (member.state is MemberState.LEFT and member.heard_at is not None
                           and now - member.heard_at >= self.config.lost_after)
            return not (member.lost or silent_left)
        return ((member.state is MemberState.ALIVE
                 or (member.heard_at is not None
                     and now - member.heard_at < self._clash_window()))
                and _earlier(h.boot, member.boot))

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

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Contact the seeds once, then run the probe and rejoin loops."""
        await self._joiner.start()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._prober.loop()),
                       loop.create_task(self._joiner.join_loop()),
                       loop.create_task(self._joiner.sync_loop())]

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
        self._suspicions.cancel()
        tasks = [*self._loops, *self._probes]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._loops = []
        if self.discovery is not None:
            await self.discovery.close()

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task of this membership (cancelled by :meth:`stop`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    # -- queries ---------------------------------------------------------------

    def alive(self) -> list[Member]:
        """Peers that may take tasks."""
        return [m for m in self.members.values() if m.state is MemberState.ALIVE]

    def reachable(self) -> list[Member]:
        """Peers worth asking about a task (alive or suspect)."""
        return [m for m in self.members.values()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]

    def seed_addresses(self) -> set[str]:
        """The configured cluster: the seed addresses, and what the ``dns:``
        seeds resolved to last."""
        return self._joiner.seed_addresses()

    def young(self) -> bool:
        """Started less than ``lost_after`` ago (peers may not have found it yet)."""
        return self._joiner.young()

    def unreached(self) -> list[str]:
        """Nodes this node does not know that may hold tasks: addresses
        peers named as alive lately and not reached yet, nodes they name as
        dead or left (for a while), and seeds not reached since start (see
        :meth:`.joining.Joiner.unreached`)."""
        return self._joiner.unreached()

    def forget_unreached(self, addr: str) -> None:
        """Drop an address from the join list for good (it is ourselves)."""
        self._joiner.forget(addr)

    # -- the parts under their former names (for tests and benches) ------------

    def _spawn_probe(self, member: Member) -> None:
        self._prober.spawn(member)

    async def _probe(self, member: Member) -> None:
        await self._prober.probe(member)

    async def _indirect(self, target: Member, probe_timeout: float) -> bool:
        # The prober calls it through here, so that a test can replace it.
        return await self._prober.indirect(target, probe_timeout)

    def _learn(self, addr: str) -> None:
        self._joiner.learn(addr)

    @property
    def _unreached(self) -> set[str]:
        return self._joiner.pending

    @property
    def _learned(self) -> dict[str, float]:
        return self._joiner.learned
