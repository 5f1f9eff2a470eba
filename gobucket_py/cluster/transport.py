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
import contextlib
import errno
import json
import logging
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web

from ..errors import PeerError, PeerUnavailableError, ProtocolError, UnknownBucketError
from .auth import AuthError, Keyring, ReplayStoreFull
from .datagrams import Datagrams
from .guard import Limits, guarded
from .protocol import PATHS, Kind, decode, decode_reply, encode
from .tls import TLSConfig

__all__ = ["Handler", "HttpTransport", "Reply", "Transport", "serve_aiohttp"]

log = logging.getLogger("gobucket_py")

#: Serves one decoded request; must not block. Raising ProtocolError gives
#: the caller a 400, UnknownBucketError a 404.
Handler = Callable[[Kind, dict[str, Any]], Awaitable[dict[str, Any]]]

CONTENT_TYPE = "application/msgpack"
#: Data requests (fills, drains, gets...) in flight to one peer at once.
PEER_CONNECTIONS = 64
#: Messages of the membership protocol, which must never queue behind data.
CONTROL = frozenset({Kind.PING, Kind.PING_REQ, Kind.LEAVE})


async def serve_aiohttp(transport: HttpTransport, request: web.Request, path: str) -> Reply:
    """Read one aiohttp request (within the body cap and time) and answer it."""
    refused = transport.refuse(path, request.content_length, request.headers)
    if refused is not None:
        return refused
    with transport.admit(path, request.content_length) as admitted:
        if admitted is not None:
            return admitted
        body = bytearray()  # read here, within our cap (an app's client_max_size may be lower)
        try:
            async with asyncio.timeout(transport.read_timeout):
                async for chunk in request.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > transport.max_body:
                        return _error(413, f"body exceeds {transport.max_body} bytes")
        except TimeoutError:  # a slow sender: answered, and the connection closed
            reply = _error(408, f"body not received within {transport.read_timeout:g}s")
            return reply._replace(headers=(("Connection", "close"),))
        return await transport.respond(path, request.headers, bytes(body))


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

    def by_datagram(self, addr: str) -> bool:
        """Whether a probe of ``addr`` goes as a datagram, which may be lost."""
        return False

    def shared_clock(self) -> float:
        """Seconds on a clock that every node of this network reads alike,
        for the shared probe schedule (:mod:`.probing`): wall-clock time.
        Only the schedule's tick comes from it; no timeout does."""
        return time.time()

    async def call_stream(self, addr: str, kind: Kind, message: dict[str, Any],
                          timeout: float) -> dict[str, Any]:
        """``call``, never as a datagram: the fallback probe after a lost one."""
        return await self.call(addr, kind, message, timeout)


class Reply(NamedTuple):
    """What a node answers to one peer request, whatever serves it."""

    status: int
    body: bytes
    content_type: str = CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def _error(status: int, text: str) -> Reply:
    return Reply(status, json.dumps({"error": text}).encode(), "application/json")


def _response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body,
                        headers={"Content-Type": reply.content_type, **dict(reply.headers)})


async def _read(resp: aiohttp.ClientResponse, addr: str, kind: Kind, limit: int) -> bytes:
    """A reply's body, refused (``PeerUnavailableError``: it answered, so
    it may have applied the request) once it is longer than ``limit``,
    before more of it is held in memory."""
    length = resp.content_length
    if length is None:  # chunked: read it a piece at a time, up to the limit
        data = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > limit:
                break
        length = len(data)
        if length <= limit:
            return bytes(data)
    if length > limit:
        raise PeerUnavailableError(f"peer {addr} answered {kind.name} with a reply "
                                   f"over {limit} bytes")
    return await resp.read()


def raise_for_status(addr: str, status: int, text: str) -> None:
    """Map a peer's non-200 answer to our error tree."""
    if status == 404 and text.startswith("unknown bucket"):
        raise UnknownBucketError(f"peer {addr}: {text}")
    error = PeerError(f"peer {addr} answered {status}: {text}")
    error.status = status
    raise error


class HttpTransport(Transport):
    """aiohttp server and client. ``keyring=None`` disables signing (loopback only).

    ``port=0`` listens on a free port; ``advertise`` may then be a host
    alone, and the address peers get is that host with the real port.
    ``port_fallback=True``: if ``port`` is taken, listen on a free one
    instead (the workers of a multi-process server: the first takes
    ``port`` and is the seed of the others). ``listen=False``: no server
    of its own -- the node is mounted in an app (``TaskBucketGroup.attach``
    / ``asgi``), whose server passes each request to :meth:`respond`;
    ``advertise`` is then required, with the mount's path
    (``host:port/prefix``).
    """

    def __init__(self, host: str, port: int, *, advertise: str | None = None,
                 keyring: Keyring | None = None, max_body: int = 4 * 1024 * 1024,
                 listen: bool = True, port_fallback: bool = False,
                 read_timeout: float = 10.0, max_inflight: int = 1024,
                 tls: TLSConfig | None = None) -> None:
        self.host, self.port = host, port
        #: HTTPS both ways (see :mod:`.tls`); None: plain HTTP.
        self.tls = tls
        self._server_ssl = tls.server_context() if tls is not None else None
        self._client_ssl = tls.client_context() if tls is not None else None
        self._scheme = "https" if tls is not None else "http"
        #: Seconds a request's body may take to arrive (then 408, closed).
        self.read_timeout = read_timeout
        #: Data requests read or answered at once (beyond: 503, counted in
        #: ``refused_busy``); membership messages are not counted.
        self.max_inflight = max_inflight
        #: Body bytes (as announced, else ``max_body`` each) in flight at once.
        self.read_budget = 4 * max_body
        self.refused_busy = 0
        self._inflight = 0
        self._reading = 0
        #: The listening socket's guards: a new connection's first headers must
        #: arrive within 10 s; at most 4,096 connections, beyond which only
        #: known members' hosts are let in (the group sets ``trusted``).
        self.limits = Limits(header_timeout=10.0, max_connections=4096)
        self._server: asyncio.Server | None = None
        self.advertise = advertise
        self.listen = listen
        self.port_fallback = port_fallback
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
        #: Probes over UDP on the same port number (see :mod:`.datagrams`);
        #: None when mounted, with TLS, or when the UDP port is taken.
        self.datagrams: Datagrams | None = None
        #: Peer addresses that said they take probes over UDP, and those that
        #: said so but never answered a datagram (probed over HTTP for good).
        self.udp_peers: set[str] = set()
        self.no_udp: set[str] = set()

    async def start(self, handler: Handler) -> None:
        if self._runner is not None or self._closed:
            raise RuntimeError("an HttpTransport can be started once")
        self._handler = handler
        if not self.listen:
            if not self.advertise:
                raise ValueError("advertise: a node mounted in an app needs the address "
                                 "peers reach it at, 'host:port/prefix'")
            self.address = self.advertise
            await self.open_client()
            return
        # lingering_time=0: a request answered before its body was read (401,
        # 413, 503) has its connection closed, not the rest of its body read.
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                               lingering_time=0)
        await runner.setup()
        assert runner.server is not None
        factory = guarded(self.limits, runner.server)  # see guard.py
        loop = asyncio.get_running_loop()
        try:
            try:
                server = await loop.create_server(factory, self.host, self.port,
                                                  ssl=self._server_ssl, reuse_address=True)
            except OSError as exc:
                if not (self.port_fallback and exc.errno == errno.EADDRINUSE):
                    raise
                log.info("port taken; listening on a free one event=port_fallback port=%d",
                         self.port)
                server = await loop.create_server(factory, self.host, 0,
                                                  ssl=self._server_ssl, reuse_address=True)
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: "
                                     f"{exc.strerror}") from exc
        self._runner, self._server = runner, server
        if server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        advertise = self.advertise
        if advertise and ":" not in advertise.partition("/")[0]:
            host, slash, prefix = advertise.partition("/")
            advertise = f"{host}:{self.port}{slash}{prefix}"  # a host alone: the real port
        self.address = advertise or f"{self.host}:{self.port}"
        if self.tls is None:
            datagrams = Datagrams(self, handler)
            try:
                await datagrams.start(self.host, self.port)
                self.datagrams = datagrams
            except OSError as exc:
                log.warning("UDP port taken; probes go over HTTP event=udp_unavailable "
                            "port=%d error=%s", self.port, exc)
        await self.open_client()

    async def open_client(self) -> None:
        """Create the keep-alive client sessions (``start`` does it too)."""
        if self._session is None:
            self._session = self._new_session(PEER_CONNECTIONS)
            self._control = self._new_session(8)

    def _new_session(self, per_peer: int) -> aiohttp.ClientSession:
        ssl_context: ssl.SSLContext | bool = (self._client_ssl if self._client_ssl is not None
                                              else False)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=per_peer, ttl_dns_cache=10,
                                           ssl=ssl_context),
            auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        return _response(await serve_aiohttp(self, request, "/v1/" + request.match_info["kind"]))

    def refuse(self, path: str, length: int | None,
               headers: Mapping[str, str] | None = None) -> Reply | None:
        """The answer to a request that must not be read (no such endpoint,
        not serving, a body over the cap, unsigned, stale or under an
        unknown key); None if its body may be read."""
        if path not in PATHS or self._handler is None:
            return _error(404, f"no such endpoint {path[:100]!r}")
        if length is not None and length > self.max_body:
            return _error(413, f"body of {length} bytes exceeds {self.max_body}")
        if self.keyring is not None and headers is not None:
            try:
                self.keyring.check_headers(headers)
            except AuthError as exc:
                return _error(401, str(exc))
            except (TypeError, ValueError):
                return _error(401, "malformed signature headers")
        return None

    @contextlib.contextmanager
    def admit(self, path: str, length: int | None) -> Iterator[Reply | None]:
        """Count a request in flight while it is read and answered, with
        the body bytes it may bring (``length``, else ``max_body``); a 503
        when ``max_inflight`` data requests, or ``read_budget`` bytes, are
        in flight already. A signature can only be checked once the body is
        in, so this bounds what senders of unverified bodies can make a node
        hold. Membership messages are never refused: a flood of data
        requests must not make a healthy node look dead."""
        if PATHS.get(path) in CONTROL:
            yield None
            return
        size = self.max_body if length is None else min(length, self.max_body)
        if self._inflight >= self.max_inflight or self._reading + size > self.read_budget:
            self.refused_busy += 1
            yield _error(503, "too many requests in flight; try again shortly")
            return
        self._inflight += 1
        self._reading += size
        try:
            yield None
        finally:
            self._inflight -= 1
            self._reading -= size

    async def respond(self, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """What this node answers to a peer's ``POST`` of ``body`` to ``path``
        (relative to the node: ``/v1/<kind>``, whatever prefix it is mounted
        under). The one implementation behind the built-in server and the
        app adapters (:mod:`gobucket_py.cluster.mount`)."""
        refused = self.refuse(path, len(body))
        if refused is not None:
            return refused
        kind = PATHS[path]
        if self.keyring is not None:
            try:  # signed over the node-relative path: a mount's prefix is not signed
                self.keyring.verify("POST", path, headers, body)
            except ReplayStoreFull as exc:
                return _error(503, str(exc))
            except AuthError as exc:
                return _error(401, str(exc))
            except (TypeError, ValueError):  # hostile header bytes: still just unauthenticated
                return _error(401, "malformed signature headers")
        assert self._handler is not None
        try:
            message = decode(body, self.max_body)
            reply = await self._handler(kind, message)
            if kind is Kind.PING and self.datagrams is not None:
                reply["udp"] = True  # probe us over UDP
                sender = message.get("from")  # a NodeHeader: [id, boot, addr, ...]
                if (message.get("udp") is True and isinstance(sender, list)
                        and len(sender) == 6 and isinstance(sender[2], str)):
                    if sender[2] not in self.no_udp:
                        self.udp_peers.add(sender[2])
        except ProtocolError as exc:
            return _error(400, str(exc))
        except UnknownBucketError as exc:
            return _error(404, str(exc))
        except Exception:
            log.exception("handler failed event=handler_error kind=%s", kind.name)
            return _error(500, "internal error")
        return Reply(200, encode(reply))

    async def call(self, addr: str, kind: Kind, message: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        datagrams = self.datagrams
        if datagrams is not None and kind in (Kind.PING, Kind.PING_REQ):
            body = (datagrams.body(message)
                    if addr in self.udp_peers and "members" not in message else None)
            if body is not None:
                try:
                    return await datagrams.call(addr, kind, body, timeout)
                except PeerUnavailableError:
                    if addr in datagrams.verified:
                        raise
                    # It never answered over UDP (a firewall?): HTTP from now on.
                    self.udp_peers.discard(addr)
                    self.no_udp.add(addr)
            if kind is Kind.PING:
                message = {**message, "udp": True}  # it may probe us over UDP
        reply = await self._call_http(addr, kind, message, timeout)
        if datagrams is not None and reply.get("udp") is True and addr not in self.no_udp:
            self.udp_peers.add(addr)
        return reply

    def by_datagram(self, addr: str) -> bool:
        return self.datagrams is not None and addr in self.udp_peers

    async def call_stream(self, addr: str, kind: Kind, message: dict[str, Any],
                          timeout: float) -> dict[str, Any]:
        return await self._call_http(addr, kind, message, timeout)

    async def _call_http(self, addr: str, kind: Kind, message: dict[str, Any],
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
            raise PeerUnavailableError(
                f"cannot connect to peer {addr}: {exc.os_error}", maybe_delivered=False,
                refused=getattr(exc.os_error, "errno", None) == errno.ECONNREFUSED) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerUnavailableError(f"peer {addr} failed on {kind.name}: "
                                       f"{type(exc).__name__}: {exc}") from exc
        if status != 200:
            try:
                text = str(json.loads(data)["error"])
            except Exception:
                text = data[:200].decode(errors="replace")
            raise_for_status(addr, status, text)
        return decode_reply(addr, kind, data, self.max_body)

    async def _post(self, session: aiohttp.ClientSession, addr: str, kind: Kind,
                    message: dict[str, Any]) -> tuple[int, bytes]:
        body = encode(message)
        path = kind.path
        headers = {"Content-Type": CONTENT_TYPE}
        if self.keyring is not None:  # signed as late as possible: the clock is checked
            headers.update(self.keyring.sign("POST", path, body))
        async with session.post(f"{self._scheme}://{addr}{path}", data=body,
                                headers=headers) as resp:
            return resp.status, await _read(resp, addr, kind, self.max_body)

    async def close(self) -> None:
        self._closed = True
        self._handler = None
        if self.datagrams is not None:
            self.datagrams.close()
            self.datagrams = None
        for session in (self._session, self._control):
            if session is not None:
                await session.close()
        self._session = self._control = None
        if self._server is not None:
            self._server.close()  # no new connections; the runner closes the open ones
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._connections_closed()

    async def _connections_closed(self, wait: float = 1.0) -> None:
        """Let the connections the runner closed finish closing (a TLS close
        is an exchange with the peer: ``cleanup`` returns before it ends),
        then abort what is left, so no socket outlives ``close``."""
        limits = self.limits
        if limits.guards:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(limits.none_open.wait(), wait)
        for guard in list(limits.guards):
            guard.abort()
        if limits.guards:
            await asyncio.sleep(0)  # connection_lost runs in the next loop turn
