"""Peer addresses: ``host:port``, optionally with the path prefix a node is
mounted under (``host:port/gobucket``, see ``TaskBucketGroup.attach`` and
``TaskBucketGroup.asgi``). A peer's URL is ``http://<address>/v1/<kind>``.
A seed may also be ``dns:NAME:PORT`` (every A/AAAA record of ``NAME`` is a
peer at ``PORT``; see :mod:`.discovery`).
"""

from __future__ import annotations

from .discovery import parse_dns

__all__ = ["check_peer"]


def check_peer(address: str, field: str = "peers") -> str:
    """``address`` if it is ``host:port``, ``host:port/prefix`` or
    ``dns:NAME:PORT[/prefix]``; else a ``ValueError`` naming ``field``."""
    if not isinstance(address, str) or not address:
        raise ValueError(f"{field}: each peer must be a non-empty 'host:port' string, "
                         f"got {address!r}")
    if parse_dns(address, field) is not None:
        return address
    hostport, slash, prefix = address.partition("/")
    host, sep, port = hostport.rpartition(":")
    if (not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535
            or any(c.isspace() for c in address) or (slash and not prefix.strip("/"))):
        raise ValueError(f"{field}: {address!r} is not 'host:port' (or 'host:port/prefix' "
                         "for a node mounted under a path, or 'dns:NAME:PORT' for every "
                         "address of a DNS name)")
    return address
