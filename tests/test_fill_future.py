"""``TaskBucketGroup.fill_future``: ``fill`` started at once, its answer a
plain ``asyncio.Future`` (which ``asyncio.gather`` takes without making a
task per fill). ``fill`` itself stays a coroutine function.

In-memory cluster, faked loop clock.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging

import pytest

from gobucket_py import (
    DrainOutcome,
    DuplicateTaskError,
    FillResult,
    NoBackupRoomError,
    PlacementUnknownError,
    TaskBucketGroup,
    TaskType,
    UnknownBucketError,
)

from .test_cluster import Cluster, fill_local

pytestmark = pytest.mark.looptime

BOMB = TaskType.TIME_BOMB



def test_fill_stays_a_coroutine_function() -> None:
    """Frameworks tell async callables by this (Starlette's background
    tasks run a plain callable in a worker thread)."""
    assert inspect.iscoroutinefunction(TaskBucketGroup.fill)
    assert asyncio.iscoroutinefunction(TaskBucketGroup.fill_many)
    assert not asyncio.iscoroutinefunction(TaskBucketGroup.fill_future)


async def test_the_task_is_placed_or_queued_when_fill_future_returns(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    here = n1.fill_future("jobs", "here", task_type=BOMB)
    assert type(here) is asyncio.Future and here.done()
    assert "here" in cluster.bucket("n1")
    placed = await here
    assert placed == FillResult("jobs", "here", "n1", False, placed.task)
    away = n1.fill_future("jobs", "away", task_type=BOMB)
    assert type(away) is asyncio.Future and not away.done()  # queued for n2
    placed = await away
    assert (placed.node_id, placed.forwarded) == ("n2", True)
    assert "away" in cluster.bucket("n2")
    assert n1.fill_counts["jobs"][:2] == [1, 1]


async def test_errors_come_from_the_future_never_from_the_call(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=5)
    await n1.fill("jobs", "taken", task_type=BOMB)
    unknown = n1.fill_future("nope", "x")
    bad_id = n1.fill_future("jobs", "")
    twice = n1.fill_future("jobs", "taken", task_type=BOMB)
    bad_time = n1.fill_future("jobs", "t", task_type=BOMB, run_after=-1)
    with pytest.raises(UnknownBucketError):
        await unknown
    with pytest.raises(TypeError, match="task_id"):
        await bad_id
    with pytest.raises(DuplicateTaskError):
        await twice
    with pytest.raises(ValueError, match="run_after"):
        await bad_time
    assert len(cluster.bucket("n1")) == 1  # a refused fill changed nothing


@pytest.mark.parametrize("call", ["fill", "fill_future"])
async def test_bad_arguments_of_an_overflowing_fill_send_nothing(cluster: Cluster,
                                                                 call: str) -> None:
    """The overflow path builds the task's wire form itself (the common
    case inline): every bad argument is still refused before anything is
    queued, with the error ``fill`` gives, and a good fill with data or its
    own times still travels as given."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    await fill_local(n1, 1)

    async def fill(task_id: object, data: object = None, **kwargs: object) -> FillResult:
        method = getattr(n1, call)
        return await method("jobs", task_id, data, **kwargs)  # type: ignore[no-any-return]

    with pytest.raises(TypeError, match="task_id must be a non-empty str"):
        await fill("", task_type=BOMB)
    with pytest.raises(TypeError, match="task_id must be a non-empty str"):
        await fill(7, task_type=BOMB)
    with pytest.raises(TypeError, match="task_type must be a TaskType"):
        await fill("bad-type", task_type="time_bomb")
    with pytest.raises(ValueError, match=r"run_after applies to TaskType\.TIME_BOMB"):
        await fill("bad-time", run_after=5)
    with pytest.raises(TypeError, match="cannot be forwarded"):
        await fill("bad-data", object(), task_type=BOMB)
    await asyncio.sleep(0.1)
    assert len(cluster.bucket("n2")) == 0 and n1.fill_counts["jobs"][1] == 0
    sent = [await fill("now"), await fill("data", {"k": 1}, task_type=BOMB, run_after=5,
                                          life_span=20)]
    assert [(r.node_id, r.forwarded) for r in sent] == [("n2", True)] * 2
    await asyncio.sleep(0.1)
    assert cluster.fired() == ["now"]  # immediate: it ran on n2 at once
    data = cluster.bucket("n2").get("data")
    assert data is not None and data.data == {"k": 1} and data.type is BOMB
    assert 4.5 < data.seconds_to_run <= 5 and 19.5 < data.seconds_left <= 20


async def test_gather_with_return_exceptions_gets_each_answer(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=3)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    ids = ["a", "b", "a", "c", "d", "e", ""]
    out = await asyncio.gather(*(n1.fill_future("jobs", i, task_type=BOMB) for i in ids),
                               return_exceptions=True)
    assert [type(o).__name__ for o in out] == [
        "FillResult", "FillResult", "DuplicateTaskError", "FillResult", "FillResult",
        "FillResult", "TypeError"]
    placed = [o for o in out if isinstance(o, FillResult)]
    assert [p.forwarded for p in placed] == [False, False, False, True, True]
    assert {p.node_id for p in placed[3:]} == {"n2"}


async def test_giving_up_the_answer_does_not_give_up_the_task(cluster: Cluster) -> None:
    """As with a cancelled ``await`` of an overflowing fill: the forward goes
    on, its route is kept, and drain finds the task."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    await fill_local(n1, 1)
    fault = cluster.net.delay("n1", "n2", 2.0)
    cancelled = n1.fill_future("jobs", "given-up", task_type=BOMB)
    timed_out = n1.fill_future("jobs", "timed-out", task_type=BOMB)
    await asyncio.sleep(0.5)
    cancelled.cancel()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(timed_out, 0.5)
    await asyncio.sleep(3)  # the forwards were answered meanwhile
    fault.heal()
    assert {"given-up", "timed-out"} <= {t.id for t in cluster.bucket("n2")}
    for task_id in ("given-up", "timed-out"):
        result = await n1.drain("jobs", task_id)
        assert (result.outcome, result.node_id) == (DrainOutcome.DRAINED, "n2")
    assert "given-up" not in cluster.fired() and "timed-out" not in cluster.fired()


async def test_an_error_nobody_retrieves_is_logged(cluster: Cluster,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    n1 = await cluster.add("n1", max_bucket=5)
    caplog.set_level(logging.ERROR, logger="asyncio")
    n1.fill_future("nope", "forgotten")
    gc.collect()
    assert any("never retrieved" in r.getMessage() for r in caplog.records)
    assert any("UnknownBucketError" in repr(r.exc_info) for r in caplog.records)


async def test_stop_answers_a_future_nobody_awaited_yet(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    await fill_local(n1, 1)
    cluster.net.hang("n2")
    answer = n1.fill_future("jobs", "in-flight", task_type=BOMB)
    await asyncio.sleep(0.01)
    await n1.stop()
    assert answer.done()
    with pytest.raises(PlacementUnknownError):
        await answer


async def test_a_replicated_fill_future_answers_once_its_backups_are_made(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=10, replicas=1)
    n2 = await cluster.add("n2", max_bucket=10, replicas=1)
    await cluster.settle()
    answers = [n1.fill_future("jobs", f"r{i}", task_type=BOMB) for i in range(3)]
    assert not any(a.done() for a in answers)  # a task each, started now
    placed = await asyncio.gather(*answers)
    assert {p.node_id for p in placed} == {"n1"}
    assert all((f"r{i}", "n1") in n2._backups.records["jobs"] for i in range(3))
    assert n1.fill_counts["jobs"][0] == 3 and not n1._fills.running
    await n2.stop()
    await cluster.settle(3)
    with pytest.raises(NoBackupRoomError):
        await n1.fill_future("jobs", "no-backup", task_type=BOMB)
    assert "no-backup" not in cluster.bucket("n1")  # taken back: not accepted


@pytest.mark.parametrize("how", ["fill", "fill_future"])
async def test_balanced_fills_of_one_id_in_one_pass_place_it_once(cluster: Cluster,
                                                                  how: str) -> None:
    """Each placement decides on what the one before it did: the second
    fill of an id finds it live (here, or on the peer it was offered to)."""
    n1 = await cluster.add("n1", max_bucket=10, placement="balanced")
    await cluster.add("n2", max_bucket=10, placement="balanced")
    for i in range(5):
        cluster.bucket("n1").fill_nowait(BOMB, f"n1-{i}")
    for i in range(4):
        cluster.bucket("n2").fill_nowait(BOMB, f"n2-{i}")
    await cluster.settle(3)
    fill = getattr(n1, how)
    out = await asyncio.gather(fill("jobs", "dup", task_type=BOMB),
                               fill("jobs", "dup", task_type=BOMB), return_exceptions=True)
    assert sorted(type(o).__name__ for o in out) == ["DuplicateTaskError", "FillResult"]
    assert [n for n in ("n1", "n2") if "dup" in cluster.bucket(n)] != []
    assert sum("dup" in cluster.bucket(n) for n in ("n1", "n2")) == 1
    await asyncio.sleep(40)  # past run_after
    assert cluster.fired().count("dup") == 1


async def test_even_a_bucket_name_of_the_wrong_type_is_the_future_s_error(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=5, replicas=1)
    bad = n1.fill_future(["jobs"], "x", task_type=BOMB)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await bad
