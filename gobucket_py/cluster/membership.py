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

Dead and left peers and unreached seeds are retried every ``rejoin_interval``.
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
from ..errors import GobucketError, PeerError
from ..observe.histogram import Histogram
from .protocol import Kind, NodeHeader, check_gossip
from .protocol import field as msg_field
from .transport import Transport

__all__ = ["Member", "MemberState", "Membership", "PeerInfo"]

log = logging.getLogger("gobucket_py")


class MemberState(StrEnum):
    """A peer's state as this node sees it."""

    #: Answers probes; tasks may be routed to it.
    ALIVE = "alive"
    #: Missed a direct and the indirect probes; may still refute.
    SUSPECT = "suspect"
    #: Did not refute in time; its tasks are presumed lost.
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
    last_heard: float | None
    boot_id: str


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
    last_heard: float | None = None  # time.time()
    state_since: float = 0.0  # loop time
    probing: bool = False

    def estimate(self, bucket: str) -> int:
        """Free slots for ``bucket``, minus what we sent since; -1 if it has no such bucket."""
        free = self.free.get(bucket)
        if free is None:
            return -1
        return free - self.inflight.get(bucket, 0)

    def info(self) -> PeerInfo:
        return PeerInfo(self.node_id, self.addr, self.state, dict(self.free), self.last_heard,
                        self.boot)


#: Called as ``on_change(member, old_state)`` when a peer joins (old None),
#: changes state or restarts. Must not block.
ChangeCallback = Callable[[Member, MemberState | None], None]


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
        self.seeds = list(dict.fromkeys(seeds))
        self._unreached = set(self.seeds)
        self.rng = rng or random.Random()
        self.on_change: ChangeCallback | None = None
        self.on_restart: Callable[[Member], None] | None = None
        #: Round-trip time of each successful direct probe (seconds).
        self.probe_rtt = Histogram()
        self._loops: list[asyncio.Task[None]] = []
        self._probes: set[asyncio.Task[None]] = set()

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
        loop = asyncio.get_running_loop()
        member.state_since = since = loop.time()
        if state is MemberState.SUSPECT:  # expire on time, not at the next probe tick
            loop.call_later(self.config.suspicion_timeout, self._expire, member, since)
        bad = state in (MemberState.DEAD, MemberState.SUSPECT)
        level = logging.WARNING if bad else logging.INFO
        log.log(level, "peer %s event=peer_%s node=%s peer=%s addr=%s", state.value, state.value,
                self.node_id, member.node_id, member.addr)
        if self.on_change is not None:
            self.on_change(member, old)

    def heard(self, raw_header: object) -> Member | None:
        """Direct evidence: the sender of a message is alive (or leaving).

        Returns its record, or None when the message came from ourselves.
        """
        h = NodeHeader.unpack(raw_header)
        if h.node_id == self.node_id:
            if h.boot != self.boot:
                log.error("another node uses our node id event=node_id_clash node=%s addr=%s",
                          self.node_id, h.addr)
            self._unreached.discard(h.addr)
            return None
        self._unreached.discard(h.addr)
        member = self.members.get(h.node_id)
        now_wall = time.time()
        if member is None:
            member = Member(h.node_id, h.addr, h.boot, h.incarnation,
                            state=MemberState.LEFT if h.leaving else MemberState.ALIVE)
            member.state_since = asyncio.get_running_loop().time()
            self.members[h.node_id] = member
            log.info("peer joined event=peer_joined node=%s peer=%s addr=%s", self.node_id,
                     h.node_id, h.addr)
            if self.on_change is not None:
                self.on_change(member, None)
        elif member.boot != h.boot:
            log.warning("peer restarted event=peer_restarted node=%s peer=%s addr=%s",
                        self.node_id, h.node_id, h.addr)
            member.boot = h.boot
            member.incarnation = h.incarnation
            member.inflight.clear()
            if self.on_restart is not None:
                self.on_restart(member)
        member.addr = h.addr
        member.incarnation = max(member.incarnation, h.incarnation)
        member.free = h.free
        member.last_heard = now_wall
        self._set_state(member, MemberState.LEFT if h.leaving else MemberState.ALIVE)
        return member

    def merge(self, raw_members: object) -> None:
        """Peer exchange: learn new members; accept dead/left news; refute suspicion."""
        self.merge_checked(check_gossip(raw_members))

    def merge_checked(self, entries: list[tuple[str, str, str, int, str]]) -> None:
        """:meth:`merge` for entries already validated by ``check_gossip``."""
        for node_id, boot, addr, inc, state in entries:
            if node_id == self.node_id:
                if state in ("suspect", "dead") and boot == self.boot and inc >= self.incarnation:
                    self.incarnation = inc + 1  # refute: our next messages carry it
                continue
            member = self.members.get(node_id)
            if member is None:
                if state in ("alive", "suspect") and addr not in self._unreached:
                    # Learned second-hand: probe it before trusting it with tasks.
                    self._unreached.add(addr)
                    self._track(self._attempt(addr))
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

    def forget_unreached(self, addr: str) -> None:
        """Drop an address from the join list (it is ourselves)."""
        self._unreached.discard(addr)

    # -- probing -------------------------------------------------------------------

    async def ping(self, addr: str, timeout: float) -> Member | None:
        """One direct probe. Raises PeerError when it fails."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await self.transport.call(
            addr, Kind.PING, {"v": 1, "from": self.header(), "members": self.gossip()}, timeout)
        self.probe_rtt.observe(loop.time() - started)
        member = self.heard(msg_field(reply, "from", list))
        self.merge(reply.get("members"))
        return member

    async def _probe(self, member: Member) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        since, began = time.time(), loop.time()
        try:
            try:
                await self.ping(member.addr, cfg.probe_timeout)
                return
            except GobucketError as exc:
                direct = exc
            if member.state in (MemberState.DEAD, MemberState.LEFT):
                return
            started = loop.time()
            if await self._indirect(member):
                return
            if member.state is not MemberState.ALIVE:
                return
            if member.last_heard is not None and member.last_heard >= since:
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
                        "-" if member.last_heard is None else
                        f"{time.time() - member.last_heard:.3f}", direct)
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
                self.heard(ack)
            except PeerError:
                return False
            return True

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
            await self.ping(addr, self.config.probe_timeout)
        except GobucketError as exc:
            log.debug("join attempt failed node=%s addr=%s error=%s", self.node_id, addr, exc)

    def _expire(self, member: Member, since: float) -> None:
        if member.state is MemberState.SUSPECT and member.state_since == since:
            self._set_state(member, MemberState.DEAD)

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
        targets = [a for a in self._unreached if a != own]
        targets += [m.addr for m in self.members.values() if m.state is MemberState.LEFT]

        self._unreached.discard(own)
        await asyncio.gather(*(self._attempt(a) for a in dict.fromkeys(targets)))

    async def _join_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.rejoin_interval * self.rng.uniform(0.8, 1.2))
            await self._join_once()

    async def start(self) -> None:
        """Contact the seeds once, then run the probe and rejoin loops."""
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
        """Cancel the loops and in-flight probes and wait for them."""
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
