"""The timer wheel on a loop that runs timers early: uvloop counts time in
whole milliseconds and rounds a timer's delay to them, so a timer asked for
0.4 ms ahead runs at once. The wheel used to re-arm the same way and spin
until the clock moved (2 million wakeups and 77% of a core for 20,000
time-bombs over 10 s); it now re-arms a millisecond on.

This runs on uvloop's real loop and clock (it cannot be faked), for ~0.3 s.
"""

from __future__ import annotations

import asyncio

import pytest

from gobucket_py import BucketConfig, Executor, Task, TaskBucket, TaskType
from gobucket_py.timers import TimerWheel

uvloop = pytest.importorskip("uvloop")


def test_uvloop_wheel_does_not_spin_and_fires_each_task_once_not_early(
        monkeypatch: pytest.MonkeyPatch) -> None:
    wakeups = 0
    on_timer = TimerWheel._on_timer

    def counted(self: TimerWheel) -> None:
        nonlocal wakeups
        wakeups += 1
        on_timer(self)

    monkeypatch.setattr(TimerWheel, "_on_timer", counted)
    n = 300

    async def main() -> tuple[list[str], list[float]]:
        loop = asyncio.get_running_loop()
        ran: list[str] = []
        early: list[float] = []

        class Record(Executor):
            async def on_execute(self, task: Task) -> None:
                ran.append(task.id)
                if loop.time() < task._run_at - 1e-6:
                    early.append(task._run_at - loop.time())

        bucket = TaskBucket(BucketConfig(life_span=60, max_bucket=n), Record())
        # Due every 0.7 ms or so, at sub-millisecond offsets uvloop's clock
        # cannot tell from the millisecond before.
        for i in range(n):
            bucket.fill_nowait(TaskType.TIME_BOMB, f"t{i}", run_after=0.01 + i * 0.00071)
        await bucket.join()
        await bucket.close()
        return ran, early

    loop = uvloop.new_event_loop()
    try:
        ran, early = loop.run_until_complete(main())
    finally:
        loop.close()
    assert sorted(ran) == sorted(f"t{i}" for i in range(n))  # each once
    assert early == []
    # ~220 ms of due times: about a wakeup per millisecond and one per early
    # run, not thousands (it was ~20 per task before).
    assert wakeups < 3 * n, wakeups
