"""The node's own listening socket, guarded before aiohttp sees a byte.

Each accepted connection gets a :class:`Guard` in front of aiohttp's request
handler. It closes a new connection whose first request's headers have not
all arrived within ``header_timeout`` (a slowloris holds a socket forever
otherwise: aiohttp has no such timeout), and it refuses connections beyond
``max_connections`` -- except from the addresses of known members, so an
attack on the data path never cuts a node off from its peers' probes.
Headers are recognised by their blank line (``\\r\\n\\r\\n``), so nothing of
aiohttp's internals is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

__all__ = ["Guard", "Limits"]


class Limits:
    """What the guards of one server share: bounds and counters."""

    def __init__(self, *, header_timeout: float, max_connections: int,
                 trusted: Callable[[str], bool] = lambda host: False) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        #: Is this remote host a known member? (It may exceed max_connections.)
        self.trusted = trusted
        self.open = 0
        #: The open connections' guards (so a closing server can end them),
        #: and an event set whenever none is open.
        self.guards: set[Guard] = set()
        self.none_open = asyncio.Event()
        #: Connections refused for the cap, and closed for slow headers.
        self.refused = 0
        self.timed_out = 0


class Guard(asyncio.Protocol):
    """One connection: counts it, times its first headers, then passes
    everything to ``inner`` (aiohttp's handler for it)."""

    def __init__(self, limits: Limits, inner: asyncio.Protocol) -> None:
        self.limits = limits
        self.inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self.limits
        transport = cast(asyncio.Transport, transport)  # a TCP (or TLS) stream
        self._transport = transport
        if limits.open >= limits.max_connections:
            peer = transport.get_extra_info("peername")
            host = peer[0] if isinstance(peer, tuple) and peer else ""
            if not limits.trusted(host):
                limits.refused += 1
                transport.abort()
                return
        limits.open += 1
        limits.guards.add(self)
        limits.none_open.clear()
        self._counted = True
        self._timer = asyncio.get_running_loop().call_later(limits.header_timeout,
                                                            self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._timer = None
        self.limits.timed_out += 1
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            if b"\r\n\r\n" in self._tail + data[:4096] or b"\r\n\r\n" in data:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = data[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self.limits.open -= 1
            self.limits.guards.discard(self)
            if not self.limits.guards:
                self.limits.none_open.set()
            self.inner.connection_lost(exc)

    def abort(self) -> None:
        """Drop the connection at once (a closing server's last resort)."""
        if self._transport is not None:
            self._transport.abort()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def guarded(limits: Limits, factory: Callable[[], Any]) -> Callable[[], Guard]:
    """A protocol factory for ``loop.create_server``: ``factory``'s protocols, guarded."""
    return lambda: Guard(limits, factory())
