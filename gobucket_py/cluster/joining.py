"""Joining, rejoining and anti-entropy for :mod:`.membership`; and knowing
who is out there but not in the table.

- **Joining.** At start and every ``rejoin_interval`` a node contacts the
  seeds it has not reached, swapping whole member lists with them (then it
  knows who is out there: :attr:`~.membership.Membership.joined`). Dead and
  left members are pinged too until they are pruned (either may come back);
  unreached seeds are retried for ever.
- **Learning.** A node named alive by gossip but not in the table is
  probed before it is trusted with tasks: at most once per
  ``rejoin_interval``, and only while peers keep naming it.
- **Anti-entropy.** Every :func:`~.gossip.sync_interval` (20 s up to 30
  nodes, then growing with N) a node swaps whole member lists with one
  random peer, which repairs what the piggyback missed.
- **Unreached.** Until then, addresses learned but not reached, nodes peers
  gossip as dead or left (rumours), and seeds not reached since start may
  hold tasks: :meth:`Joiner.unreached`.
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
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import GobucketError
from .gossip import sync_interval
from .member import MemberState

if TYPE_CHECKING:
    from .membership import Membership

__all__ = ["SEED_WARN_ROUNDS", "SYNC_INTERVAL", "Joiner"]

log = logging.getLogger("gobucket_py")

#: A seed that failed every join attempt for this many ``rejoin_interval`` s
#: (10 s with the defaults) is logged at WARNING: long enough for the nodes
#: of a cluster started together to come up, short enough that a typo'd seed
#: is noticed before the first overflow.
SEED_WARN_ROUNDS = 5
#: Seconds between two whole member-list swaps with a random peer, up to 30
#: nodes (then growing with N, see :func:`~.gossip.sync_interval`).
SYNC_INTERVAL = 20.0


class Joiner:
    """The join side of one node's :class:`~.membership.Membership`: seeds,
    the join, rejoin and sync loops, nodes learned second-hand, rumours."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        #: Seed addresses (as given, or found by DNS) not reached yet: joined
        #: at every rejoin round.
        self.pending = set(membership.seeds)
        #: Addresses found to be this node itself; never joined again.
        self.aliases: set[str] = set()
        #: Addresses learned second-hand -> loop time of the last join attempt.
        self.learned: dict[str, float] = {}
        #: Loop time of start().
        self.started = 0.0
        # Seed address -> loop time of the first failed join attempt of the
        # current episode, and the seeds already warned about in it.
        self._seed_failing: dict[str, float] = {}
        self._seed_warned: set[str] = set()
        # node id -> (state, first heard, last heard): unknown nodes that
        # peers gossip as dead or left (see unreached()).
        self._rumours: dict[str, tuple[str, float, float]] = {}

    async def start(self) -> None:
        """Contact the seeds once (the rejoin loop goes on from there)."""
        self.started = asyncio.get_running_loop().time()
        await self._join_once()

    def seed_addresses(self) -> set[str]:
        """The configured cluster: the seed addresses, and what the ``dns:``
        seeds resolved to last."""
        discovery = self.membership.discovery
        found = set() if discovery is None else discovery.addresses()
        return found.union(self.membership.seeds)

    def reached(self, addr: str) -> None:
        """A node spoke to us from ``addr``: it is neither to join nor to learn."""
        self.pending.discard(addr)
        self.learned.pop(addr, None)
        if self._seed_failing:
            self._seed_answered(addr)

    def pruned(self) -> None:
        """A member was pruned. Seeds are the configured cluster: keep trying
        those no known node holds (the pruned one's, under whatever spelling
        the seed list uses)."""
        ms = self.membership
        held = {m.addr for m in ms.members.values()}
        self.pending.update(a for a in self.seed_addresses()
                            if a not in held and a not in self.aliases
                            and a != ms.transport.address)

    def forget(self, addr: str) -> None:
        """Drop an address from the join list for good (it is ourselves)."""
        self.aliases.add(addr)
        self.pending.discard(addr)
        self.learned.pop(addr, None)

    def learn(self, addr: str) -> None:
        """A node learned second-hand: probe it before trusting it with tasks.

        At most one attempt per ``rejoin_interval`` per address, and only
        while peers keep naming it: an address that never answers is not
        kept (only seeds are retried for ever).
        """
        ms = self.membership
        if addr in self.aliases or addr == ms.transport.address:
            return
        now = asyncio.get_running_loop().time()
        if addr in self.pending:  # a seed: the join loop retries it anyway
            self.learned[addr] = now  # but peers say it is alive: it may hold tasks
            return
        last = self.learned.get(addr)
        if last is not None and now - last < ms.config.rejoin_interval:
            return
        self.learned[addr] = now
        ms._track(self._attempt(addr, sync=False))

    def rumour(self, node_id: str, state: str) -> None:
        """Peers say ``node_id``, which we do not know, is dead or left."""
        now = asyncio.get_running_loop().time()
        known = self._rumours.get(node_id)
        first = now if known is None or known[0] != state else known[1]
        self._rumours[node_id] = (state, first, now)

    def young(self) -> bool:
        """Started less than ``lost_after`` ago (peers may not have found it yet)."""
        return (asyncio.get_running_loop().time() - self.started
                < self.membership.config.lost_after)

    def unreached(self) -> list[str]:
        """Nodes this node does not know that may hold tasks: addresses
        peers named as alive lately and not reached yet, nodes they name as
        dead (for ``lost_after`` after the first such rumour) or left (for
        ``stop_grace`` and two request timeouts: it may still be handing
        off), and seeds not reached since start (for ``lost_after``)."""
        now = asyncio.get_running_loop().time()
        cfg = self.membership.config
        members = self.membership.members
        fresh = 2 * cfg.rejoin_interval
        leaving = cfg.stop_grace + 2 * cfg.request_timeout
        self._rumours = {n: r for n, r in self._rumours.items()
                         if now - r[2] < fresh and n not in members}
        rumours = [n for n, (state, first, _) in self._rumours.items()
                   if now - first < (cfg.lost_after if state == "dead" else leaving)]
        # Seeds never reached since this node started (it may have restarted
        # into a partition): presumed empty after lost_after, like a dead peer.
        seeds = ([a for a in self.pending if a not in self.learned]
                 if now - self.started < cfg.lost_after else [])
        return list(self.learned) + rumours + seeds

    def _seed_failed(self, addr: str, exc: GobucketError) -> None:
        """Count a failed join attempt of a seed; WARNING once per episode."""
        ms = self.membership
        if addr not in ms.seeds and (ms.discovery is None
                                     or addr not in ms.discovery.addresses()):
            return
        now = asyncio.get_running_loop().time()
        first = self._seed_failing.setdefault(addr, now)
        warn_after = SEED_WARN_ROUNDS * ms.config.rejoin_interval
        if now - first < warn_after or addr in self._seed_warned:
            return
        self._seed_warned.add(addr)
        log.warning("seed not reachable; check its address and port (the peer port, not an "
                    "app's) event=seed_unreachable node=%s seed=%s failing_for=%.1f "
                    "alive_peers=%d error=%s", ms.node_id, addr, now - first,
                    len(ms.alive()), exc)

    def _seed_answered(self, addr: str) -> None:
        """A seed's failure episode (if any) is over."""
        first = self._seed_failing.pop(addr, None)
        if first is not None and addr in self._seed_warned:
            self._seed_warned.discard(addr)
            log.info("seed reached event=seed_reached node=%s seed=%s after=%.1f",
                     self.membership.node_id, addr, asyncio.get_running_loop().time() - first)

    async def _attempt(self, addr: str, *, sync: bool = True) -> None:
        """Contact ``addr`` (a seed, or a node we were told of, or a dead or
        left member that may be back); ``sync``: swap whole member lists."""
        ms = self.membership
        try:
            member = await ms.ping(addr, ms.config.probe_timeout, sync=sync)
        except GobucketError as exc:
            if not ms._refused_as_clash(addr, exc):
                log.debug("join attempt failed event=join_attempt_failed node=%s addr=%s "
                          "error=%s", ms.node_id, addr, exc)
                self._seed_failed(addr, exc)
            return
        self._seed_answered(addr)
        self.pending.discard(addr)  # reached, whatever its spelling
        if member is None and addr not in self.aliases:
            # Our own node id and boot answered: this address is ourselves.
            self.forget(addr)
            if addr != ms.transport.address:
                log.info("seed address is this node; not contacting it again "
                         "event=seed_is_self node=%s addr=%s seed=%s", ms.node_id,
                         ms.transport.address, addr)

    async def _discover(self) -> None:
        """Look the ``dns:`` seeds up again: join new addresses, drop gone ones."""
        ms = self.membership
        assert ms.discovery is not None
        before = ms.discovery.addresses()
        found = await ms.discovery.refresh()
        held = {m.addr for m in ms.members.values()}
        own = ms.transport.address
        self.pending.update(a for a in found
                            if a not in held and a not in self.aliases and a != own)
        for addr in before - found:
            if addr not in ms.seeds:  # left the name (scaled down, rescheduled)
                self.pending.discard(addr)
                self._seed_failing.pop(addr, None)
                self._seed_warned.discard(addr)

    async def _join_once(self) -> None:
        ms = self.membership
        if ms.discovery is not None:
            await self._discover()
        own = ms.transport.address
        self.pending.discard(own)
        self.pending -= self.aliases
        seeds = list(self.pending)  # a join: whole member lists both ways
        back = [m.addr for m in ms.members.values()  # may be back: a plain ping
                if m.state in (MemberState.LEFT, MemberState.DEAD) and m.addr not in seeds]
        now = asyncio.get_running_loop().time()
        self.learned = {a: t for a, t in self.learned.items()
                        if now - t < ms.config.rejoin_interval}
        await asyncio.gather(*(self._attempt(a) for a in dict.fromkeys(seeds)),
                             *(self._attempt(a, sync=False) for a in dict.fromkeys(back)))

    async def join_loop(self) -> None:
        """Every ``rejoin_interval`` (jittered): the seeds not reached, and
        the dead and left members that may be back."""
        ms = self.membership
        while True:
            await asyncio.sleep(ms.config.rejoin_interval * ms.rng.uniform(0.8, 1.2))
            await self._join_once()

    async def sync_loop(self) -> None:
        """Anti-entropy: now and then, swap whole member lists with one
        random alive peer (what piggybacked updates missed is repaired)."""
        ms = self.membership
        cfg = ms.config
        while True:
            wait = sync_interval(SYNC_INTERVAL, len(ms.members) + 1)
            await asyncio.sleep(wait * ms.rng.uniform(0.5, 1.5))
            alive = ms.alive()
            if alive:
                member = ms.rng.choice(alive)
                try:
                    await ms.ping(member.addr, cfg.request_timeout, sync=True)
                except GobucketError as exc:
                    log.debug("member list sync failed event=sync_failed node=%s peer=%s "
                              "error=%s", ms.node_id, member.node_id, exc)
