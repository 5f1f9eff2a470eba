"""Probes over UDP: the cheap control channel of a node with a port of its own.

An HTTP request costs this machine about a millisecond of CPU on each side;
a probe is a few hundred bytes, so SWIM's two probes and two acks per second
would still cost a node ~0.5 % of a core over HTTP. Over UDP they cost a
fraction of that. So a listening :class:`~.transport.HttpTransport` also
binds UDP on its own port number, and sends ``PING`` and ``PING_REQ``
without a whole member list there, to peers that said they have it too
(``"udp": true`` on an HTTP probe or its reply). Everything else -- the
whole-list syncs, fills, drains -- stays on HTTP.

A datagram is ``msgpack [1, flags, request id, kind, body, auth]``: flags
``0`` a request, ``1`` a reply, ``2`` an error reply (body: the HTTP status
and text it stands for). With a secret, ``auth`` is the same HMAC headers
as an HTTP request's (:class:`~.auth.Keyring`), signed over the body under
the path ``/udp/<kind>/<request id>/<flags>``, so a reply cannot be passed
off as another's and a datagram replayed within the skew window is refused
(same replay store). Unsigned, stale, replayed or malformed datagrams are
dropped and counted. A node without a secret (loopback, or ``insecure``)
sends them unsigned, as it does HTTP; a node with TLS never uses UDP (it
would carry membership in clear).

A peer that never answered over UDP (a firewall that lets TCP through, not
UDP) is asked over HTTP when a UDP probe gets no answer, and stays on HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from typing import TYPE_CHECKING, Any, cast

import msgpack

from ..errors import GobucketError, PeerUnavailableError, ProtocolError
from .auth import AuthError
from .protocol import Kind, decode, encode

if TYPE_CHECKING:
    from .transport import Handler, HttpTransport

__all__ = ["Datagrams", "MAX_DATAGRAM"]

log = logging.getLogger("gobucket_py")

#: Datagrams above this size are neither sent (the caller uses HTTP) nor read.
MAX_DATAGRAM = 8192
#: Seconds a peer address's resolution is reused.
DNS_TTL = 10.0
REQUEST, REPLY, ERROR = 0, 1, 2


def _split(addr: str) -> tuple[str, int] | None:
    """``host:port`` (or ``[v6]:port``) of a peer with a port of its own; None
    for a mounted one (``host:port/prefix``) or anything else."""
    if "/" in addr:
        return None
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class Datagrams(asyncio.DatagramProtocol):
    """The UDP side of one :class:`~.transport.HttpTransport`."""

    def __init__(self, owner: HttpTransport, handler: Handler) -> None:
        self.owner = owner
        self.handler = handler
        self.udp: asyncio.DatagramTransport | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._resolved: dict[str, tuple[Any, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Datagrams dropped: malformed, unsigned, stale, replayed, or too big.
        self.dropped = 0
        #: Peer addresses that answered over UDP at least once.
        self.verified: set[str] = set()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host or "0.0.0.0", port),
                                            family=family)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.udp = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(PeerUnavailableError("transport is closed"))
        self._waiting.clear()
        for task in self._tasks:
            task.cancel()

    # -- sending ---------------------------------------------------------------------

    def _packet(self, flags: int, rid: int, kind: Kind, body: bytes) -> bytes:
        keyring = self.owner.keyring
        auth = ({} if keyring is None else
                keyring.sign("UDP", f"/udp/{kind.value}/{rid}/{flags}", body))
        packet: bytes = msgpack.packb([1, flags, rid, kind.value, body, auth])
        return packet

    async def _where(self, addr: str) -> Any:
        loop = asyncio.get_running_loop()
        known = self._resolved.get(addr)
        if known is not None and known[1] > loop.time():
            return known[0]
        split = _split(addr)
        if split is None:
            raise PeerUnavailableError(f"no UDP address for {addr[:100]!r}",
                                       maybe_delivered=False)
        try:
            infos = await loop.getaddrinfo(split[0], split[1], type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise PeerUnavailableError(f"cannot resolve peer {addr}: {exc}",
                                       maybe_delivered=False) from exc
        where = infos[0][4]
        if len(self._resolved) > 4096:
            self._resolved.clear()
        self._resolved[addr] = (where, loop.time() + DNS_TTL)
        return where

    @staticmethod
    def body(message: dict[str, Any]) -> bytes | None:
        """``message`` packed, or None if it is too big for one datagram."""
        body = encode(message)
        return body if len(body) <= MAX_DATAGRAM - 512 else None

    async def call(self, addr: str, kind: Kind, body: bytes,
                   timeout: float) -> dict[str, Any]:
        """Send a packed message (see :meth:`body`) to ``addr`` as a datagram
        and wait for the reply, as :meth:`~.transport.HttpTransport.call`
        does over HTTP."""
        udp = self.udp
        if udp is None:
            raise PeerUnavailableError("transport is closed", maybe_delivered=False)
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            async with asyncio.timeout(timeout):
                where = await self._where(addr)
                udp.sendto(self._packet(REQUEST, rid, kind, body), where)
                flags, answer = await future
        except TimeoutError:
            raise PeerUnavailableError(f"peer {addr} did not answer {kind.name} "
                                       f"within {timeout:g}s (UDP)") from None
        except OSError as exc:
            raise PeerUnavailableError(f"peer {addr} failed on {kind.name} (UDP): {exc}"
                                       ) from exc
        finally:
            self._waiting.pop(rid, None)
        self.verified.add(addr)
        if flags == ERROR:
            from .transport import raise_for_status  # (transport imports this module)
            try:
                status, text = msgpack.unpackb(answer)
                status = int(status)
            except (ValueError, TypeError, msgpack.UnpackException):
                status, text = 502, "malformed error reply"
            raise_for_status(addr, status, str(text))
        return decode(answer, MAX_DATAGRAM)

    # -- receiving -------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            if len(data) > MAX_DATAGRAM:
                raise ValueError("too big")
            version, flags, rid, kind_value, body, auth = msgpack.unpackb(data)
            if version != 1 or type(rid) is not int or not isinstance(body, (bytes, list)):
                raise ValueError("malformed")
            kind = Kind(kind_value)
            keyring = self.owner.keyring
            if keyring is not None:
                if not isinstance(auth, dict) or not isinstance(body, bytes):
                    raise ValueError("unsigned")
                keyring.verify("UDP", f"/udp/{kind.value}/{rid}/{flags}", auth, body)
        except (ValueError, TypeError, AuthError, msgpack.UnpackException):
            self.dropped += 1
            return
        if flags == REQUEST:
            if kind not in (Kind.PING, Kind.PING_REQ) or not isinstance(body, bytes):
                self.dropped += 1
                return
            task = asyncio.get_running_loop().create_task(self._answer(rid, kind, body, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            future = self._waiting.get(rid)
            if future is not None and not future.done():
                future.set_result((flags, body))

    async def _answer(self, rid: int, kind: Kind, body: bytes, addr: Any) -> None:
        try:
            message = decode(body, MAX_DATAGRAM)
            reply = await self.handler(kind, message)
            flags, out = REPLY, encode(reply)
        except ProtocolError as exc:
            flags, out = ERROR, msgpack.packb([400, str(exc)])
        except GobucketError as exc:
            flags, out = ERROR, msgpack.packb([503, str(exc)])
        except Exception:
            log.exception("handler failed event=handler_error kind=%s", kind.name)
            flags, out = ERROR, msgpack.packb([500, "internal error"])
        if self.udp is not None:  # an error reply's body is [status, text], packed
            self.udp.sendto(self._packet(flags, rid, kind, out), addr)
