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
from .tls import TLSConfig
from .transport import Transport

__all__ = ["check_arguments", "check_listen", "check_options"]


def check_arguments(config: GroupConfig, buckets: Mapping[str, TaskBucket],
                    peers: list[str] | tuple[str, ...], port: int,
                    node_id: str | None) -> dict[str, TaskBucket]:
    """Check what every group is given; returns its buckets by name."""
    if not isinstance(config, GroupConfig):
        raise TypeError("config must be a GroupConfig")
    if not isinstance(buckets, Mapping):
        raise TypeError(f"buckets must be a mapping {{name: TaskBucket}}, got "
                        f"{type(buckets).__name__}")
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


def check_options(*, host: object, port_fallback: object, insecure: object, secret: object,
                  advertise: object, tls: object, transport: object) -> None:
    """Check the types of the group's keyword options, and ``advertise``'s form."""
    for name, flag in (("insecure", insecure), ("port_fallback", port_fallback)):
        if type(flag) is not bool:  # "false" would be truthy: refuse it
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if not isinstance(host, str):
        raise TypeError(f"host must be a str (the address to listen on), got {host!r}")
    if secret is not None and not isinstance(secret, str | Keyring):
        raise TypeError(f"secret must be a str or a Keyring, got {type(secret).__name__}")
    if tls is not None and not isinstance(tls, TLSConfig):
        raise TypeError(f"tls must be a TLSConfig, got {type(tls).__name__}")
    if transport is not None and not isinstance(transport, Transport):
        raise TypeError(f"transport must be a Transport, got {type(transport).__name__}")
    if advertise is not None:
        if (not isinstance(advertise, str) or not advertise
                or any(c.isspace() for c in advertise)):
            raise ValueError(f"advertise must be 'host:port' (or a host alone, given the "
                             f"port it listens on), got {advertise!r}")
        if ":" in advertise.partition("/")[0]:
            check_peer(advertise, "advertise")


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
