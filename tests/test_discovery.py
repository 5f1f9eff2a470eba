"""DNS seeds (``dns:NAME:PORT``), the warning about unreached seeds, and the
ClusterFullError of a node that knows no peer.

Most tests run groups on the in-memory network with a faked loop clock and a
fake resolver (``gobucket_py.cluster.discovery.resolve`` replaced), so that a
name can be scaled up, scaled down or fail at will. Two tests resolve for
real: ``localhost``, and two HTTP nodes on loopback that find each other
through it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gobucket_py import (
    BucketConfig,
    ClusterFullError,
    GroupConfig,
    MemberState,
    MemoryNetwork,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
    cli,
)
from gobucket_py.cluster import discovery
from gobucket_py.cluster.addresses import check_peer
from gobucket_py.cluster.discovery import (
    RESOLVE_TIMEOUT,
    Discovery,
    DnsSeed,
    own_address,
    parse_dns,
    resolve,
)
from gobucket_py.cluster.membership import SEED_WARN_ROUNDS

from .conftest import Recorder

BOMB = TaskType.TIME_BOMB
CFG = GroupConfig.local()
WARN_AFTER = SEED_WARN_ROUNDS * CFG.rejoin_interval
#: One rejoin round at most (the join loop's jitter is +-20%), plus a probe.
ROUND = CFG.rejoin_interval * 1.2 + CFG.probe_timeout


class FakeDns:
    """A resolver whose records the test sets; a name without any fails."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.lookups: Counter[str] = Counter()

    async def __call__(self, name: str, port: int) -> list[str]:
        self.lookups[name] += 1
        ips = self.records.get(name)
        if not ips:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(ips)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    fake = FakeDns()
    monkeypatch.setattr(discovery, "resolve", fake)
    return fake


class Cluster:
    """Groups on one MemoryNetwork, each addressed ``ip:6666`` (its node id)."""

    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net
        self.groups: dict[str, TaskBucketGroup] = {}

    async def add(self, addr: str, seeds: list[str], *, max_bucket: int = 10,
                  **cfg: Any) -> TaskBucketGroup:
        bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=max_bucket),
                            Recorder(), name="jobs")
        group = TaskBucketGroup({"jobs": bucket}, seeds, node_id=addr,
                                transport=self.net.transport(addr),
                                config=GroupConfig.local(**cfg) if cfg else CFG,
                                rng=random.Random(addr))
        await group.start()
        self.groups[addr] = group
        return group

    def alive(self, addr: str) -> set[str]:
        return {p.node_id for p in self.groups[addr].peers if p.state is MemberState.ALIVE}

    def meshed(self) -> bool:
        return all(self.alive(a) == set(self.groups) - {a} for a in self.groups)

    async def close(self) -> None:
        for group in self.groups.values():
            await group.stop()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    made = Cluster(MemoryNetwork())
    yield made
    await made.close()


async def until(condition: Any, within: float) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not condition():
        assert loop.time() - t0 <= within, f"not within {within}s"
        await asyncio.sleep(0.01)
    return loop.time() - t0


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"event={event} " in r.getMessage() + " "]


# -- the dns: syntax -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["dns:node:6666", "dns:tasks.gobucket:6666",
                                  "dns:gobucket-headless.default.svc.cluster.local.:6666",
                                  "dns:app:8000/gobucket", "dns:127.0.0.1:6666"])
async def test_dns_peers_are_accepted(spec: str) -> None:
    assert check_peer(spec) == spec
    seed = parse_dns(spec)
    assert seed is not None and str(seed) == spec
    assert parse_dns("node:6666") is None  # a plain address is not a DNS seed


@pytest.mark.parametrize("spec", ["dns:", "dns:node", "dns::6666", "dns:node:0",
                                  "dns:node:70000", "dns:node:http", "dns:no de:6666",
                                  "dns:node:6666/", "dns:-node-:6666", "dns:[::1]:6666"])
async def test_malformed_dns_peers_are_refused_clearly(spec: str) -> None:
    with pytest.raises(ValueError, match=r"peers: .* is not 'dns:NAME:PORT'"):
        check_peer(spec)
    bucket = TaskBucket(BucketConfig(life_span=60, run_after=30), Recorder(), name="jobs")
    with pytest.raises(ValueError, match="dns:NAME:PORT"):
        TaskBucketGroup({"jobs": bucket}, [spec])


async def test_addresses_of_a_dns_seed() -> None:
    assert DnsSeed("node", 6666).address("10.0.0.7") == "10.0.0.7:6666"
    assert DnsSeed("node", 6666).address("fd00::7") == "[fd00::7]:6666"
    seed = parse_dns("dns:app:8000/gobucket/")
    assert seed == DnsSeed("app", 8000, "/gobucket")
    assert seed.address("10.0.0.7") == "10.0.0.7:8000/gobucket"
    check_peer(seed.address("fd00::7"))  # what discovery finds is a valid peer


# -- real resolution -----------------------------------------------------------------------


async def test_localhost_resolves_for_real() -> None:
    ips = await resolve("localhost", 6666)
    assert "127.0.0.1" in ips and len(ips) == len(set(ips))
    assert all(":" not in ip for ip in ips[:ips.index("127.0.0.1")])  # IPv4 first
    found = await Discovery([DnsSeed("localhost", 6666)], "n1").refresh()
    assert "127.0.0.1:6666" in found
    assert found <= {"127.0.0.1:6666", "[::1]:6666"}
    with pytest.raises(OSError):
        await resolve("no-such-host.invalid", 6666)


async def test_two_loopback_nodes_find_each_other_through_localhost() -> None:
    """A node on 127.0.0.1 and one on 127.0.0.2, same port; the second is seeded
    with ``dns:localhost:PORT`` only, and it resolves for real."""
    def group(host: str, port: int, peers: list[str]) -> TaskBucketGroup:
        bucket = TaskBucket(BucketConfig(life_span=60, run_after=30), Recorder(), name="jobs")
        return TaskBucketGroup({"jobs": bucket}, peers, host=host, port=port, config=CFG)

    first = group("127.0.0.1", 0, [])
    await first.start()
    try:
        port = int(first.address.rpartition(":")[2])
        second = group("127.0.0.2", port, [f"dns:localhost:{port}"])
        await second.start()
        try:
            async with asyncio.timeout(5):
                while not (any(p.node_id == first.node_id and p.state is MemberState.ALIVE
                               for p in second.peers)
                           and any(p.node_id == second.node_id for p in first.peers)):
                    await asyncio.sleep(0.05)
            assert second._members.discovery is not None
            assert f"127.0.0.1:{port}" in second._members.discovery.addresses()
        finally:
            await second.stop()
    finally:
        await first.stop()


# -- discovery in the membership (fake resolver, fake clock) --------------------------------


@pytest.mark.looptime
async def test_scaled_service_is_discovered_and_re_resolved(
        dns: FakeDns, cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gobucket_py")
    ips = [f"10.0.0.{i}" for i in range(1, 6)]
    addrs = [f"{ip}:6666" for ip in ips]
    dns.records["node"] = ips[:1]
    first = await cluster.add(addrs[0], ["dns:node:6666"])
    assert cluster.alive(addrs[0]) == set()
    dns.records["node"] = ips[:2]  # `--scale node=2`: the name has a second record
    await cluster.add(addrs[1], ["dns:node:6666"])
    await until(cluster.meshed, 2 * ROUND)
    dns.records["node"] = ips  # scaled to 5
    for addr in addrs[2:]:
        await cluster.add(addr, ["dns:node:6666"])
    await until(cluster.meshed, 2 * ROUND)
    assert all(len(cluster.alive(a)) == 4 for a in addrs)
    # A node never calls its own address, though the name lists it.
    assert not [c for c in cluster.net.calls if c[0] == c[1]]
    discovered = first._members.discovery
    assert discovered is not None
    await until(lambda: discovered.addresses() == set(addrs), ROUND)  # its next round
    assert events(caplog, "dns_peers_changed")

    # Looked up again every rejoin round.
    before = dns.lookups["node"]
    await asyncio.sleep(10 * CFG.rejoin_interval)
    assert 5 * 8 <= dns.lookups["node"] - before <= 5 * 13  # 5 nodes, ~10 rounds each

    # Scaled down: the gone address is no longer retried.
    await cluster.groups.pop(addrs[4]).stop()
    dns.records["node"] = ips[:4]
    await asyncio.sleep(2 * ROUND)
    assert addrs[4] not in first._members._unreached
    assert addrs[4] not in first._members.seed_addresses()
    assert first._members.members[addrs[4]].state is MemberState.LEFT


@pytest.mark.looptime
async def test_failed_lookups_are_retried_warned_once_and_never_fatal(
        dns: FakeDns, cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gobucket_py")
    other = await cluster.add("10.0.0.2:6666", [])
    first = await cluster.add("10.0.0.1:6666", ["dns:node:6666"])  # no record yet: starts
    await asyncio.sleep(10 * CFG.rejoin_interval)
    assert dns.lookups["node"] >= 8
    failed = events(caplog, "dns_lookup_failed")
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING, failed
    assert "name=dns:node:6666" in failed[0].getMessage()
    assert "Name or service not known" in failed[0].getMessage()
    assert cluster.alive("10.0.0.1:6666") == set()

    dns.records["node"] = ["10.0.0.1", "10.0.0.2"]
    await until(cluster.meshed, 2 * ROUND)
    assert [r.levelno for r in events(caplog, "dns_lookup_ok")] == [logging.INFO]

    # A failure later keeps what the last good lookup found: nobody is dropped.
    dns.records["node"] = []
    await asyncio.sleep(5 * CFG.rejoin_interval)
    assert len(events(caplog, "dns_lookup_failed")) == 2
    assert first._members.seed_addresses() == {"10.0.0.1:6666", "10.0.0.2:6666"}
    assert cluster.meshed() and other.running


@pytest.mark.looptime
async def test_a_hung_lookup_is_bounded_and_not_started_again(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gobucket_py")
    answer = asyncio.Event()
    calls = 0

    async def slow(name: str, port: int) -> list[str]:
        nonlocal calls
        calls += 1
        await answer.wait()  # a resolver that does not answer (each holds a thread)
        return ["10.0.0.1", "10.0.0.2"]

    monkeypatch.setattr(discovery, "resolve", slow)
    loop = asyncio.get_running_loop()
    await cluster.add("10.0.0.2:6666", [])
    started = loop.time()
    await cluster.add("10.0.0.1:6666", ["dns:node:6666"])
    assert RESOLVE_TIMEOUT <= loop.time() - started < RESOLVE_TIMEOUT + 0.1  # bounded start
    await asyncio.sleep(4 * RESOLVE_TIMEOUT)
    assert calls == 1  # awaited again each round, never piled up
    failed = events(caplog, "dns_lookup_failed")
    assert len(failed) == 1 and "no answer within 5 s" in failed[0].getMessage()
    answer.set()  # it answers at last: its result is used
    await until(cluster.meshed, RESOLVE_TIMEOUT + 2 * ROUND)
    assert events(caplog, "dns_lookup_ok")


# -- unreached seeds -------------------------------------------------------------------------


@pytest.mark.looptime
async def test_unreached_seed_is_warned_once_after_the_documented_time(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gobucket_py")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cluster.add("10.0.0.1:6666", ["10.0.0.9:6667"])  # a typo'd port
    await asyncio.sleep(WARN_AFTER - 0.1)
    assert events(caplog, "seed_unreachable") == []
    await until(lambda: bool(events(caplog, "seed_unreachable")), ROUND)
    assert loop.time() - started >= WARN_AFTER
    await asyncio.sleep(10 * CFG.rejoin_interval)  # still failing: not logged again
    warned = events(caplog, "seed_unreachable")
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    text = warned[0].getMessage()
    assert "seed=10.0.0.9:6667" in text and "cannot connect to peer 10.0.0.9:6667" in text

    # The seed comes up: INFO once, and a later episode is warned again.
    await cluster.add("10.0.0.9:6667", [])
    await until(lambda: bool(events(caplog, "seed_reached")), 2 * ROUND)
    assert events(caplog, "seed_reached")[0].levelno == logging.INFO
    assert len(events(caplog, "seed_unreachable")) == 1


@pytest.mark.looptime
async def test_unreached_dns_peer_is_warned_like_a_seed(
        dns: FakeDns, cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gobucket_py")
    dns.records["node"] = ["10.0.0.1", "10.0.0.3"]  # .3 is listed but never answers
    await cluster.add("10.0.0.1:6666", ["dns:node:6666"])
    await asyncio.sleep(WARN_AFTER + 2 * ROUND)
    assert ["seed=10.0.0.3:6666" in r.getMessage()
            for r in events(caplog, "seed_unreachable")] == [True]


# -- ClusterFullError --------------------------------------------------------------------------


@pytest.mark.looptime
async def test_cluster_full_says_no_peers_known(cluster: Cluster) -> None:
    typo = await cluster.add("10.0.0.1:6666", ["10.0.0.9:6667"], max_bucket=1)
    await typo.fill("jobs", "a", task_type=BOMB)
    with pytest.raises(ClusterFullError, match=r"no peers known: no seed has answered "
                                               r"\(10\.0\.0\.9:6667\)") as info:
        await typo.fill("jobs", "b", task_type=BOMB)
    assert "no peer has room" not in str(info.value)

    alone = await cluster.add("10.0.0.2:6666", [], max_bucket=1)
    await alone.fill("jobs", "a", task_type=BOMB)
    with pytest.raises(ClusterFullError, match="no peers known: no seeds were given"):
        await alone.fill("jobs", "b", task_type=BOMB)


@pytest.mark.looptime
async def test_cluster_full_says_no_peer_alive_when_all_left(cluster: Cluster) -> None:
    first = await cluster.add("10.0.0.1:6666", [], max_bucket=1)
    second = await cluster.add("10.0.0.2:6666", ["10.0.0.1:6666"])
    await until(cluster.meshed, 2 * ROUND)
    await cluster.groups.pop("10.0.0.2:6666").stop()
    assert second.state.value == "stopped"
    await first.fill("jobs", "a", task_type=BOMB)
    with pytest.raises(ClusterFullError, match=r"no peer is alive \(1 known\)"):
        await first.fill("jobs", "b", task_type=BOMB)


# -- the advertised address of a node bound to 0.0.0.0 ------------------------------------


async def test_own_address_for_a_wildcard_host(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"box": ["127.0.1.1", "192.0.2.10", "fd00::10"]}

    async def fake(name: str, port: int) -> list[str]:
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[name]

    monkeypatch.setattr(discovery, "resolve", fake)
    monkeypatch.setattr(socket, "gethostname", lambda: "box")
    # No dns: seed to look towards: the host name's first non-loopback address.
    assert await own_address(["10.0.0.1:6666", "dns:missing:6666"]) == "192.0.2.10"
    assert await cli._own_advertise("0.0.0.0", 6666, []) == "192.0.2.10:6666"
    assert await cli._own_advertise("0.0.0.0", 0, []) == "192.0.2.10"  # the port is appended
    assert await cli._own_advertise("127.0.0.1", 6666, []) is None  # not a wildcard
    answers["box"] = ["127.0.1.1"]
    assert await cli._own_advertise("0.0.0.0", 6666, []) is None  # unknown: left as it was
