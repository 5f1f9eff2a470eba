"""How peers reach each other: the :class:`Transport` seam and its HTTP implementation.

A transport serves one handler for every :class:`~.protocol.Kind` and calls
peers by address. :class:`HttpTransport` is aiohttp on both sides: keep-alive
client sessions, msgpack bodies, HMAC signatures, a body cap checked before
reading, and a timeout on every call. Membership messages (probes, leave) have
their own connections: a burst of fills or drains never delays a probe (a
delayed probe is a false suspicion). Other calls wait for one of a peer's
``PEER_CONNECTIONS`` slots *before* a request is built, so a thousand
concurrent drains are a thousand cheap waits, not one long loop iteration
that would delay this node's own answers to probes. aiohttp errors are
converted here, at the edge, into :class:`~gobucket_py.PeerError` subclasses.
:class:`~.memory.MemoryNetwork` is the in-memory double for fast tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from ..errors import PeerError, PeerUnavailableError, ProtocolError, UnknownBucketError
from .auth import AuthError, Keyring
from .protocol import PATHS, Kind, decode, encode

__all__ = ["Handler", "HttpTransport", "Transport"]

log = logging.getLogger("gobucket_py")

#: Serves one decoded request; must not block. Raising ProtocolError gives
#: the caller a 400, UnknownBucketError a 404.
Handler = Callable[[Kind, dict[str, Any]], Awaitable[dict[str, Any]]]

CONTENT_TYPE = "application/msgpack"
#: Data requests (fills, drains, gets...) in flight to one peer at once.
PEER_CONNECTIONS = 64
#: Messages of the membership protocol, which must never queue behind data.
CONTROL = frozenset({Kind.PING, Kind.PING_REQ, Kind.LEAVE})


class Transport(ABC):
    """Carries messages between peers. ``address`` is ``host:port`` as peers see it."""

    address: str = ""

    @abstractmethod
    async def start(self, handler: Handler) -> None:
        """Begin serving ``handler``; afterwards ``address`` is final."""

    @abstractmethod
    async def call(self, addr: str, kind: Kind, message: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        """Send ``message`` to the peer at ``addr`` and return its decoded reply.

        Raises :class:`PeerUnavailableError` (refused, timed out),
        :class:`UnknownBucketError` (404) or :class:`PeerError` (other status).
        """

    @abstractmethod
    async def close(self) -> None:
        """Stop serving and release connections. Idempotent."""


def _error_body(status: int, text: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": text}).encode(),
                        content_type="application/json")


def raise_for_status(addr: str, status: int, text: str) -> None:
    """Map a peer's non-200 answer to our error tree."""
    if status == 404 and text.startswith("unknown bucket"):
        raise UnknownBucketError(f"peer {addr}: {text}")
    error = PeerError(f"peer {addr} answered {status}: {text}")
    error.status = status
    raise error


class HttpTransport(Transport):
    """aiohttp server and client. ``keyring=None`` disables signing (loopback only)."""

    def __init__(self, host: str, port: int, *, advertise: str | None = None,
                 keyring: Keyring | None = None, max_body: int = 4 * 1024 * 1024) -> None:
        self.host, self.port = host, port
        self.advertise = advertise
        self.keyring = keyring
        self.max_body = max_body
        self.app = web.Application(client_max_size=max_body)
        self.app.router.add_post("/v1/{kind}", self._serve)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._control: aiohttp.ClientSession | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._handler: Handler | None = None
        self._closed = False

    async def start(self, handler: Handler) -> None:
        if self._runner is not None or self._closed:
            raise RuntimeError("an HttpTransport can be started once")
        self._handler = handler
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: "
                                     f"{exc.strerror}") from exc
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self.address = self.advertise or f"{self.host}:{self.port}"
        await self.open_client()

    async def open_client(self) -> None:
        """Create the keep-alive client sessions (``start`` does it too)."""
        if self._session is None:
            self._session = self._new_session(PEER_CONNECTIONS)
            self._control = self._new_session(8)

    @staticmethod
    def _new_session(per_peer: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=per_peer, ttl_dns_cache=10),
            auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        kind = PATHS.get(request.path)
        if kind is None or self._handler is None:
            return _error_body(404, f"no such endpoint {request.path[:100]!r}")
        length = request.content_length
        if length is not None and length > self.max_body:
            return _error_body(413, f"body of {length} bytes exceeds {self.max_body}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error_body(413, f"body exceeds {self.max_body} bytes")
        if self.keyring is not None:
            try:
                self.keyring.verify(request.method, request.path, request.headers, body)
            except AuthError as exc:
                return _error_body(401, str(exc))
            except (TypeError, ValueError):  # hostile header bytes: still just unauthenticated
                return _error_body(401, "malformed signature headers")
        try:
            message = decode(body, self.max_body)
            reply = await self._handler(kind, message)
        except ProtocolError as exc:
            return _error_body(400, str(exc))
        except UnknownBucketError as exc:
            return _error_body(404, str(exc))
        except Exception:
            log.exception("handler failed event=handler_error kind=%s", kind.name)
            return _error_body(500, "internal error")
        return web.Response(body=encode(reply), content_type=CONTENT_TYPE)

    async def call(self, addr: str, kind: Kind, message: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        control = kind in CONTROL
        session = self._control if control else self._session
        if session is None or session.closed:
            raise PeerUnavailableError("transport is closed", maybe_delivered=False)
        try:
            async with asyncio.timeout(timeout):
                if control:
                    status, data = await self._post(session, addr, kind, message)
                else:
                    slots = self._slots.get(addr)
                    if slots is None:
                        slots = self._slots[addr] = asyncio.Semaphore(PEER_CONNECTIONS)
                    async with slots:
                        status, data = await self._post(session, addr, kind, message)
        except TimeoutError:
            raise PeerUnavailableError(f"peer {addr} did not answer {kind.name} "
                                       f"within {timeout:g}s") from None
        except ValueError as exc:  # no URL for it (a peer may announce any string)
            raise PeerUnavailableError(f"cannot call peer address {addr[:100]!r}: {exc}",
                                       maybe_delivered=False) from exc
        except aiohttp.ClientConnectorError as exc:
            raise PeerUnavailableError(f"cannot connect to peer {addr}: {exc.os_error}",
                                       maybe_delivered=False) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerUnavailableError(f"peer {addr} failed on {kind.name}: "
                                       f"{type(exc).__name__}: {exc}") from exc
        if status != 200:
            try:
                text = str(json.loads(data)["error"])
            except Exception:
                text = data[:200].decode(errors="replace")
            raise_for_status(addr, status, text)
        return decode(data, self.max_body)

    async def _post(self, session: aiohttp.ClientSession, addr: str, kind: Kind,
                    message: dict[str, Any]) -> tuple[int, bytes]:
        body = encode(message)
        path = kind.path
        headers = {"Content-Type": CONTENT_TYPE}
        if self.keyring is not None:  # signed as late as possible: the clock is checked
            headers.update(self.keyring.sign("POST", path, body))
        async with session.post(f"http://{addr}{path}", data=body, headers=headers) as resp:
            return resp.status, await resp.read()

    async def close(self) -> None:
        self._closed = True
        for session in (self._session, self._control):
            if session is not None:
                await session.close()
        self._session = self._control = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
