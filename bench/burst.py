"""Issue 18, target 2: a burst of time-bombs due at the same instant.

20,000 time-bombs are filled with the same due time and a no-op
``on_execute``. Measured from the due time: when the first ``on_execute``
starts, when the last one starts, and the start rate over the whole burst
(tasks / time from the due time to the last start). Side by side, in the same run:

- **sliced** (today): the timer wheel starts ``TimerWheel.SLICE`` tasks per
  loop turn, so started tasks take their first step between slices;
- **unsliced**: the same bucket with one slice of unlimited size (how it was:
  one timer callback creates every task before any of them runs);
- **bare asyncio**: one ``call_at`` callback that does ``create_task`` for
  each of the 20,000 coroutines (the floor a user would write by hand).

Each variant runs ``--repeats`` times in turn (alternated, so the machine's
noise hits all three alike); medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable

from gobucket_py import BucketConfig, TaskBucket, TaskType
from gobucket_py.task import Task
from gobucket_py.timers import TimerWheel

from .common import Row, median, save

BOMB = TaskType.TIME_BOMB
N = 20_000
LEAD = 0.2  # seconds between filling the burst and its due time


class Burst:
    """Start times (loop clock) of one burst's ``on_execute`` calls."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.due = 0.0

    def figures(self) -> tuple[float, float, float]:
        """(first start after due ms, last start after due ms, starts/s over
        the whole burst: tasks / (last start - due))."""
        first, last = self.starts[0], self.starts[-1]
        return ((first - self.due) * 1000, (last - self.due) * 1000,
                len(self.starts) / (last - self.due))


async def _ours(n: int, sliced: bool) -> Burst:
    burst = Burst()
    loop = asyncio.get_running_loop()
    starts = burst.starts

    async def run(task: Task) -> None:
        starts.append(loop.time())

    bucket = TaskBucket(BucketConfig(life_span=60, run_after=LEAD, max_bucket=n), run)
    old = TimerWheel.SLICE
    TimerWheel.SLICE = old if sliced else 10**9
    try:
        ids = [f"b{i}" for i in range(n)]
        now = loop.time()
        burst.due = now + LEAD
        # The very same due time: the loop's clock is held still while filling
        # (the fills themselves take tens of ms).
        loop.time = lambda: now  # type: ignore[method-assign]
        try:
            for task_id in ids:
                bucket.fill_nowait(BOMB, task_id)
        finally:
            del loop.time
        assert {t._run_at for t in bucket} == {burst.due}
        await bucket.join()
    finally:
        TimerWheel.SLICE = old
    await bucket.close(grace=0)
    assert len(starts) == n
    return burst


async def _bare(n: int) -> Burst:
    burst = Burst()
    loop = asyncio.get_running_loop()
    starts = burst.starts
    done = loop.create_future()

    async def run() -> None:
        starts.append(loop.time())
        if len(starts) == n:
            done.set_result(None)

    tasks: list[asyncio.Task[None]] = []

    def fire() -> None:
        for _ in range(n):
            tasks.append(loop.create_task(run()))

    burst.due = loop.time() + LEAD
    loop.call_at(burst.due, fire)
    await done
    return burst


def measure(n: int = N, repeats: int = 7) -> list[Row]:
    variants: dict[str, Callable[[], Burst]] = {
        "sliced": lambda: asyncio.run(_ours(n, True)),
        "unsliced": lambda: asyncio.run(_ours(n, False)),
        "bare": lambda: asyncio.run(_bare(n)),
    }
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            gc.collect()
            results[name].append(run().figures())
    med = {name: tuple(median([r[i] for r in rs]) for i in range(3))
           for name, rs in results.items()}
    for name, (first, last, rate) in med.items():
        print(f"  {name:9s} first start {first:7.2f} ms after due, last {last:7.1f} ms, "
              f"{rate:,.0f} starts/s", flush=True)
    s_first, s_last, s_rate = med["sliced"]
    u_first, _, u_rate = med["unsliced"]
    b_first, b_last, b_rate = med["bare"]
    return [
        Row("#18", f"burst of {n:,} time-bombs due at once: first on_execute starts after due",
            s_first, "ms", "<= 5 ms", s_first <= 5,
            baseline=f"unsliced {u_first:.1f} ms; bare call_at+create_task {b_first:.1f} ms",
            ratio=f"{s_first / b_first:.2f}x bare" if b_first > 0 else "",
            note=f"median of {repeats}; slices of {TimerWheel.SLICE}"),
        Row("#18", f"burst of {n:,} time-bombs due at once: starts per second",
            s_rate, "starts/s", ">= 200,000/s", s_rate >= 200_000,
            baseline=f"unsliced {u_rate:,.0f}/s; bare {b_rate:,.0f}/s",
            ratio=f"{s_rate / b_rate:.2f}x bare",
            note=f"median of {repeats}; tasks / (last start - due time); last start "
                 f"{s_last:.0f} ms after due (bare {b_last:.0f} ms)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.burst",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=N)
    parser.add_argument("--repeats", type=int, default=7)
    args, _ = parser.parse_known_args()
    started = time.perf_counter()
    rows = measure(args.tasks, args.repeats)
    save("burst", rows)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
