"""Randomized overflow from a full node over two small peers (two choices,
each peer's share sent as columns of its ids), under faults: lost FILL
replies (settled with SETTLE), peers that fill themselves meanwhile (stale
room, "full" refusals), a peer that goes down mid-pass. Every caller gets
its own task's result, each task lives on at most one node and is placed
at most once, ClusterFullError only when both peers are full, no mark is
left behind. (Written by a review of the multi-peer column path.)"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from gobucket_py import (
    ClusterFullError,
    DuplicateTaskError,
    FillResult,
    PeerUnavailableError,
    PlacementUnknownError,
    TaskType,
)
from gobucket_py.cluster.protocol import Kind

from .test_cluster import Cluster, fill_local

pytestmark = pytest.mark.looptime
BOMB = TaskType.TIME_BOMB


def lose_fill_replies(group: Any, addr: str, rng: random.Random, p: float) -> None:
    """FILL calls to ``addr``: with probability p the peer applies it and the reply is lost."""
    real = group.transport.call

    async def call(a: str, k: Kind, message: dict[str, Any], timeout: float) -> Any:
        if k is Kind.FILL and a == addr and rng.random() < p:
            await real(a, k, message, timeout)
            raise PeerUnavailableError("FILL reply lost")
        return await real(a, k, message, timeout)

    group.transport.call = call


async def full_node_and_two_peers(cluster: Cluster, rng: random.Random, batch: int, room: int
                                  ) -> tuple[Any, dict[str, int]]:
    """n1 with its one slot taken and a batch_size of 1..``batch``; n2 and n3
    with 1..``room`` slots each (returned by name)."""
    n1 = await cluster.add("n1", max_bucket=1, batch_size=rng.randint(1, batch))
    rooms = {"n2": rng.randint(1, room), "n3": rng.randint(1, room)}
    for name, size in rooms.items():
        await cluster.add(name, max_bucket=size)
    await cluster.settle()
    await fill_local(n1, 1)
    return n1, rooms


def holders(cluster: Cluster) -> dict[str, list[str]]:
    """Task id -> the peers (n2, n3) that hold it."""
    where: dict[str, list[str]] = {}
    for name in ("n2", "n3"):
        for task in cluster.bucket(name):
            where.setdefault(task.id, []).append(name)
    return where


@pytest.mark.parametrize("seed", range(160))
async def test_fuzz_single_fills_over_two_peers(cluster: Cluster, seed: int) -> None:
    """Three waves of single fills, most of one shape, two ids filled twice."""
    rng = random.Random(seed)
    fault = seed % 4  # 0 none, 1 lost replies, 2 receivers fill themselves, 3 n3 goes down a while
    n1, rooms = await full_node_and_two_peers(cluster, rng, batch=4, room=8)
    if fault == 1:
        lose_fill_replies(n1, "n3", rng, 0.4)
    calls: list[tuple[str, Any]] = []  # (id, awaitable)
    total = rooms["n2"] + rooms["n3"] + rng.randint(-2, 6)
    ids = [f"t{i}" for i in range(max(total, 2))]
    dups = set(rng.sample(ids, 2))

    def shape(task_id: str) -> dict[str, Any]:
        r = rng.random()
        if r < 0.7:
            return {}
        if r < 0.8:
            return {"data": {"k": task_id}}
        if r < 0.9:
            return {"life_span": 50}
        return {"run_after": 20}

    async def waves() -> None:
        for wave in range(3):
            for task_id in ids[wave::3]:
                calls.append((task_id, asyncio.ensure_future(
                    n1.fill("jobs", task_id, task_type=BOMB, **shape(task_id)))))
                if task_id in dups:
                    calls.append((task_id, asyncio.ensure_future(
                        n1.fill("jobs", task_id, task_type=BOMB))))
            if fault == 2 and wave == 0:  # receivers take local work: stale room, "full"
                for name in ("n2", "n3"):
                    g = cluster.groups[name]
                    if g.buckets["jobs"].free > 1:
                        await g.fill("jobs", f"{name}-own", task_type=BOMB)
            if fault == 3 and wave == 1:
                cluster.net.down("n3")
            await asyncio.sleep(rng.choice([0, 0, 0.001]))

    await waves()
    results = await asyncio.gather(*(f for _, f in calls), return_exceptions=True)
    if fault == 3:
        cluster.net.up("n3")
    await asyncio.sleep(0.5)
    where = holders(cluster)
    placed: Counter[str] = Counter()
    for (task_id, _), result in zip(calls, results, strict=True):
        if isinstance(result, FillResult):
            assert result.task_id == task_id, (task_id, result)
            assert where.get(task_id) == [result.node_id], (task_id, result, where.get(task_id))
            route = n1._routes.get("jobs", task_id)
            assert route is not None and route[0] == result.node_id
            placed[task_id] += 1
        elif isinstance(result, DuplicateTaskError):
            assert task_id in dups, (task_id, result)
        elif isinstance(result, PlacementUnknownError):
            assert fault in (1, 3), (task_id, result)
            assert result.task_id == task_id, (task_id, result)
        elif isinstance(result, ClusterFullError):
            assert task_id in str(result)
        else:
            raise AssertionError((task_id, result))
    assert all(len(nodes) == 1 for nodes in where.values()), where
    assert all(n == 1 for n in placed.values()), placed
    full_errors = [r for r in results if isinstance(r, ClusterFullError)]
    if full_errors and fault != 3:
        assert all(cluster.bucket(n).free == 0 for n in ("n2", "n3")), (
            [cluster.bucket(n).free for n in ("n2", "n3")], full_errors)
    assert not n1._overflow._placing.get("jobs"), n1._overflow._placing
    assert not n1._overflow._waiting


@pytest.mark.parametrize("seed", range(60))
async def test_fuzz_bigger_with_fill_many_and_lost_replies(cluster: Cluster, seed: int) -> None:
    """Single fills and a fill_many at once, larger rooms, replies lost on odd seeds."""
    rng = random.Random(1000 + seed)
    n1, rooms = await full_node_and_two_peers(cluster, rng, batch=5, room=30)
    if seed % 2:
        lose_fill_replies(n1, "n2", rng, 0.3)
        lose_fill_replies(n1, "n3", rng, 0.3)
    total = rooms["n2"] + rooms["n3"] + rng.randint(-5, 10)
    ids = [f"t{i}" for i in range(max(total, 3))]
    singles = ids[: len(ids) * 2 // 3]
    many = ids[len(ids) * 2 // 3:]
    calls = [(t, asyncio.ensure_future(n1.fill("jobs", t, task_type=BOMB))) for t in singles]
    fm = asyncio.ensure_future(n1.fill_many("jobs", dict.fromkeys(many), task_type=BOMB))
    results = await asyncio.gather(*(f for _, f in calls), return_exceptions=True)
    results += list(await fm)
    calls += [(t, None) for t in many]
    await asyncio.sleep(0.5)
    where = holders(cluster)
    for (task_id, _), result in zip(calls, results, strict=True):
        if isinstance(result, FillResult):
            assert result.task_id == task_id and where.get(task_id) == [result.node_id]
        elif isinstance(result, PlacementUnknownError):
            assert seed % 2 and result.task_id == task_id
        else:
            assert isinstance(result, ClusterFullError), (task_id, result)
            assert task_id in str(result)
    assert all(len(v) == 1 for v in where.values())
    if any(isinstance(r, ClusterFullError) for r in results):
        assert all(cluster.bucket(n).free == 0 for n in ("n2", "n3"))
    assert not n1._overflow._placing.get("jobs")
