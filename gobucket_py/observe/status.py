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

if TYPE_CHECKING:
    from ..cluster.view import GroupView

__all__ = ["PeerStats", "status"]

#: Bucket counters included in the status (see ``TaskBucket.stats``).
COUNTERS = ("filled", "started", "finished", "failed", "exhausted", "drained", "cancelled",
            "rescued", "handed_off", "hook_errors", "hook_timeouts")


def bucket_status(view: GroupView) -> dict[str, dict[str, Any]]:
    """Per local bucket: size, capacity, free, pending, counters, fills by
    result, lateness, lost tasks and the backups held here for peers."""
    out: dict[str, dict[str, Any]] = {}
    for name in view.bucket_names():
        b = view.bucket(name)
        stats, late = b.stats, b.lateness
        local, forwarded, rejected = b.fills
        out[name] = {"size": stats["live"], "capacity": b.capacity,
                     "free": b.free, "pending": stats["pending"],
                     "counters": {k: stats[k] for k in COUNTERS},
                     "fills": {"local": local, "forwarded": forwarded, "rejected": rejected},
                     "lateness": {"p50": _round(late.quantile(0.5)),
                                  "p99": _round(late.quantile(0.99))},
                     "lost": b.lost,
                     "backups": {"held": b.backups, "capacity": b.backup_capacity}}
    return out


class PeerStats:
    """The latest ``STATS`` answer of each peer, refreshed on demand."""

    #: Seconds between two rounds of STATS calls.
    interval = 1.0

    def __init__(self, view: GroupView) -> None:
        self.view = view
        self.buckets: dict[str, dict[str, Any]] = {}
        self.fetched: dict[str, float] = {}
        self._last = 0.0
        self._running = False
        self._task: asyncio.Task[None] | None = None  # the round in flight (kept referenced)

    def refresh(self) -> None:
        """Start a round of STATS calls unless one ran within ``interval``."""
        now = time.monotonic()
        if self._running or now - self._last < self.interval or not self.view.members_known:
            return
        self._running, self._last = True, now
        self._task = asyncio.get_running_loop().create_task(self._fetch())

    async def _fetch(self) -> None:
        view = self.view
        try:
            members = [p for p in view.peers() if p.state is MemberState.ALIVE]

            async def one(node_id: str, address: str) -> None:
                buckets = await view.peer_stats(address)
                if buckets is not None:
                    self.buckets[node_id] = buckets
                    self.fetched[node_id] = time.time()

            await asyncio.gather(*(one(m.node_id, m.address) for m in members))
        finally:
            self._running = False

    def of(self, node_id: str) -> dict[str, Any] | None:
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


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def status(view: GroupView, *, peer_stats: PeerStats | None = None,
           events_since: int = 0) -> dict[str, Any]:
    """The JSON body of ``/v1/status``."""
    now = time.time()
    peers = []
    infos = view.peers()
    unreachable = {p.node_id for p in infos
                   if p.state in (MemberState.SUSPECT, MemberState.DEAD)}
    at_risk = view.tasks_at_risk(unreachable)
    lost_by_peer = view.lost_by_peer()
    for p in sorted(infos, key=lambda p: p.node_id):
        entry: dict[str, Any] = {
            "node_id": p.node_id, "address": p.address, "state": p.state.value,
            "boot_id": p.boot_id, "free": p.free,
            # last_heard is wall-clock, for display; the age is measured on the
            # monotonic clock, so a wall-clock step does not skew it.
            "last_heard": p.last_heard,
            "seconds_since_heard": None if p.heard_ago is None else round(p.heard_ago, 3),
            # Placed there by this node, not known to have ended, now unreachable:
            # maybe lost (a stall or partition heals; a crash does not).
            "tasks_at_risk": at_risk.get(p.node_id, 0),
            # Reported lost (on_tasks_lost) after it crashed or was presumed lost.
            "lost": lost_by_peer.get(p.node_id, 0), "presumed_lost": p.lost}
        if peer_stats is not None:
            entry["buckets"] = peer_stats.of(p.node_id)
            fetched = peer_stats.fetched.get(p.node_id)
            entry["stats_age"] = None if fetched is None else round(now - fetched, 3)
        peers.append(entry)
    started = view.started_at
    events = view.events
    return {
        "node": view.node_id, "boot_id": view.boot_id, "address": view.address,
        "state": view.state, "version": __version__, "time": now,
        "uptime": None if started is None else round(now - started, 3),
        "buckets": bucket_status(view), "peers": peers,
        "seq": events.seq, "events": events.since(events_since),
    }
