"""SWIM probing for :mod:`.membership`: whom a node probes, when, and how.

- **Probes.** Every ``probe_interval`` a node pings *one* peer. The nodes
  share a schedule: the alive and suspect members and the node itself, in
  node id order, and a tick counted on a clock they all read alike (wall
  time; an in-memory network's shared loop clock). At tick ``t`` the node at
  place ``i`` of ``n`` probes the one at ``i + 1 + t mod (n - 1)``: a
  rotation, so while the nodes agree on the members every one of them is
  probed by exactly one node per tick, and each node still probes every
  other in turn, every ``n - 1`` ticks, as SWIM's round does. A node that
  died is probed within about one ``probe_interval`` -- with independent
  shuffled rounds the first probe of it comes after the earliest of N
  random waits, over 2 s at p99 for 10 nodes. Where the nodes' views differ
  (a join in flight) the rotation just overlaps for a moment. Each ping and
  ack carries the sender's :class:`~.protocol.NodeHeader` (identity, boot
  id, incarnation, its own free capacity per bucket) and a few piggybacked
  membership updates -- never the whole member list.
- **Indirect probes.** A missed ping is retried through up to
  ``indirect_probes`` other peers (``ping-req``), which tells a dead node from
  a broken link; a ping lost as a UDP datagram is also retried over HTTP at
  the same time (a lost or queued datagram is not a dead peer, and a
  two-node cluster has no helpers). If they fail too, the node becomes
  *suspect* (see :mod:`.suspicion`) -- unless the evidence is void: it spoke
  to us while we probed it, or our own event loop stalled during the
  indirect round, so the timeouts measured our stall rather than its
  silence. A busy node is not a dead one.
- **Local health (Lifeguard).** Failed probes and having to refute a
  suspicion of ourselves raise a multiplier (up to ``MAX_HEALTH``) that
  stretches this node's probe interval and timeouts, so a slow node accuses
  others less; each successful probe lowers it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

from ..errors import GobucketError, PeerError, PeerUnavailableError
from .member import Member, MemberState
from .protocol import Kind, check_gossip
from .protocol import field as msg_field

if TYPE_CHECKING:
    from .membership import Membership

__all__ = ["MAX_HEALTH", "Prober"]

log = logging.getLogger("gobucket_py")

#: The members in the probe schedule (dead and left ones are retried by the
#: join loop instead).
_PROBED = (MemberState.ALIVE, MemberState.SUSPECT)

#: Lifeguard's local health multiplier goes up to this (probes then wait up
#: to 1 + MAX_HEALTH times longer).
MAX_HEALTH = 8


class Prober:
    """The probing side of one node's :class:`~.membership.Membership`: the
    probe order and loop, direct, stream and indirect probes, the answer to
    a PING-REQ, and local health."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        # The shared schedule's order: node ids (ours too), sorted; rebuilt
        # when a member joins or changes state (None: to rebuild).
        self._order: list[str] | None = None
        self._place = 0  # our own place in _order
        self._tick = -1  # the last tick probed: each probe takes a later one
        #: Lifeguard's local health: 0 (healthy) to MAX_HEALTH. Raised when
        #: our probes fail or we must refute a suspicion of ourselves (both
        #: hint that this node is the slow one), lowered by each probe that
        #: succeeds; probe intervals and timeouts are stretched by 1 + it.
        self.health = 0

    def penalize(self) -> None:
        """Evidence that this node is the slow one: raise local health."""
        self.health = min(MAX_HEALTH, self.health + 1)

    def changed(self) -> None:
        """A member joined or changed state: the schedule is rebuilt at the
        next tick."""
        self._order = None

    def next_target(self) -> Member | None:
        """The member to probe now: the one ``1 + tick mod (n - 1)`` places
        after us in the shared schedule (see the module docstring). Dead and
        left members are not in it: the join loop retries them."""
        ms = self.membership
        for _ in range(2):
            order = self._order
            if order is None:
                ids = [m.node_id for m in ms.members.values() if m.state in _PROBED]
                ids.append(ms.node_id)
                ids.sort()
                order = self._order = ids
                self._place = ids.index(ms.node_id)
            n = len(order)
            if n < 2:
                return None
            tick = math.floor(ms.transport.shared_clock() / ms.config.probe_interval)
            # Never the same tick twice (a stretched or drifting loop): each
            # probe moves on, so every member is still probed every n - 1.
            self._tick = tick = max(tick, self._tick + 1)
            member = ms.members.get(order[(self._place + 1 + tick % (n - 1)) % n])
            if member is not None and member.state in _PROBED:
                return member
            self._order = None  # (stale: it left or died since) rebuild once
        return None

    #: Probes leave within this fraction of ``probe_interval`` after a tick
    #: of the shared clock starts (spread, not all in one millisecond).
    JITTER = 0.1

    async def loop(self) -> None:
        """Probe the scheduled target at each tick of the shared clock (every
        ``probe_interval``; one tick in ``1 + health`` when local health is
        poor). Ticks start together on every node, so a member is probed
        one ``probe_interval`` after the last probe of it, give or take the
        jitter -- not anywhere up to two intervals later, as when each node
        kept its own phase."""
        ms = self.membership
        interval = ms.config.probe_interval
        while True:
            late = ms.transport.shared_clock() % interval  # into the current tick
            await asyncio.sleep(interval * (1 + self.health) - late
                                + ms.rng.uniform(0, self.JITTER * interval))
            member = self.next_target()
            if member is not None:
                self.spawn(member)

    def spawn(self, member: Member) -> None:
        """Probe ``member`` in the background, unless a probe of it is running."""
        if member.probing:
            return
        member.probing = True
        self.membership._track(self.probe(member))

    def timeout(self) -> float:
        """``probe_timeout`` stretched by our local health (Lifeguard)."""
        return self.membership.config.probe_timeout * (1 + self.health)

    async def probe(self, member: Member) -> None:
        """One probe round: direct, then indirect (and over a stream); a
        failure that is not void makes ``member`` suspect, or confirms it."""
        ms = self.membership
        loop = asyncio.get_running_loop()
        since = began = loop.time()
        timeout = self.timeout()
        try:
            direct: GobucketError
            try:
                seen = await ms.ping(member.addr, timeout)
                if seen is member:
                    self.health = max(0, self.health - 1)
                    return
                # Another node answers at its address now: no evidence for it.
                direct = PeerError(f"{member.addr} is now node "
                                   f"{ms.node_id if seen is None else seen.node_id}")
            except GobucketError as exc:
                ms._refused_as_clash(member.addr, exc)
                direct = exc
            if member.state in (MemberState.DEAD, MemberState.LEFT):
                return
            started = loop.time()
            if await self._second_round(member, timeout):
                return
            if member.state not in (MemberState.ALIVE, MemberState.SUSPECT):
                return
            if member.heard_at is not None and member.heard_at >= since:
                return  # it spoke to us meanwhile: alive, whatever the probes said
            took = loop.time() - started
            if took > timeout * 1.5:  # the indirect round allows 1.25x
                log.info("own event loop stalled during a probe; not suspecting the peer "
                         "event=probe_inconclusive node=%s peer=%s took=%.3f", ms.node_id,
                         member.node_id, took)
                return
            log.warning("direct and indirect probes failed event=probe_failed node=%s "
                        "peer=%s direct_took=%.3f indirect_took=%.3f heard_ago=%s error=%s",
                        ms.node_id, member.node_id, started - began, took,
                        "-" if member.heard_at is None else
                        f"{loop.time() - member.heard_at:.3f}", direct)
            self.penalize()
            if member.state is MemberState.SUSPECT:
                ms._suspicions.confirm(member, ms.node_id)  # a check of a suspicion heard
            else:
                ms._suspicions.suspect(member, ms.node_id)
        finally:
            member.probing = False

    async def _second_round(self, member: Member, timeout: float) -> bool:
        """After a missed direct probe: the indirect round and, for a probe
        sent as a datagram, a stream probe at the same time. True if either
        reached ``member``.

        A stream probe whose connection is *refused* ends the round at once:
        the target's own host answered that nothing listens on its port (a
        killed process), which helpers cannot contradict -- and waiting for
        them costs another ``probe_timeout``. A broken link or a stalled
        node times out instead, and is still judged by the helpers.
        """
        ms = self.membership
        # Through the membership: tests replace its _indirect.
        indirect: asyncio.Future[bool | None] = asyncio.ensure_future(
            ms._indirect(member, timeout))
        if not ms.transport.by_datagram(member.addr):
            return bool(await indirect)
        stream = asyncio.ensure_future(self.stream_probe(member, timeout))
        try:
            waiting: set[asyncio.Future[bool | None]] = {indirect, stream}
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for job in done:
                    reached = job.result()
                    if reached:
                        return True
                    if reached is None:  # refused: no need for the helpers
                        return False
            return False
        finally:
            for job in (indirect, stream):
                job.cancel()

    async def stream_probe(self, target: Member, timeout: float) -> bool | None:
        """Probe ``target`` again over HTTP, alongside the indirect round.

        A datagram may be lost, or wait in a busy peer's socket buffer; a
        stream probe tells that from a dead peer even with no helpers (a
        two-node cluster), as memberlist's TCP fallback does. True if it
        answered, None if its connection was refused (nothing listens at its
        address), False if it failed otherwise (timed out, reset).
        """
        try:
            return await self.membership.ping(target.addr, timeout, stream=True) is target
        except PeerUnavailableError as exc:
            return None if exc.refused else False
        except GobucketError:
            return False

    async def indirect(self, target: Member, probe_timeout: float) -> bool:
        """Ask up to ``indirect_probes`` alive peers to probe ``target`` (PING-REQ)."""
        ms = self.membership
        helpers = [m for m in ms.members.values()
                   if m is not target and m.state is MemberState.ALIVE]
        if len(helpers) > ms.config.indirect_probes:
            helpers = ms.rng.sample(helpers, ms.config.indirect_probes)
        if not helpers:
            return False
        message = {"v": 1, "from": ms.header(), "target": target.addr,
                   "updates": ms.updates()}
        # The helper's own probe takes up to probe_timeout; allow for the extra hop.
        timeout = probe_timeout * 1.25

        async def ask(helper: Member) -> bool:
            try:
                reply = await ms.transport.call(helper.addr, Kind.PING_REQ, message, timeout)
                ms.merge(reply.get("updates"), full=False)
            except GobucketError:
                return False
            ack = reply.get("ack")
            if not isinstance(ack, list):
                return False
            try:
                return ms.heard(ack) is target  # not another node now at its address
            except PeerError:
                return False

        results = await asyncio.gather(*(ask(h) for h in helpers))
        return any(results)

    async def handle_ping_req(self, message: dict[str, Any]) -> dict[str, Any]:
        """Probe ``target`` for a peer; answer with its header, or no ack."""
        ms = self.membership
        target = msg_field(message, "target", str)
        ms.merge_checked(check_gossip(message.get("updates")), full=False)
        try:
            reply = await ms.transport.call(target, Kind.PING, ms._ping_message(False),
                                            ms.config.probe_timeout)
            ack = reply.get("from")
            ms.heard(ack)
            ms.merge_checked(check_gossip(reply.get("updates")), full=False)
        except GobucketError:
            ack = None
        return {"v": 1, "from": ms.header(), "ack": ack, "updates": ms.updates()}
