"""Issue 18, target 8: APScheduler 3 side by side, in the same run.

``python -m bench peers``: what users would pick instead of a local bucket,
APScheduler 3's ``AsyncIOScheduler`` with its in-memory job store, against
``TaskBucket`` on the same machine and loop, each figure a median of 3 runs:

- **schedule**: 100,000 one-shot jobs an hour ahead (``add_job(..., "date")``)
  against 100,000 time-bombs (``fill_nowait``), per second;
- **cancel**: removing those 100,000 pending jobs (``remove_job``) against
  draining the time-bombs (``drain_nowait``, and ``drain_many_nowait``);
- **memory per pending job**: bytes held per job at 100,000 pending (ids
  created before, excluded).

Not measured yet: arq (it needs a Redis server, which Debian's
``redis-server`` could provide), and APScheduler's lateness at 10,000 fires/s
and bursts (rows 1 and 2 of the issue).
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import time
from collections.abc import Callable
from typing import Any

from gobucket_py import BucketConfig, TaskBucket, TaskType

from .common import Row, median, save
from .local import Noop, _traced

N = 100_000
REPEATS = 3
BOMB = TaskType.TIME_BOMB


async def _job() -> None:
    return None


def _scheduler() -> Any:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
    scheduler.start()
    return scheduler


async def _aps(ids: list[str]) -> tuple[float, float]:
    """(schedule/s, remove/s) with APScheduler 3."""
    scheduler = _scheduler()
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    try:
        gc.collect()
        t0 = time.perf_counter()
        for job_id in ids:
            scheduler.add_job(_job, "date", run_date=when, id=job_id)
        add = len(ids) / (time.perf_counter() - t0)
        gc.collect()
        t0 = time.perf_counter()
        for job_id in ids:
            scheduler.remove_job(job_id)
        remove = len(ids) / (time.perf_counter() - t0)
    finally:
        scheduler.shutdown(wait=False)
    await asyncio.sleep(0)
    return add, remove


async def _ours(ids: list[str], many: bool) -> tuple[float, float]:
    """(fills/s, drains/s) of pending time-bombs an hour ahead."""
    bucket = TaskBucket(BucketConfig(life_span=7200, run_after=3600, max_bucket=len(ids)),
                        Noop())
    gc.collect()
    t0 = time.perf_counter()
    for task_id in ids:
        bucket.fill_nowait(BOMB, task_id)
    fill = len(ids) / (time.perf_counter() - t0)
    gc.collect()
    t0 = time.perf_counter()
    if many:
        bucket.drain_many_nowait(ids)
    else:
        for task_id in ids:
            bucket.drain_nowait(task_id)
    drain = len(ids) / (time.perf_counter() - t0)
    await bucket.close(grace=0)
    return fill, drain


def _memory(make: Callable[[list[str]], Any], ids: list[str]) -> float:
    async def run() -> float:
        held: list[Any] = []
        used = _traced(lambda: held.append(make(ids)))
        for thing in held:
            if hasattr(thing, "shutdown"):
                thing.shutdown(wait=False)
        return used / len(ids)

    return asyncio.run(run())


def _aps_pending(ids: list[str]) -> Any:
    scheduler = _scheduler()
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    for job_id in ids:
        scheduler.add_job(_job, "date", run_date=when, id=job_id)
    return scheduler


def _ours_pending(ids: list[str]) -> Any:
    bucket = TaskBucket(BucketConfig(life_span=7200, run_after=3600, max_bucket=len(ids)),
                        Noop())
    for task_id in ids:
        bucket.fill_nowait(BOMB, task_id)
    return bucket


def measure(n: int = N, repeats: int = REPEATS) -> list[Row]:
    """The rows: ours, and APScheduler 3 as the baseline of each."""
    ids = [f"job-{i:07d}" for i in range(n)]
    aps, ours, many = [], [], []
    for _ in range(repeats):
        aps.append(asyncio.run(_aps(ids)))
        ours.append(asyncio.run(_ours(ids, False)))
        many.append(asyncio.run(_ours(ids, True)))
    add_a, rm_a = median([a for a, _ in aps]), median([r for _, r in aps])
    fill_o, drain_o = median([f for f, _ in ours]), median([d for _, d in ours])
    drain_m = median([d for _, d in many])
    mem_a = _memory(_aps_pending, ids)
    mem_o = _memory(_ours_pending, ids)
    print(f"    APScheduler 3: add {add_a:,.0f}/s, remove {rm_a:,.0f}/s, {mem_a:.0f} B/job; "
          f"ours: fill {fill_o:,.0f}/s, drain {drain_o:,.0f}/s (many {drain_m:,.0f}/s), "
          f"{mem_o:.0f} B/task", flush=True)
    note = f"median of {repeats} runs; APScheduler 3 AsyncIOScheduler, memory job store"
    return [
        Row("#18", f"schedule {n:,} one-shot jobs an hour ahead: TaskBucket.fill_nowait vs "
                   "APScheduler 3 add_job", fill_o, "jobs/s", "reported (side by side)", True,
            baseline=f"APScheduler 3 {add_a:,.0f}/s", ratio=f"{fill_o / add_a:.1f}x", note=note),
        Row("#18", f"cancel {n:,} pending jobs: drain_nowait vs APScheduler 3 remove_job",
            drain_o, "jobs/s", "reported (side by side)", True,
            baseline=f"APScheduler 3 {rm_a:,.0f}/s", ratio=f"{drain_o / rm_a:.1f}x",
            note=f"{note}; drain_many_nowait {drain_m:,.0f}/s ({drain_m / rm_a:.1f}x)"),
        Row("#18", f"memory per pending job at {n:,} pending (ids excluded): TaskBucket vs "
                   "APScheduler 3", mem_o, "B", "reported (side by side)", True,
            baseline=f"APScheduler 3 {mem_a:.0f} B", ratio=f"{mem_o / mem_a:.2f}x", note=note),
    ]


def main() -> None:
    save("peers", measure())


if __name__ == "__main__":
    main()
