"""Suspicion and what follows a failure, for :mod:`.membership`: one timer
per member, on the event loop's monotonic clock.

- **Suspicion (Lifeguard).** A suspect that answers anything, or refutes
  with a higher incarnation, is alive again; otherwise it is *dead* after
  :func:`~.gossip.suspicion_timeout`: ``suspicion_timeout`` up to 10 nodes,
  growing with ``log10(N)``, and down to half of that as other nodes
  independently confirm the suspicion (a node that hears of a suspicion
  probes the suspect itself with a probability that gives about 3 such
  checks at any N). Suspicion and death news about a peer that spoke to us
  within the last probe round is ignored (we have newer evidence). A node
  that hears it is suspected bumps its incarnation to refute it.
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
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .gossip import SUSPICION_CONFIRMATIONS, suspicion_timeout
from .member import Member, MemberState

if TYPE_CHECKING:
    from .membership import Membership

__all__ = ["Suspicions"]

log = logging.getLogger("gobucket_py")


class Suspicions:
    """The suspicions of one node's :class:`~.membership.Membership`, and the
    timer of each member's state: suspicion expiry, presumed loss, pruning."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        #: The one pending timer of each member (suspicion expiry, presumed
        #: lost, or prune), cancelled on a state change and on stop.
        self._timers: dict[Member, asyncio.TimerHandle] = {}

    def probe_round(self) -> float:
        """The longest a probe round whose failure a peer reports now can
        have lasted: up to one ``probe_interval``, then ``2.25 * probe_timeout``."""
        cfg = self.membership.config
        return cfg.probe_interval + 3 * cfg.probe_timeout

    def spoke_lately(self, member: Member) -> bool:
        """Did ``member`` send us a message after any probe whose failure a
        peer could be reporting now began? (A probe round lasts up to about
        ``2.25 * probe_timeout``, after up to one ``probe_interval``.)"""
        if member.heard_at is None:
            return False
        return asyncio.get_running_loop().time() - member.heard_at < self.probe_round()

    def suspect(self, member: Member, by: str) -> None:
        """``by`` suspects ``member`` (ALIVE here): it becomes SUSPECT, and
        the suspicion is passed on. Heard from a peer, this node also probes
        it itself, with a probability that gives about
        ``SUSPICION_CONFIRMATIONS`` such checks per suspicion at any size:
        independent confirmations are what shorten the timeout."""
        ms = self.membership
        now = member.suspected_at = asyncio.get_running_loop().time()
        member.suspectors = {by, *(n for n, t in member.doubted_by.items()
                                   if now - t < 2 * self.probe_round())}
        member.doubted_by.clear()
        ms._set_state(member, MemberState.SUSPECT)
        ms._broadcast(member, by)
        if by != ms.node_id and ms.rng.random() < (
                2 * SUSPICION_CONFIRMATIONS / max(1, len(ms.members))):
            ms._prober.spawn(member)

    def confirm(self, member: Member, by: str) -> None:
        """Another node suspects ``member`` too: the timeout shrinks (Lifeguard)."""
        if by in member.suspectors or len(member.suspectors) > SUSPICION_CONFIRMATIONS:
            return
        member.suspectors.add(by)
        self.arm(member)
        self.membership._broadcast(member, by)

    def arm(self, member: Member) -> None:
        """(Re)start the timer of the member's current state, on loop time."""
        old = self._timers.pop(member, None)
        if old is not None:
            old.cancel()
        cfg = self.membership.config
        since = member.state_since
        if member.state is MemberState.SUSPECT:  # expire on time, not at the next probe tick
            timeout = suspicion_timeout(cfg.suspicion_timeout, len(self.membership.members) + 1,
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

    def cancel(self) -> None:
        """Cancel every pending timer (on stop)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _current(self, member: Member, since: float) -> bool:
        """True if a timer armed at ``since`` still applies to ``member``."""
        self._timers.pop(member, None)
        return (self.membership.members.get(member.node_id) is member
                and member.state_since == since)

    def _expire(self, member: Member, since: float) -> None:
        if self._current(member, since) and member.state is MemberState.SUSPECT:
            self.membership._set_state(member, MemberState.DEAD)

    def _presume_lost(self, member: Member, since: float) -> None:
        if not self._current(member, since) or member.state is not MemberState.DEAD:
            return
        ms = self.membership
        member.lost = True
        log.warning("peer dead too long with the same boot id; presumed lost "
                    "event=peer_lost node=%s peer=%s addr=%s dead_for=%.1f", ms.node_id,
                    member.node_id, member.addr, ms.config.lost_after)
        delay = max(0.0, since + ms.config.prune_after - asyncio.get_running_loop().time())
        self._timers[member] = asyncio.get_running_loop().call_later(
            delay, self._prune, member, since)
        if ms.on_lost is not None:
            ms.on_lost(member)

    def _prune(self, member: Member, since: float) -> None:
        if not self._current(member, since) or member.state not in (MemberState.DEAD,
                                                                     MemberState.LEFT):
            return
        ms = self.membership
        del ms.members[member.node_id]
        ms._joiner.pruned()
        log.info("peer forgotten event=peer_pruned node=%s peer=%s addr=%s state=%s",
                 ms.node_id, member.node_id, member.addr, member.state.value)
        if ms.on_pruned is not None:
            ms.on_pruned(member)
