"""Cluster logic on the in-memory network, with a faked loop clock (no sleeps).

The real HTTP transport is covered by test_wire_security.py and the
subprocess tests in test_nodes.py; here every rule of placement, routing,
membership and handoff is checked in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from gobucket_py import (
    BucketClosedError,
    BucketConfig,
    ClusterFullError,
    DrainOutcome,
    DuplicateTaskError,
    FillResult,
    GobucketError,
    GroupConfig,
    MemberState,
    MemoryNetwork,
    PeerUnavailableError,
    PlacementUnknownError,
    Task,
    TaskBucket,
    TaskBucketGroup,
    TaskState,
    TaskType,
    UnknownBucketError,
)
from gobucket_py.cluster import serve
from gobucket_py.cluster.columns import FillColumns
from gobucket_py.cluster.memory import MemoryTransport
from gobucket_py.cluster.protocol import Kind
from gobucket_py.errors import ProtocolError

from .conftest import Recorder

pytestmark = pytest.mark.looptime

BOMB = TaskType.TIME_BOMB
CFG = GroupConfig.local()


class Cluster:
    """N groups on one MemoryNetwork, addressed n1..nN, all seeded with n1."""

    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net
        self.groups: dict[str, TaskBucketGroup] = {}
        self.recorders: dict[str, Recorder] = {}

    async def add(self, name: str, *, max_bucket: int = 10, seeds: list[str] | None = None,
                  life_span: float = 60, run_after: float = 30, **cfg: Any) -> TaskBucketGroup:
        rec = Recorder()
        bucket = TaskBucket(BucketConfig(life_span=life_span, run_after=run_after,
                                         max_bucket=max_bucket), rec, name="jobs")
        config = GroupConfig.local(**cfg) if cfg else CFG
        group = TaskBucketGroup({"jobs": bucket}, ["n1"] if seeds is None else seeds,
                                node_id=name, transport=self.net.transport(name), config=config,
                                rng=random.Random(name))
        await group.start()
        self.groups[name], self.recorders[name] = group, rec
        return group

    def bucket(self, name: str) -> TaskBucket:
        return self.groups[name].buckets["jobs"]

    def fired(self) -> list[str]:
        return [t for rec in self.recorders.values() for h, t, _ in rec.calls if h == "execute"]

    async def settle(self, seconds: float = 1.0) -> None:
        await asyncio.sleep(seconds)  # fake time: probes run, capacity is exchanged

    async def close(self) -> None:
        for group in self.groups.values():
            await group.stop()


def states(group: TaskBucketGroup) -> dict[str, MemberState]:
    return {p.node_id: p.state for p in group.peers}


async def fill_local(group: TaskBucketGroup, count: int, prefix: str = "local") -> None:
    for i in range(count):
        result = await group.fill("jobs", f"{prefix}-{i}", task_type=BOMB)
        assert not result.forwarded


# -- membership ----------------------------------------------------------------------


async def test_discovery_from_one_seed(cluster: Cluster) -> None:
    await cluster.add("n1", seeds=[])
    await cluster.add("n2")
    await cluster.add("n3", seeds=["n2"])  # knows only n2, learns n1 through it
    await cluster.settle()
    for name, group in cluster.groups.items():
        expected = {n: MemberState.ALIVE for n in cluster.groups if n != name}
        assert states(group) == expected, name


async def test_own_address_in_peers_is_ignored(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", seeds=["n1", "n2"])
    await cluster.add("n2", seeds=["n2", "n1"])
    await cluster.settle()
    assert states(n1) == {"n2": MemberState.ALIVE}


async def test_dead_node_is_detected_and_no_longer_used(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2")
    await cluster.add("n3")
    await cluster.settle()
    loop = asyncio.get_running_loop()
    cluster.net.down("n3")  # kill -9
    t0 = loop.time()
    while states(n1)["n3"] is not MemberState.DEAD:
        await asyncio.sleep(0.01)
    detected = loop.time() - t0
    # probe_interval + probe timeouts + suspicion_timeout of the local preset
    assert detected <= CFG.probe_interval + 2 * CFG.probe_timeout + CFG.suspicion_timeout + 0.1
    assert states(cluster.groups["n2"])["n3"] in (MemberState.SUSPECT, MemberState.DEAD)
    await fill_local(n1, 1)
    for i in range(5):
        assert (await n1.fill("jobs", f"t{i}", task_type=BOMB)).node_id == "n2"


async def test_suspect_that_answers_again_is_alive(cluster: Cluster) -> None:
    n1 = await cluster.add("n1")
    await cluster.add("n2")
    await cluster.settle()
    cluster.net.down("n2")
    while states(n1)["n2"] is MemberState.ALIVE:
        await asyncio.sleep(0.01)
    assert states(n1)["n2"] is MemberState.SUSPECT
    cluster.net.up("n2")
    await cluster.settle(0.5)
    assert states(n1)["n2"] is MemberState.ALIVE


async def test_peer_that_keeps_talking_to_us_is_not_suspected(cluster: Cluster) -> None:
    """Lifeguard: an unanswered probe is no evidence against a peer that sent
    us messages meanwhile (a busy node is not a dead one)."""
    n1 = await cluster.add("n1")
    await cluster.add("n2")
    await cluster.add("n3")
    await cluster.settle()
    transport = cluster.groups["n2"].transport
    serve = transport._handler
    assert serve is not None

    async def deaf_to_probes(kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
        if kind in (Kind.PING, Kind.PING_REQ):
            await asyncio.Future()  # never answers a probe; its own pings still go out
        return await serve(kind, message)

    transport._handler = deaf_to_probes
    n2 = cluster.groups["n2"]._members

    async def chatter() -> None:  # other traffic to n1 (its own pings alone are rarer)
        while True:
            with contextlib.suppress(GobucketError):
                await n2.ping("n1", 0.1)
            await asyncio.sleep(0.05)

    talking = asyncio.get_running_loop().create_task(chatter())
    seen: list[MemberState] = []
    n1._members.on_change = lambda m, old: seen.append(m.state) if m.node_id == "n2" else None
    await cluster.settle(3)
    assert seen == [] and states(n1)["n2"] is MemberState.ALIVE
    # The same deafness in a node that says nothing is detected as usual.
    talking.cancel()
    cluster.groups["n2"]._members._loops[0].cancel()  # n2 stops probing (pinging) others
    while states(n1)["n2"] is MemberState.ALIVE:
        await asyncio.sleep(0.05)
    assert seen[0] is MemberState.SUSPECT


async def test_probe_round_that_outlasts_its_timeouts_is_inconclusive(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """If this node's own loop stalled during the indirect round, its
    timeouts measured the stall: the peer is not suspected for it. (Two
    nodes: a third would suspect the hung one by its own probes, and say so.)"""
    n1 = await cluster.add("n1")
    await cluster.add("n2")
    await cluster.settle()
    membership = n1._members
    cluster.net.hang("n2")
    stalled = 0

    async def indirect_during_a_stall(target: Any, timeout: float) -> bool:
        nonlocal stalled
        stalled += 1
        await asyncio.sleep(CFG.probe_timeout * 2)  # as if the loop had been blocked
        return False

    membership._indirect = indirect_during_a_stall  # type: ignore[method-assign]
    with caplog.at_level("INFO", logger="gobucket_py"):
        await cluster.settle(2)  # several probe rounds, each "stalled"
    assert stalled >= 3 and states(n1)["n2"] is MemberState.ALIVE
    assert "event=probe_inconclusive" in caplog.text and "peer=n2" in caplog.text
    del membership._indirect  # the real round: n2 is hung, so it is suspected
    while states(n1)["n2"] is MemberState.ALIVE:
        await asyncio.sleep(0.05)


async def test_graceful_stop_is_left_not_dead(cluster: Cluster) -> None:
    n1 = await cluster.add("n1")
    n2 = await cluster.add("n2")
    await cluster.settle()
    await n2.stop()
    assert states(n1)["n2"] is MemberState.LEFT
    await cluster.settle(3)
    assert states(n1)["n2"] is MemberState.LEFT


async def test_restart_is_a_new_incarnation(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2")
    await cluster.settle()
    old_boot = {p.node_id: p.boot_id for p in n1.peers}["n2"]
    await fill_local(n1, 1)
    lost: list[tuple[str, str, list[str]]] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    placed = await n1.fill("jobs", "remote", task_type=BOMB)
    assert placed.node_id == "n2"
    cluster.net.down("n2")  # crash: its tasks are gone
    await n2.stop()
    cluster.net.up("n2")
    await cluster.add("n2")  # same id and address, new boot id
    await cluster.settle()
    peer = {p.node_id: p for p in n1.peers}["n2"]
    assert peer.state is MemberState.ALIVE and peer.boot_id != old_boot
    # The origin reports the task lost, once, and drain says so.
    assert lost == [("n2", "jobs", ["remote"])]
    assert n1.lost_counts == {"jobs": 1}
    assert (await n1.drain("jobs", "remote")).outcome is DrainOutcome.LOST
    info = await n1.get("jobs", "remote")
    assert info is not None and info.state is TaskState.LOST


# -- placement -------------------------------------------------------------------------


async def test_local_first_then_overflow_says_where(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=2)
    await cluster.add("n2")
    await cluster.settle()
    first = await n1.fill("jobs", "a")
    assert first.node_id == "n1" and not first.forwarded and first.task is not None
    await n1.fill("jobs", "b", task_type=BOMB)
    spill = await n1.fill("jobs", "c", {"k": [1, 2]}, task_type=BOMB)
    assert spill.node_id == "n2" and spill.forwarded and spill.task is None
    task = cluster.bucket("n2").get("c")
    assert task is not None and task.data == {"k": [1, 2]} and task.type is BOMB


async def test_time_bomb_keeps_remaining_times_across_a_hop(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2")
    await cluster.settle()
    await fill_local(n1, 1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await n1.fill("jobs", "bomb", task_type=BOMB, run_after=10, life_span=25)
    info = await n1.get("jobs", "bomb")
    assert info is not None and info.node_id == "n2" and info.type is BOMB
    assert info.seconds_to_run == pytest.approx(10, abs=0.05)
    assert info.seconds_left == pytest.approx(25, abs=0.05)
    await asyncio.sleep(12)
    assert cluster.recorders["n2"].at("execute", "bomb") - t0 == pytest.approx(10, abs=0.05)


async def test_reject_then_retry_on_next_peer(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=5)
    await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    await fill_local(n1, 1)
    failures: list[tuple[str, ...]] = []
    n1.on_peer_schedule_failed = lambda *a: failures.append(a)
    # n2 fills up behind n1's back: n1's estimate is stale, n2 must refuse.
    for i in range(5):
        await cluster.groups["n2"].fill("jobs", f"own-{i}", task_type=BOMB)
    forwarded = []
    for i in range(4):
        forwarded.append((await n1.fill("jobs", f"t{i}", task_type=BOMB)).node_id)
    assert forwarded == ["n3"] * 4
    assert failures == []  # never called on success
    assert len(cluster.bucket("n2")) == 5


async def test_cluster_full_raises_and_reports_each_rejection(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=1)
    await cluster.add("n3", max_bucket=1)
    await cluster.settle()
    await fill_local(n1, 1)
    for name in ("n2", "n3"):  # both fill up after their last report
        await cluster.groups[name].fill("jobs", f"own-{name}", task_type=BOMB)
    failures: list[tuple[str, str, str, str]] = []

    async def failed(peer: str, bucket: str, task_id: str, error: str) -> None:
        failures.append((peer, bucket, task_id, error))

    n1.on_peer_schedule_failed = failed
    with pytest.raises(ClusterFullError) as info:
        await n1.fill("jobs", "x", task_type=BOMB)
    assert set(info.value.rejections) == {"n2", "n3"}
    assert sorted(failures) == [("n2", "jobs", "x", "full"), ("n3", "jobs", "x", "full")]
    # After the fresh reports, n1 knows nobody has room: no peer is even asked.
    failures.clear()
    with pytest.raises(ClusterFullError, match="no peer has room"):
        await n1.fill("jobs", "y", task_type=BOMB)
    assert failures == []


async def test_balance_across_peers(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1000)
    await cluster.add("n2", max_bucket=1000)
    await cluster.add("n3", max_bucket=1000)
    await cluster.settle()
    results = []
    for start in range(0, 2500, 100):  # concurrent bursts, like a busy origin
        results += await asyncio.gather(*(n1.fill("jobs", f"t{i}", task_type=BOMB)
                                          for i in range(start, start + 100)))
    sizes = {name: len(cluster.bucket(name)) for name in ("n1", "n2", "n3")}
    assert sizes["n1"] == 1000 and sizes["n2"] + sizes["n3"] == 1500
    assert max(sizes.values()) <= 1000
    assert abs(sizes["n2"] - sizes["n3"]) <= 0.05 * max(sizes["n2"], sizes["n3"])
    assert sum(r.forwarded for r in results) == 1500


@pytest.mark.parametrize("how", ["fill", "fill_many"])
async def test_balanced_placement_fills_nodes_evenly_wherever_fills_arrive(
        cluster: Cluster, how: str) -> None:
    """placement="balanced": every fill arrives at n1, which has room for all
    of them, yet the three nodes end within 3% of each other (the slack is 1%
    of 1,000: 10 slots; measured 11-15 apart); with "local" n1 would hold all
    1,500."""
    n1 = await cluster.add("n1", max_bucket=1000, placement="balanced")
    await cluster.add("n2", max_bucket=1000, placement="balanced")
    await cluster.add("n3", max_bucket=1000, placement="balanced")
    await cluster.settle()
    results: list[Any] = []
    for start in range(0, 1500, 100):
        ids = [f"t{i}" for i in range(start, start + 100)]
        if how == "fill":
            results += await asyncio.gather(*(n1.fill("jobs", i, task_type=BOMB) for i in ids))
        else:
            results += await n1.fill_many("jobs", [(i, None) for i in ids], task_type=BOMB)
        await asyncio.sleep(0.05)
    assert all(isinstance(r, FillResult) for r in results), results
    sizes = {name: len(cluster.bucket(name)) for name in ("n1", "n2", "n3")}
    assert sum(sizes.values()) == 1500
    assert max(sizes.values()) - min(sizes.values()) <= 30, sizes
    where = {r.task_id: r.node_id for r in results}
    assert all(where[t] == name for name in sizes for t in (x.id for x in cluster.bucket(name)))
    assert sum(r.forwarded for r in results) == sizes["n2"] + sizes["n3"]


async def test_balanced_placement_keeps_a_task_here_when_no_peer_takes_it(
        cluster: Cluster) -> None:
    """A peer believed roomier refuses (it filled up meanwhile) or is gone:
    the task stays on the node it was filled at, which has room -- never a
    ClusterFullError while there is room."""
    n1 = await cluster.add("n1", max_bucket=100, placement="balanced")
    await cluster.add("n2", max_bucket=100, placement="balanced")
    await cluster.settle()
    for i in range(50):
        cluster.bucket("n1").fill_nowait(BOMB, f"a{i}", None)
    for i in range(100):  # behind n1's back: its figure still says 100 free
        cluster.bucket("n2").fill_nowait(BOMB, f"b{i}", None)
    n1._members.members["n2"].free["jobs"] = 100
    placed = await n1.fill("jobs", "one", task_type=BOMB)
    assert placed.node_id == "n1" and not placed.forwarded
    n1._members.members["n2"].free["jobs"] = 100
    many = await n1.fill_many("jobs", [(f"m{i}", None) for i in range(20)], task_type=BOMB)
    assert [r.node_id for r in many] == ["n1"] * 20  # type: ignore[union-attr]
    assert len(cluster.bucket("n1")) == 71


async def test_forwards_are_batched(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=1000)
    await cluster.settle()
    await fill_local(n1, 1)
    before = sum(1 for _, _, k in cluster.net.calls if k is Kind.FILL)
    await asyncio.gather(*(n1.fill("jobs", f"t{i}", task_type=BOMB) for i in range(500)))
    requests = sum(1 for _, _, k in cluster.net.calls if k is Kind.FILL) - before
    assert len(cluster.bucket("n2")) == 500
    assert requests <= 10, f"500 concurrent forwards took {requests} requests"


async def test_fill_many_places_local_first_then_spreads_and_reports_each(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=3)
    await cluster.add("n2", max_bucket=4)
    await cluster.add("n3", max_bucket=4)
    await cluster.settle()
    await cluster.groups["n3"].fill("jobs", "dup", task_type=BOMB)  # n3 has 3 slots left
    failures: list[tuple[str, ...]] = []
    n1.on_peer_schedule_failed = lambda *a: failures.append(a)
    tasks = [(f"t{i}", {"i": i}) for i in range(12)] + [("bad", object())]
    results = await n1.fill_many("jobs", tasks, task_type=BOMB, run_after=5, life_span=9)
    assert len(results) == 13
    placed = [r for r in results if not isinstance(r, Exception)]
    assert [r.node_id for r in placed[:3]] == ["n1"] * 3  # local first
    assert all(r.forwarded for r in placed[3:])
    by_node = {name: len(cluster.bucket(name)) for name in ("n1", "n2", "n3")}
    assert by_node == {"n1": 3, "n2": 4, "n3": 4}  # 10 of 12 placed, none over capacity
    errors = [r for r in results if isinstance(r, Exception)]
    assert [type(e) for e in errors] == [ClusterFullError, ClusterFullError, TypeError]
    assert "type 'object' is not serializable" in str(errors[-1])
    for result in placed:
        info = await n1.get("jobs", result.task_id)
        assert info is not None and info.node_id == result.node_id
        assert info.seconds_to_run == pytest.approx(5, abs=0.05)
    task = cluster.bucket(placed[-1].node_id).get(placed[-1].task_id)
    assert task is not None and task.data == {"i": int(placed[-1].task_id[1:])}
    # n1's report of n3 predates "dup": n3 refused one task, and only that one
    # refusal is reported (for the task that then found no home).
    assert [(f[0], f[3]) for f in failures] == [("n3", "full")]
    assert sorted("n3: full" in str(e) for e in errors[:2]) == [False, True]


async def test_fill_many_retries_a_refusal_on_another_peer(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=5)
    await cluster.add("n3", max_bucket=20)
    await cluster.settle()
    await fill_local(n1, 1)
    for i in range(5):  # n2 fills up behind n1's back
        await cluster.groups["n2"].fill("jobs", f"own-{i}", task_type=BOMB)
    results = await n1.fill_many("jobs", {f"t{i}": None for i in range(10)}, task_type=BOMB)
    assert all(not isinstance(r, Exception) and r.node_id == "n3" for r in results), results
    assert len(cluster.bucket("n3")) == 10 and len(cluster.bucket("n2")) == 5


async def test_fill_many_reports_duplicates_per_task(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    await fill_local(n1, 1)
    await n1.fill("jobs", "seen", task_type=BOMB)  # forwarded to n2
    results = await n1.fill_many("jobs", [("local-0", 1), ("seen", 2), ("new", 3)],
                                 task_type=BOMB)
    assert isinstance(results[0], DuplicateTaskError)  # live here
    assert isinstance(results[1], DuplicateTaskError) and "n2" in str(results[1])
    assert not isinstance(results[2], Exception) and results[2].node_id == "n2"


async def test_fill_many_rejects_bad_arguments_before_filling(cluster: Cluster) -> None:
    n1 = await cluster.add("n1")
    with pytest.raises(UnknownBucketError):
        await n1.fill_many("nope", [("a", None)])
    with pytest.raises(ValueError, match="life_span"):
        await n1.fill_many("jobs", [("a", None)], life_span=-1)
    with pytest.raises(ValueError, match="run_after"):
        await n1.fill_many("jobs", [("a", None)], run_after=3)  # immediate
    assert len(cluster.bucket("n1")) == 0


async def test_fill_many_batches_its_overflow(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=1000)
    await cluster.settle()
    await fill_local(n1, 1)
    before = sum(1 for _, _, k in cluster.net.calls if k is Kind.FILL)
    results = await n1.fill_many("jobs", ((f"t{i}", i) for i in range(600)), task_type=BOMB)
    requests = sum(1 for _, _, k in cluster.net.calls if k is Kind.FILL) - before
    assert sum(not isinstance(r, Exception) and r.forwarded for r in results) == 600
    assert requests <= 8, f"600 forwards took {requests} requests"


async def test_batches_stay_under_the_body_limit_with_big_payloads() -> None:
    """A batch is cut by bytes as well as by count: 300 tasks of 2 KB of data
    each (600 KB) to a peer that refuses bodies over 64 KB all land there --
    no ClusterFullError while it has room (a 256-task batch used to be one
    body, refused whole with a 413). A task bigger than the cut goes alone."""
    limit = 64 * 1024
    cluster = Cluster(MemoryNetwork(max_body=limit))
    try:
        n1 = await cluster.add("n1", max_bucket=1, max_body=limit)
        await cluster.add("n2", max_bucket=1000, max_body=limit)
        await cluster.settle()
        await fill_local(n1, 1)
        before = sum(1 for _, _, k in cluster.net.calls if k is Kind.FILL)
        results = await n1.fill_many("jobs", [(f"b{i}", "x" * 2048) for i in range(300)],
                                     task_type=BOMB)
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors, errors[:3]
        assert all(isinstance(r, FillResult) and r.node_id == "n2" for r in results)
        requests = sum(1 for _, _, k in cluster.net.calls if k is Kind.FILL) - before
        assert requests >= 300 * 2048 // (limit // 2), requests  # cut at half the limit
        big = await n1.fill("jobs", "big", "y" * (limit // 2), task_type=BOMB)
        assert big.node_id == "n2"
    finally:
        await cluster.close()


async def test_fill_batches_travel_as_columns_and_an_older_peer_gets_items(
        cluster: Cluster) -> None:
    """FILL batches travel column by column. A peer of an earlier version
    refuses ``cols`` with a 400, having taken nothing: it gets the same
    batch as ``items`` at once, and every later batch so. Each task lands
    once, with its data and times."""
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=1000)
    await cluster.settle()
    await fill_local(n1, 1)
    transport = n2.transport
    assert isinstance(transport, MemoryTransport)
    newer = transport._handler
    assert newer is not None
    forms: list[str] = []
    older = False

    async def handler(kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
        assert newer is not None
        if kind is Kind.FILL:
            forms.append("cols" if "cols" in message else "items")
            if older and "cols" in message:
                raise ProtocolError("field 'items' must be list, got NoneType")
        return await newer(kind, message)

    transport._handler = handler
    first = await n1.fill_many("jobs", [(f"a{i}", {"i": i}) for i in range(300)],
                               task_type=BOMB, run_after=5, life_span=9)
    assert forms and set(forms) == {"cols"}
    forms.clear()
    older = True
    later = await n1.fill_many("jobs", [(f"b{i}", i) for i in range(300)], task_type=BOMB)
    single = await n1.fill("jobs", "single", "s", task_type=BOMB)
    switch = forms.index("items")  # each batch in flight by then was refused, then resent
    assert forms[:switch] == ["cols"] * switch and set(forms[switch:]) == {"items"}, forms
    assert switch <= n1.config.batch_concurrency and forms[-1] == "items"
    assert all(isinstance(r, FillResult) and r.node_id == "n2" for r in [*first, *later])
    assert single.node_id == "n2"
    n2_bucket = cluster.bucket("n2")
    assert {t.id: t.data for t in n2_bucket} == {
        **{f"a{i}": {"i": i} for i in range(300)}, **{f"b{i}": i for i in range(300)},
        "single": "s"}
    task = n2_bucket.get("a7")
    assert task is not None and task.seconds_to_run == pytest.approx(5, abs=0.05)


@pytest.mark.parametrize("budget", [0.0, 60.0])
async def test_a_big_batch_is_taken_a_slice_at_a_time(cluster: Cluster, budget: float,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver takes a batch of 1,000 in slices of 64, and lets the loop
    run whenever its slices have taken ``_PASS`` seconds (here: 0, a pass
    after each slice; 60 s, none): its own timers are not held for the
    whole batch."""
    monkeypatch.setattr(serve, "_PASS", budget)
    n1 = await cluster.add("n1", max_bucket=1, batch_size=1000)
    n2 = await cluster.add("n2", max_bucket=2000)
    await cluster.settle()
    await fill_local(n1, 1)
    loop = asyncio.get_running_loop()
    server = n2._server
    accept = server._accept
    parts: list[int] = []
    passes: list[int] = []

    def spy(items: Any) -> list[str]:
        parts.append(len(items))
        loop.call_soon(lambda: passes.append(len(parts)))  # once the loop gets a pass
        return accept(items)

    server._accept = spy  # type: ignore[method-assign]
    results = await n1.fill_many("jobs", [(f"t{i}", None) for i in range(1000)],
                                 task_type=BOMB)
    assert all(isinstance(r, FillResult) and r.node_id == "n2" for r in results)
    assert parts == [64] * 15 + [40]
    if budget:
        assert passes == [16] * 16  # no pass until the whole batch was taken
    else:
        assert passes == list(range(1, 17))  # a loop pass after each slice
    assert len(cluster.bucket("n2")) == 1000


async def test_forwarded_time_bombs_due_later_land_cold_and_run_once(cluster: Cluster) -> None:
    """A receiver takes a batch of time-bombs due after the cooling horizon
    straight into cold storage: no Task made, no bucket fill per task but
    for the one it refuses (a duplicate); those due sooner are filled as
    tasks. Each runs once, at its time, with its data; a drained one never."""
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=1000)
    await cluster.settle()
    await fill_local(n1, 1)
    receiver = cluster.bucket("n2")
    fill = receiver.fill_validated
    filled: list[str] = []

    def spy(task_type: TaskType, task_id: str, *args: Any, **kwargs: Any) -> Task:
        filled.append(task_id)
        return fill(task_type, task_id, *args, **kwargs)

    receiver.fill_validated = spy  # type: ignore[method-assign]
    await n2.fill("jobs", "later-7", "first", task_type=BOMB)
    t0 = asyncio.get_running_loop().time()
    later = await n1.fill_many("jobs", [(f"later-{i}", {"i": i}) for i in range(300)],
                               task_type=BOMB, run_after=20, life_span=30)
    assert isinstance(later[7], DuplicateTaskError)
    assert all(isinstance(r, FillResult) and r.node_id == "n2" for r in later[8:])
    assert filled == ["later-7"]  # the duplicate, refused the usual way
    assert receiver._cold_n == 300 and receiver._tasks == {}  # (its own later-7 too)
    soon = await n1.fill_many("jobs", [(f"soon-{i}", i) for i in range(50)],
                              task_type=BOMB, run_after=1, life_span=30)
    assert all(isinstance(r, FillResult) and r.node_id == "n2" for r in soon)
    assert filled[1:] == [f"soon-{i}" for i in range(50)]
    assert (await n1.drain("jobs", "later-3")).outcome is DrainOutcome.DRAINED
    got = receiver.get("later-9")  # made a Task again, with its data
    assert got is not None and got.data == {"i": 9} and got.state is TaskState.PENDING
    del got
    await asyncio.sleep(35)  # (n2's own later-7 is due at 30 s)
    rec = cluster.recorders["n2"]
    ran = cluster.fired()
    assert sorted(ran) == sorted([*(f"later-{i}" for i in range(300) if i != 3),
                                  *(f"soon-{i}" for i in range(50)), "local-0"])
    assert rec.at("execute", "later-8") == pytest.approx(t0 + 20, abs=0.01)
    assert receiver.get("later-8") is None and receiver.ended("later-8") is TaskState.FINISHED


async def test_a_batch_stopped_half_taken_is_settled_as_half_taken(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose taking is cancelled between slices (its node stopping)
    is recorded as taken that far, never as void: its sender's settle then
    hears "ok" for each task that is here and "closed" for each that is not."""
    monkeypatch.setattr(serve, "_PASS", 0.0)  # a loop pass after each slice of 64
    n2 = await cluster.add("n2", max_bucket=2000)
    rows = [("jobs", f"c{i}", BOMB, None, 5.0, 10.0) for i in range(600)]
    key = ("sender-boot", 7)
    taking = asyncio.create_task(n2._server._fill(rows, key, False, None))
    await asyncio.sleep(0)  # the first slice is taken, then it yields
    assert len(cluster.bucket("n2")) == 64
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    now = asyncio.get_running_loop().time()
    assert n2._batches.settle(key, now) == ["ok"] * 64 + ["closed"] * 536
    assert sorted(t.id for t in cluster.bucket("n2")) == sorted(f"c{i}" for i in range(64))


async def test_batches_split_and_mix_many_and_single_fills(cluster: Cluster) -> None:
    """fill_many's shares and single fills share a peer's queue; batches of
    batch_size cut through them, and every verdict reaches its own caller."""
    n1 = await cluster.add("n1", max_bucket=1, batch_size=7, batch_concurrency=2)
    await cluster.add("n2", max_bucket=1000)
    await cluster.settle()
    await fill_local(n1, 1)
    await cluster.groups["n2"].fill("jobs", "m13", task_type=BOMB)  # a duplicate inside
    before = sum(1 for _, _, k in cluster.net.calls if k is Kind.FILL)
    many, *singles = await asyncio.gather(
        n1.fill_many("jobs", [(f"m{i}", i) for i in range(30)], task_type=BOMB),
        *(n1.fill("jobs", f"s{i}", i, task_type=BOMB) for i in range(10)),
        return_exceptions=True)
    requests = sum(1 for _, _, k in cluster.net.calls if k is Kind.FILL) - before
    assert isinstance(many, list)
    assert [type(r).__name__ for r in many].count("FillResult") == 29
    assert isinstance(many[13], DuplicateTaskError)
    assert [r.task_id for r in many if isinstance(r, FillResult)] == [
        f"m{i}" for i in range(30) if i != 13]
    assert [r.task_id for r in singles if isinstance(r, FillResult)] == [
        f"s{i}" for i in range(10)]
    n2 = cluster.bucket("n2")
    assert {t.id: t.data for t in n2} == {"m13": None, **{f"m{i}": i for i in range(30)
                                                          if i != 13},
                                          **{f"s{i}": i for i in range(10)}}
    assert requests <= -(-40 // 7) + 1, f"40 forwards in batches of 7 took {requests}"


async def test_single_fills_of_one_pass_mixing_shapes_land_as_filled(cluster: Cluster) -> None:
    """Single fills of one loop pass travel column by column while they share
    a shape (no data, the bucket's times); one that does not (data, its own
    times, another type) turns the pass into items. Either way each task
    lands with its own type, data and times, across several batches."""
    n1 = await cluster.add("n1", max_bucket=1, batch_size=4)
    await cluster.add("n2", max_bucket=1000)
    await cluster.settle()
    await fill_local(n1, 1)
    IMM = TaskType.IMMEDIATE
    shaped = await asyncio.gather(*(n1.fill("jobs", f"b{i}", task_type=BOMB)
                                    for i in range(10)))
    mixed = await asyncio.gather(
        *(n1.fill("jobs", f"c{i}", task_type=BOMB) for i in range(5)),
        n1.fill("jobs", "data", {"k": 1}, task_type=BOMB),
        n1.fill("jobs", "late", task_type=BOMB, run_after=45),
        n1.fill("jobs", "now", task_type=IMM),
        n1.fill("jobs", "long", task_type=BOMB, life_span=90),
        *(n1.fill("jobs", f"d{i}", task_type=BOMB) for i in range(5)))
    assert all(r.forwarded and r.node_id == "n2" for r in [*shaped, *mixed])
    assert [r.task_id for r in mixed] == [*(f"c{i}" for i in range(5)), "data", "late", "now",
                                          "long", *(f"d{i}" for i in range(5))]
    assert ("execute", "now") in [(h, t) for h, t, _ in cluster.recorders["n2"].calls]
    held = {t.id: t for t in cluster.bucket("n2")}
    assert len(held) == 23 and "now" not in held  # the immediate one ran at once
    assert held["data"].data == {"k": 1}
    assert held["long"].seconds_left == pytest.approx(90, abs=1)
    assert held["late"].seconds_to_run == pytest.approx(45, abs=1)
    for task_id in [f"b{i}" for i in range(10)] + [f"d{i}" for i in range(5)]:
        task = held[task_id]
        assert task.type is BOMB and task.data is None
        assert task.seconds_to_run == pytest.approx(30, abs=1)
    assert not n1._overflow._placing.get("jobs")  # every id's mark was released


async def test_single_fills_of_one_shape_beyond_the_peers_room_are_refused(
        cluster: Cluster) -> None:
    """The slices stop where the peer's room does: the rest is asked again
    and refused (ClusterFullError), none placed twice or lost unreported."""
    n1 = await cluster.add("n1", max_bucket=1, batch_size=3)
    await cluster.add("n2", max_bucket=7)
    await cluster.settle()
    await fill_local(n1, 1)
    results = await asyncio.gather(*(n1.fill("jobs", f"t{i}", task_type=BOMB)
                                     for i in range(12)), return_exceptions=True)
    took = [r.task_id for r in results if isinstance(r, FillResult)]
    refused = [r for r in results if isinstance(r, ClusterFullError)]
    assert len(took) == 7 and len(refused) == 5, results
    assert sorted(t.id for t in cluster.bucket("n2")) == sorted(took)


async def test_single_fills_of_one_shape_spread_over_two_peers_as_columns(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two candidate peers, each peer's share of a pass goes out as
    columns of its ids (no item per task): every task lands once, on the
    peer its result names, with the bucket's shape; what neither peer has
    room for is refused, and every mark is released."""
    n1 = await cluster.add("n1", max_bucket=1, batch_size=3)
    await cluster.add("n2", max_bucket=5)
    await cluster.add("n3", max_bucket=6)
    await cluster.settle()
    await fill_local(n1, 1)
    forwarder = n1._forwarder
    assert forwarder is not None
    batches: list[Any] = []
    send_many = forwarder.send_many

    def spy(member: Any, items: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(items)
        return send_many(member, items, *args, **kwargs)

    monkeypatch.setattr(forwarder, "send_many", spy)
    results = await asyncio.gather(*(n1.fill("jobs", f"t{i}", task_type=BOMB)
                                     for i in range(20)), return_exceptions=True)
    took = {r.task_id: r.node_id for r in results if isinstance(r, FillResult)}
    refused = [r for r in results if isinstance(r, ClusterFullError)]
    assert len(took) == 11 and len(refused) == 9, results
    assert all(isinstance(r, ClusterFullError) or r.task_id == f"t{i}"
               for i, r in enumerate(results))
    held = {node: {t.id: t for t in cluster.bucket(node)} for node in ("n2", "n3")}
    assert len(held["n2"]) == 5 and len(held["n3"]) == 6
    for task_id, node in took.items():
        task = held[node][task_id]
        assert task.type is BOMB and task.data is None
        assert task.seconds_to_run == pytest.approx(30, abs=1)
    assert {type(b) for b in batches} == {FillColumns} and len(batches) >= 4
    assert not n1._overflow._placing.get("jobs")  # every id's mark was released


async def test_single_fills_return_as_their_own_batch_is_answered(cluster: Cluster) -> None:
    """Fills that overflow together are not held back by a slower batch."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=1000)
    await cluster.add("n3", max_bucket=1000)
    await cluster.settle()
    await fill_local(n1, 1)
    transport = cluster.groups["n3"].transport
    serve = transport._handler
    assert serve is not None

    async def slow(kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
        if kind is Kind.FILL:
            await asyncio.sleep(0.3)  # answers, but late
        return await serve(kind, message)

    transport._handler = slow
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    done: dict[str, float] = {}

    async def one(i: int) -> FillResult:
        result = await n1.fill("jobs", f"t{i}", task_type=BOMB)
        done[result.task_id] = loop.time() - t0
        return result

    results = await asyncio.gather(*(one(i) for i in range(40)))
    assert {r.node_id for r in results} == {"n2", "n3"}
    fast = [t for t, took in done.items() if took < 0.05]
    late = [t for t, took in done.items() if took >= 0.3]
    assert fast and late and len(fast) + len(late) == 40, done


async def test_hung_peer_does_not_stall_fill(cluster: Cluster) -> None:
    """A forward that gets no answer may have been applied: fill says so
    within forward_timeout + settle_timeout, places the task nowhere else,
    and drain answers "unknown" until the peer can say."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2")
    await cluster.add("n3")
    await cluster.settle()
    await fill_local(n1, 1)
    n1.rng.seed(1)
    cluster.net.hang("n2")
    cluster.net.hang("n3")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(PlacementUnknownError, match="may or may not be on node") as caught:
        await n1.fill("jobs", "x", task_type=BOMB)
    assert loop.time() - t0 <= CFG.forward_timeout + CFG.settle_timeout + 0.05
    holder = caught.value.node_id
    assert holder in ("n2", "n3") and caught.value.task_id == "x"
    with pytest.raises(PeerUnavailableError, match="try again"):
        await n1.drain("jobs", "x")
    cluster.net.up("n2")
    cluster.net.up("n3")
    await cluster.settle()
    # The hung request never arrived: every node now says so for certain.
    assert (await n1.drain("jobs", "x")).outcome is DrainOutcome.NOT_FOUND
    assert "x" not in cluster.bucket("n2") and "x" not in cluster.bucket("n3")


async def test_unserializable_data_is_refused_clearly(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1, check_payloads=False)
    await cluster.add("n2")
    await cluster.settle()
    await n1.fill("jobs", "local", object())  # without the up-front check: anything
    with pytest.raises(TypeError, match="cannot be forwarded: an object of type 'object'"):
        await n1.fill("jobs", "remote", object())
    assert len(cluster.bucket("n2")) == 0


async def test_duplicate_on_the_chosen_peer_is_refused(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2")
    await cluster.settle()
    await fill_local(n1, 1)
    await cluster.groups["n2"].fill("jobs", "dup", task_type=BOMB)
    with pytest.raises(DuplicateTaskError, match="n2"):
        await n1.fill("jobs", "dup", task_type=BOMB)


async def test_forwarded_task_is_never_forwarded_again(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=1)
    await cluster.add("n3", max_bucket=1)
    await cluster.settle()
    await fill_local(n1, 1)
    await cluster.groups["n2"].fill("jobs", "own", task_type=BOMB)  # n2 full, n1 unaware
    n1.rng = random.Random(0)
    await n1.fill("jobs", "x", task_type=BOMB)
    hops = [(src, dst) for src, dst, k in cluster.net.calls if k is Kind.FILL]
    assert all(src == "n1" for src, _ in hops)  # n2 refused; it did not pass it on


async def test_bad_arguments(cluster: Cluster) -> None:
    n1 = await cluster.add("n1")
    with pytest.raises(UnknownBucketError):
        await n1.fill("nope", "x")
    with pytest.raises(UnknownBucketError):
        await n1.drain("nope", "x")
    bucket = TaskBucket(BucketConfig(life_span=1), Recorder(), name="a")
    with pytest.raises(ValueError, match="named 'a'"):
        TaskBucketGroup({"b": bucket}, [])
    with pytest.raises(ValueError, match="peers"):
        TaskBucketGroup({"a": bucket}, ["no-port"])
    with pytest.raises(ValueError, match="port"):
        TaskBucketGroup({"a": bucket}, [], port=70000)
    for node_id in ("", "has space", "new\nline", "x" * 257):
        with pytest.raises(ValueError, match="node_id"):
            TaskBucketGroup({"a": bucket}, [], node_id=node_id)
    with pytest.raises(ValueError, match="secret"):
        TaskBucketGroup({"a": bucket}, [], host="0.0.0.0")
    TaskBucketGroup({"a": bucket}, [], host="0.0.0.0", insecure=True)  # allowed when asked


async def test_lifecycle_refuses_reuse(cluster: Cluster) -> None:
    n1 = await cluster.add("n1")
    with pytest.raises(RuntimeError, match="running"):
        await n1.start()
    await n1.stop()
    await n1.stop()  # idempotent
    with pytest.raises(BucketClosedError, match="stopped"):
        await n1.fill("jobs", "x")
    with pytest.raises(RuntimeError, match="stopped"):
        await n1.start()


# -- drain and get ------------------------------------------------------------------------


async def spread(cluster: Cluster) -> TaskBucketGroup:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=50)
    await cluster.add("n3", max_bucket=50)
    await cluster.settle()
    await fill_local(n1, 1)
    return n1


async def test_drain_from_origin_takes_one_hop_and_never_runs(cluster: Cluster) -> None:
    n1 = await spread(cluster)
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    before = len(cluster.net.calls)
    result = await n1.drain("jobs", "job")
    drains = [c for c in cluster.net.calls[before:] if c[2] is Kind.DRAIN]
    assert result.outcome is DrainOutcome.DRAINED and result.node_id == placed.node_id
    assert drains == [("n1", placed.node_id, Kind.DRAIN)]
    await asyncio.sleep(40)
    assert "job" not in cluster.fired()
    # A retried drain is safe: it says what the first one did.
    again = await n1.drain("jobs", "job")
    assert again.outcome is DrainOutcome.DRAINED and again.node_id == placed.node_id


async def test_drain_and_get_from_a_third_node(cluster: Cluster) -> None:
    n1 = await spread(cluster)
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    other = "n3" if placed.node_id == "n2" else "n2"
    asker = cluster.groups[other]
    info = await asker.get("jobs", "job")
    assert info is not None and info.node_id == placed.node_id
    assert info.state is TaskState.PENDING
    assert await asker.get("jobs", "unknown") is None
    result = await asker.drain("jobs", "job")
    assert result.outcome is DrainOutcome.DRAINED and result.node_id == placed.node_id
    ended = await n1.get("jobs", "job")
    assert ended is not None and ended.state is TaskState.DRAINED
    await asyncio.sleep(40)
    assert "job" not in cluster.fired()


async def test_drain_of_running_remote_task_is_cancelled(cluster: Cluster) -> None:
    n1 = await spread(cluster)
    for rec in cluster.recorders.values():
        rec.work["slow"] = 5
    placed = await n1.fill("jobs", "slow")
    await asyncio.sleep(1)
    result = await n1.drain("jobs", "slow")
    assert result.outcome is DrainOutcome.CANCELLED and result.node_id == placed.node_id
    assert cluster.recorders[placed.node_id].hooks("slow") == ["execute"]


@pytest.mark.parametrize("offset", [-0.01, -0.001, 0.0, 0.001, 0.01])
async def test_drain_racing_firing_on_a_peer_has_one_winner(cluster: Cluster,
                                                            offset: float) -> None:
    n1 = await spread(cluster)
    loop = asyncio.get_running_loop()
    placed = await n1.fill("jobs", "race", task_type=BOMB, run_after=5, life_span=10)
    remote = cluster.bucket(placed.node_id).get("race")
    assert remote is not None
    await asyncio.sleep(remote._run_at - loop.time() + offset)
    result = await n1.drain("jobs", "race")
    await asyncio.sleep(10)
    ran = "race" in cluster.fired()
    if result.outcome is DrainOutcome.DRAINED:
        assert not ran
    else:
        assert ran


# -- graceful stop -------------------------------------------------------------------------


async def test_stop_waits_for_room_on_peers_within_stop_grace(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=10, stop_grace=5.0)
    n2 = await cluster.add("n2", max_bucket=3)
    await cluster.settle()
    loop = asyncio.get_running_loop()
    due = loop.time() + 2
    for i in range(3):  # n2 is full of tasks that fire (and end) 2 s from now
        await n2.fill("jobs", f"soon-{i}", task_type=BOMB, run_after=2)
    for i in range(3):  # n1's tasks are due in 30 s
        await n1.fill("jobs", f"later-{i}", task_type=BOMB)
    await cluster.settle(0.5)  # n1 learns that n2 is full
    t0 = loop.time()
    await n1.stop()  # nobody has room at first; n2 does once its tasks have run
    assert due <= loop.time() <= t0 + 5.0
    assert cluster.bucket("n1").stats()["handed_off"] == 3
    assert cluster.bucket("n1").stats()["rescued"] == 0
    assert sorted(t.id for t in cluster.bucket("n2")) == [f"later-{i}" for i in range(3)]
    handed = [t for h, t, _ in cluster.recorders["n1"].calls]
    assert handed == []  # n1 ran, and rescued, nothing


async def test_stop_rescues_what_no_peer_takes_within_stop_grace(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=10, stop_grace=1.5)
    n2 = await cluster.add("n2", max_bucket=1)
    await cluster.settle()
    await n2.fill("jobs", "forever", task_type=BOMB)  # n2 stays full
    await n1.fill("jobs", "stuck", task_type=BOMB)
    await cluster.settle(0.5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await n1.stop()
    assert loop.time() - t0 <= 1.5 + 0.1  # bounded by stop_grace
    stats = cluster.bucket("n1").stats()
    assert (stats["handed_off"], stats["rescued"]) == (0, 1)
    assert cluster.recorders["n1"].hooks("stuck") == ["panic"]  # on_panic


async def test_stop_hands_pending_tasks_to_peers_with_remaining_times(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=50)
    await cluster.add("n3", max_bucket=50)
    await cluster.settle()
    await fill_local(n1, 1)
    loop = asyncio.get_running_loop()
    on_n2 = []
    for i in range(40):
        result = await n1.fill("jobs", f"t{i}", task_type=BOMB)
        if result.node_id == "n2":
            on_n2.append(f"t{i}")
    assert on_n2
    t0 = loop.time()
    await asyncio.sleep(10)
    await n2.stop()
    assert cluster.bucket("n2").stats()["handed_off"] == len(on_n2)
    for task_id in on_n2:
        task = cluster.bucket("n3").get(task_id)
        assert task is not None, task_id
        assert task.seconds_to_run == pytest.approx(30 - (loop.time() - t0) - 0.0, abs=0.1)
        # The origin still finds and drains it (its record points at n2, which left).
        info = await n1.get("jobs", task_id)
        assert info is not None and info.node_id == "n3"
    assert (await n1.drain("jobs", on_n2[0])).outcome is DrainOutcome.DRAINED
    await asyncio.sleep(40)
    fired = [t for t in cluster.fired() if t in on_n2]
    assert sorted(fired) == sorted(on_n2[1:])
    assert cluster.recorders["n2"].calls == []  # n2 ran nothing and rescued nothing


async def test_stop_without_room_rescues_instead_of_losing(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=3)
    await cluster.add("n2", max_bucket=1)
    await cluster.settle()
    await fill_local(n1, 3)
    await n1.stop()
    assert cluster.bucket("n2").stats()["filled"] == 1  # one moved
    assert sorted(cluster.recorders["n1"].hooks("local-0") + cluster.recorders["n1"].hooks(
        "local-1") + cluster.recorders["n1"].hooks("local-2")) == ["panic", "panic"]


async def test_stopping_node_refuses_forwards(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    await fill_local(n1, 1)
    stopping = asyncio.ensure_future(n2.stop())
    await asyncio.sleep(0)
    with pytest.raises(ClusterFullError):
        await n1.fill("jobs", "x", task_type=BOMB)
    await stopping
    assert len(cluster.bucket("n2")) == 0
