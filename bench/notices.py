"""The bookkeeping of ended notices, per forwarded task that ends:
``python -m bench.notices``.

When a task a node accepted by forward ends, the holder queues an ended
notice for the task's origin (``EndedNotices.task_ended``), sends the
queue in one message (``_take``), and the origin checks it and drops the
routes it names (``check``, ``apply``). This times those four steps for
``--n`` tasks (forwarded in batches of 256, as the overflow path sends
them), in one process and without the network, and prints nanoseconds per
task, median over ``--repeats`` runs, with the three phases apart. Not part
of ``make bench``: a figure to compare two versions of the code by, run
alternately on the same machine (``PYTHONPATH=<other checkout>``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import types

from gobucket_py.cluster.ended import EndedNotices
from gobucket_py.cluster.routes import Routes
from gobucket_py.task import TaskState

#: Tasks per FILL batch, as the overflow path sends them by default.
BATCH = 256


async def measure(n: int, repeats: int) -> tuple[float, list[float]]:
    """Median ns per ended task, and the medians of its three phases
    (queue the end, take and check the message, apply it)."""
    loop = asyncio.get_running_loop()
    routes = Routes()
    first = 10**15  # batch numbers are microseconds of the wall clock
    group = types.SimpleNamespace(_routes=routes, _forwarder=types.SimpleNamespace(seq=first),
                                  _members=types.SimpleNamespace(members={}))
    totals: list[float] = []
    phases: list[tuple[float, float, float]] = []
    for rep in range(repeats):
        notices = EndedNotices(group)  # type: ignore[arg-type]
        ids = [f"t{rep}-{i}" for i in range(n)]
        for start in range(0, n, BATCH):
            part = ids[start:start + BATCH]
            batch = first - n + start // BATCH
            notices.accepted_batch([("jobs", i) for i in part], ["ok"] * len(part), "n1", batch)
            routes.add("jobs", "n2", "b2", loop.time(), 600.0, part, sent=(loop.time(), batch - 1))
        tasks = [types.SimpleNamespace(bucket="jobs", id=i, state=TaskState.FINISHED)
                 for i in ids]
        t0 = time.perf_counter()
        for task in tasks:
            notices.task_ended(task)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        notice = EndedNotices.check({"v": 1, **notices._take("n1")})
        t2 = time.perf_counter()
        notices.apply("n2", "b2", notice)
        t3 = time.perf_counter()
        if notices._timer is not None:
            notices._timer.cancel()
        if len(routes):
            raise RuntimeError(f"{len(routes)} routes were not dropped: the notice was not applied")
        totals.append((t3 - t0) / n * 1e9)
        phases.append(((t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9, (t3 - t2) / n * 1e9))
    return statistics.median(totals), [statistics.median(p[k] for p in phases) for k in range(3)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.notices", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="tasks per run (100,000)")
    parser.add_argument("--repeats", type=int, default=7, help="runs; the median is shown (7)")
    args = parser.parse_args()
    total, (queue, take, apply) = asyncio.run(measure(args.n, args.repeats))
    print(f"{total:.0f} ns per ended forwarded task (queue {queue:.0f}, take+check {take:.0f}, "
          f"apply {apply:.0f}); median of {args.repeats} runs of {args.n:,}")


if __name__ == "__main__":
    main()
