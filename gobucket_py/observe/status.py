"""``GET /v1/status``: what this node knows, as JSON. Never task payloads.

With ``?peers=1`` (the dashboard) each peer's own bucket figures are added:
this node fetches them with a signed ``STATS`` call at most once a second,
in the background, so a status request never waits on a peer.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..cluster.membership import MemberState
from ..cluster.protocol import Kind
from ..errors import GobucketError

if TYPE_CHECKING:
    from ..cluster.group import TaskBucketGroup

__all__ = ["PeerStats", "status"]

#: Bucket counters included in the status (see ``TaskBucket.stats``).
COUNTERS = ("filled", "started", "finished", "failed", "exhausted", "drained", "cancelled",
            "rescued", "handed_off", "hook_errors", "hook_timeouts")


def bucket_status(group: TaskBucketGroup) -> dict[str, dict[str, Any]]:
    """Per local bucket: size, capacity, free, pending, counters and fills by result."""
    out: dict[str, dict[str, Any]] = {}
    for name, bucket in group.buckets.items():
        stats = bucket.stats()
        local, forwarded, rejected = group.fill_counts[name]
        out[name] = {"size": stats["live"], "capacity": bucket.config.max_bucket,
                     "free": bucket.free, "pending": stats["pending"],
                     "counters": {k: stats[k] for k in COUNTERS},
                     "fills": {"local": local, "forwarded": forwarded, "rejected": rejected}}
    return out


class PeerStats:
    """The latest ``STATS`` answer of each peer, refreshed on demand."""

    #: Seconds between two rounds of STATS calls.
    interval = 1.0

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        self.buckets: dict[str, dict[str, Any]] = {}
        self.fetched: dict[str, float] = {}
        self._last = 0.0
        self._running = False

    def refresh(self) -> None:
        """Start a round of STATS calls unless one ran within ``interval``."""
        now = time.monotonic()
        if self._running or now - self._last < self.interval or self.group._membership is None:
            return
        self._running, self._last = True, now
        self.group._spawn(self._fetch())

    async def _fetch(self) -> None:
        group = self.group
        try:
            members = [m for m in group.peers if m.state is MemberState.ALIVE]
            timeout = group.config.request_timeout

            async def one(node_id: str, addr: str) -> None:
                try:
                    reply = await group.transport.call(addr, Kind.STATS, {"v": 1}, timeout)
                except GobucketError:
                    return
                buckets = reply.get("buckets")
                if isinstance(buckets, dict):
                    self.buckets[node_id] = buckets
                    self.fetched[node_id] = time.time()

            await asyncio.gather(*(one(m.node_id, m.address) for m in members))
        finally:
            self._running = False

    def view(self, node_id: str) -> dict[str, Any] | None:
        """Per bucket of that peer: size, capacity, counters and fills (or None)."""
        raw = self.buckets.get(node_id)
        if raw is None:
            return None
        out: dict[str, Any] = {}
        for name, stats in raw.items():
            if not isinstance(stats, dict):
                continue
            fills = stats.get("fills")
            out[str(name)] = {
                "size": stats.get("live"), "capacity": stats.get("capacity"),
                "counters": {k: stats.get(k) for k in COUNTERS},
                "fills": fills if isinstance(fills, dict) else None}
        return out


def status(group: TaskBucketGroup, *, peer_stats: PeerStats | None = None,
           events_since: int = 0) -> dict[str, Any]:
    """The JSON body of ``/v1/status``."""
    now = time.time()
    peers = []
    for p in sorted(group.peers, key=lambda p: p.node_id):
        entry: dict[str, Any] = {
            "node_id": p.node_id, "address": p.address, "state": p.state.value,
            "boot_id": p.boot_id, "free": p.free,
            # last_heard is wall-clock, for display; the age is measured on the
            # monotonic clock, so a wall-clock step does not skew it.
            "last_heard": p.last_heard,
            "seconds_since_heard": None if p.heard_ago is None else round(p.heard_ago, 3)}
        if peer_stats is not None:
            entry["buckets"] = peer_stats.view(p.node_id)
            fetched = peer_stats.fetched.get(p.node_id)
            entry["stats_age"] = None if fetched is None else round(now - fetched, 3)
        peers.append(entry)
    started = group.started_at
    return {
        "node": group.node_id, "boot_id": group.boot_id, "address": group.address,
        "state": group.state.value, "version": __version__, "time": now,
        "uptime": None if started is None else round(now - started, 3),
        "buckets": bucket_status(group), "peers": peers,
        "seq": group.events.seq, "events": group.events.since(events_since),
    }
