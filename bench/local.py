"""Issue 2 targets for the local TaskBucket: memory per pending time-bomb,
firing lateness, immediate throughput vs bare asyncio, and drain latency."""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import sys
import time
import tracemalloc
from array import array
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from gobucket_py import BucketConfig, Executor, Task, TaskBucket, TaskType

from .common import Row, median, percentile, save

BOMB, IMM = TaskType.TIME_BOMB, TaskType.IMMEDIATE
T = TypeVar("T")


class Noop(Executor):
    async def on_execute(self, task: Task) -> None:
        return None


def _traced(fn: object) -> int:
    """Bytes still allocated after running ``fn`` (payload created before)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = fn()  # type: ignore[operator]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return after - before


def memory(n: int = 1_000_000) -> list[Row]:
    ids = [f"job-{i:07d}" for i in range(n)]  # ids and payloads are excluded

    async def fill_all(cold: bool) -> int:
        """Bytes held per pending task: as filled (a Task each), or once the
        bucket made them cold (nobody holds them: the usual case)."""
        bucket = TaskBucket(BucketConfig(life_span=7200, run_after=3600, max_bucket=n), Noop())
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in ids:
            bucket.fill_nowait(BOMB, i)
        if cold:
            while bucket._cold_n < n:  # the young sweep: a step each loop pass
                await asyncio.sleep(0)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert len(bucket) == n
        await bucket.close(grace=0)
        return used

    async def handles(m: int) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        hs = _traced(lambda: [loop.call_later(3600, print) for _ in range(m)])

        async def sleeper() -> None:
            await asyncio.sleep(3600)

        ts: list[asyncio.Task[None]] = []
        sl = _traced(lambda: ts.extend(loop.create_task(sleeper()) for _ in range(m)) or ts)
        await asyncio.sleep(0)
        for t in ts:
            t.cancel()
        return hs, sl

    per = asyncio.run(fill_all(True)) / n
    warm = asyncio.run(fill_all(False)) / n
    m = 100_000
    h, s = asyncio.run(handles(m))
    return [Row("#2, #18", f"memory per pending time-bomb at {n:,} pending (ids and payload "
                "excluded)", per, "B", "<= 200 B (issue 18; issue 2: <= 300 B)", per <= 200,
                baseline=f"call_later handle {(h - 8 * m) / m:.0f} B; sleeping task {s / m:.0f} B",
                ratio=f"{per / ((h - 8 * m) / m):.2f}x a call_later handle",
                note=f"tracemalloc, after gc; once cold (nobody holds their Tasks: the usual "
                     f"case, from the end of the fill's loop pass); as filled, before that, a "
                     f"Task each: {warm:.1f} B")]


def lateness(pending: int = 100_000, rate: float = 10_000.0, measure_s: float = 5.0) -> list[Row]:
    lat, base = _lateness_runs(pending, rate, measure_s)
    p50, p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
    b50, b99 = percentile(base, 50) * 1e3, percentile(base, 99) * 1e3
    fired = len(lat) / measure_s
    return [
        Row("#2", f"firing lateness p50 ({pending:,} pending, {fired:,.0f} fires/s)", p50, "ms",
            "<= 1 ms", p50 <= 1.0, baseline=f"bare loop.call_at p50 {b50:.3f} ms",
            ratio=f"{p50 / b50:.2f}x" if b50 >= 0.01 else ""),
        Row("#2", f"firing lateness p99 ({pending:,} pending, {fired:,.0f} fires/s)", p99, "ms",
            "<= 5 ms", p99 <= 5.0, baseline=f"bare loop.call_at p99 {b99:.3f} ms",
            ratio=f"{p99 / b99:.2f}x" if b99 >= 0.01 else ""),
    ]


#: What one run of the 800,000-pending lateness measurement gives (see scale_run).
ScaleRun = dict[str, Any]


def scale_run(pending: int = 800_000, rate: float = 20_000.0, measure_s: float = 60.0
              ) -> ScaleRun:
    """One run of issue 18's target 1 on the current event loop policy:
    800,000 time-bombs pending while 20,000 a second fall due for a minute,
    GC on, and the bare ``call_at`` + ``create_task`` baseline with the same
    population (run it in a fresh interpreter: see :func:`fresh`). Both
    start with ``gc.freeze()``, as the node runner does once started (and
    the README asks of an app that embeds a group): what a full pass costs
    without it is in the note."""
    gcs: dict[str, list[float]] = {}
    lat, base = _lateness_runs(pending, rate, measure_s, tasks=True, gcs=gcs, frozen=True)
    return {"p99": percentile(lat, 99) * 1e3, "max": max(lat) * 1e3,
            "b99": percentile(base, 99) * 1e3, "bmax": max(base) * 1e3,
            "fired": len(lat) / measure_s, "pending": pending, "measure_s": measure_s,
            "alone": gcs["alone"][0] * 1e3, "balone": gcs["alone"][1] * 1e3,
            "frozen": gcs["full_pass"][0] * 1e3, "pass": gcs["full_pass"][1] * 1e3, "gcs": gcs}


def lateness_at_scale(runs: int = 3, run: Callable[[], ScaleRun] = scale_run) -> list[Row]:
    """Issue 18, target 1: no lateness spikes at 800,000 pending. The median
    of ``runs`` runs of ``run``, each in a fresh interpreter: this machine
    has pauses of its own, so one run's worst fire says little (each run's
    figures, and the machine's pauses, are in the note)."""
    results = [fresh(run) for _ in range(runs)]
    p99, worst = median([r["p99"] for r in results]), median([r["max"] for r in results])
    b99, bworst = median([r["b99"] for r in results]), median([r["bmax"] for r in results])
    first = results[0]
    label = (f"({first['pending']:,} pending, {median([r['fired'] for r in results]):,.0f} "
             f"fires/s for {first['measure_s']:g} s, GC on, startup objects frozen)")

    def passes(name: str) -> str:
        times = [t for r in results for t in r["gcs"].get(name, [])]
        longest = f", longest {max(times) * 1e3:.1f} ms" if times else ""
        return f"{len(times)} full GC passes in the windows{longest}"

    each = "; ".join(
        f"p99 {r['p99']:.2f} / max {r['max']:.1f} ms (bare {r['b99']:.2f} / {r['bmax']:.1f}; "
        "the machine's own pauses: "
        + ", ".join(f"{m * 1e3:.1f}" for m in r["gcs"].get("machine", []))
        + f" ms; max less the machine's pauses in it {r['alone']:.1f}, bare {r['balone']:.1f})"
        for r in results)
    alone, balone = median([r["alone"] for r in results]), median([r["balone"] for r in results])
    note = (f"median of {runs} runs, each in a fresh interpreter; each variant (ours, bare) "
            "starts with gc.freeze(), before it fills, as the node runner does once started "
            "and the README asks of an app that embeds a group: the interpreter's and the "
            "bench's objects are left out of later passes, and everything made after (the "
            f"population, the tasks) is collected as usual; ours: {passes('ours')} (a "
            "pending time-bomb nobody holds is bytes, and an id in a str of ids: nothing the "
            f"GC tracks); bare: {passes('bare')}. Each run: {each}. The machine's own pauses "
            "are the worst lateness of a separate process's 1 ms timer in the same window "
            "(ours, bare), on the other core; the max less the machine's pauses takes from "
            "each fire later than 2 ms the time the canary was itself paused in it (median "
            f"{alone:.1f} ms, bare {balone:.1f} ms): the part no pause of the machine explains. "
            "A full collector pass, timed after ours' window, took "
            + ", ".join(f"{r['frozen']:.1f}" for r in results)
            + " ms as the run had it (frozen), and "
            + ", ".join(f"{r['pass']:.1f}" for r in results)
            + " ms with nothing frozen (an app that never calls gc.freeze(): the "
            "interpreter's objects, the bench's, the tasks running; none of the bucket's "
            "pending tasks, records or wheel), the pause such an app's full passes add")
    return [
        Row("#18", f"firing lateness p99 {label}", p99, "ms", "<= 2 ms", p99 <= 2.0,
            baseline=f"bare call_at + create_task p99 {b99:.3f} ms",
            ratio=f"{p99 / b99:.2f}x" if b99 else "", note=note),
        Row("#18", f"firing lateness max {label}", worst, "ms", "<= 10 ms", worst <= 10.0,
            baseline=f"bare call_at + create_task max {bworst:.1f} ms",
            ratio=f"{worst / bworst:.2f}x" if bworst else "", note=note),
    ]


#: A separate process's 1 ms timer over a window: its worst lateness, in
#: seconds, on stdout. It does nothing else, on the other core, so what it
#: sees is the machine's own pauses (the VM, the kernel), not ours.
_CANARY = """
import json, sys, time
PAUSE = float(sys.argv[3])
pauses = []
start, end = float(sys.argv[1]), float(sys.argv[2])  # time.monotonic(), system-wide
time.sleep(max(0.0, start - time.monotonic()))
due = time.monotonic()
worst = 0.0
while True:
    due += 0.001
    wait = due - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    now = time.monotonic()
    worst = max(worst, now - due)
    if now - due > PAUSE:
        pauses.append((due, now))
    due = max(due, now - 0.001)
    if now >= end:
        break
print(json.dumps({"worst": worst, "pauses": pauses}))
"""

#: A lateness above this (seconds) is a pause worth placing in time: the
#: canary's, and our fires', to tell the machine's pauses from ours.
PAUSE = 0.002


class _FullPasses:
    """Times the garbage collector's full (generation 2) passes that start
    while ``on`` is true, through ``gc.callbacks``; and, in ``machine``, the
    worst lateness of a separate process's 1 ms timer over each window."""

    def __init__(self) -> None:
        self.on = False
        self.times: list[float] = []
        self.machine: list[float] = []
        #: Per window, the canary's pauses longer than ``PAUSE``: ``(due,
        #: woke)`` in the loop's time.
        self.pauses: list[list[tuple[float, float]]] = []
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        elif self.on:
            self.times.append(time.perf_counter() - self._began)

    async def window(self, start_at: float, stop_at: float) -> None:
        """Sleep past ``stop_at`` (loop time), counting passes from ``start_at``."""
        loop = asyncio.get_running_loop()
        # The canary is started before the window: starting a process holds
        # the loop while the kernel copies this one's page tables (~20 ms at
        # 800,000 pending on uvloop, which forks; ~1 ms on asyncio), and that
        # is the bench's doing, not the bucket's.
        offset = time.monotonic() - loop.time()
        canary = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CANARY, str(start_at + offset), str(stop_at + offset),
            str(PAUSE), stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        self.on = True
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        self.on = False
        await asyncio.sleep(0.1)
        out, _ = await asyncio.wait_for(canary.communicate(), 30)
        seen = json.loads(out)
        self.machine.append(seen["worst"])
        self.pauses.append([(due - offset, woke - offset) for due, woke in seen["pauses"]])

    def __enter__(self) -> _FullPasses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


#: Seconds between the population's fill and the measured window (both
#: variants): what fell due while a synchronous fill of 800,000 held the loop
#: fires late, as a backlog -- the target is about the steady state after.
SETTLE = 3.0


def _lateness_runs(pending: int, rate: float, measure_s: float, tasks: bool = False,
                   gcs: dict[str, list[float]] | None = None, frozen: bool = False
                   ) -> tuple[list[float], list[float]]:
    """Lateness of our fires and of the baseline's (``tasks``: each baseline
    fire also creates an asyncio task, as a bucket's does). With ``gcs``,
    the durations of the full GC passes during each window go there.
    ``frozen``: each variant starts with ``gc.freeze()``, before it fills,
    as the node runner does once started (what the interpreter and the
    bench hold then is left out of every later pass; everything made after,
    the population included, is collected as usual)."""
    full = _FullPasses()
    spread = pending / rate  # seconds over which the pending tasks are due
    late = (array("d"), array("d"))  # fires later than PAUSE: due, fired, ... (ours, bare)
    passes: list[float] = []  # what a full pass costs after ours' window: frozen, as is

    async def ours() -> array[float]:
        lat = array("d")  # (not a list of floats: no object per sample for the GC to visit)
        loop = asyncio.get_running_loop()
        stop_at = 0.0
        start_at = 0.0
        n = 0

        if frozen:
            gc.freeze()

        class Refill(Executor):
            async def on_execute(self, task: Task) -> None:
                nonlocal n
                now = loop.time()
                if start_at <= now < stop_at:
                    lat.append(now - task._run_at)
                    if now - task._run_at > PAUSE:
                        late[0].extend((task._run_at, now))
                if now < stop_at:
                    n += 1
                    # Due spread after its own due time (not after now), so the
                # population stays spread evenly: 20,000 due each second.
                bucket.fill_nowait(BOMB, f"r{n}", run_after=task._run_at + spread - now)

        bucket = TaskBucket(BucketConfig(life_span=3600, max_bucket=pending * 2), Refill())
        t0 = loop.time()
        for i in range(pending):  # due at the baseline's times: from t0, not from each fill
            when = t0 + 0.5 + spread * i / pending
            bucket.fill_nowait(BOMB, f"p{i}", run_after=max(0.0, when - loop.time()))
        start_at = loop.time() + SETTLE
        stop_at = start_at + measure_s
        await full.window(start_at, stop_at)
        passes.extend(_full_pass_costs(frozen))
        await bucket.close(grace=0)
        return lat

    async def baseline() -> array[float]:
        lat = array("d")
        loop = asyncio.get_running_loop()
        start_at = stop_at = 0.0

        async def noop() -> None:
            return None

        running: set[asyncio.Task[None]] = set()
        if frozen:
            gc.freeze()

        def fire(when: float) -> None:
            now = loop.time()
            if start_at <= now < stop_at:
                lat.append(now - when)
                if now - when > PAUSE:
                    late[1].extend((when, now))
            if tasks:
                task = loop.create_task(noop())
                running.add(task)
                task.add_done_callback(running.discard)
            if now < stop_at:
                loop.call_at(when + spread, fire, when + spread)  # (as ours)

        t0 = loop.time()
        for i in range(pending):
            when = t0 + 0.5 + spread * i / pending
            loop.call_at(when, fire, when)
        # As for ours: measured from SETTLE after the population is in place
        # (scheduling 800,000 takes a second or two, during which nothing fires).
        start_at = loop.time() + SETTLE
        stop_at = start_at + measure_s
        await full.window(start_at, stop_at)
        if running:
            await asyncio.wait(list(running))
        gc.unfreeze()
        return lat

    with full:
        ours_lat = asyncio.run(ours())
        ours_gc, full.times = full.times, []
        base_lat = asyncio.run(baseline())
    if gcs is not None:
        gcs["ours"], gcs["bare"], gcs["machine"] = ours_gc, full.times, full.machine
        gcs["alone"] = [_alone(late[i], full.pauses[i]) for i in (0, 1)]
        gcs["full_pass"] = passes
    return list(ours_lat), list(base_lat)


def _full_pass_costs(frozen: bool) -> list[float]:
    """Seconds one full collector pass takes now, with what ``gc.freeze()``
    left out of passes (``frozen``: since the run started, as the node
    runner does; else nothing), and again with nothing frozen (an embedder
    who never calls it). Nothing is frozen after."""
    costs = []
    for unfreeze in (False, True):
        if unfreeze:
            gc.unfreeze()
        began = time.perf_counter()
        gc.collect()
        costs.append(time.perf_counter() - began)
    return costs


def _alone(late: array[float], pauses: list[tuple[float, float]]) -> float:
    """The worst lateness of a late fire (``late``: due, fired, ...) less
    the time the machine itself was paused in it (the canary's ``pauses``,
    widened by its 1 ms period): what no pause of the machine explains. At
    most ``PAUSE`` when every late fire is explained."""
    merged: list[list[float]] = []
    for start, woke in sorted((start - 0.001, woke) for start, woke in pauses):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], woke)
        else:
            merged.append([start, woke])
    worst = PAUSE
    for i in range(0, len(late), 2):
        due, fired = late[i], late[i + 1]
        paused = sum(max(0.0, min(fired, woke) - max(due, start)) for start, woke in merged)
        worst = max(worst, fired - due - paused)
    return worst


def throughput(n: int = 100_000, repeats: int = 5) -> list[Row]:
    ids = [f"t{i}" for i in range(n)]

    async def ours() -> float:
        bucket = TaskBucket(BucketConfig(life_span=60, max_bucket=n), Noop())
        t0 = time.perf_counter()
        for i in ids:
            await bucket.fill(IMM, i)
        await bucket.join()
        return n / (time.perf_counter() - t0)

    async def baseline() -> float:
        async def noop() -> None:
            return None

        async def job() -> None:
            async with asyncio.timeout(60):
                await noop()

        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        tasks = [loop.create_task(job()) for _ in ids]
        await asyncio.wait(tasks)
        return n / (time.perf_counter() - t0)

    o, b = [], []
    for _ in range(repeats):
        gc.collect()
        b.append(asyncio.run(baseline()))
        gc.collect()
        o.append(asyncio.run(ours()))
    mo, mb = median(o), median(b)
    runs = (f"runs: ours {', '.join(f'{x / 1e3:.0f}k' for x in o)}; baseline "
            f"{', '.join(f'{x / 1e3:.0f}k' for x in b)}")
    return [Row("#2", f"immediate fill -> finish, no-op executor ({n:,} tasks)", mo, "tasks/s",
                ">= 0.8x baseline", mo >= 0.8 * mb,
                baseline=f"create_task+timeout {mb:,.0f}/s", ratio=f"{mo / mb:.2f}x",
                note=runs),
            Row("#18", f"immediate fill -> finish, no-op executor ({n:,} tasks), against the "
                "bare pattern", mo, "tasks/s", ">= 1.5x baseline", mo >= 1.5 * mb,
                baseline=f"create_task+timeout {mb:,.0f}/s", ratio=f"{mo / mb:.2f}x",
                note=f"the same runs as the row above (median of {repeats}); a task's "
                     "deadline timer is armed only if it is still running after its "
                     "first step")]


def drain(n: int = 100_000) -> list[Row]:
    async def run() -> tuple[list[float], list[float]]:
        bucket = TaskBucket(BucketConfig(life_span=7200, run_after=3600, max_bucket=n), Noop())
        ids = [f"d{i}" for i in range(n)]
        for i in ids:
            bucket.fill_nowait(BOMB, i)
        pc = time.perf_counter
        times = []
        for i in ids:
            t0 = pc()
            await bucket.drain(i)
            times.append(pc() - t0)
        loop = asyncio.get_running_loop()
        handles = [loop.call_later(3600, print) for _ in range(n)]
        base = []
        for h in handles:
            t0 = pc()
            h.cancel()
            base.append(pc() - t0)
        return times, base

    times, base = asyncio.run(run())
    m, mb = median(times) * 1e6, median(base) * 1e6
    return [Row("#2", f"drain of a pending time-bomb ({n:,} pending)", m, "µs", "<= 5 µs",
                m <= 5.0, baseline=f"TimerHandle.cancel {mb:.2f} µs", ratio=f"{m / mb:.1f}x",
                note="median of per-call timings")]


def outcome_records(n: int = 1_000_000) -> list[Row]:
    """Memory an ended task's outcome record costs (issue #12), ids excluded."""
    ids = [f"job-{i:07d}" for i in range(n)]

    async def records() -> tuple[int, int]:
        bucket = TaskBucket(BucketConfig(life_span=7200, run_after=3600, max_bucket=n,
                                         max_outcomes=2 * n), Noop())

        def fill_and_drain() -> TaskBucket:
            for i in ids:
                bucket.fill_nowait(BOMB, i)
            for i in ids:
                bucket.drain_nowait(i)
            return bucket

        used = _traced(fill_and_drain)
        assert bucket.stats()["outcome_records"] == n and len(bucket) == 0
        await bucket.close(grace=0)
        plain = _traced(lambda: dict.fromkeys(ids, 1))
        return used, plain

    used, plain = asyncio.run(records())
    per = used / n
    return [Row("#12", f"memory per outcome record of an ended task at {n:,} records "
                "(ids excluded)", per, "B", "measured and reported", True,
                baseline=f"a plain dict entry {plain / n:.0f} B", ratio=f"{per / (plain / n):.2f}x",
                note="tracemalloc, after gc; records are kept outcome_retention (600 s), at "
                     "most max_outcomes (1,000,000) per bucket")]


def drain_rate(n: int = 1_000_000, repeats: int = 3) -> list[Row]:
    """Issue 18, target 5: drains per second of pending time-bombs through
    the non-awaiting paths (``drain_many_nowait``, and ``drain_nowait`` one
    id at a time), in one pass over ``n``."""

    async def ours(many: bool) -> float:
        bucket = TaskBucket(BucketConfig(life_span=7200, run_after=3600, max_bucket=n), Noop())
        ids = [f"d{i}" for i in range(n)]
        for i in ids:
            bucket.fill_nowait(BOMB, i)
        drain = bucket.drain_nowait
        gc.collect()
        t0 = time.perf_counter()
        if many:
            bucket.drain_many_nowait(ids)
        else:
            for i in ids:
                drain(i)
        took = time.perf_counter() - t0
        assert len(bucket) == 0
        await bucket.close(grace=0)
        return n / took

    async def handles() -> float:
        loop = asyncio.get_running_loop()
        hs = [loop.call_later(3600, print) for _ in range(n)]
        gc.collect()
        t0 = time.perf_counter()
        for h in hs:
            h.cancel()
        return n / (time.perf_counter() - t0)

    rates, singles, base = [], [], []
    for _ in range(repeats):
        rates.append(asyncio.run(ours(True)))
        singles.append(asyncio.run(ours(False)))
        base.append(asyncio.run(handles()))
    r, one, b = median(rates), median(singles), median(base)
    return [Row("#18", f"drains per second of pending time-bombs, drain_many_nowait ({n:,} "
                "pending)", r, "drains/s", ">= 1,000,000/s", r >= 1_000_000,
                baseline=f"drain_nowait one id at a time {one:,.0f}/s; TimerHandle.cancel "
                         f"{b:,.0f}/s", ratio=f"{r / b:.2f}x TimerHandle.cancel",
                note=f"median of {repeats} passes; each drain records the outcome "
                     "(retry-safe drains), frees the slot and discards the wheel entry")]


def fresh(part: Callable[[], T]) -> T:
    """``part()`` in a new interpreter: a figure about pauses must not carry
    the heap the parts before it left in this process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(part).result()


def main() -> None:
    rows = (throughput() + drain() + drain_rate() + lateness() + lateness_at_scale()
            + memory() + outcome_records())
    save("local", rows)


if __name__ == "__main__":
    main()
