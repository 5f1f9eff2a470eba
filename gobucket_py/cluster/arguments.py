"""Checks of :class:`~gobucket_py.TaskBucketGroup`'s constructor arguments.

Each refusal is a ``TypeError`` or ``ValueError`` naming the argument and
saying what would be accepted, raised before anything starts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from ..bucket import TaskBucket
from ..config import GroupConfig
from .addresses import check_peer
from .auth import Keyring
from .protocol import MAX_NAME, is_name

__all__ = ["check_arguments", "check_listen"]


def check_arguments(config: GroupConfig, buckets: Mapping[str, TaskBucket],
                    peers: list[str] | tuple[str, ...], port: int,
                    node_id: str | None) -> dict[str, TaskBucket]:
    """Check what every group is given; returns its buckets by name."""
    if not isinstance(config, GroupConfig):
        raise TypeError("config must be a GroupConfig")
    if not buckets:
        raise ValueError("buckets must name at least one TaskBucket")
    for name, bucket in buckets.items():
        if not isinstance(bucket, TaskBucket):
            raise ValueError(f"buckets[{name!r}] must be a TaskBucket, "
                             f"got {type(bucket).__name__}")
        if bucket.name != name:
            raise ValueError(f"buckets[{name!r}] is named {bucket.name!r}; create it with "
                             f"TaskBucket(..., name={name!r})")
    if isinstance(peers, str) or not all(isinstance(p, str) and p for p in peers):
        raise ValueError("peers must be a list of 'host:port' strings")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if node_id is not None and not is_name(node_id):
        raise ValueError(f"node_id must be a non-empty string of at most {MAX_NAME} "
                         f"printable characters without spaces, got {node_id!r}")
    return dict(buckets)


def check_listen(peers: list[str] | tuple[str, ...], host: str, secret: Keyring | None,
                 insecure: bool) -> None:
    """Check what a group serving HTTP is given: peer addresses, and a
    secret unless it listens on loopback only (or ``insecure``)."""
    for peer in peers:
        check_peer(peer)
    if secret is None and not insecure and not _is_loopback(host):
        raise ValueError(
            f"host: refusing to listen on {host!r} without a secret, because any "
            "machine that reaches it could fill and drain tasks; pass secret=... "
            "(or GOBUCKET_SECRET), or insecure=True on a trusted network")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
