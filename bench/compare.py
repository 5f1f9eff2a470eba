"""A comparison run against Trigger Hook's published figures (issue #6).

Trigger Hook (a Go delayed-task engine) publishes, for 100,000 tasks: create
1,396/s, delete 1,920/s, send 200,668/s. Its figures come from its own
machine and setup; ours are measured here, each next to a bare-asyncio
baseline measured in the same run, with 100,000 time-bombs in one
``TaskBucket`` and through one ``TaskBucketGroup`` (single node):

- fill: ``await bucket.fill`` / ``await group.fill`` of 100k time-bombs;
  baseline ``loop.call_later`` of 100k callbacks;
- drain: ``await bucket.drain`` / ``await group.drain`` of 100k pending ones;
  baseline ``TimerHandle.cancel``;
- fire ("send"): 100k time-bombs all due at the same moment, from the first
  ``on_execute`` to the last (no-op executor); baseline 100k ``call_at``
  callbacks due at one moment, each starting a task that runs under a
  timeout (the least a fire costs in asyncio: every fired task runs
  concurrently, with its lifespan enforced).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from typing import Any

from gobucket_py import BucketConfig, Executor, GroupConfig, Task, TaskBucket, TaskBucketGroup
from gobucket_py import TaskType as T

from .common import Row, median, save

N = 100_000
TRIGGER_HOOK = {"fill": 1_396.0, "drain": 1_920.0, "fire": 200_668.0}
NAMES = {"fill": "create", "drain": "delete", "fire": "send"}
BASELINES = {"fill": "loop.call_later", "drain": "TimerHandle.cancel",
             "fire": "call_at + create_task + timeout"}


class Stamp(Executor):
    """Records the loop time of the first and last on_execute."""

    def __init__(self) -> None:
        self.first = 0.0
        self.last = 0.0
        self.count = 0

    async def on_execute(self, task: Task) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first = now
        self.last = now
        self.count += 1


def bucket(executor: Executor) -> TaskBucket:
    return TaskBucket(BucketConfig(life_span=7200, run_after=3600, max_bucket=N), executor,
                      name="jobs")


async def via_bucket(ids: list[str]) -> dict[str, float]:
    b = bucket(Stamp())
    t0 = time.perf_counter()
    for i in ids:
        await b.fill(T.TIME_BOMB, i)
    fill = N / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in ids:
        await b.drain(i)
    drain = N / (time.perf_counter() - t0)
    return {"fill": fill, "drain": drain, "fire": await fire_rate(b, ids)}


async def via_group(ids: list[str]) -> dict[str, float]:
    b = bucket(Stamp())
    group = TaskBucketGroup({"jobs": b}, [], port=0, node_id="bench", config=GroupConfig())
    await group.start()
    try:
        t0 = time.perf_counter()
        for i in ids:
            await group.fill("jobs", i, task_type=T.TIME_BOMB)
        fill = N / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in ids:
            await group.drain("jobs", i)
        drain = N / (time.perf_counter() - t0)
    finally:
        await group.stop()
    return {"fill": fill, "drain": drain, "fire": float("nan")}


async def fire_rate(b: TaskBucket, ids: list[str]) -> float:
    """100k time-bombs due at one moment: from the first on_execute to the last."""
    stamp = b.executor
    assert isinstance(stamp, Stamp)
    for i in ids:
        b.fill_nowait(T.TIME_BOMB, f"f-{i}", run_after=0.5)
    await b.join()
    assert stamp.count == N
    return (N - 1) / (stamp.last - stamp.first)


async def baseline(ids: list[str]) -> dict[str, float]:
    loop = asyncio.get_running_loop()

    def noop() -> None:
        return None

    t0 = time.perf_counter()
    handles = [loop.call_later(3600, noop) for _ in ids]
    fill = N / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for h in handles:
        h.cancel()
    drain = N / (time.perf_counter() - t0)
    # Fire: what one fire costs at the least in asyncio: a timer callback that
    # starts a task running the job under its lifespan timeout (as ours do).
    times: list[float] = []
    done = loop.create_future()

    async def execute() -> None:
        times.append(time.perf_counter())
        if len(times) == N:
            done.set_result(None)

    async def job() -> None:
        async with asyncio.timeout(60):
            await execute()

    running: set[asyncio.Task[None]] = set()

    def fire() -> None:
        task = loop.create_task(job())
        running.add(task)
        task.add_done_callback(running.discard)

    when = loop.time() + 0.5
    for _ in ids:
        loop.call_at(when, fire)
    await done
    return {"fill": fill, "drain": drain, "fire": (N - 1) / (times[-1] - times[0])}


def runs(fn: Callable[[list[str]], Coroutine[Any, Any, dict[str, float]]], repeats: int
         ) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for rep in range(repeats):
        gc.collect()
        ids = [f"t{rep}-{i}" for i in range(N)]
        result = asyncio.run(fn(ids))
        for k, v in result.items():
            out.setdefault(k, []).append(v)
    return {k: median(v) for k, v in out.items()}


def main() -> None:
    repeats = 3
    base = runs(baseline, repeats)
    ours = runs(via_bucket, repeats)
    group = runs(via_group, repeats)
    rows = []
    for what in ("fill", "drain", "fire"):
        th = TRIGGER_HOOK[what]
        for label, figures in (("TaskBucket", ours), ("TaskBucketGroup, one node", group)):
            value = figures[what]
            if value != value:  # NaN: fire is the bucket's job, measured once
                continue
            rows.append(Row(
                "#6", f"{what} rate, 100,000 time-bombs, {label} vs Trigger Hook "
                      f"{NAMES[what]}", value, "tasks/s",
                f"Trigger Hook {NAMES[what]} {th:,.0f}/s (published, its machine)",
                value >= th,
                baseline=f"{BASELINES[what]} {base[what]:,.0f}/s",
                ratio=f"{value / th:.1f}x Trigger Hook; {value / base[what]:.2f}x baseline",
                note=f"median of {repeats} runs; "
                     + {"fill": "await fill one at a time",
                        "drain": "await drain one at a time, all pending",
                        "fire": "all due at one moment, first to last on_execute, no-op "
                                "executor; Trigger Hook's send hands a task to a channel, "
                                "ours starts it as an asyncio task with its lifespan "
                                "timeout"}[what]))
    save("compare", rows)


if __name__ == "__main__":
    main()
