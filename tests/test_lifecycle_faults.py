"""The local lifecycle under the faults a bucket cannot prevent.

A runner cancelled from outside before its first step, an ``on_execute``
that swallows its CancelledError, a loop that stalls (or whose clock steps)
past a task's whole lifespan, times too large for any clock, and a bad
``close`` argument: each task still gets exactly one outcome, nothing
waits without bound, and bad input changes nothing. Fake loop clock
(looptime): no test sleeps.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from gobucket_py import BucketConfig, Executor, Task, TaskBucket, TaskState, TaskType

from .conftest import Recorder

pytestmark = pytest.mark.looptime

IMM, BOMB = TaskType.IMMEDIATE, TaskType.TIME_BOMB


def watched(executor: Executor, **config: float) -> tuple[TaskBucket, list[TaskState]]:
    """A one-slot-or-more bucket and the list of the outcomes it reports."""
    bucket = TaskBucket(BucketConfig(**{"life_span": 10, "run_after": 2, **config}),  # type: ignore[arg-type]
                        executor, name="b")
    outcomes: list[TaskState] = []
    bucket.on_outcome = lambda t: outcomes.append(t.state)
    return bucket, outcomes


# -- a runner cancelled before its first step ------------------------------------------


async def test_an_immediate_whose_runner_is_cancelled_before_it_starts_ends_once() -> None:
    rec = Recorder({"*": 100})
    b, outcomes = watched(rec, max_bucket=1)
    task = await b.fill(IMM, "o")
    assert task._runner is not None
    task._runner.cancel()  # e.g. a shutdown helper cancelling every task
    await asyncio.wait([task._runner])
    async with asyncio.timeout(1):
        await b.join()  # does not wait for a task nothing would end
    assert outcomes == [TaskState.CANCELLED] and task.state is TaskState.CANCELLED
    assert b.free == 1 and b.stats()["cancelled"] == 1 and rec.hooks("o") == []
    await b.join()
    assert outcomes == [TaskState.CANCELLED]  # once


async def test_a_fired_time_bomb_cancelled_before_its_first_step_ends_once() -> None:
    rec = Recorder()
    b, outcomes = watched(rec)
    await b.fill(BOMB, "t")
    fire = b._fire

    def fire_then_cancel(task: Task) -> None:
        fire(task)
        assert task._runner is not None
        task._runner.cancel()  # in the same loop turn: before its first step

    assert b._wheel is not None
    b._wheel._fire = fire_then_cancel
    await asyncio.sleep(5)
    assert rec.hooks("t") == []
    assert await b.rescue() == 0  # not rescued: it ended, cancelled
    assert outcomes == [TaskState.CANCELLED] and len(b) == 0


async def test_a_join_already_waiting_sees_a_runner_cancelled_before_it_starts() -> None:
    rec = Recorder()
    b, outcomes = watched(rec)
    await b.fill(BOMB, "t")  # due at 1 s
    fire = b._fire
    fired: list[float] = []

    def fire_then_cancel(task: Task) -> None:
        fire(task)
        assert task._runner is not None
        task._runner.cancel()  # in the same loop turn: before its first step
        fired.append(asyncio.get_running_loop().time())

    assert b._wheel is not None
    b._wheel._fire = fire_then_cancel
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(60):
        await b.join()  # waiting before the runner is cancelled: nothing else ends it
    assert fired and loop.time() - fired[0] <= 2  # seen within a second or two, not never
    assert outcomes == [TaskState.CANCELLED] and rec.hooks("t") == [] and len(b) == 0


# -- an on_execute that swallows its CancelledError -------------------------------------


class Stubborn(Executor):
    """Goes on working when cancelled (a retry loop that catches everything),
    until told to give up."""

    def __init__(self) -> None:
        self.swallowed = 0
        self.panics = 0
        self.give_up = asyncio.Event()

    async def on_execute(self, task: Task) -> None:
        while True:
            try:
                await self.give_up.wait()
                return
            except asyncio.CancelledError:
                self.swallowed += 1

    async def on_panic(self, task: Task) -> None:
        self.panics += 1


@pytest.mark.parametrize("how", ["rescue", "close"])
async def test_rescue_and_close_do_not_wait_without_bound_for_a_stubborn_task(
        how: str, caplog: pytest.LogCaptureFixture) -> None:
    stubborn = Stubborn()
    b, outcomes = watched(stubborn, life_span=600, hook_timeout=5)
    task = await b.fill(IMM, "s")
    await asyncio.sleep(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert task._runner is not None
    try:
        with caplog.at_level(logging.ERROR, logger="gobucket_py"):
            async with asyncio.timeout(60):
                await (b.rescue() if how == "rescue" else b.close(grace=1))
        assert loop.time() - started <= 1 + 2 * 5 + 0.1  # grace, then twice hook_timeout
        assert stubborn.swallowed >= 1 and outcomes == []  # still running: no outcome yet
        assert "event=cancel_ignored" in caplog.text and "during=rescue" in caplog.text
    finally:
        stubborn.give_up.set()  # it returns at last: its one outcome comes now
        await asyncio.wait([task._runner])
    assert outcomes == [TaskState.RESCUED] and stubborn.panics == 1 and len(b) == 0


# -- a loop that stalls, or a clock that steps, past a whole lifespan ------------------


async def test_a_time_bomb_due_after_its_deadline_is_exhausted_without_running() -> None:
    rec = Recorder()
    b, outcomes = watched(rec, life_span=3, run_after=2)
    await b.fill(BOMB, "t")
    loop = asyncio.get_running_loop()
    real = loop.time
    loop.time = lambda: real() + 100.0  # type: ignore[method-assign]  # the clock steps
    try:
        async with asyncio.timeout(5):
            await b.join()
    finally:
        del loop.time
    assert outcomes == [TaskState.EXHAUSTED]
    assert rec.hooks("t") == ["exhausted"]  # never on_execute


async def test_immediates_queued_past_their_deadline_are_exhausted_without_running() -> None:
    rec = Recorder()
    b, outcomes = watched(rec, life_span=1, run_after=0, max_bucket=1000)
    for i in range(600):  # more than a slice: the rest wait for the next loop passes
        b.fill_nowait(IMM, f"i{i}")
    loop = asyncio.get_running_loop()
    real = loop.time
    loop.time = lambda: real() + 50.0  # type: ignore[method-assign]  # a 50 s stall
    try:
        await b.join()
    finally:
        del loop.time
    assert len(outcomes) == 600
    started = [i for i in range(600) if "execute" in rec.hooks(f"i{i}")]
    exhausted = [i for i in range(600) if rec.hooks(f"i{i}") == ["exhausted"]]
    assert started and exhausted and len(started) + len(exhausted) == 600
    assert max(started) < min(exhausted)  # those given a runner before the stall ran


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["life_span", "run_after"])
async def test_times_beyond_any_clock_are_refused_and_change_nothing(field: str) -> None:
    rec = Recorder()
    b, _ = watched(rec)
    times = {"life_span": 20.0, "run_after": 1.0, field: 1e307}
    with pytest.raises(ValueError, match=field):
        await b.fill(BOMB, "t", **times)  # type: ignore[arg-type]
    assert len(b) == 0 and b.stats()["filled"] == 0
    with pytest.raises(ValueError, match=field):
        BucketConfig(**{"life_span": 20.0, "run_after": 1.0, field: 1e307})
    await b.fill(BOMB, "t")
    with pytest.raises(ValueError, match="run_after"):
        await b.reschedule("t", 1e307)
    await asyncio.sleep(3)
    assert rec.hooks("t")[0] == "execute"  # still due at its old time


@pytest.mark.parametrize("grace", [None, "5", float("nan"), -1.0])
async def test_close_with_a_bad_grace_is_refused_and_changes_nothing(grace: object) -> None:
    rec = Recorder()
    b, _ = watched(rec)
    with pytest.raises(ValueError, match="grace"):
        await b.close(grace)  # type: ignore[arg-type]
    assert not b.closed
    await b.fill(IMM, "after")  # still accepting
    await b.close()
    assert b.closed
