"""Probes over UDP (gobucket_py.cluster.datagrams): real sockets on loopback.

Two HttpTransports with a secret: after one HTTP probe each knows the other
takes UDP, and probes then go as signed datagrams. Forged, unsigned, replayed
and malformed datagrams are dropped and counted, the node answers the next
real probe, and a peer whose UDP never answers (a firewall) is probed over
HTTP instead.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from gobucket_py import PeerUnavailableError
from gobucket_py.cluster.auth import Keyring
from gobucket_py.cluster.protocol import Kind
from gobucket_py.cluster.transport import HttpTransport

SECRET = "udp-test-secret"


class Pair:
    def __init__(self) -> None:
        self.a = HttpTransport("127.0.0.1", 0, keyring=Keyring.parse(SECRET))
        self.b = HttpTransport("127.0.0.1", 0, keyring=Keyring.parse(SECRET))
        self.seen: list[tuple[str, Kind]] = []

    def handler(self, name: str) -> Any:
        async def handle(kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
            self.seen.append((name, kind))
            return {"v": 1, "echo": message.get("n")}
        return handle


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()
    await p.a.start(p.handler("a"))
    await p.b.start(p.handler("b"))
    yield p
    await p.a.close()
    await p.b.close()


def _udp_port(t: HttpTransport) -> int:
    assert t.datagrams is not None and t.datagrams.udp is not None
    port: int = t.datagrams.udp.get_extra_info("sockname")[1]
    return port


async def test_after_one_http_probe_probes_go_as_signed_datagrams(pair: Pair) -> None:
    a, b = pair.a, pair.b
    assert _udp_port(b) == b.port  # the same port number as its HTTP server
    first = await a.call(b.address, Kind.PING, {"v": 1, "n": 1}, 2.0)
    assert first["echo"] == 1 and first["udp"] is True  # over HTTP: "probe me over UDP"
    assert b.address in a.udp_peers  # (b learns a's from a's header, which has none here)
    assert a.datagrams is not None and b.address not in a.datagrams.verified
    second = await a.call(b.address, Kind.PING, {"v": 1, "n": 2}, 2.0)
    assert second == {"v": 1, "echo": 2}  # no "udp" key: it came as a datagram
    assert b.address in a.datagrams.verified
    # A whole member list (a sync) and other kinds stay on HTTP.
    synced = await a.call(b.address, Kind.PING, {"v": 1, "n": 3, "members": []}, 2.0)
    assert synced["udp"] is True
    assert [k for _, k in pair.seen] == [Kind.PING] * 3


async def test_forged_unsigned_replayed_and_garbage_datagrams_are_dropped(pair: Pair) -> None:
    a, b = pair.a, pair.b
    await a.call(b.address, Kind.PING, {"v": 1}, 2.0)
    assert b.datagrams is not None and a.datagrams is not None
    captured: list[bytes] = []
    udp = a.datagrams.udp
    assert udp is not None
    real_sendto = udp.sendto

    def tap(data: Any, addr: Any = None) -> None:
        captured.append(bytes(data))
        real_sendto(data, addr)

    udp.sendto = tap  # type: ignore[method-assign]
    await a.call(b.address, Kind.PING, {"v": 1, "n": 7}, 2.0)
    udp.sendto = real_sendto  # type: ignore[method-assign]
    assert len(captured) == 1
    seen_before = len(pair.seen)
    version, flags, rid, kind, body, auth = msgpack.unpackb(captured[0])
    forged_body = msgpack.packb([version, flags, rid, kind, body[:-1] + b"\x00", auth])
    unsigned = msgpack.packb([version, flags, rid, kind, body, {}])
    other = Keyring.parse("another-secret").sign("UDP", f"/udp/{kind}/{rid}/{flags}", body)
    wrong_key = msgpack.packb([version, flags, rid, kind, body, other])
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for packet in (captured[0], forged_body, unsigned, wrong_key, b"\x00garbage",
                       msgpack.packb([1, 0, 1, 999, b"", {}]), b"x" * 9000):
            attacker.sendto(packet, ("127.0.0.1", b.port))
        await asyncio.sleep(0.2)
    finally:
        attacker.close()
    assert b.datagrams.dropped == 7  # the replay of a real probe too
    assert len(pair.seen) == seen_before  # none reached the handler
    assert (await a.call(b.address, Kind.PING, {"v": 1, "n": 8}, 2.0))["echo"] == 8


async def test_a_peer_whose_udp_never_answers_is_probed_over_http(pair: Pair) -> None:
    a, b = pair.a, pair.b
    await a.call(b.address, Kind.PING, {"v": 1}, 2.0)
    assert b.datagrams is not None and b.datagrams.udp is not None
    b.datagrams.udp.close()  # as if a firewall dropped UDP between them
    reply = await a.call(b.address, Kind.PING, {"v": 1, "n": 5}, 0.5)
    assert reply["echo"] == 5 and b.address not in a.udp_peers
    assert a.datagrams is not None and b.address not in a.datagrams.verified


async def test_a_verified_peer_that_stops_answering_fails_the_probe(pair: Pair) -> None:
    a, b = pair.a, pair.b
    await a.call(b.address, Kind.PING, {"v": 1}, 2.0)
    await a.call(b.address, Kind.PING, {"v": 1}, 2.0)  # verified over UDP
    assert b.datagrams is not None and b.datagrams.udp is not None
    b.datagrams.udp.close()  # a hung node: its UDP answers nothing
    with pytest.raises(PeerUnavailableError, match="UDP"):
        await a.call(b.address, Kind.PING, {"v": 1}, 0.3)


async def test_a_closed_port_is_refused_and_a_silent_one_is_not() -> None:
    # A killed process: its host refuses the connection. `refused` says so,
    # and only then (a timeout is what a broken link gives as well).
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    closed = f"127.0.0.1:{spare.getsockname()[1]}"
    spare.close()
    t = HttpTransport("127.0.0.1", 0, keyring=Keyring.parse(SECRET))
    await t.start(Pair().handler("t"))
    listening = socket.socket()  # accepts nothing, answers nothing
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    try:
        with pytest.raises(PeerUnavailableError) as refused:
            await t.call_stream(closed, Kind.PING, {"v": 1}, 1.0)
        assert refused.value.refused and not refused.value.maybe_delivered
        silent = f"127.0.0.1:{listening.getsockname()[1]}"
        with pytest.raises(PeerUnavailableError) as timed_out:
            await t.call_stream(silent, Kind.PING, {"v": 1}, 0.2)
        assert not timed_out.value.refused
    finally:
        listening.close()
        await t.close()


class _Membership:
    """What Prober._second_round uses of a Membership: helpers that take
    ``helpers_take`` seconds to answer "no ack", and a stream probe that
    fails with ``error``."""

    def __init__(self, error: PeerUnavailableError, helpers_take: float) -> None:
        self.error = error
        self.helpers_take = helpers_take
        self.transport = type("T", (), {"by_datagram": staticmethod(lambda addr: True)})()

    async def _indirect(self, member: Any, timeout: float) -> bool:
        await asyncio.sleep(self.helpers_take)
        return False

    async def ping(self, addr: str, timeout: float, *, stream: bool = False) -> Any:
        raise self.error


@pytest.mark.looptime
@pytest.mark.parametrize("refused", [True, False])
async def test_a_refused_stream_probe_ends_the_second_round_without_the_helpers(
        refused: bool) -> None:
    from gobucket_py.cluster.probing import Prober

    error = (PeerUnavailableError("refused", maybe_delivered=False, refused=True) if refused
             else PeerUnavailableError("did not answer within 0.4s"))
    ms = _Membership(error, helpers_take=0.5)
    prober = Prober(ms)  # type: ignore[arg-type]
    member = type("M", (), {"addr": "10.0.0.9:7946"})()
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await prober._second_round(member, 0.4) is False  # type: ignore[arg-type]
    # Refused: nothing listens there, the helpers are not waited for. A
    # timeout may be a broken link: the helpers decide.
    assert loop.time() - began == (0.0 if refused else 0.5)
