"""A read-only view of one group: what the operator's pages may read.

:mod:`gobucket_py.observe` (the dashboard, ``/metrics``, ``/v1/status``)
reads a group only through :class:`GroupView`: figures and snapshots,
never the group's handles (its buckets, routes or transport). The group
itself knows nothing of the pages; whoever builds the server attaches them
(:func:`gobucket_py.observe.serve_pages`, the node runner, and the mounts of
:meth:`~gobucket_py.TaskBucketGroup.attach` and
:meth:`~gobucket_py.TaskBucketGroup.asgi`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import GobucketError
from ..observe.events import EventFeed
from ..observe.histogram import Histogram
from .membership import PeerInfo
from .protocol import Kind

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["BucketFigures", "GroupView"]


@dataclass(frozen=True, slots=True)
class BucketFigures:
    """One local bucket's figures at one instant."""

    #: ``TaskBucket.stats()``: live, pending and the outcome counters.
    stats: Mapping[str, int]
    capacity: int
    free: int
    #: Fills made through this node: local, forwarded, rejected.
    fills: tuple[int, int, int]
    #: Tasks reported lost (``on_tasks_lost``).
    lost: int
    #: Backups held here for peers, and how many may be.
    backups: int
    backup_capacity: int
    #: Firing lateness of its time-bombs (live: read, do not change).
    lateness: Histogram


class GroupView:
    """The read-only face a :class:`~gobucket_py.TaskBucketGroup` shows its pages."""

    __slots__ = ("_group",)

    def __init__(self, group: TaskBucketGroup) -> None:
        self._group = group

    @property
    def node_id(self) -> str:
        return self._group.node_id

    @property
    def boot_id(self) -> str:
        return self._group.boot_id

    @property
    def address(self) -> str:
        return self._group.address

    @property
    def state(self) -> str:
        """The group's state (``new``, ``running``, ``stopping``, ``stopped``)."""
        return self._group.state.value

    @property
    def started_at(self) -> float | None:
        """Wall-clock time of ``start()``; None before."""
        return self._group.started_at

    @property
    def members_known(self) -> bool:
        """True once the group has started its membership (it has peers to ask)."""
        return self._group._membership is not None

    def bucket_names(self) -> list[str]:
        return list(self._group.buckets)

    def bucket(self, name: str) -> BucketFigures:
        """The figures of local bucket ``name`` (KeyError if there is none)."""
        group = self._group
        bucket = group.buckets[name]
        config = bucket.config
        local, forwarded, rejected = group.fill_counts[name]
        return BucketFigures(
            stats=bucket.stats(), capacity=config.max_bucket, free=bucket.free,
            fills=(local, forwarded, rejected), lost=group.lost_counts.get(name, 0),
            backups=group._backups.count(name),
            backup_capacity=config.max_bucket if config.max_backups is None
            else config.max_backups,
            lateness=bucket.lateness)

    def peers(self) -> list[PeerInfo]:
        """A snapshot of every known peer."""
        return self._group.peers

    def tasks_at_risk(self, node_ids: set[str]) -> dict[str, int]:
        """Tasks this node placed on each of ``node_ids`` and not known to have ended."""
        return self._group._routes.held_by(node_ids) if node_ids else {}

    def lost_by_peer(self) -> dict[str, int]:
        """Tasks reported lost, per peer that held them."""
        return dict(self._group.lost_by_peer)

    def lookup_counts(self) -> dict[tuple[str, str], int]:
        """drain/get calls made here by answer: ``(op, result)`` -> count."""
        return dict(self._group.lookup_counts)

    def handoffs_received(self) -> dict[str, int]:
        """Tasks peers handed to this node as they stopped, per peer."""
        return dict(self._group.handoffs_received)

    @property
    def forward_latency(self) -> Histogram | None:
        forwarder = self._group._forwarder
        return None if forwarder is None else forwarder.latency

    @property
    def probe_rtt(self) -> Histogram | None:
        membership = self._group._membership
        return None if membership is None else membership.probe_rtt

    @property
    def events(self) -> EventFeed:
        return self._group.events

    @property
    def request_timeout(self) -> float:
        return self._group.config.request_timeout

    async def peer_stats(self, address: str) -> dict[str, Any] | None:
        """A peer's own bucket figures (its ``STATS`` answer), or None if it
        could not say within ``request_timeout``."""
        try:
            reply = await self._group.transport.call(address, Kind.STATS, {"v": 1},
                                                     self.request_timeout)
        except GobucketError:
            return None
        buckets = reply.get("buckets")
        return buckets if isinstance(buckets, dict) else None
