"""Dissemination and suspicion arithmetic for :mod:`.membership` (SWIM with Lifeguard).

- :class:`Broadcasts`: the bounded queue of recent membership updates that
  ride on probes and acks. One entry per node (a newer update replaces an
  older one); each is sent about ``RETRANSMIT_MULT * log10(N+1)`` times,
  the least-sent first, at most ``MAX_PIGGYBACK`` per message.
- :func:`suspicion_timeout`: Lifeguard's timeout, which grows with
  ``log10(N)`` and shrinks as independent nodes confirm the suspicion.
- :func:`sync_interval`: how often a node swaps its whole member list with
  one random peer; it grows with N so its bytes per second stay flat.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

__all__ = ["MAX_PIGGYBACK", "RETRANSMIT_MULT", "Broadcasts", "retransmits",
           "suspicion_timeout", "sync_interval"]

#: Updates carried by one message at most (a few hundred bytes).
MAX_PIGGYBACK = 8
#: Each update is sent this many times per ``log10(N+1)`` (memberlist's
#: default is 4 too): enough that every node hears it with high probability.
RETRANSMIT_MULT = 4
#: Entries the queue keeps at most; the most-sent go first beyond it.
MAX_QUEUED = 1024
#: Lifeguard: a suspicion with no confirmation lasts this many times one
#: that enough independent nodes confirmed.
SUSPICION_MAX_MULT = 2.0
#: Confirmations that bring a suspicion down to the minimum timeout.
SUSPICION_CONFIRMATIONS = 3


def retransmits(n: int) -> int:
    """Times one update is sent in a cluster of ``n`` nodes."""
    return RETRANSMIT_MULT * max(1, math.ceil(math.log10(n + 1)))


def suspicion_timeout(base: float, n: int, confirmations: int) -> float:
    """How long a suspect may refute before it is declared dead.

    ``base`` is ``GroupConfig.suspicion_timeout``: the timeout of a
    suspicion nobody else confirms, up to 10 nodes; it grows with
    ``log10(n)`` (a larger cluster spreads a refutation in more rounds).
    Each independent confirmation brings it down, as ``log(c + 1) /
    log(K + 1)`` for ``c`` of ``K`` expected confirmations (fewer in
    clusters too small to give them), to ``1 / SUSPICION_MAX_MULT`` of it:
    several nodes that failed to reach it are stronger evidence than one.
    """
    high = base * max(1.0, math.log10(max(n, 1)))
    low = high / SUSPICION_MAX_MULT
    expected = min(SUSPICION_CONFIRMATIONS, max(n - 2, 0))
    if expected <= 0 or confirmations <= 0:
        return high
    if confirmations >= expected:
        return low
    frac = math.log(confirmations + 1) / math.log(expected + 1)
    return max(low, high - (high - low) * frac)


def sync_interval(base: float, n: int) -> float:
    """Seconds between two full member-list swaps of one node: ``base`` up
    to 30 nodes, then growing with ``n`` (each swap sends ``n`` entries)."""
    return base * max(1.0, n / 30)


class Broadcasts:
    """Membership updates waiting to be piggybacked.

    A newer update about a node replaces the older one. Each message takes
    the least-sent updates, newest first among equals, so fresh news is
    sent ahead of a backlog (a mass join queues one update per node) until
    it has caught up. Updates are kept in one FIFO per send count, so taking
    is O(limit) however long the queue is."""

    __slots__ = ("_levels", "_queue")

    def __init__(self) -> None:
        # node id -> [entry, times sent]
        self._queue: dict[str, list[Any]] = {}
        # _levels[k]: (node id, slot) sent k times, newest at the left; stale
        # pairs (replaced or dropped since) are skipped when met.
        self._levels: list[deque[tuple[str, list[Any]]]] = []

    def __len__(self) -> int:
        return len(self._queue)

    def _level(self, k: int) -> deque[tuple[str, list[Any]]]:
        levels = self._levels
        while len(levels) <= k:
            levels.append(deque())
        return levels[k]

    def add(self, entry: list[Any]) -> None:
        """Queue ``entry`` (``[node id, boot, addr, incarnation, state, by]``),
        replacing any older update about the same node."""
        slot = [entry, 0]
        queue = self._queue
        queue[entry[0]] = slot
        self._level(0).appendleft((entry[0], slot))
        if len(queue) > MAX_QUEUED:  # the most-sent go first
            for level in reversed(self._levels):
                while level:
                    key, old = level.pop()
                    if queue.get(key) is old:
                        del queue[key]
                        return

    def take(self, n: int, limit: int = MAX_PIGGYBACK) -> list[list[Any]]:
        """Up to ``limit`` updates for one message, the least-sent first; each
        is counted, and dropped once sent ``retransmits(n)`` times."""
        queue = self._queue
        if not queue:
            self._levels.clear()
            return []
        most = retransmits(n)
        out: list[list[Any]] = []
        moved: list[tuple[str, list[Any]]] = []
        for level in self._levels:
            while level and len(out) < limit:
                key, slot = level.popleft()
                if queue.get(key) is not slot:
                    continue  # replaced or dropped meanwhile
                out.append(slot[0])
                slot[1] += 1
                if slot[1] >= most:
                    del queue[key]
                else:
                    moved.append((key, slot))
            if len(out) >= limit:
                break
        for key, slot in moved:  # to the back of the next level
            self._level(slot[1]).append((key, slot))
        return out

    def clear(self) -> None:
        self._queue.clear()
        self._levels.clear()
