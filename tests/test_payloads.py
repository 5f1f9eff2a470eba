"""Task data across nodes: rich types, the serializer hook, the up-front check.

The codec on its own; cluster rules on the in-memory network with a faked
loop clock (overflow, fill_many, handoff, backups taken over after a crash);
and two real HTTP nodes on loopback, with a GroupClient, for the wire itself.
Every module here is async (conftest: no module mixes sync and async tests).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgpack
import pytest

from gobucket_py import (
    BucketConfig,
    ClusterFullError,
    Codec,
    Executor,
    FillResult,
    GroupClient,
    GroupConfig,
    MemoryNetwork,
    Serializer,
    Task,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)
from gobucket_py.codec import MAX_NESTING

from .procs import SECRET, free_port, wait_for

BOMB = TaskType.TIME_BOMB
looptime = pytest.mark.looptime

#: One of each type that must arrive as itself, nested in dicts, lists and tuples.
RICH: dict[str, Any] = {
    "naive": datetime(2024, 5, 1, 12, 30, 15, 123456),
    "utc": datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    "offset": datetime(2024, 5, 1, 8, 0, tzinfo=timezone(timedelta(hours=-4, minutes=-30))),
    "day": date(2024, 2, 29),
    "id": UUID("12345678-1234-5678-1234-567812345678"),
    "amount": Decimal("19.90"),
    "signed_zero": Decimal("-0.000"),
    "infinite": Decimal("-Infinity"),
    "pair": (1, "a"),
    "nested": [{"when": date(2020, 1, 1), "ids": [UUID(int=7)]},
               (Decimal("1E-30"), (datetime(1999, 12, 31, 23, 59, 59),))],
    "keys": {1: "int key", (2, "x"): "tuple key", UUID(int=9): "uuid key"},
    "plain": [None, True, 3, 2.5, "text", b"\x00bytes"],
}


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (and aware datetimes
    with the same UTC offset, Decimals with the same digits and exponent)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(same(k, k2) and same(v, b[k2]) for k2 in b if k2 == k) for k, v in a.items())
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime):
        return bool(a == b and a.utcoffset() == b.utcoffset()
                    and a.isoformat() == b.isoformat())
    if isinstance(a, Decimal):
        return str(a) == str(b)
    return bool(a == b)


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


class Extra:
    """A serializer for sets, frozensets and Money (whose amount is a Decimal)."""

    def encode(self, obj: Any) -> tuple[str, Any]:
        if isinstance(obj, set | frozenset):
            return type(obj).__name__, sorted(obj)
        if isinstance(obj, Money):
            return "money", [obj.amount, obj.currency]
        raise TypeError(f"Extra does not carry {type(obj).__name__}")

    def decode(self, tag: str, value: Any) -> Any:
        if tag == "set":
            return set(value)
        if tag == "frozenset":
            return frozenset(value)
        if tag == "money":
            return Money(*value)
        raise ValueError(f"unknown tag {tag!r}")


class Capture(Executor):
    """Records the data each task ran with, and which got on_panic."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.panicked: list[str] = []

    async def on_execute(self, task: Task) -> None:
        self.data[task.id] = task.data

    async def on_panic(self, task: Task) -> None:
        self.panicked.append(task.id)


# -- the codec on its own ----------------------------------------------------------


async def test_the_codec_round_trips_rich_types_as_themselves() -> None:
    codec = Codec()
    assert isinstance(codec.pack(RICH), bytes)
    back = codec.unpack(codec.pack(RICH))
    assert same(back, RICH), back
    for value in RICH.values():
        assert same(codec.unpack(codec.pack(value)), value), value
    assert codec.pack(None) == msgpack.packb(None)


async def test_subclasses_arrive_as_their_base_type() -> None:
    from collections import OrderedDict, namedtuple
    from enum import IntEnum

    class Level(IntEnum):
        HIGH = 3

    Point = namedtuple("Point", "x y")
    codec = Codec()
    back = codec.unpack(codec.pack({"level": Level.HIGH, "point": Point(1, 2),
                                    "ordered": OrderedDict(a=1)}))
    assert same(back, {"level": 3, "point": (1, 2), "ordered": {"a": 1}})


async def test_the_codec_refuses_what_it_cannot_carry_naming_the_type() -> None:
    codec = Codec()
    with pytest.raises(TypeError, match="type 'set' is not serializable"):
        codec.pack({"ok": 1, "tags": [{"a", "b"}]})
    with pytest.raises(TypeError, match=r"type 'tests\.test_payloads\.Money'"):
        codec.pack([Money(Decimal(1), "EUR")])
    with pytest.raises(TypeError, match="out of range"):
        codec.pack(2 ** 70)
    deep: Any = 0
    for _ in range(MAX_NESTING + 1):
        deep = (deep,)
    with pytest.raises(TypeError, match="more than 32 deep"):
        codec.pack(deep)
    assert codec.pack([1]) == msgpack.packb([1])  # a refusal leaves the packer clean


async def test_the_codec_refuses_malformed_or_hostile_input_without_crashing() -> None:
    codec = Codec()
    ext = msgpack.ExtType
    for raw in (msgpack.packb(ext(99, b"x")),             # not one of ours
                msgpack.packb(ext(1, b"not a date")),
                msgpack.packb(ext(3, b"short")),          # a UUID is 16 bytes
                msgpack.packb(ext(4, b"")),               # no Decimal
                msgpack.packb(ext(5, msgpack.packb({}))),  # a tuple holds an array
                msgpack.packb(ext(6, msgpack.packb(["set", [1]])))):  # no serializer here
        with pytest.raises(ValueError):
            codec.unpack(raw)
    nested = msgpack.packb([])
    for _ in range(20_000):  # once enough to exhaust the C stack
        nested = msgpack.packb(ext(5, nested))
    with pytest.raises(ValueError, match="nested more than"):
        codec.unpack(nested)
    # A standard msgpack timestamp, from another producer: an aware UTC datetime.
    assert same(codec.unpack(msgpack.packb(msgpack.Timestamp(86400))),
                datetime(1970, 1, 2, tzinfo=UTC))


async def test_a_serializer_carries_other_types() -> None:
    codec = Codec(Extra())
    assert isinstance(Extra(), Serializer)
    data = {"tags": {"a", "b"}, "frozen": frozenset({1}), "price": Money(Decimal("9.99"), "EUR"),
            "nested": [(Money(Decimal("0.5"), "USD"), {3})]}
    back = codec.unpack(codec.pack(data))
    assert back == data and type(back["price"].amount) is Decimal
    assert type(back["frozen"]) is frozenset
    with pytest.raises(TypeError, match="type 'object' is not serializable: the serializer"):
        codec.pack(object())
    with pytest.raises(TypeError, match="serializer must have encode"):
        Codec(object())  # type: ignore[arg-type]

    class Wrong:
        def encode(self, obj: Any) -> Any:
            return obj  # not (tag, value)

        def decode(self, tag: str, value: Any) -> Any:
            return value

    with pytest.raises(TypeError, match=r"must return \(tag: str, value\)"):
        Codec(Wrong()).pack({1, 2})


async def test_check_payloads_is_validated() -> None:
    assert GroupConfig().check_payloads is None
    with pytest.raises(ValueError, match="check_payloads"):
        GroupConfig(check_payloads=1)  # type: ignore[arg-type]


# -- in-memory clusters --------------------------------------------------------------


class Mesh:
    """Groups on one MemoryNetwork, each with a Capture executor."""

    def __init__(self) -> None:
        self.net = MemoryNetwork()
        self.groups: dict[str, TaskBucketGroup] = {}
        self.ran: dict[str, Capture] = {}

    async def add(self, name: str, *, seeds: list[str] | None = None, max_bucket: int = 10,
                  serializer: Serializer | None = None, **cfg: Any) -> TaskBucketGroup:
        capture = Capture()
        bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=max_bucket),
                            capture, name="jobs")
        group = TaskBucketGroup({"jobs": bucket}, ["n1"] if seeds is None else seeds,
                                node_id=name, transport=self.net.transport(name),
                                config=GroupConfig.local(**cfg), rng=random.Random(name),
                                serializer=serializer)
        await group.start()
        self.groups[name], self.ran[name] = group, capture
        return group

    def bucket(self, name: str) -> TaskBucket:
        return self.groups[name].buckets["jobs"]

    async def close(self) -> None:
        for group in self.groups.values():
            await group.stop()


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    made = Mesh()
    yield made
    await made.close()


async def full_origin(mesh: Mesh, **kw: Any) -> TaskBucketGroup:
    """n1 with its one slot taken (its fills overflow to n2), and n2."""
    n1 = await mesh.add("n1", max_bucket=1, seeds=[], **kw)
    await mesh.add("n2", **kw)
    await asyncio.sleep(1)  # probes: n1 learns n2's room
    await n1.fill("jobs", "anchor", task_type=BOMB)
    return n1


@looptime
async def test_an_overflowing_task_runs_on_the_peer_with_its_types(mesh: Mesh) -> None:
    n1 = await full_origin(mesh)
    placed = await n1.fill("jobs", "rich", RICH, task_type=BOMB, run_after=5, life_span=10)
    assert placed.forwarded and placed.node_id == "n2"
    await asyncio.sleep(6)
    assert same(mesh.ran["n2"].data["rich"], RICH)


@looptime
async def test_fill_many_overflow_keeps_the_types(mesh: Mesh) -> None:
    n1 = await full_origin(mesh)
    tasks = [(f"t{i}", {"i": i, "at": RICH["utc"] + timedelta(days=i), "id": UUID(int=i),
                        "amount": Decimal(i) / 4}) for i in range(5)]
    results = await n1.fill_many("jobs", tasks)
    assert all(isinstance(r, FillResult) and r.node_id == "n2" for r in results), results
    await asyncio.sleep(0.5)
    for task_id, data in tasks:
        assert same(mesh.ran["n2"].data[task_id], data)


@looptime
async def test_handoff_moves_tasks_with_rich_data(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("n2")
    await asyncio.sleep(1)
    for i in range(3):
        placed = await n1.fill("jobs", f"job{i}", {**RICH, "i": i}, task_type=BOMB,
                               run_after=10, life_span=20)
        assert placed.node_id == "n1"
    await n1.stop()  # graceful: every pending task moves
    assert mesh.ran["n1"].panicked == []
    assert {t.id for t in mesh.bucket("n2")} == {"job0", "job1", "job2"}
    await asyncio.sleep(10.1)  # past their due time (filled at 1 s, due at 11 s)
    for i in range(3):
        assert same(mesh.ran["n2"].data[f"job{i}"], {**RICH, "i": i})


@looptime
async def test_handoff_reports_data_that_cannot_travel_and_does_not_wait_for_it(
        mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    n1 = await mesh.add("n1", seeds=[], check_payloads=False)  # so it could be filled
    await mesh.add("n2")
    await asyncio.sleep(1)
    await n1.fill("jobs", "stuck", {"tags": {"a"}}, task_type=BOMB, run_after=10, life_span=20)
    await n1.fill("jobs", "fine", RICH, task_type=BOMB, run_after=10, life_span=20)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="gobucket_py"):
        await n1.stop()
    # Not offered again every probe interval until stop_grace is over.
    assert loop.time() - started < n1.config.stop_grace
    assert [t.id for t in mesh.bucket("n2")] == ["fine"]
    assert mesh.ran["n1"].panicked == ["stuck"]  # rescued, as a task no peer took
    refused = [r.getMessage() for r in caplog.records if "event=handoff_refused" in
               r.getMessage()]
    assert len(refused) == 1 and "task_id=stuck" in refused[0] and "'set'" in refused[0]
    assert any(e["kind"] == "handoff_refused" for e in n1.events.since())


@looptime
async def test_a_backup_taken_over_after_a_crash_keeps_its_types(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[], replicas=1)
    await mesh.add("n2", replicas=1)
    await mesh.add("n3", replicas=1)
    await asyncio.sleep(1)
    await n1.fill("jobs", "job", RICH, task_type=BOMB, run_after=20, life_span=40)
    holders = [name for name, g in mesh.groups.items()
               if any(key[0] == "job" for key in g._backups.records.get("jobs", {}))]
    assert len(holders) == 1 and holders[0] != "n1"
    # kill -9 of n1: its address refuses, its timers are gone.
    mesh.net.crash("n1")
    crashed = mesh.groups.pop("n1")
    await crashed._members.stop()
    bucket = crashed.buckets["jobs"]
    assert bucket._wheel is not None
    bucket._wheel.close()
    await asyncio.sleep(25)
    assert same(mesh.ran[holders[0]].data["job"], RICH)


@looptime
async def test_a_serializer_carries_user_types_across_nodes(mesh: Mesh) -> None:
    n1 = await full_origin(mesh, serializer=Extra())
    data = {"tags": {"x", "y"}, "price": Money(Decimal("9.99"), "EUR"), "at": RICH["offset"]}
    assert (await n1.fill("jobs", "user", data)).node_id == "n2"
    await asyncio.sleep(0.5)
    back = mesh.ran["n2"].data["user"]
    assert back == data and type(back["tags"]) is set and same(back["at"], RICH["offset"])


@looptime
async def test_a_peer_without_the_serializer_refuses_loudly(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", max_bucket=1, seeds=[], serializer=Extra())
    await mesh.add("n2")  # misconfigured: no serializer
    await asyncio.sleep(1)
    await n1.fill("jobs", "anchor", task_type=BOMB)
    with pytest.raises(ClusterFullError, match="no serializer"):
        await n1.fill("jobs", "user", {"tags": {"x"}})
    assert len(mesh.bucket("n2")) == 0


@looptime
async def test_with_peers_every_fill_checks_its_data_up_front(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=["n2"])  # seeds configured: the check is on
    with pytest.raises(TypeError) as refused:
        await n1.fill("jobs", "local", {"tags": {"a"}}, task_type=BOMB)  # room here
    assert "task 'local' in bucket 'jobs' was not accepted" in str(refused.value)
    assert "type 'set' is not serializable" in str(refused.value)
    assert len(mesh.bucket("n1")) == 0 and "local" not in mesh.bucket("n1")
    results = await n1.fill_many("jobs", [("a", RICH), ("b", object()), ("c", None)],
                                 task_type=BOMB)  # (immediates may have run by now)
    assert isinstance(results[0], FillResult) and isinstance(results[2], FillResult)
    assert isinstance(results[1], TypeError) and "type 'object'" in str(results[1])
    assert sorted(t.id for t in mesh.bucket("n1")) == ["a", "c"]


@looptime
async def test_a_lone_node_checks_only_when_asked_or_once_it_has_peers(mesh: Mesh) -> None:
    lone = await mesh.add("n1", seeds=[])
    assert not (await lone.fill("jobs", "anything", {"tags": {"a"}})).forwarded
    strict = await mesh.add("solo", seeds=[], check_payloads=True)
    with pytest.raises(TypeError, match="type 'set'"):
        await strict.fill("jobs", "anything", {"tags": {"a"}})
    await mesh.add("n2")  # joins n1: n1 now has a peer its tasks may travel to
    await asyncio.sleep(1)
    with pytest.raises(TypeError, match="type 'set'"):
        await lone.fill("jobs", "later", {"tags": {"a"}})


# -- real HTTP on loopback ----------------------------------------------------------------


@pytest.fixture
async def http_pair() -> AsyncIterator[tuple[TaskBucketGroup, TaskBucketGroup, Capture]]:
    """Two nodes over real HTTP (signed), n1 full: its fills go to n2."""
    ports = [free_port(), free_port()]
    capture = Capture()
    groups = []
    for i, port in enumerate(ports):
        bucket = TaskBucket(BucketConfig(life_span=60, run_after=30,
                                         max_bucket=1 if i == 0 else 50),
                            Capture() if i == 0 else capture, name="jobs")
        groups.append(TaskBucketGroup({"jobs": bucket}, [f"127.0.0.1:{ports[1 - i]}"],
                                      port=port, node_id=f"h{i + 1}", secret=SECRET,
                                      config=GroupConfig.local(), serializer=Extra()))
    try:
        for group in groups:
            await group.start()
        await wait_for(lambda: all(p.state.value == "alive" and p.free.get("jobs")
                                   for g in groups for p in g.peers), 15, "the pair meshed")
        await groups[0].fill("jobs", "anchor", task_type=BOMB)
        yield groups[0], groups[1], capture
    finally:
        for group in groups:
            await group.stop()


async def test_over_real_http_a_forwarded_task_arrives_with_its_types(
        http_pair: tuple[TaskBucketGroup, TaskBucketGroup, Capture]) -> None:
    h1, _, ran = http_pair
    placed = await h1.fill("jobs", "rich", RICH)
    assert placed.forwarded and placed.node_id == "h2"
    await wait_for(lambda: "rich" in ran.data, 10, "the task to run on h2")
    assert same(ran.data["rich"], RICH)
    # A client packs as the nodes do: its submission overflows from h1 to h2.
    data = {"tags": {"v"}, "price": Money(Decimal("1.10"), "GBP"), "id": RICH["id"]}
    async with GroupClient(h1.address, secret=SECRET, serializer=Extra()) as client:
        submitted = await client.fill("jobs", "client", data)
        assert submitted.node_id == "h2"
        with pytest.raises(TypeError, match="task 'bad' was not sent: an object of type"):
            await client.fill("jobs", "bad", {"x": object()})
    await wait_for(lambda: "client" in ran.data, 10, "the client's task to run on h2")
    assert ran.data["client"] == data and same(ran.data["client"]["id"], RICH["id"])
