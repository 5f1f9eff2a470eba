"""Peer traffic over TLS and mutual TLS, on real servers on loopback.

Certificates are made with the ``openssl`` command (tests/pki.py): a cluster
CA, one certificate per node (subjectAltName IP 127.0.0.1, the address peers
dial), and a rogue CA whose certificate must be refused. The real-process
cluster tests of test_nodes.py run over mutual TLS too.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gobucket_py import (
    BucketConfig,
    DrainOutcome,
    GroupClient,
    GroupConfig,
    PeerUnavailableError,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
    TLSConfig,
)

from .conftest import Recorder
from .pki import HAVE_OPENSSL, make_ca, make_cert
from .procs import SECRET, Nodes, free_port, wait_for

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL,
                                reason="needs the openssl command (make test installs it)")

BOMB = TaskType.TIME_BOMB


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TLSConfig]:
    dir = tmp_path_factory.mktemp("pki")
    make_ca(dir, "cluster-ca")
    make_ca(dir, "rogue-ca")
    tls = {name: make_cert(dir, "cluster-ca", name) for name in ("n1", "n2", "n3", "client")}
    tls["rogue"] = make_cert(dir, "rogue-ca", "rogue")
    return tls


def node(name: str, port: int, peers: list[int], tls: TLSConfig, max_bucket: int = 3
         ) -> TaskBucketGroup:
    bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=max_bucket),
                        Recorder(), name="jobs")
    return TaskBucketGroup({"jobs": bucket}, [f"127.0.0.1:{p}" for p in peers], port=port,
                           node_id=name, secret=SECRET, tls=tls, config=GroupConfig.local())


@pytest.fixture
async def cluster(pki: dict[str, TLSConfig]) -> AsyncIterator[tuple[list[TaskBucketGroup],
                                                                    list[int]]]:
    ports = [free_port() for _ in range(3)]
    groups = [node(f"n{i + 1}", port, [p for p in ports if p != port], pki[f"n{i + 1}"])
              for i, port in enumerate(ports)]
    for group in groups:
        await group.start()
    try:
        await wait_for(lambda: all(sum(p.state.value == "alive" for p in g.peers) == 2
                                   for g in groups), 15, "the mTLS cluster to mesh")
        yield groups, ports
    finally:
        for group in groups:
            await group.stop()


async def test_a_cluster_over_mutual_tls_overflows_and_drains(
        cluster: tuple[list[TaskBucketGroup], list[int]], pki: dict[str, TLSConfig]) -> None:
    (n1, n2, _), ports = cluster
    placed = [await n1.fill("jobs", f"t{i}", task_type=BOMB) for i in range(7)]
    forwarded = [p for p in placed if p.forwarded]
    assert forwarded
    assert (await n2.drain("jobs", forwarded[0].task_id)).outcome is DrainOutcome.DRAINED
    async with GroupClient(f"127.0.0.1:{ports[2]}", secret=SECRET, tls=pki["client"]) as client:
        result = await client.drain("jobs", forwarded[-1].task_id)
        assert result.outcome is DrainOutcome.DRAINED


async def test_a_peer_with_a_certificate_from_another_ca_is_refused(
        cluster: tuple[list[TaskBucketGroup], list[int]], pki: dict[str, TLSConfig]) -> None:
    (n1, *_), ports = cluster
    async with GroupClient(f"127.0.0.1:{ports[0]}", secret=SECRET, tls=pki["rogue"]) as client:
        with pytest.raises(PeerUnavailableError):
            await client.drain("jobs", "anything")  # the handshake fails: nothing is asked
    async with aiohttp.ClientSession() as http:  # plain HTTP to the TLS port gets nowhere
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{ports[0]}/v1/status") as resp:
                await resp.read()
    assert n1.running and (await n1.fill("jobs", "after", task_type=BOMB)).task_id == "after"


async def test_without_a_client_certificate_the_handshake_fails(
        cluster: tuple[list[TaskBucketGroup], list[int]], pki: dict[str, TLSConfig]) -> None:
    _, ports = cluster
    context = ssl.create_default_context(cafile=pki["n1"].ca)  # trusts the node, shows nothing
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"https://127.0.0.1:{ports[0]}/v1/status",
                                ssl=context) as resp:
                await resp.read()


def test_bad_tls_configuration_names_the_field(tmp_path: Path,
                                                pki: dict[str, TLSConfig]) -> None:
    with pytest.raises(ValueError, match=r"cert \(--tls-cert\): no such file"):
        TLSConfig(str(tmp_path / "missing.pem"), pki["n1"].key)
    with pytest.raises(ValueError, match=r"ca \(--tls-ca\)"):
        TLSConfig(pki["n1"].cert, pki["n1"].key, str(tmp_path / "missing-ca.pem"))
    with pytest.raises(ValueError, match=r"cert/key \(--tls-cert/--tls-key\): cannot load"):
        TLSConfig(pki["n1"].cert, pki["n2"].key)  # a key that is not the certificate's


async def test_gobucket_node_serves_mutual_tls_from_its_flags(
        pki: dict[str, TLSConfig], nodes: Nodes) -> None:
    tls = pki["n1"]
    node = nodes.add("tls-node", env={"GOBUCKET_TLS_CERT": tls.cert, "GOBUCKET_TLS_KEY": tls.key,
                                      "GOBUCKET_TLS_CA": str(tls.ca)})
    await nodes.start(node)
    async with GroupClient(node.addr, secret=SECRET, tls=pki["client"]) as client:
        placed = await client.fill("jobs", "over-tls", task_type=BOMB)
    assert placed.node_id == "tls-node"


def test_gobucket_node_checks_its_tls_flags_and_flags_the_demo_secret(
        pki: dict[str, TLSConfig], capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    from gobucket_py import cli

    assert cli.main(["--app", "tests.node_app:buckets", "--port", "0",
                     "--tls-cert", pki["n1"].cert]) == 2
    assert "tls_cert/tls_key" in capsys.readouterr().err

    async def build() -> None:
        args = cli.build_parser().parse_args(["--port", "0", "--secret",
                                              "change-me-demo-secret"])
        await cli._build(args, lambda: {"jobs": TaskBucket(BucketConfig(60, 30), Recorder(),
                                                           name="jobs")})

    asyncio.run(build())
    assert "event=demo_secret" in caplog.text
