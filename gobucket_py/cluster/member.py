"""One peer as this node sees it: the records of :mod:`.membership`.

- :class:`MemberState`: alive, suspect, dead or left.
- :class:`Member`: the mutable record the peer table keeps about one peer.
- :class:`PeerInfo`: the read-only view of one peer users get (``group.peers``).
- The callbacks :class:`~.membership.Membership` calls about members
  (:data:`ChangeCallback`, :data:`RestartCallback`, :data:`MemberCallback`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["RETIRED_BOOTS", "ChangeCallback", "Member", "MemberCallback", "MemberState",
           "PeerInfo", "RestartCallback"]


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


#: How many of a peer's earlier boot ids :attr:`Member.retired` keeps.
RETIRED_BOOTS = 8


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
    #: Loop time this node first heard of the peer's current boot (set by
    #: ``Membership.heard``; a record made otherwise has met it "never").
    met_at: float = math.inf
    #: Its earlier boot ids this node saw replaced, newest last (at most
    #: :data:`RETIRED_BOOTS`): a message from one of them at its current
    #: address is a late one from a process that is gone, not a restart
    #: (``Membership.heard`` refuses it).
    retired: tuple[str, ...] = ()
    #: The state before the last change (None: none yet, or a new life).
    was: MemberState | None = None
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
