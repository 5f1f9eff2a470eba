"""At least 10,000 hostile requests against every peer endpoint of a live node.

For each endpoint, hypothesis draws attacks: random bytes, a valid message
truncated, an oversized body, a valid message with one field of the wrong
type, an unknown bucket, broken or missing or expired signatures, and
replayed nonces. Every answer must be a 4xx; the node must create nothing,
drain nothing, learn no member from them, and stay healthy (its status page
answers and a real signed fill works). ``HOSTILE_REQUESTS`` sets the total
(default 10,000).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gobucket_py import BucketConfig, GroupConfig, TaskBucket, TaskBucketGroup, serve_pages
from gobucket_py.cluster.auth import Keyring
from gobucket_py.cluster.protocol import Kind, NodeHeader

from .conftest import Recorder
from .test_wire_security import raw_sign

SECRET = "hostile-secret-1"
KEYRING = Keyring.parse(SECRET)
MAX_BODY = 4096
TOTAL = int(os.environ.get("HOSTILE_REQUESTS", "10000"))
PER_ENDPOINT = -(-TOTAL // len(Kind))
ATTACKER = NodeHeader("attacker", "boot1", "127.0.0.1:1", 0, False, {}).pack()


def valid(kind: Kind) -> dict[str, Any]:
    """A well-formed message for ``kind`` (the attacks break it)."""
    base: dict[str, Any] = {"v": 1, "from": ATTACKER}
    if kind is Kind.PING:
        return {**base, "members": []}
    if kind is Kind.PING_REQ:
        return {**base, "target": "127.0.0.1:1"}
    if kind is Kind.FILL:
        return {**base, "items": [["jobs", "t", 1, msgpack.packb(None), 5, 10]]}
    if kind in (Kind.DRAIN, Kind.GET):
        return {**base, "bucket": "jobs", "id": "t"}
    if kind is Kind.SUBMIT:
        return {"v": 1, "bucket": "jobs", "id": "t", "type": 1, "data": msgpack.packb(None),
                "run_after": 5, "life_span": 10}
    if kind is Kind.STATS:
        return {"v": 1}
    return base  # LEAVE


#: Which value types each field accepts; an attack puts in a value of another type.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "v": (), "from": (), "members": (list,), "target": (), "items": (list,),
    "bucket": (str,), "id": (str,), "type": (), "data": (bytes,),
    "run_after": (int, float), "life_span": (int, float)}

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                     st.floats(allow_nan=True), st.text(max_size=6), st.binary(max_size=6))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)


def wrong_for(name: str, value: Any) -> bool:
    """True if ``value`` cannot be valid for field ``name``."""
    if name in ("v", "type"):
        return not (type(value) is int and value in (0, 1))  # v=0 is still wrong
    if name == "from":
        return True  # any value drawn here is not a valid 6-item node header
    if name == "target":
        return not isinstance(value, str)  # never send a probe to a drawn address
    if name in ("run_after", "life_span"):
        return value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float)))
    if name == "members":
        return value is not None and not (isinstance(value, list) and not value)
    if name == "items":
        return not isinstance(value, list) or bool(value)  # [] is a valid empty batch
    return not isinstance(value, FIELD_TYPES[name])


@dataclass
class Attack:
    name: str
    body: bytes
    headers: Callable[[str, bytes], dict[str, str]]
    allowed: frozenset[int]
    #: Send it twice with the same signature: the first answer must be in
    #: ``first`` (the nonce is spent once a signature checks out), the second 401.
    replay: frozenset[int] = frozenset()


def signed(path: str, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/msgpack", **KEYRING.sign("POST", path, body)}


def unsigned(path: str, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/msgpack"}


def bad_sig(path: str, body: bytes) -> dict[str, str]:
    headers = signed(path, body)
    sig = headers["X-Gobucket-Signature"]
    headers["X-Gobucket-Signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    return headers


def expired(path: str, body: bytes) -> dict[str, str]:
    return raw_sign(SECRET, "k0", path, body, ts=int(time.time()) - 31 - len(body) % 3600)


def ahead(path: str, body: bytes) -> dict[str, str]:
    return raw_sign(SECRET, "k0", path, body, ts=int(time.time()) + 31 + len(body) % 3600)


def wrong_key(path: str, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/msgpack",
            **Keyring.parse("k0=not-the-secret").sign("POST", path, body)}


def no_nonce(path: str, body: bytes) -> dict[str, str]:
    headers = signed(path, body)
    del headers["X-Gobucket-Nonce"]
    return headers


AUTH = {"unsigned": unsigned, "bad-signature": bad_sig, "expired": expired,
        "from-the-future": ahead, "wrong-key": wrong_key, "no-nonce": no_nonce}


@functools.cache
def attacks(kind: Kind) -> st.SearchStrategy[Attack]:
    message = valid(kind)
    packed = msgpack.packb(message)
    random_bytes = st.binary(max_size=300).filter(lambda b: not _is_valid(b, kind)).map(
        lambda b: Attack("random-bytes", b, signed, frozenset({400})))
    truncated = st.integers(0, len(packed) - 1).map(
        lambda k: Attack("truncated", packed[:k], signed, frozenset({400})))
    oversized = st.integers(MAX_BODY + 1, MAX_BODY + 2000).map(
        lambda n: Attack("oversized", b"\x00" * n, signed, frozenset({413})))
    wrong_type = st.tuples(st.sampled_from(sorted(message)), _values).filter(
        lambda pair: wrong_for(*pair)).map(
        lambda pair: Attack(f"wrong-type:{pair[0]}", msgpack.packb({**message, pair[0]: pair[1]}),
                            signed, frozenset({400})))
    bad_auth = st.tuples(st.sampled_from(sorted(AUTH)), st.binary(max_size=32)).map(
        lambda pair: Attack(f"auth:{pair[0]}", msgpack.packb({**message, "pad": pair[1]}),
                            AUTH[pair[0]], frozenset({401})))
    replayed = st.binary(max_size=32).map(lambda tail: Attack(
        "replayed-nonce", packed[:len(packed) // 2] + tail, signed, frozenset({401}),
        replay=frozenset({400})))
    choices = [random_bytes, truncated, oversized, wrong_type, bad_auth, replayed]
    if kind in (Kind.DRAIN, Kind.GET, Kind.SUBMIT):
        choices.append(st.text(min_size=1, max_size=8).filter(lambda b: b != "jobs").map(
            lambda name: Attack("unknown-bucket", msgpack.packb({**message, "bucket": name}),
                                signed, frozenset({404}))))
    if kind is Kind.STATS:  # read-only, so a valid one may be replayed too
        choices.append(st.binary(max_size=16).map(lambda pad: Attack(
            "replayed-nonce", msgpack.packb({"v": 1, "pad": pad}), signed, frozenset({401}),
            replay=frozenset({200}))))
    return st.one_of(*choices)


def _is_valid(body: bytes, kind: Kind) -> bool:
    """Random bytes that happen to decode to a message with v=1 (STATS would take it)."""
    try:
        decoded = msgpack.unpackb(body)
    except Exception:
        return False
    return isinstance(decoded, dict) and decoded.get("v") == 1


@dataclass
class Target:
    group: TaskBucketGroup
    bucket: TaskBucket
    http: aiohttp.ClientSession
    sent: Counter[str] = field(default_factory=Counter)
    health_fills: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.group.address}"

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with self.http.post(self.url + path, data=body, headers=headers) as resp:
            return resp.status, await resp.read()

    async def healthy(self) -> None:
        """The status page answers and a real signed fill is accepted, then drained."""
        async with self.http.get(self.url + "/v1/status") as resp:
            assert resp.status == 200 and json.loads(await resp.read())["state"] == "running"
        task_id = f"health-{self.health_fills}"
        body = msgpack.packb({"v": 1, "from": ATTACKER_OK, "items": [
            ["jobs", task_id, 1, msgpack.packb(None), 5, 10]]})
        status, raw = await self.post("/v1/fill", body, signed("/v1/fill", body))
        assert status == 200 and msgpack.unpackb(raw)["results"] == ["ok"]
        assert self.bucket.drain_nowait(task_id).value == "drained"
        self.health_fills += 1


#: The health check's sender: a real-looking peer, so it is expected to be learned.
ATTACKER_OK = NodeHeader("health", "boot2", "127.0.0.1:2", 0, False, {}).pack()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=10), Recorder(),
                        name="jobs")
    group = TaskBucketGroup({"jobs": bucket}, [], port=0, secret=SECRET,
                            config=GroupConfig.local(max_body=MAX_BODY))
    serve_pages(group)  # /v1/status: the health check
    await group.start()
    try:
        async with aiohttp.ClientSession() as http:
            state = Target(group, bucket, http)
            yield state
            # After every attack: nothing created, nothing drained, no member
            # learned from them, and the node still works.
            stats = bucket.stats()
            assert len(bucket) == 0 and stats["filled"] == state.health_fills
            assert stats["drained"] == state.health_fills  # the health checks' own
            assert [p.node_id for p in group.peers if p.node_id != "health"] == []
            await state.healthy()
            total = sum(state.sent.values())
            assert total >= PER_ENDPOINT, (total, dict(state.sent))
            print(f"\n{total} hostile requests, all 4xx: {dict(state.sent)}")
    finally:
        await group.stop()


HOSTILE_SETTINGS = settings(max_examples=PER_ENDPOINT, deadline=None, database=None,
                            suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow,
                                                   HealthCheck.filter_too_much])


@pytest.mark.parametrize("kind", list(Kind), ids=[k.name.lower() for k in Kind])
@HOSTILE_SETTINGS
@given(data=st.data())
async def test_hostile_requests_get_4xx_and_change_nothing(target: Target, kind: Kind,
                                                          data: st.DataObject) -> None:
    attack = data.draw(attacks(kind), label="attack")
    path = kind.path
    headers = attack.headers(path, attack.body)
    if attack.replay:
        first, raw = await target.post(path, attack.body, headers)
        assert first in attack.replay, (kind.name, attack.name, first, raw[:200])
    status, raw = await target.post(path, attack.body, headers)
    assert status in attack.allowed, (kind.name, attack.name, status, raw[:200],
                                      attack.body[:80])
    target.sent[attack.name.split(":")[0]] += 1
    if sum(target.sent.values()) % 500 == 0:
        await target.healthy()
