"""DNS discovery: a seed written ``dns:NAME:PORT`` stands for every A and
AAAA record of ``NAME``, each reached at ``PORT`` (``dns:NAME:PORT/prefix``
for nodes mounted under a path).

That is how orchestrators name the replicas of one service: ``docker-compose
up --scale node=5`` (the service name), a Kubernetes headless Service, Docker
Swarm's ``tasks.NAME``. :class:`Membership` resolves the names when it starts
and again at every rejoin round (``GroupConfig.rejoin_interval``), with the
running loop's ``getaddrinfo`` (never blocking the loop), and joins what it
finds like any seed. A failed lookup keeps the addresses of the last good one
and is logged at WARNING once per episode (``event=dns_lookup_failed``); it is
retried at the next round and is never fatal -- the first node of a service
often starts before its name has any record.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass

__all__ = ["DNS_PREFIX", "DnsSeed", "Discovery", "parse_dns", "resolve", "own_address"]

log = logging.getLogger("gobucket_py")

#: A peer written with this prefix is a DNS name standing for many peers.
DNS_PREFIX = "dns:"
#: A lookup that takes longer counts as failed for this round (the
#: resolver's own retries can take tens of seconds). It is not started again
#: while it runs: each one holds a thread of the loop's default executor.
RESOLVE_TIMEOUT = 5.0

# A DNS name (labels of letters, digits, '-' and '_', optionally fully
# qualified with a final dot) or an IPv4 address.
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


@dataclass(frozen=True, slots=True)
class DnsSeed:
    """``dns:NAME:PORT[/prefix]``: the peers are the name's addresses."""

    name: str
    port: int
    #: The path prefix the nodes are mounted under ("" for none, else "/...").
    prefix: str = ""

    def __str__(self) -> str:
        return f"{DNS_PREFIX}{self.name}:{self.port}{self.prefix}"

    def address(self, ip: str) -> str:
        """The peer address of one of its records (IPv6 in brackets)."""
        host = f"[{ip}]" if ":" in ip else ip
        return f"{host}:{self.port}{self.prefix}"


def parse_dns(spec: str, field: str = "peers") -> DnsSeed | None:
    """The :class:`DnsSeed` that ``spec`` names, None if it does not start
    with ``dns:``, or a ``ValueError`` naming ``field`` if it is malformed."""
    if not spec.startswith(DNS_PREFIX):
        return None
    hostport, slash, prefix = spec[len(DNS_PREFIX):].partition("/")
    name, sep, port = hostport.rpartition(":")
    if (not sep or not _NAME.fullmatch(name) or not port.isdigit()
            or not 0 < int(port) <= 65535 or any(c.isspace() for c in prefix)
            or (slash and not prefix.strip("/"))):
        raise ValueError(f"{field}: {spec!r} is not 'dns:NAME:PORT' (every A/AAAA record of "
                         "the DNS name NAME is a peer at PORT, e.g. 'dns:gobucket:6666'; "
                         "'dns:NAME:PORT/prefix' for nodes mounted under a path)")
    return DnsSeed(name, int(port), f"/{prefix.strip('/')}" if slash else "")


async def resolve(name: str, port: int) -> list[str]:
    """Every A/AAAA address of ``name`` (IPv4 first, each once), with the
    running loop's ``getaddrinfo``; raises ``OSError`` if the lookup fails or
    finds nothing. Link-local IPv6 addresses are left out (they need a zone,
    which has no place in a peer's URL). Not bounded in time: callers are."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    ips = [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    ips = [ip for ip in dict.fromkeys(ips) if "%" not in ip]
    if not ips:
        raise OSError(f"{name} has no A or AAAA record")
    return sorted(ips, key=lambda ip: ":" in ip)  # stable sort: IPv4 first


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {RESOLVE_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


class Discovery:
    """The ``dns:`` seeds of one node, and what they resolved to last."""

    def __init__(self, seeds: list[DnsSeed], node_id: str) -> None:
        self.seeds = list(dict.fromkeys(seeds))
        self.node_id = node_id
        #: Each name's addresses at its last good lookup (kept when one fails).
        self.found: dict[DnsSeed, list[str]] = {}
        # Names whose last lookup failed: the WARNING is logged once per episode.
        self._failing: set[DnsSeed] = set()
        # Lookups still running (one that outlived RESOLVE_TIMEOUT is awaited
        # again next round rather than started anew).
        self._lookups: dict[DnsSeed, asyncio.Task[list[str]]] = {}

    def addresses(self) -> set[str]:
        """Every address the names resolved to at their last good lookup."""
        return {a for found in self.found.values() for a in found}

    async def refresh(self) -> set[str]:
        """Look every name up again (concurrently); return :meth:`addresses`.

        A failed lookup is logged (WARNING the first time in a row, DEBUG
        after) and changes nothing; a change of a name's addresses is logged
        at INFO (``event=dns_peers_changed``)."""
        loop = asyncio.get_running_loop()
        for seed in self.seeds:
            if seed not in self._lookups:
                self._lookups[seed] = loop.create_task(resolve(seed.name, seed.port))
        await asyncio.wait(self._lookups.values(), timeout=RESOLVE_TIMEOUT)
        for seed in self.seeds:
            lookup = self._lookups[seed]
            if not lookup.done():
                self._failed(seed, TimeoutError())
                continue
            del self._lookups[seed]
            error = lookup.exception()
            if error is not None:
                if not isinstance(error, (OSError, UnicodeError)):
                    raise error  # a bug, not a lookup failure
                self._failed(seed, error)
                continue
            result = lookup.result()
            if seed in self._failing:
                self._failing.discard(seed)
                log.info("dns name resolves again event=dns_lookup_ok node=%s name=%s "
                         "found=%d", self.node_id, seed, len(result))
            found = [seed.address(ip) for ip in result]
            old = self.found.get(seed)
            if old is None or set(old) != set(found):
                added = sorted(set(found) - set(old or ()))
                removed = sorted(set(old or ()) - set(found))
                log.info("dns peers changed event=dns_peers_changed node=%s name=%s found=%d "
                         "added=%s removed=%s", self.node_id, seed, len(found),
                         ",".join(added) or "-", ",".join(removed) or "-")
            self.found[seed] = found
        return self.addresses()

    async def close(self) -> None:
        """Cancel the lookups still running (their threads finish on their own)."""
        lookups = list(self._lookups.values())
        self._lookups.clear()
        for lookup in lookups:
            lookup.cancel()
        if lookups:
            await asyncio.wait(lookups)

    def _failed(self, seed: DnsSeed, exc: BaseException) -> None:
        if seed in self._failing:
            log.debug("dns lookup failed again event=dns_lookup_still_failing node=%s name=%s "
                      "error=%s", self.node_id, seed, _error_text(exc))
            return
        self._failing.add(seed)
        kept = self.found.get(seed)
        log.warning("dns lookup failed; retrying every rejoin round event=dns_lookup_failed "
                    "node=%s name=%s error=%s kept=%d", self.node_id, seed, _error_text(exc),
                    len(kept or ()))


async def own_address(peers: list[str], timeout: float = 2.0) -> str | None:
    """This host's IP as its peers would reach it, for a node bound to a
    wildcard address (``0.0.0.0``) with nothing to advertise; None if unknown.

    The address the kernel would send from towards the first address of a
    ``dns:`` seed (the interface on the cluster's network, however many the
    container has), else what this host's name resolves to (a container's
    name resolves to its own IP). Loopback answers are not used."""
    for spec in peers:
        seed = parse_dns(spec)
        if seed is None:
            continue
        try:
            ips = await asyncio.wait_for(resolve(seed.name, seed.port), timeout)
        except (OSError, TimeoutError, UnicodeError):
            continue
        for ip in ips:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((ip, seed.port))  # UDP: picks a route, sends nothing
                    mine = str(probe.getsockname()[0])
            except OSError:
                continue
            if _usable(mine):
                return mine
    try:
        ips = await asyncio.wait_for(resolve(socket.gethostname(), 0), timeout)
    except (OSError, TimeoutError, UnicodeError):
        return None
    return next((ip for ip in ips if _usable(ip)), None)


def _usable(ip: str) -> bool:
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not (parsed.is_loopback or parsed.is_unspecified or parsed.is_link_local)
