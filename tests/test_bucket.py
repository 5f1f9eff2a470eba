"""Lifecycle of the local TaskBucket. Time is faked with looptime: no sleeps."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gobucket_py import (
    BucketClosedError,
    BucketConfig,
    BucketFullError,
    DrainOutcome,
    DuplicateTaskError,
    Executor,
    Task,
    TaskBucket,
    TaskState,
    TaskType,
)
from gobucket_py.timers import TimerWheel

from .conftest import Recorder

pytestmark = pytest.mark.looptime

IMM, BOMB = TaskType.IMMEDIATE, TaskType.TIME_BOMB


def make(rec: Recorder, **cfg: float) -> TaskBucket:
    params: dict[str, float] = {"life_span": 10, "run_after": 2, "max_bucket": 100}
    params.update(cfg)
    return TaskBucket(BucketConfig(**params), rec, name="b")  # type: ignore[arg-type]


async def settle(bucket: TaskBucket, until: float = 1000) -> None:
    """Advance (fake) loop time until the bucket is empty."""
    async with asyncio.timeout(until):
        await bucket.join()


async def test_immediate_runs_then_finishes_and_frees_slot() -> None:
    rec = Recorder()
    b = make(rec)
    task = await b.fill(IMM, "a", {"x": 1})
    assert task.id == "a" and task.data == {"x": 1} and task.bucket == "b"
    assert task.type is IMM and task.state is TaskState.PENDING and len(b) == 1
    await settle(b)
    assert rec.hooks("a") == ["execute", "finish"]
    assert task.state is TaskState.FINISHED and len(b) == 0 and b.free == 100
    assert b.stats()["finished"] == 1


async def test_time_bomb_fires_after_run_after() -> None:
    rec = Recorder()
    b = make(rec)
    t0 = asyncio.get_running_loop().time()
    await b.fill(BOMB, "bomb")
    await settle(b)
    assert rec.hooks("bomb") == ["execute", "finish"]
    assert rec.at("execute", "bomb") - t0 == pytest.approx(2, abs=0.002)


async def test_execute_error_goes_to_on_execute_error_not_finish() -> None:
    boom = ValueError("boom")
    rec = Recorder({"e": boom})
    b = make(rec)
    await b.fill(IMM, "e")
    await settle(b)
    assert rec.hooks("e") == ["execute", "error"]
    assert rec.errors == [boom]
    assert b.stats()["failed"] == 1 and b.stats()["finished"] == 0


async def test_lifespan_exhaustion_cancels_execute_then_exhausted_hook() -> None:
    rec = Recorder({"slow": 100})
    b = make(rec, life_span=6, run_after=5)
    t0 = asyncio.get_running_loop().time()
    task = await b.fill(BOMB, "slow")
    await settle(b)
    # The lifespan counts from fill and includes the run_after wait: 6 s, not 5 + 6.
    assert rec.hooks("slow") == ["execute", "exhausted"]
    assert rec.at("exhausted", "slow") - t0 == pytest.approx(6, abs=0.002)
    assert task.state is TaskState.EXHAUSTED and b.stats()["exhausted"] == 1


class _Edges(Recorder):
    """on_execute variants at the edge of the lifespan deadline."""

    async def on_execute(self, task: Task) -> None:
        self._rec("execute", task)
        if task.id == "instant":
            return  # ends in its first step: no deadline timer is ever armed
        if task.id == "own-timeout":  # its own TimeoutError, before the deadline
            async with asyncio.timeout(1):
                await asyncio.sleep(5)
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            if task.id == "swallows":
                return  # it keeps the deadline's cancel for itself and returns
            if task.id == "raises":
                raise ValueError("cleanup failed") from None
            if task.id == "cleans-up":
                await asyncio.sleep(1)  # a slow cleanup, cancelled from outside
            raise


@pytest.mark.parametrize("task_id, hooks, state", [
    ("instant", ["execute", "finish"], TaskState.FINISHED),
    ("own-timeout", ["execute", "error"], TaskState.FAILED),
    ("swallows", ["execute", "finish"], TaskState.FINISHED),
    ("raises", ["execute", "exhausted"], TaskState.EXHAUSTED),
    ("cancelled", ["execute", "exhausted"], TaskState.EXHAUSTED),
])
async def test_the_lifespan_deadline_at_its_edges(task_id: str, hooks: list[str],
                                                   state: TaskState) -> None:
    """As asyncio.timeout would: a task ending in its first step is never
    bounded (no timer), its own TimeoutError is a failure, a deadline cancel
    it swallows leaves it FINISHED, one it turns into another error leaves
    it EXHAUSTED; the runner's cancel count is left balanced."""
    rec = _Edges()
    b = make(rec, life_span=6, run_after=1)
    task = await b.fill(BOMB, task_id)
    await asyncio.sleep(1.5)
    assert b._deadlines is not None
    assert len(b._deadlines) == (0 if task_id == "instant" else 1)
    runner = task._runner
    await settle(b)
    assert rec.hooks(task_id) == hooks and task.state is state
    assert len(b._deadlines) == 0
    assert runner is not None and runner.done() and not runner.cancelled()
    assert runner.cancelling() == 0


async def test_a_deadline_and_a_cancel_from_outside_end_it_cancelled() -> None:
    """The runner cancelled from outside while on_execute cleans up after its
    deadline's cancel: the outside cancel is not swallowed (the task ends
    CANCELLED, no hook, the runner cancelled)."""
    rec = _Edges()
    b = make(rec, life_span=6, run_after=1)
    task = await b.fill(BOMB, "cleans-up")
    await asyncio.sleep(6.5)  # past the deadline, in the cleanup
    runner = task._runner
    assert runner is not None and task.state is TaskState.RUNNING
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert task.state is TaskState.CANCELLED and b.stats()["cancelled"] == 1
    assert rec.hooks("cleans-up") == ["execute"] and len(b) == 0


async def test_slot_is_held_until_terminal_hook_returns() -> None:
    rec = Recorder(hook_sleep=3)
    b = make(rec, max_bucket=1)
    await b.fill(IMM, "a")
    await asyncio.sleep(1)
    assert rec.hooks("a") == ["execute", "finish"]
    assert len(b) == 1
    with pytest.raises(BucketFullError):
        await b.fill(IMM, "b")
    await asyncio.sleep(3)
    assert len(b) == 0
    await b.fill(IMM, "b")


async def test_drain_pending_time_bomb_never_runs_and_frees_slot() -> None:
    rec = Recorder()
    b = make(rec, max_bucket=1)
    await b.fill(BOMB, "x")
    res = await b.drain("x")
    assert res.outcome is DrainOutcome.DRAINED and res.task_id == "x" and res
    assert len(b) == 0
    await b.fill(BOMB, "y")  # the slot was freed at once
    await asyncio.sleep(5)
    assert rec.hooks("x") == []
    assert b.stats()["drained"] == 1


async def test_drain_immediate_before_it_starts_is_drained() -> None:
    rec = Recorder()
    b = make(rec)
    await b.fill(IMM, "now")
    assert (await b.drain("now")).outcome is DrainOutcome.DRAINED
    await asyncio.sleep(1)
    assert rec.hooks("now") == []


async def test_drain_running_task_cancels_it_without_hook() -> None:
    cancelled = asyncio.Event()

    class Slow(Recorder):
        async def on_execute(self, task: Task) -> None:
            self._rec("execute", task)
            try:
                await asyncio.sleep(50)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    rec = Slow()
    b = make(rec)
    await b.fill(IMM, "r")
    await asyncio.sleep(1)
    res = await b.drain("r")
    assert res.outcome is DrainOutcome.CANCELLED
    assert len(b) == 0
    await asyncio.sleep(1)
    assert cancelled.is_set()
    assert rec.hooks("r") == ["execute"]
    assert b.stats()["cancelled"] == 1


async def test_drain_unknown_is_not_found_and_finished_answers_finished() -> None:
    rec = Recorder()
    b = make(rec)
    assert (await b.drain("nope")).outcome is DrainOutcome.NOT_FOUND
    assert not await b.drain("nope")
    await b.fill(IMM, "done")
    await settle(b)
    res = await b.drain("done")  # outcome records: it says how it ended
    assert res.outcome is DrainOutcome.FINISHED and not res


async def test_drain_task_in_terminal_hook_answers_its_outcome_and_keeps_it() -> None:
    rec = Recorder(hook_sleep=5)
    b = make(rec)
    await b.fill(IMM, "h")
    await asyncio.sleep(1)
    res = await b.drain("h")
    assert res.outcome is DrainOutcome.FINISHED and not res
    assert len(b) == 1  # still in on_finish: the drain changed nothing
    await settle(b)
    assert rec.hooks("h") == ["execute", "finish"]
    assert b.stats()["finished"] == 1 and b.stats()["cancelled"] == 0


@pytest.mark.parametrize("offset", [-0.002, -0.001, -0.0001, 0.0, 0.0001, 0.001, 0.002])
async def test_drain_racing_the_firing_time_has_one_winner(offset: float) -> None:
    rec = Recorder({"*": 1})
    b = make(rec)
    loop = asyncio.get_running_loop()
    task = await b.fill(BOMB, "race")
    fire_at = loop.time() + 2
    outcome: list[DrainOutcome] = []

    def drain_now() -> None:
        outcome.append(b.drain_nowait("race"))

    loop.call_at(fire_at + offset, drain_now)
    await asyncio.sleep(5)
    assert len(outcome) == 1
    if outcome[0] is DrainOutcome.DRAINED:
        assert rec.hooks("race") == [], "a DRAINED task must never run"
        assert task.state is TaskState.DRAINED
    else:
        assert outcome[0] is DrainOutcome.CANCELLED
        assert rec.hooks("race") == ["execute"]
    if offset < 0:
        assert outcome[0] is DrainOutcome.DRAINED


async def test_concurrent_fills_admit_exactly_max_bucket() -> None:
    rec = Recorder({"*": 5})
    b = make(rec, max_bucket=100)
    results = await asyncio.gather(
        *(b.fill(IMM, f"t{i}") for i in range(1000)), return_exceptions=True
    )
    accepted = [r for r in results if isinstance(r, Task)]
    refused = [r for r in results if isinstance(r, BucketFullError)]
    assert len(accepted) == 100 and len(refused) == 900
    assert len(b) == 100 and b.stats()["rejected_full"] == 900
    await settle(b)
    assert sum(1 for h, _, _ in rec.calls if h == "execute") == 100


async def test_duplicate_live_id_is_refused_and_changes_nothing() -> None:
    rec = Recorder()
    b = make(rec)
    first = await b.fill(BOMB, "dup", "first")
    with pytest.raises(DuplicateTaskError, match="dup"):
        await b.fill(IMM, "dup", "second")
    assert b.get("dup") is first and len(b) == 1
    results = await asyncio.gather(*(b.fill(IMM, "same") for _ in range(50)),
                                   return_exceptions=True)
    assert sum(isinstance(r, Task) for r in results) == 1
    await settle(b)
    await b.fill(IMM, "dup")  # a finished id may be used again


async def test_per_task_overrides() -> None:
    rec = Recorder({"long": 15})
    b = make(rec, life_span=10, run_after=2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await b.fill(BOMB, "early", run_after=0.5)
    await b.fill(BOMB, "long", run_after=1, life_span=20)
    await b.fill(IMM, "short", life_span=1)
    with pytest.raises(ValueError, match="run_after"):
        await b.fill(BOMB, "bad", run_after=30)
    with pytest.raises(ValueError, match="run_after"):
        await b.fill(IMM, "bad", run_after=1)
    with pytest.raises(ValueError, match="life_span"):
        await b.fill(BOMB, "bad", life_span=-1)
    assert b.get("bad") is None
    await settle(b)
    assert rec.at("execute", "early") - t0 == pytest.approx(0.5, abs=0.002)
    # 20 s lifespan lets the 15 s job finish; the default 10 s would have exhausted it.
    assert rec.hooks("long") == ["execute", "finish"]
    assert rec.hooks("short") == ["execute", "finish"]


async def test_reschedule_moves_firing_time_and_lifespan() -> None:
    rec = Recorder({"*": 7})
    b = make(rec, life_span=10, run_after=5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task = await b.fill(BOMB, "w")
    await asyncio.sleep(4)
    assert await b.reschedule("w", 5)  # watchdog: fire 5 s from now, t=9
    assert task.seconds_to_run == pytest.approx(5, abs=0.01)
    await asyncio.sleep(4.5)
    assert rec.hooks("w") == []
    await settle(b)
    assert rec.at("execute", "w") - t0 == pytest.approx(9, abs=0.002)
    # Lifespan moved with it (deadline 14, not 10): the 7 s job... exhausts at 14.
    assert rec.hooks("w") == ["execute", "exhausted"]
    assert rec.at("exhausted", "w") - t0 == pytest.approx(14, abs=0.002)


async def test_reschedule_earlier_and_refusals() -> None:
    rec = Recorder({"*": 5})
    b = make(rec, life_span=60, run_after=30)
    t0 = asyncio.get_running_loop().time()
    await b.fill(BOMB, "e")
    assert await b.reschedule("e", 1)
    assert not await b.reschedule("nope", 1)
    with pytest.raises(ValueError, match="run_after"):
        await b.reschedule("e", -1)
    await b.fill(IMM, "imm")
    assert not await b.reschedule("imm", 1)
    await asyncio.sleep(2)
    assert rec.at("execute", "e") - t0 == pytest.approx(1, abs=0.002)
    assert not await b.reschedule("e", 10)  # running now


async def test_rescue_hands_every_live_task_to_on_panic() -> None:
    rec = Recorder({"run": 100})
    b = make(rec, life_span=200, run_after=50)
    await b.fill(BOMB, "pending")
    await b.fill(IMM, "run")
    await asyncio.sleep(0)  # "run" is now inside on_execute
    await b.fill(IMM, "not-started")  # its runner has not started yet
    rescued = await b.rescue()
    assert rescued == 3
    assert rec.hooks("pending") == ["panic"]
    assert rec.hooks("run") == ["execute", "panic"]
    assert rec.hooks("not-started") == ["panic"]
    assert len(b) == 0 and b.stats()["rescued"] == 3
    await asyncio.sleep(100)
    assert rec.hooks("pending") == ["panic"]  # never fired afterwards


async def test_rescue_does_not_deadlock_with_tasks_inside_hooks() -> None:
    rec = Recorder({"slowpanic": 100}, hook_sleep=20)
    b = make(rec, life_span=200, run_after=50, hook_timeout=5)
    await b.fill(IMM, "in-finish")
    await b.fill(IMM, "slowpanic")
    await asyncio.sleep(1)  # in-finish sits in on_finish for 20 s
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    rescued = await b.rescue()
    # on_panic of slowpanic sleeps 20 s but is bounded by hook_timeout=5.
    assert loop.time() - t0 == pytest.approx(5, abs=0.01)
    assert rescued == 1
    assert rec.hooks("in-finish") == ["execute", "finish"]
    assert rec.hooks("slowpanic") == ["execute", "panic"]
    assert b.stats()["hook_timeouts"] == 2  # on_finish (20 s) and on_panic (20 s), both cut at 5


async def test_close_with_grace_then_rescue() -> None:
    rec = Recorder({"quick": 1, "slow": 100})
    b = make(rec, life_span=200, run_after=50)
    await b.fill(IMM, "quick")
    await b.fill(IMM, "slow")
    await b.fill(BOMB, "pending")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await b.close(grace=3)
    assert loop.time() - t0 == pytest.approx(3, abs=0.01)
    assert rec.hooks("quick") == ["execute", "finish"]
    assert rec.hooks("slow") == ["execute", "panic"]
    assert rec.hooks("pending") == ["panic"]
    assert len(b) == 0 and b.free == 0 and b.closed
    with pytest.raises(BucketClosedError):
        await b.fill(IMM, "late")
    await b.close()  # idempotent


async def test_async_with_closes() -> None:
    rec = Recorder()
    async with make(rec) as b:
        await b.fill(BOMB, "p")
    assert rec.hooks("p") == ["panic"]


async def test_hook_errors_are_logged_counted_and_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder(hook_raises=True)
    b = make(rec)
    with caplog.at_level(logging.ERROR, logger="gobucket_py"):
        await b.fill(IMM, "a")
        await b.fill(IMM, "b")
        await settle(b)
    assert b.stats()["hook_errors"] == 2
    assert "task_id=a" in caplog.text and "hook_error" in caplog.text
    await b.fill(IMM, "c")  # the bucket still works
    await settle(b)
    assert rec.hooks("c") == ["execute", "finish"]


async def test_hook_timeout_is_counted_and_frees_slot() -> None:
    rec = Recorder(hook_sleep=100)
    b = make(rec, hook_timeout=2)
    await b.fill(IMM, "a")
    await asyncio.sleep(3)
    assert len(b) == 0 and b.stats()["hook_timeouts"] == 1


async def test_plain_async_function_as_executor() -> None:
    seen: list[str] = []

    async def handler(task: Task) -> None:
        seen.append(task.id)

    b = TaskBucket(BucketConfig(life_span=5), handler)
    await b.fill(IMM, "f")
    await settle(b)
    assert seen == ["f"]


def test_bad_executors_are_refused() -> None:
    def sync_handler(task: Task) -> None:
        pass

    with pytest.raises(TypeError, match="async def"):
        TaskBucket(BucketConfig(life_span=5), sync_handler)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TaskBucket(BucketConfig(life_span=5), 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        TaskBucket(BucketConfig(life_span=5), Recorder(), name="")


async def test_bad_fill_arguments_change_nothing() -> None:
    b = make(Recorder())
    with pytest.raises(TypeError, match="task_id"):
        await b.fill(IMM, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="task_type"):
        await b.fill("soon", "x")  # type: ignore[arg-type]
    assert len(b) == 0 and b.stats()["filled"] == 0


async def test_task_times_are_consistent() -> None:
    import time

    b = make(Recorder(), life_span=10, run_after=4)
    before = time.time()
    task = await b.fill(BOMB, "t")
    assert before <= task.filled_at <= time.time()
    assert task.run_at - task.filled_at == pytest.approx(4, abs=0.05)
    assert task.deadline - task.filled_at == pytest.approx(10, abs=0.05)
    assert task.seconds_left == pytest.approx(10, abs=0.01)


async def test_churn_does_not_grow_the_wheel() -> None:
    b = make(Recorder(), life_span=3600, run_after=1800, max_bucket=10_000)
    for round_ in range(10):
        for i in range(5000):
            await b.fill(BOMB, f"r{round_}-{i}")
        for i in range(5000):
            await b.drain(f"r{round_}-{i}")
    wheel = b._wheel
    assert wheel is not None and len(wheel) == 0
    assert wheel._entries <= 2 * wheel.COMPACT_MIN + 5000


async def test_many_time_bombs_fire_in_order_of_run_at() -> None:
    rec = Recorder()
    b = make(rec, life_span=100, run_after=1, max_bucket=5000)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(2000):
        await b.fill(BOMB, f"t{i}", run_after=(i * 7919 % 2000) / 100)
    await settle(b)
    fired = [(ts, tid) for h, tid, ts in rec.calls if h == "execute"]
    assert len(fired) == 2000
    for ts, tid in fired:
        i = int(tid[1:])
        assert ts - t0 == pytest.approx((i * 7919 % 2000) / 100, abs=0.002)


async def test_join_waits_for_every_outcome_including_hooks() -> None:
    rec = Recorder(work={"slow": 3}, hook_sleep=1)
    b = make(rec)
    await b.join()  # empty: returns at once
    t0 = asyncio.get_running_loop().time()
    await b.fill(IMM, "slow")
    await b.fill(BOMB, "bomb", run_after=5)
    waiters = [asyncio.ensure_future(b.join()) for _ in range(2)]
    await asyncio.wait(waiters)
    # bomb fires at 5 and its on_finish hook sleeps 1 s: join returns at 6.
    assert asyncio.get_running_loop().time() - t0 == pytest.approx(6, abs=0.01)
    assert len(b) == 0 and sorted(rec.hooks("slow")) == ["execute", "finish"]


# -- a CancelledError nobody asked for (task 2) --------------------------------


async def test_cancelled_error_escaping_on_execute_is_a_failure() -> None:
    """on_execute awaited a future another component cancelled: nobody cancelled
    the runner, so it is a failure, not a task stuck in RUNNING forever."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    class Awaits(Recorder):
        async def on_execute(self, task: Task) -> None:
            self._rec("execute", task)
            await fut

    rec = Awaits()
    b = make(rec, max_bucket=1)
    outcomes: list[TaskState] = []
    b.on_outcome = lambda t: outcomes.append(t.state)
    task = await b.fill(IMM, "c")
    await asyncio.sleep(1)
    fut.cancel()  # someone else's future
    await settle(b)  # join() returns
    assert task.state is TaskState.FAILED and outcomes == [TaskState.FAILED]
    assert rec.hooks("c") == ["execute", "error"]
    assert len(rec.errors) == 1 and isinstance(rec.errors[0], asyncio.CancelledError)
    assert len(b) == 0 and b.free == 1 and b.stats()["failed"] == 1
    assert (await b.drain("c")).outcome is DrainOutcome.FAILED
    await b.fill(IMM, "next")  # the slot was freed


async def test_runner_cancelled_from_outside_ends_once_as_cancelled() -> None:
    rec = Recorder({"o": 100})
    b = make(rec, max_bucket=1)
    outcomes: list[TaskState] = []
    b.on_outcome = lambda t: outcomes.append(t.state)
    task = await b.fill(IMM, "o")
    await asyncio.sleep(1)
    runner = task._runner
    assert runner is not None and task.state is TaskState.RUNNING
    runner.cancel()  # not drain/rescue: e.g. loop shutdown
    await asyncio.wait([runner])
    assert runner.cancelled()  # the cancel was not swallowed
    assert task.state is TaskState.CANCELLED and outcomes == [TaskState.CANCELLED]
    assert len(b) == 0 and b.free == 1 and b.stats()["cancelled"] == 1
    await settle(b)
    assert rec.hooks("o") == ["execute"]
    assert await b.rescue() == 0  # nothing left to rescue
    assert outcomes == [TaskState.CANCELLED]
    assert (await b.drain("o")).outcome is DrainOutcome.CANCELLED


def _in_fresh_loop(main: object) -> BaseException | None:
    """Run ``asyncio.run(main())`` in a thread of its own (its own loop, so
    KeyboardInterrupt/SystemExit escaping the loop cannot reach pytest's)."""
    import threading

    escaped: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(main())  # type: ignore[operator]
        except BaseException as exc:
            escaped.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return escaped[0] if escaped else None


def test_loop_shutdown_ends_running_task_once() -> None:
    rec = Recorder({"*": 100})
    b = make(rec)
    outcomes: list[TaskState] = []

    async def main() -> None:
        b.on_outcome = lambda t: outcomes.append(t.state)
        await b.fill(IMM, "run")
        for _ in range(3):
            await asyncio.sleep(0)  # "run" is inside on_execute; return without close()

    assert _in_fresh_loop(main) is None
    assert outcomes == [TaskState.CANCELLED]
    assert len(b) == 0 and b.stats()["cancelled"] == 1


def test_system_exit_from_on_execute_ends_the_task_then_escapes() -> None:
    rec = Recorder({"x": SystemExit(3)})
    b = make(rec)

    async def main() -> None:
        await b.fill(IMM, "x")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    escaped = _in_fresh_loop(main)
    assert isinstance(escaped, SystemExit)
    assert len(b) == 0 and b.stats()["failed"] == 1
    assert b.ended("x") is TaskState.FAILED
    assert rec.hooks("x") == ["execute"]  # no hook once the process is exiting


async def test_custom_base_exception_from_on_execute_is_a_failure() -> None:
    class Stop(BaseException):
        pass

    rec = Recorder({"s": Stop()})
    b = make(rec)
    await b.fill(IMM, "s")
    await settle(b)
    assert rec.hooks("s") == ["execute", "error"] and isinstance(rec.errors[0], Stop)
    assert b.stats()["failed"] == 1


# -- reschedule churn (task 3) ---------------------------------------------------


async def test_many_reschedules_keep_the_wheel_bounded_and_fire_once() -> None:
    rec = Recorder()
    b = make(rec, life_span=10, run_after=2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await b.fill(BOMB, "w")
    wheel = b._wheel
    assert wheel is not None
    most = 0
    n = 300_000
    for i in range(n):
        assert await b.reschedule("w", 1 + i * 0.001)  # a new tick every time
        most = max(most, wheel._entries)
    # Before the fix every reschedule left a stale entry: 300,001 entries.
    assert most <= wheel.COMPACT_MIN + 2
    assert sum(1 for _ in wheel.slots()) <= wheel.COMPACT_MIN + 2 and len(wheel) == 1
    last = 1 + (n - 1) * 0.001
    await settle(b)
    assert rec.hooks("w") == ["execute", "finish"]
    assert rec.at("execute", "w") - t0 == pytest.approx(last, abs=0.002)


# -- hooks raising BaseException in rescue/close (task 4) -------------------------


class Boom(BaseException):
    """A custom BaseException subclass (not an Exception)."""


class PanicRaises(Recorder):
    """on_panic raises ``raises[task_id]`` (after recording the call)."""

    def __init__(self, raises: dict[str, BaseException], **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.raises = raises

    async def on_panic(self, task: Task) -> None:
        self._rec("panic", task)
        await asyncio.sleep(1)
        exc = self.raises.get(task.id)
        if exc is not None:
            raise exc


async def _fill_mix(b: TaskBucket) -> list[str]:
    """Pending time-bombs p0..p3 and running immediates r0..r3."""
    for i in range(4):
        await b.fill(BOMB, f"p{i}")
        await b.fill(IMM, f"r{i}")
    await asyncio.sleep(0)  # r* are inside on_execute
    return [f"{k}{i}" for k in "pr" for i in range(4)]


async def test_on_panic_raising_base_exceptions_does_not_stop_rescue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = PanicRaises({"p0": asyncio.CancelledError(), "r0": asyncio.CancelledError(),
                       "p1": Boom(), "r1": Boom(), "p2": ValueError()},
                      work={"*": 100})
    b = make(rec, life_span=200, run_after=50)
    ids = await _fill_mix(b)
    with caplog.at_level(logging.ERROR, logger="gobucket_py"):
        assert await b.rescue() == 8
    assert all(rec.hooks(i)[-1] == "panic" for i in ids)
    assert len(b) == 0 and b.stats()["rescued"] == 8 and b.stats()["hook_errors"] == 5
    assert caplog.text.count("event=hook_error") == 5
    assert all(b.ended(i) is TaskState.RESCUED for i in ids)


async def test_close_completes_when_on_panic_raises_base_exceptions() -> None:
    rec = PanicRaises({"p0": asyncio.CancelledError(), "r0": Boom(), "r1": Boom()},
                      work={"*": 100})
    b = make(rec, life_span=200, run_after=50)
    ids = await _fill_mix(b)
    await b.close(grace=1)
    assert b._closed and len(b) == 0 and b.stats()["rescued"] == 8
    assert b.stats()["hook_errors"] == 3
    assert all(rec.hooks(i)[-1] == "panic" for i in ids)


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("victim", ["p1", "r1"])  # on_panic called directly / in the runner
async def test_fatal_from_on_panic_is_reraised_after_every_rescue(
    fatal: type[BaseException], victim: str
) -> None:
    rec = PanicRaises({victim: fatal()}, work={"*": 100})
    b = make(rec, life_span=200, run_after=50)
    ids = await _fill_mix(b)
    with pytest.raises(fatal):
        await b.rescue()
    assert all(rec.hooks(i)[-1] == "panic" for i in ids)
    assert len(b) == 0 and b.stats()["rescued"] == 8 and b.stats()["hook_errors"] == 1
    await b.close()  # nothing held back any more
    assert b._closed


async def test_fatal_from_on_panic_lets_close_finish_then_is_reraised() -> None:
    rec = PanicRaises({"r2": SystemExit(1)}, work={"*": 100})
    b = make(rec, life_span=200, run_after=50)
    ids = await _fill_mix(b)
    with pytest.raises(SystemExit):
        await b.close(grace=0)
    assert b._closed and len(b) == 0 and b.stats()["rescued"] == 8
    assert all(rec.hooks(i)[-1] == "panic" for i in ids)


@pytest.mark.parametrize("method", ["rescue", "close"])
async def test_outside_cancel_of_rescue_or_close_propagates(method: str) -> None:
    rec = PanicRaises({}, work={"*": 100}, hook_sleep=0)
    b = make(rec, life_span=200, run_after=50)
    await _fill_mix(b)
    call = b.rescue() if method == "rescue" else b.close(grace=0)
    caller = asyncio.ensure_future(call)
    await asyncio.sleep(0.5)  # every on_panic is sleeping
    caller.cancel()
    await asyncio.wait([caller])
    assert caller.cancelled()  # the cancel was not swallowed as a hook error
    await settle(b)
    assert len(b) == 0 and b.stats()["rescued"] == 8 and b.stats()["hook_errors"] == 0


async def test_a_burst_due_at_once_starts_in_slices() -> None:
    """2,000 time-bombs due at the same instant: the first on_execute runs
    once one slice of runners exists, not after all 2,000 were created; every
    task runs once, in fill order."""
    started: list[str] = []
    runners_at_first: list[int] = []

    async def run(task: Task) -> None:
        if not started:
            runners_at_first.append(sum(t._runner is not None for t in b))
        started.append(task.id)

    b = TaskBucket(BucketConfig(life_span=60, run_after=5, max_bucket=5000), run)
    for i in range(2000):
        await b.fill(BOMB, f"t{i:04d}")  # same loop time: all due at once
    await asyncio.sleep(6)
    await b.join()
    assert started == [f"t{i:04d}" for i in range(2000)]
    slice_ = TimerWheel.SLICE
    assert runners_at_first == [slice_], runners_at_first


async def test_a_mass_drain_keeps_the_wheel_true_for_the_rest() -> None:
    """drain_many_nowait tells the wheel of its stale entries in one go (one
    compaction at the end, with an id on the general path among them): the
    drained never run, every other task fires once at its time, and a join()
    already waiting returns when the last one goes."""
    rec = Recorder()
    n = 3 * TimerWheel.COMPACT_MIN
    b = make(rec, life_span=60, run_after=10, max_bucket=n + 10)
    for i in range(n):
        await b.fill(BOMB, f"t{i}", run_after=5 + i % 7)
    gone = [f"t{i}" for i in range(n) if i % 4]  # three in four
    mixed = [*gone[:len(gone) // 2], "nope", *gone[len(gone) // 2:]]  # a general-path id
    got = b.drain_many_nowait(mixed)
    assert got.count(DrainOutcome.DRAINED) == len(gone) and got.count(DrainOutcome.NOT_FOUND) == 1
    assert b._wheel is not None and b._wheel._live == n - len(gone)
    assert b._wheel._entries == n - len(gone)  # compacted
    await asyncio.sleep(12)
    ran = [t for h, t, _ in rec.calls if h == "execute"]
    assert sorted(ran) == sorted(f"t{i}" for i in range(0, n, 4))  # each once
    assert b.stats()["drained"] == len(gone)
    for i in range(n):  # refill and drain all while join() waits
        if f"t{i}" not in b:
            await b.fill(BOMB, f"u{i}", run_after=30)
    waiting = asyncio.ensure_future(b.join())
    await asyncio.sleep(0)
    assert not waiting.done()
    b.drain_many_nowait([f"u{i}" for i in range(n)])
    async with asyncio.timeout(1):
        await waiting


@pytest.mark.parametrize("watched", [False, True])
async def test_drain_many_nowait_answers_as_drain_nowait_would(watched: bool) -> None:
    """Pending time-bombs, a running immediate task, one that finished, one
    already drained, an unknown id and a duplicate in one batch: the same
    outcomes, counters, records and hooks as one drain_nowait each; the
    drained never run, and join() returns once the bucket is empty."""
    rec = Recorder(work={"busy": 100})
    b = make(rec, life_span=60, run_after=10, max_bucket=100)
    outcomes: list[TaskState] = []
    if watched:  # a user's on_outcome: every task takes the general path
        b.on_outcome = lambda t: outcomes.append(t.state)
    for i in range(5):
        await b.fill(BOMB, f"p{i}")
    await b.fill(IMM, "done")
    await b.fill(IMM, "busy")
    await b.fill(BOMB, "earlier")
    await asyncio.sleep(1)  # "done" finished, "busy" runs
    assert b.drain_nowait("earlier") is DrainOutcome.DRAINED
    ids = ["p0", "busy", "done", "earlier", "nope", "p1", "p1", "p2", "p3", "p4"]
    got = b.drain_many_nowait(ids)
    D = DrainOutcome
    assert got == [D.DRAINED, D.CANCELLED, D.FINISHED, D.DRAINED, D.NOT_FOUND, D.DRAINED,
                   D.DRAINED, D.DRAINED, D.DRAINED, D.DRAINED]
    stats = b.stats()
    assert (stats["drained"], stats["cancelled"], stats["live"], stats["pending"]) == (6, 1, 0, 0)
    assert all(b.ended(f"p{i}") is TaskState.DRAINED for i in range(5))
    async with asyncio.timeout(1):
        await b.join()  # the last one emptied the bucket
    await asyncio.sleep(20)
    assert [t for h, t, _ in rec.calls if h == "execute"] == ["done", "busy"]
    if watched:
        assert outcomes.count(TaskState.DRAINED) == 6 and TaskState.CANCELLED in outcomes


async def test_a_burst_of_immediates_gets_runners_in_slices_in_fill_order() -> None:
    """2,000 immediate fills in one loop pass: the first SLICE get runners at
    fill, the rest wait (no asyncio task yet) and get theirs SLICE a pass;
    every task runs once, in fill order. A waiting one that is drained never
    runs; one rescued gets on_panic only."""
    started: list[str] = []
    panicked: list[str] = []

    class Run(Executor):
        async def on_execute(self, task: Task) -> None:
            started.append(task.id)

        async def on_panic(self, task: Task) -> None:
            panicked.append(task.id)

    b = TaskBucket(BucketConfig(life_span=60, max_bucket=5000), Run())
    tasks = [b.fill_nowait(IMM, f"t{i:04d}") for i in range(2000)]
    slice_ = TimerWheel.SLICE
    assert sum(t._runner is not None for t in tasks) == slice_
    assert all(t._runner is None for t in tasks[slice_:])
    assert b.drain_nowait("t1000") is DrainOutcome.DRAINED
    assert b.drain_many_nowait(["t1001"]) == [DrainOutcome.DRAINED]
    await asyncio.sleep(0)  # one pass: the next slice got its runners
    assert sum(t._runner is not None for t in tasks) == 2 * slice_
    await b.join()
    expected = [f"t{i:04d}" for i in range(2000) if i not in (1000, 1001)]
    assert started == expected and panicked == []
    assert b.stats()["finished"] == 1998 and b.stats()["drained"] == 2 and len(b) == 0

    waiting = [b.fill_nowait(IMM, f"w{i}") for i in range(slice_ + 10)]
    assert await b.rescue() == slice_ + 10
    assert sorted(panicked) == sorted(t.id for t in waiting)
    await asyncio.sleep(1)
    assert not any(s.startswith("w") for s in started)  # rescued: never run
    assert all(t.state is TaskState.RESCUED for t in waiting)


async def test_close_gives_immediates_still_waiting_for_a_runner_the_grace() -> None:
    """Immediates accepted in a burst and not started when close() begins
    are started by it and run within the grace, like the others."""
    rec = Recorder()
    b = make(rec, max_bucket=1000)
    for i in range(600):
        b.fill_nowait(IMM, f"c{i}")
    await b.close(grace=5)
    assert all(rec.hooks(f"c{i}") == ["execute", "finish"] for i in range(600))
    assert b.stats()["rescued"] == 0 and len(b) == 0
