"""An in-memory network: many nodes in one event loop, no sockets.

Messages still go through the msgpack codec (so what a test sends is what the
wire would carry), and the network can take a node down (refused) or make it
hang (timeouts), which makes failure detection and placement testable in
milliseconds with a faked loop clock::

    net = MemoryNetwork()
    a = TaskBucketGroup(buckets, ["b"], transport=net.transport("a"))
    net.down("b")       # kill -9: connections refused
    net.hang("b")       # accepts and never answers
    net.up("b")
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import PeerUnavailableError, ProtocolError, UnknownBucketError
from .protocol import Kind, decode, encode
from .transport import Handler, Transport, raise_for_status

__all__ = ["MemoryNetwork", "MemoryTransport"]


class MemoryNetwork:
    """Routes calls between :class:`MemoryTransport` s by address."""

    def __init__(self, *, max_body: int = 4 * 1024 * 1024) -> None:
        self.max_body = max_body
        self._handlers: dict[str, Handler] = {}
        self._down: set[str] = set()
        self._hung: set[str] = set()
        #: Every call made, as ``(from_addr, to_addr, kind)``.
        self.calls: list[tuple[str, str, Kind]] = []

    def transport(self, address: str) -> MemoryTransport:
        """A transport that will serve at ``address`` once started."""
        return MemoryTransport(self, address)

    def down(self, address: str) -> None:
        """Refuse every call to and from ``address`` (a killed process)."""
        self._down.add(address)

    def hang(self, address: str) -> None:
        """Calls to and from ``address`` never complete (a stuck process)."""
        self._hung.add(address)

    def up(self, address: str) -> None:
        """Undo :meth:`down` and :meth:`hang`."""
        self._down.discard(address)
        self._hung.discard(address)

    async def _deliver(self, src: str, addr: str, kind: Kind, body: bytes,
                       timeout: float) -> dict[str, Any]:
        self.calls.append((src, addr, kind))
        if src in self._down:  # a killed process sends nothing either
            raise PeerUnavailableError("this node is down", maybe_delivered=False)
        handler = self._handlers.get(addr)
        if handler is None or addr in self._down:
            raise PeerUnavailableError(f"cannot connect to peer {addr}", maybe_delivered=False)
        try:
            async with asyncio.timeout(timeout):
                if addr in self._hung or src in self._hung:
                    await asyncio.Future()  # never answers
                await asyncio.sleep(0)  # a real hop always yields
                try:
                    reply = await handler(kind, decode(body, self.max_body))
                except ProtocolError as exc:
                    raise_for_status(addr, 400, str(exc))
                except UnknownBucketError as exc:
                    raise_for_status(addr, 404, str(exc))
        except TimeoutError:
            raise PeerUnavailableError(
                f"peer {addr} did not answer {kind.name} within {timeout:g}s") from None
        return decode(encode(reply), self.max_body)


class MemoryTransport(Transport):
    """One node's end of a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self.network = network
        self.address = address
        self._handler: Handler | None = None

    async def start(self, handler: Handler) -> None:
        if self.address in self.network._handlers:
            raise OSError(f"address {self.address} is already in use")
        self._handler = handler
        self.network._handlers[self.address] = handler

    async def call(self, addr: str, kind: Kind, message: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        if self._handler is None:
            raise PeerUnavailableError("transport is closed", maybe_delivered=False)
        return await self.network._deliver(self.address, addr, kind, encode(message), timeout)

    async def close(self) -> None:
        if self._handler is not None and self.network._handlers.get(self.address) is self._handler:
            del self.network._handlers[self.address]
        self._handler = None
