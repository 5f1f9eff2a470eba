"""``TaskBucketGroup.fill`` is eager: it places the task when called and
returns an EagerFuture, which every way of using an ``async def fill``
still takes (await, gather, wait_for, create_task, TaskGroup).

In-memory cluster, faked loop clock.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
from collections.abc import AsyncIterator

import pytest

from gobucket_py import (
    DrainOutcome,
    DuplicateTaskError,
    EagerFuture,
    FillResult,
    MemoryNetwork,
    NoBackupRoomError,
    PlacementUnknownError,
    TaskType,
    UnknownBucketError,
)
from gobucket_py.cluster.eager import running

from .test_cluster import Cluster, fill_local

pytestmark = pytest.mark.looptime

BOMB = TaskType.TIME_BOMB


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster(MemoryNetwork())
    yield c
    await c.close()


async def test_the_task_is_placed_when_fill_is_called(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    here = n1.fill("jobs", "here", task_type=BOMB)
    assert "here" in cluster.bucket("n1")  # before anything awaited it
    assert asyncio.iscoroutine(here) and not asyncio.isfuture(here)  # known: a coroutine
    placed = await here
    assert placed == FillResult("jobs", "here", "n1", False, placed.task)
    away = n1.fill("jobs", "away", task_type=BOMB)
    assert isinstance(away, EagerFuture)  # waiting for n2: a future, and a coroutine
    assert asyncio.isfuture(away) and asyncio.iscoroutine(away) and inspect.isawaitable(away)
    assert not away.done()
    placed = await away
    assert (placed.node_id, placed.forwarded) == ("n2", True)
    assert "away" in cluster.bucket("n2")


async def test_errors_come_when_awaited_never_from_the_call(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=5)
    await n1.fill("jobs", "taken", task_type=BOMB)
    unknown = n1.fill("nope", "x")
    bad_id = n1.fill("jobs", "")
    twice = n1.fill("jobs", "taken", task_type=BOMB)
    bad_time = n1.fill("jobs", "t", task_type=BOMB, run_after=-1)
    with pytest.raises(UnknownBucketError):
        await unknown
    with pytest.raises(TypeError, match="task_id"):
        await bad_id
    with pytest.raises(DuplicateTaskError):
        await twice
    with pytest.raises(ValueError, match="run_after"):
        await bad_time
    assert len(cluster.bucket("n1")) == 1  # a refused fill changed nothing


async def test_gather_with_return_exceptions_gets_each_answer(cluster: Cluster) -> None:
    """A failing fill among many does not break the list being built: its
    error is its entry, as with coroutines."""
    n1 = await cluster.add("n1", max_bucket=3)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    ids = ["a", "b", "a", "c", "d", "e", ""]
    out = await asyncio.gather(*(n1.fill("jobs", i, task_type=BOMB) for i in ids),
                               return_exceptions=True)
    assert [type(o).__name__ for o in out] == [
        "FillResult", "FillResult", "DuplicateTaskError", "FillResult", "FillResult",
        "FillResult", "TypeError"]
    placed = [o for o in out if isinstance(o, FillResult)]
    assert [p.forwarded for p in placed] == [False, False, False, True, True]
    assert {p.node_id for p in placed[3:]} == {"n2"}


async def test_create_task_and_task_group_take_it_as_a_coroutine(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    here = await asyncio.create_task(n1.fill("jobs", "here", task_type=BOMB))
    there = await asyncio.create_task(n1.fill("jobs", "there", task_type=BOMB))
    assert (here.node_id, there.node_id) == ("n1", "n2")
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(n1.fill("jobs", f"g{i}", task_type=BOMB)) for i in range(3)]
    assert [t.result().node_id for t in tasks] == ["n2"] * 3
    with pytest.raises(DuplicateTaskError):
        await asyncio.create_task(n1.fill("jobs", "here", task_type=BOMB))


async def test_a_cancelled_caller_gives_up_the_answer_not_the_task(cluster: Cluster) -> None:
    """As with a cancelled ``await`` of an overflowing fill: the forward goes
    on, its route is kept, and drain finds the task."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    await fill_local(n1, 1)
    fault = cluster.net.delay("n1", "n2", 2.0)
    waiting = asyncio.create_task(n1.fill("jobs", "given-up", task_type=BOMB))
    timed_out = n1.fill("jobs", "timed-out", task_type=BOMB)
    await asyncio.sleep(0.5)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(timed_out, 0.5)
    await asyncio.sleep(3)  # the forwards were answered meanwhile
    fault.heal()
    assert {"given-up", "timed-out"} <= {t.id for t in cluster.bucket("n2")}
    for task_id in ("given-up", "timed-out"):
        result = await n1.drain("jobs", task_id)
        assert (result.outcome, result.node_id) == (DrainOutcome.DRAINED, "n2")
    assert "given-up" not in cluster.fired() and "timed-out" not in cluster.fired()


async def test_a_task_cancelled_before_its_first_step(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=5)
    answer = n1.fill("jobs", "early", task_type=BOMB)
    task = asyncio.create_task(answer)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "early" in cluster.bucket("n1")  # placed when called: it stands
    n1.buckets["jobs"].fill_nowait(BOMB, "filler")
    n1.buckets["jobs"].fill_nowait(BOMB, "filler-2")
    n1.buckets["jobs"].fill_nowait(BOMB, "filler-3")
    n1.buckets["jobs"].fill_nowait(BOMB, "filler-4")
    pending = n1.fill("jobs", "no-room", task_type=BOMB)  # no peer: refused a pass later
    task = asyncio.create_task(pending)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pending.cancelled()  # the caller gave up waiting


async def test_an_error_nobody_retrieves_is_logged(cluster: Cluster,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    n1 = await cluster.add("n1", max_bucket=5)
    caplog.set_level(logging.ERROR, logger="asyncio")
    n1.fill("nope", "forgotten")
    gc.collect()
    assert any("never retrieved" in r.getMessage() and "UnknownBucketError" in r.getMessage()
               + str(r.exc_info) for r in caplog.records)


async def test_stop_answers_a_fill_nobody_awaited_yet(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    await fill_local(n1, 1)
    cluster.net.hang("n2")
    answer = n1.fill("jobs", "in-flight", task_type=BOMB)
    await asyncio.sleep(0.01)
    await n1.stop()
    assert answer.done()
    with pytest.raises(PlacementUnknownError):
        await answer


async def test_a_replicated_fill_answers_once_its_backups_are_made(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=10, replicas=1)
    n2 = await cluster.add("n2", max_bucket=10, replicas=1)
    await cluster.settle()
    answers = [n1.fill("jobs", f"r{i}", task_type=BOMB) for i in range(3)]
    assert all(f"r{i}" in cluster.bucket("n1") for i in range(3))  # filled when called
    assert not any(a.done() for a in answers)  # the backups are under way
    placed = [await a for a in answers]
    assert {p.node_id for p in placed} == {"n1"}
    assert all((f"r{i}", "n1") in n2._backups.records["jobs"] for i in range(3))
    assert n1.fill_counts["jobs"][0] == 3
    await n2.stop()
    await cluster.settle(3)
    with pytest.raises(NoBackupRoomError):
        await n1.fill("jobs", "no-backup", task_type=BOMB)
    assert "no-backup" not in cluster.bucket("n1")  # taken back: not accepted


async def test_a_balanced_fill_answers_once_the_roomier_peer_took_it(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=10, placement="balanced")
    await cluster.add("n2", max_bucket=10, placement="balanced")
    await cluster.settle()
    for i in range(5):
        cluster.bucket("n1").fill_nowait(BOMB, f"here-{i}")
    answer = n1.fill("jobs", "offered", task_type=BOMB)
    assert not answer.done()  # offered to n2 first
    placed = await answer
    assert (placed.node_id, placed.forwarded) == ("n2", True)


async def test_cancelling_a_running_answer_cancels_its_work() -> None:
    started = asyncio.Event()
    stopped: list[bool] = []

    async def work() -> int:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            stopped.append(True)
            raise
        return 1

    keep: set[asyncio.Task[object]] = set()
    answer = running(work(), keep)
    await started.wait()
    assert len(keep) == 1
    answer.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert stopped == [True] and not keep

    async def boom() -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await running(boom(), keep)
    assert await running(asyncio.sleep(1, result=7), keep) == 7
