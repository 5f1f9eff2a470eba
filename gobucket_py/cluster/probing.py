"""SWIM probing for :mod:`.membership`: whom a node probes, when, and how.

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
from typing import TYPE_CHECKING, Any

from ..errors import GobucketError, PeerError
from .member import Member, MemberState
from .protocol import Kind, check_gossip
from .protocol import field as msg_field

if TYPE_CHECKING:
    from .membership import Membership

__all__ = ["MAX_HEALTH", "Prober"]

log = logging.getLogger("gobucket_py")

#: Lifeguard's local health multiplier goes up to this (probes then wait up
#: to 1 + MAX_HEALTH times longer).
MAX_HEALTH = 8


class Prober:
    """The probing side of one node's :class:`~.membership.Membership`: the
    probe order and loop, direct, stream and indirect probes, the answer to
    a PING-REQ, and local health."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        # The probe order: members shuffled, one taken per probe_interval.
        self._ring: list[Member] = []
        self._ring_pos = 0
        #: Lifeguard's local health: 0 (healthy) to MAX_HEALTH. Raised when
        #: our probes fail or we must refute a suspicion of ourselves (both
        #: hint that this node is the slow one), lowered by each probe that
        #: succeeds; probe intervals and timeouts are stretched by 1 + it.
        self.health = 0

    def penalize(self) -> None:
        """Evidence that this node is the slow one: raise local health."""
        self.health = min(MAX_HEALTH, self.health + 1)

    def add(self, member: Member) -> None:
        """A newcomer: probed within this round, not only after the next shuffle."""
        self._ring.insert(self.membership.rng.randint(self._ring_pos, len(self._ring)), member)

    def next_target(self) -> Member | None:
        """The next member to probe: a shuffled round over the alive and
        suspect ones (SWIM), shuffled again when it ends. Dead and left
        members are retried by the join loop instead."""
        members = self.membership.members
        for _ in range(2):
            ring = self._ring
            while self._ring_pos < len(ring):
                member = ring[self._ring_pos]
                self._ring_pos += 1
                if (members.get(member.node_id) is member
                        and member.state in (MemberState.ALIVE, MemberState.SUSPECT)):
                    return member
            self._ring = [m for m in members.values()
                          if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]
            self.membership.rng.shuffle(self._ring)
            self._ring_pos = 0
        return None

    async def loop(self) -> None:
        """Probe the next target every ``probe_interval`` (stretched by local health)."""
        cfg = self.membership.config
        # Jitter so that nodes started together do not probe in lockstep.
        await asyncio.sleep(self.membership.rng.uniform(0, cfg.probe_interval))
        while True:
            member = self.next_target()
            if member is not None:
                self.spawn(member)
            await asyncio.sleep(cfg.probe_interval * (1 + self.health))

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
            # Through the membership: tests replace its _indirect.
            second = [ms._indirect(member, timeout)]
            if ms.transport.by_datagram(member.addr):
                second.append(self.stream_probe(member, timeout))
            if any(await asyncio.gather(*second)):
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

    async def stream_probe(self, target: Member, timeout: float) -> bool:
        """Probe ``target`` again over HTTP, alongside the indirect round.

        A datagram may be lost, or wait in a busy peer's socket buffer; a
        stream probe tells that from a dead peer even with no helpers (a
        two-node cluster), as memberlist's TCP fallback does.
        """
        try:
            return await self.membership.ping(target.addr, timeout, stream=True) is target
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
