"""Issue 18, target 8: the peers users would pick instead, side by side, in the same run.

``python -m bench peers``: APScheduler 3's ``AsyncIOScheduler`` with its
in-memory job store, and arq (Redis-backed) when a Redis server can be
started, against ``TaskBucket`` on the same machine, in the same run. Our side
is measured with the helpers of ``bench/local.py`` and ``bench/burst.py``, so
its figures are those benches' figures at these sizes. Every ratio is ours /
the peer's (above 1x: ours is faster, for rates; below 1x: ours is lower, for
lateness and memory).

APScheduler 3 (its jobs get ``misfire_grace_time=None``: a late job still runs
instead of being skipped, so every lateness is counted):

- **row 1, lateness**: 20,000 jobs pending, due evenly over 2 s, each job, when
  it runs, adding itself again due 2 s after its own due time: 10,000 fires/s
  for 5 s (measured from ``SETTLE`` s after the population is in place), one
  run each; when the job body starts against its due time, p50/p99/max, and
  the full GC passes in the window (APScheduler's pending jobs are objects the
  GC tracks: a full pass of tens of ms, when one falls in the 5 s window, is
  most of its p99 and max, so those vary from run to run). Ours is
  ``bench.local._lateness_runs`` (its bare ``call_at`` floor in the note);
- **row 2, burst**: 20,000 one-shot jobs with the same ``run_date``, a no-op
  body: first body start after the due time, and starts/s (jobs / (last start
  - due)), median of 3; ours is ``bench.burst._ours`` (sliced);
- **row 3, immediate**: 20,000 ``add_job`` without a trigger (APScheduler's
  "run now") until every body ran, against ``bench.local.throughput`` (awaited
  immediate fills until ``join``), median of 3;
- **schedule**: 100,000 one-shot jobs an hour ahead (``add_job(..., "date")``)
  against 100,000 time-bombs (``fill_nowait``), per second, median of 3;
- **row 5, cancel**: removing those 100,000 pending jobs (``remove_job``)
  against draining the time-bombs (``drain_nowait``, and
  ``drain_many_nowait``), median of 3;
- **row 4, memory per pending job**: bytes held per job at 100,000 pending
  (ids created before, excluded), tracemalloc.

arq needs Redis: the bench starts a private ``redis-server`` (Debian's
package; ``make bench`` installs it when missing) on a free loopback port, no
persistence, and stops that process at the end. Without ``redis-server`` on
PATH (or without arq installed, or if the server does not answer) the arq rows
are one row saying so, with no figure. One process and one event loop hold the
producer and the arq ``Worker`` (its own connection pool); Redis runs in its own
process (the second core). Worker settings: ``max_jobs=1000`` (default 10) and
``poll_delay=0.05`` s (default 0.5 s); the lateness is also measured at the
default ``poll_delay`` (note). N is 10,000 (20,000 for the burst), one run each
(arq is slow: a median of 3 would not fit the run's few minutes). Our side of
these rows: the same helpers at arq's N, median of 3, in the same run (the
burst and the lateness: the APScheduler rows' runs):

- **schedule**: ``enqueue_job(..., _defer_by=3600)`` awaited one at a time;
- **cancel**: ``Job.abort()`` of every pending job, 200 in flight, the worker
  started with ``allow_abort_jobs=True``: arq's documented way to cancel. An
  abort of a deferred job moves it to the front of the queue and waits for a
  worker to pick it up and record it as cancelled, so a cancel costs a worker
  round trip (without a running worker it never completes). arq makes the job
  due before it flags it as aborted, so a worker can start it in between: the
  row says how many were confirmed cancelled and how many ran instead;
- **memory per pending job**: Redis ``INFO memory`` ``used_memory`` delta / N
  (another process's heap: the job's key, its pickled call, its queue entry,
  and the id, held twice, which cannot be excluded);
- **lateness**: 1,000 jobs due each second for 4 s (after 1 s of settling),
  enqueued ahead with ``_defer_until``; the body's start (``time.time()``)
  against the job's score (ms). Ours is the APScheduler row's run at 10,000
  fires/s: ten times arq's rate;
- **burst**: 20,000 jobs enqueued with the same ``_defer_until``;
- **immediate**: ``enqueue_job`` (no defer) of N no-op jobs, awaited one at a
  time with the worker running, until the worker completed them all.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import shutil
import socket
import subprocess
import tempfile
import time
import traceback
from array import array
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gobucket_py import BucketConfig, TaskBucket, TaskType

from .burst import Burst
from .burst import _ours as _ours_burst
from .common import Row, median, percentile, save
from .local import SETTLE, Noop, _FullPasses, _lateness_runs, _traced, throughput

N = 100_000
REPEATS = 3
BOMB = TaskType.TIME_BOMB
UTC = datetime.UTC

# Row 1: lateness at a steady rate, with a modest pending population.
LATE_PENDING = 20_000
LATE_RATE = 10_000.0
LATE_S = 5.0
# Row 2: a burst due at the same instant.
BURST_N = 20_000
APS_LEAD = 2.0  # seconds between the first add_job of a burst and its due time
# Row 3: immediate jobs, fill -> finish.
IMM_N = 20_000
# arq.
ARQ_N = 10_000
ARQ_MAX_JOBS = 1000
ARQ_POLL = 0.05
ARQ_ABORTS_IN_FLIGHT = 200
ARQ_RATE = 1_000.0
ARQ_SETTLE = 1.0
ARQ_LATE_S = 4.0


def _x(ours: float, theirs: float) -> str:
    """A ratio, ours / theirs."""
    if not theirs or theirs != theirs:
        return ""
    r = ours / theirs
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x" if r >= 1 else f"{r:.2g}x"


def _ms(xs: list[float] | array[float]) -> tuple[float, float, float]:
    """(p50, p99, max) of seconds, in ms."""
    s = list(xs)
    return percentile(s, 50) * 1e3, percentile(s, 99) * 1e3, max(s) * 1e3


async def _job() -> None:
    return None


def _scheduler() -> Any:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    # A late job runs late instead of being skipped (the default grace is 1 s).
    scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(),
                                 job_defaults={"misfire_grace_time": None})
    scheduler.start()
    return scheduler


def _at(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, UTC)


# -- schedule, cancel, memory (APScheduler 3) --------------------------------------------


async def _aps(ids: list[str]) -> tuple[float, float]:
    """(schedule/s, remove/s) with APScheduler 3."""
    scheduler = _scheduler()
    when = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
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
            elif hasattr(thing, "close"):
                await thing.close(grace=0)
        return used / len(ids)

    return asyncio.run(run())


def _aps_pending(ids: list[str]) -> Any:
    scheduler = _scheduler()
    when = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
    for job_id in ids:
        scheduler.add_job(_job, "date", run_date=when, id=job_id)
    return scheduler


def _ours_pending(ids: list[str]) -> Any:
    bucket = TaskBucket(BucketConfig(life_span=7200, run_after=3600, max_bucket=len(ids)),
                        Noop())
    for task_id in ids:
        bucket.fill_nowait(BOMB, task_id)
    return bucket


def _scheduling(n: int, repeats: int) -> list[Row]:
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
            baseline=f"APScheduler 3 {add_a:,.0f}/s", ratio=_x(fill_o, add_a), note=note),
        Row("#18", f"cancel {n:,} pending jobs: drain_nowait vs APScheduler 3 remove_job",
            drain_o, "jobs/s", "reported (side by side)", True,
            baseline=f"APScheduler 3 {rm_a:,.0f}/s", ratio=_x(drain_o, rm_a),
            note=f"{note}; drain_many_nowait {drain_m:,.0f}/s ({_x(drain_m, rm_a)})"),
        Row("#18", f"memory per pending job at {n:,} pending (ids excluded): TaskBucket vs "
                   "APScheduler 3", mem_o, "B", "reported (side by side)", True,
            baseline=f"APScheduler 3 {mem_a:.0f} B", ratio=_x(mem_o, mem_a),
            note="tracemalloc, after gc; APScheduler 3 AsyncIOScheduler, memory job store"),
    ]


# -- row 1: lateness at a steady rate (APScheduler 3) ----------------------------------


def _aps_lateness(pending: int, rate: float, measure_s: float
                  ) -> tuple[list[float], list[float]]:
    """Seconds from due to body start of APScheduler jobs, as ``_lateness_runs``
    measures ours: ``pending`` due evenly over ``pending / rate`` s, each
    adding itself again that much after its own due time (wall clock:
    APScheduler's); and the durations of the full GC passes in the window."""
    spread = pending / rate
    full = _FullPasses()

    async def run() -> array[float]:
        scheduler = _scheduler()
        lat = array("d")
        start_at = stop_at = 0.0

        async def body(due: float) -> None:
            now = time.time()
            if start_at <= now < stop_at:
                lat.append(now - due)
            if now < stop_at:
                scheduler.add_job(body, "date", run_date=_at(due + spread),
                                  args=(due + spread,))

        t0 = time.time()
        for i in range(pending):
            when = t0 + 0.5 + spread * i / pending
            scheduler.add_job(body, "date", run_date=_at(when), args=(when,))
        start_at = time.time() + SETTLE
        stop_at = start_at + measure_s
        await asyncio.sleep(start_at - time.time())
        full.on = True
        await asyncio.sleep(stop_at - time.time())
        full.on = False
        await asyncio.sleep(0.1)
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0)
        return lat

    with full:
        lat = asyncio.run(run())
    return list(lat), full.times


def _lateness(pending: int = LATE_PENDING, rate: float = LATE_RATE,
              measure_s: float = LATE_S) -> tuple[list[Row], tuple[float, float, float]]:
    gcs: dict[str, list[float]] = {}
    gc.collect()
    ours, bare = _lateness_runs(pending, rate, measure_s, gcs=gcs)
    gc.collect()
    aps, gcs["aps"] = _aps_lateness(pending, rate, measure_s)

    def passes(name: str) -> str:
        times = gcs.get(name, [])
        return f"{len(times)}" + (f" (longest {max(times) * 1e3:.1f} ms)" if times else "")
    o50, o99, omax = _ms(ours)
    a50, a99, amax = _ms(aps)
    b50, b99, bmax = _ms(bare)
    of, af = len(ours) / measure_s, len(aps) / measure_s
    print(f"    lateness ms p50/p99/max: ours {o50:.2f}/{o99:.2f}/{omax:.1f} ({of:,.0f} fires/s); "
          f"APScheduler 3 {a50:.2f}/{a99:.2f}/{amax:.1f} ({af:,.0f} fires/s); bare call_at "
          f"{b50:.2f}/{b99:.2f}/{bmax:.1f}", flush=True)
    label = f"{pending:,} pending, {rate:,.0f} due/s for {measure_s:g} s"
    return [Row("#18", f"firing lateness p99 ({label}): TaskBucket vs APScheduler 3", o99, "ms",
                "reported (side by side)", True,
                baseline=f"APScheduler 3 p99 {a99:.1f} ms", ratio=_x(o99, a99),
                note=f"one run each; body start vs due time; p50 ours {o50:.3f} ms vs "
                     f"{a50:.2f} ms ({_x(o50, a50)}); max ours {omax:.1f} ms vs {amax:.1f} ms "
                     f"({_x(omax, amax)}); fires measured per second: ours {of:,.0f}, "
                     f"APScheduler {af:,.0f}; full GC passes in the window: ours "
                     f"{passes('ours')}, APScheduler {passes('aps')}; bare loop.call_at "
                     f"p50/p99/max {b50:.3f}/{b99:.3f}/{bmax:.1f} ms")], (o50, o99, omax)


# -- row 2: a burst due at one instant (APScheduler 3) ---------------------------------


async def _aps_burst(n: int) -> tuple[Burst, float]:
    """A burst of ``n`` APScheduler jobs with one ``run_date`` (wall clock),
    and how long before that due time the adds ended (negative: after)."""
    burst = Burst()
    loop = asyncio.get_running_loop()
    starts = burst.starts
    done = loop.create_future()
    scheduler = _scheduler()

    async def body() -> None:
        starts.append(time.time())
        if len(starts) == n:
            done.set_result(None)

    burst.due = time.time() + APS_LEAD
    run_date = _at(burst.due)
    for _ in range(n):
        scheduler.add_job(body, "date", run_date=run_date)
    margin = burst.due - time.time()
    try:
        await asyncio.wait_for(done, APS_LEAD + 120)
    finally:
        scheduler.shutdown(wait=False)
    await asyncio.sleep(0)
    return burst, margin


def _burst(n: int = BURST_N, repeats: int = REPEATS
           ) -> tuple[list[Row], tuple[float, float, float]]:
    ours, aps, margins = [], [], []
    for _ in range(repeats):
        gc.collect()
        ours.append(asyncio.run(_ours_burst(n, True)).figures())
        gc.collect()
        b, margin = asyncio.run(_aps_burst(n))
        aps.append(b.figures())
        margins.append(margin)
    o = (median([r[0] for r in ours]), median([r[1] for r in ours]), median([r[2] for r in ours]))
    a = (median([r[0] for r in aps]), median([r[1] for r in aps]), median([r[2] for r in aps]))
    print(f"    burst of {n:,}: ours first {o[0]:.2f} ms, last {o[1]:.0f} ms, {o[2]:,.0f} "
          f"starts/s; APScheduler 3 first {a[0]:.1f} ms, last {a[1]:.0f} ms, {a[2]:,.0f} "
          f"starts/s (adds ended {min(margins):.2f} s before due at the latest)", flush=True)
    late = ("" if min(margins) > 0 else
            f"; the adds ran {-min(margins):.2f} s past the due time in a run (included)")
    note = f"median of {repeats}; no-op body; APScheduler 3 AsyncIOScheduler{late}"
    return [
        Row("#18", f"burst of {n:,} jobs due at once, first body starts after due: TaskBucket "
                   "vs APScheduler 3", o[0], "ms", "reported (side by side)", True,
            baseline=f"APScheduler 3 {a[0]:.1f} ms", ratio=_x(o[0], a[0]), note=note),
        Row("#18", f"burst of {n:,} jobs due at once, starts per second: TaskBucket vs "
                   "APScheduler 3", o[2], "starts/s", "reported (side by side)", True,
            baseline=f"APScheduler 3 {a[2]:,.0f}/s", ratio=_x(o[2], a[2]),
            note=f"{note}; jobs / (last start - due); last start ours {o[1]:.0f} ms, "
                 f"APScheduler {a[1]:.0f} ms after due"),
    ], o


# -- row 3: immediate fill -> finish (APScheduler 3) -----------------------------------


async def _aps_immediate(n: int) -> float:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0
    scheduler = _scheduler()

    async def body() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n):
        scheduler.add_job(body)  # no trigger: run now
    await asyncio.wait_for(done, 120)
    rate = n / (time.perf_counter() - t0)
    scheduler.shutdown(wait=False)
    await asyncio.sleep(0)
    return rate


def _immediate(n: int = IMM_N, repeats: int = REPEATS) -> list[Row]:
    ours = throughput(n, repeats)[0].value
    aps = median([asyncio.run(_aps_immediate(n)) for _ in range(repeats)])
    print(f"    immediate {n:,}: ours {ours:,.0f}/s, APScheduler 3 {aps:,.0f}/s", flush=True)
    return [Row("#18", f"immediate fill -> finish, no-op job ({n:,} jobs): TaskBucket vs "
                       "APScheduler 3 add_job without trigger", ours, "jobs/s",
                "reported (side by side)", True, baseline=f"APScheduler 3 {aps:,.0f}/s",
                ratio=_x(ours, aps),
                note=f"median of {repeats}; ours: bench.local.throughput (await fill one at "
                     "a time, then join); APScheduler: add_job one at a time until every body "
                     "ran")]


# -- arq, on a private redis-server ----------------------------------------------------


class _Redis:
    """A ``redis-server`` of our own on a free loopback port, without
    persistence; stopped (by its process) on exit."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = ""

    def __enter__(self) -> _Redis:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"{self.binary} did not answer on 127.0.0.1:{self.port}")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


async def _arq(port: int, n: int, burst_n: int) -> dict[str, Any]:
    """Every arq figure, on the server at ``port``."""
    from arq import Worker, create_pool
    from arq.connections import RedisSettings
    from arq.utils import to_unix_ms
    from arq.worker import func

    settings = RedisSettings(host="127.0.0.1", port=port)
    pool = await create_pool(settings)
    starts: list[tuple[float, int]] = []  # (body start, wall clock; the job's score, ms)

    async def noop(ctx: dict[str, Any]) -> None:
        return None

    async def timed(ctx: dict[str, Any]) -> None:
        starts.append((time.time(), ctx["score"]))

    fns = [func(noop, name="noop"), func(timed, name="timed")]

    def window(lo: int, hi: int) -> list[float]:
        """Lateness (s) of the started jobs with a score in [lo, hi) ms."""
        return [s - score / 1000 for s, score in starts if lo <= score < hi]

    async def worker(**kw: Any) -> tuple[Any, asyncio.Task[None]]:
        w = Worker(fns, redis_settings=settings, handle_signals=False,
                   max_jobs=ARQ_MAX_JOBS, **{"poll_delay": ARQ_POLL, **kw})
        return w, asyncio.create_task(w.async_run())

    async def stop(w: Any, task: asyncio.Task[None]) -> None:
        while any(not t.done() for t in w.tasks.values()):
            await asyncio.sleep(0.01)
        w.tasks.clear()
        await w.close()
        await asyncio.gather(task, return_exceptions=True)

    async def used() -> int:
        return int((await pool.info("memory"))["used_memory"])

    out: dict[str, Any] = {}
    try:
        # schedule and memory: N deferred an hour.
        await pool.flushall()
        ids = [f"job-{i:07d}" for i in range(n)]
        before = await used()
        gc.collect()
        t0 = time.perf_counter()
        jobs = [await pool.enqueue_job("noop", _job_id=i, _defer_by=3600) for i in ids]
        out["enqueue"] = n / (time.perf_counter() - t0)
        out["memory"] = (await used() - before) / n
        print(f"    arq: enqueue {out['enqueue']:,.0f}/s, {out['memory']:.0f} B/job in Redis",
              flush=True)

        # cancel: Job.abort() of each, a worker with allow_abort_jobs running.
        w, task = await worker(allow_abort_jobs=True)
        gate = asyncio.Semaphore(ARQ_ABORTS_IN_FLIGHT)

        async def abort(job: Any) -> bool:
            async with gate:
                return bool(await job.abort(timeout=60, poll_delay=ARQ_POLL))

        t0 = time.perf_counter()
        aborted = await asyncio.gather(*(abort(j) for j in jobs))
        out["abort"] = n / (time.perf_counter() - t0)
        out["aborted"] = sum(aborted)
        await stop(w, task)
        out["abort_ran"] = w.jobs_complete  # ran to success instead (see the docstring)
        print(f"    arq: abort {out['abort']:,.0f}/s ({out['aborted']:,} of {n:,} confirmed)",
              flush=True)

        # immediate: enqueue without defer, the worker running, until it completed all.
        await pool.flushall()
        w, task = await worker()
        t0 = time.perf_counter()
        for _ in range(n):
            await pool.enqueue_job("noop")
        deadline = time.perf_counter() + 120
        while w.jobs_complete < n and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        out["immediate"] = w.jobs_complete / (time.perf_counter() - t0)
        out["immediate_done"] = w.jobs_complete
        print(f"    arq: immediate {out['immediate']:,.0f}/s", flush=True)

        # burst: burst_n enqueued with one _defer_until, far enough ahead for the enqueue.
        await pool.flushall()
        starts.clear()
        due = time.time() + 0.5 + 1.5 * burst_n / out["enqueue"]
        for _ in range(burst_n):
            await pool.enqueue_job("timed", _defer_until=_at(due))
        out["burst_margin"] = due - time.time()
        deadline = time.time() + 120
        while len(starts) < burst_n and time.time() < deadline:
            await asyncio.sleep(0.01)
        burst = Burst()
        burst.due = starts[0][1] / 1000 if starts else due
        burst.starts = sorted(s for s, _ in starts)
        out["burst"] = burst.figures() if starts else (float("nan"),) * 3
        out["burst_started"] = len(starts)
        await stop(w, task)
        print(f"    arq: burst of {burst_n:,}: first {out['burst'][0]:.1f} ms, last "
              f"{out['burst'][1]:.0f} ms, {out['burst'][2]:,.0f} starts/s", flush=True)

        # lateness: ARQ_RATE due each second, enqueued ahead; tuned, then default poll_delay.
        for key, poll in (("late", ARQ_POLL), ("late_default", 0.5)):
            await pool.flushall()
            starts.clear()
            w, task = await worker(poll_delay=poll)
            m = int(ARQ_RATE * (ARQ_SETTLE + ARQ_LATE_S))
            t0 = time.time() + 0.5 + 1.5 * m / out["enqueue"]
            dues = [_at(t0 + i / ARQ_RATE) for i in range(m)]
            for when in dues:
                await pool.enqueue_job("timed", _defer_until=when)
            start_at = max(t0, time.time()) + ARQ_SETTLE
            stop_at = start_at + ARQ_LATE_S
            lo, hi = int(start_at * 1000), int(stop_at * 1000)  # the scores arq gave them:
            want = sum(1 for when in dues if lo <= to_unix_ms(when) < hi)
            deadline = stop_at + 30

            while time.time() < stop_at or (len(window(lo, hi)) < want
                                            and time.time() < deadline):
                await asyncio.sleep(0.05)
            lat = window(lo, hi)
            out[key] = _ms(lat) if lat else (float("nan"),) * 3
            out[key + "_n"] = (len(lat), want)
            await stop(w, task)
            print(f"    arq: lateness at {ARQ_RATE:,.0f}/s, poll_delay {poll:g} s, ms "
                  f"p50/p99/max {out[key][0]:.1f}/{out[key][1]:.1f}/{out[key][2]:.1f} "
                  f"({len(lat):,} of {want:,})", flush=True)
    finally:
        await pool.flushall()
        await pool.aclose()
    return out


def _arq_skipped(why: str) -> list[Row]:
    return [Row("#18", "arq (rows 1-5: lateness, burst, immediate, memory, cancel): not "
                       "measured", float("nan"), "", "reported when a Redis server can be started",
                False, note=f"skipped: {why}; make bench installs Debian's redis-server "
                            "when missing")]


def _arq_rows(late_ours: tuple[float, float, float],
              burst_ours: tuple[float, float, float]) -> list[Row]:
    binary = shutil.which("redis-server")
    if binary is None:
        return _arq_skipped("redis-server is not on PATH")
    try:
        arq_version = version("arq")
    except PackageNotFoundError:
        return _arq_skipped("arq is not installed (pip install arq; it is in the test extra)")
    try:
        with _Redis(binary) as redis:
            a = asyncio.run(_arq(redis.port, ARQ_N, BURST_N))
    except Exception as exc:  # a failed arq run is a row that says so, not a lost group
        traceback.print_exc()
        return _arq_skipped(f"the arq run failed: {type(exc).__name__}: {exc}")
    n = ARQ_N
    ids = [f"job-{i:07d}" for i in range(n)]
    ours = [asyncio.run(_ours(ids, False)) for _ in range(REPEATS)]
    fill_o, drain_o = median([f for f, _ in ours]), median([d for _, d in ours])
    mem_o = _memory(_ours_pending, ids)
    imm_o = throughput(n, REPEATS)[0].value
    server = Path(binary).name
    setup = (f"arq {arq_version}, Worker max_jobs={ARQ_MAX_JOBS}, poll_delay={ARQ_POLL:g} s "
             f"(defaults 10, 0.5 s); {server} on loopback, no persistence; one run")
    ours_note = f"ours median of {REPEATS} at the same N"
    o50, o99, omax = late_ours
    a50, a99, amax = a["late"]
    d50, d99, dmax = a["late_default"]
    got, want = a["late_n"]
    bf, bl, br = a["burst"]
    rows = [
        Row("#18", f"schedule {n:,} jobs an hour ahead: TaskBucket.fill_nowait vs arq "
                   "enqueue_job(_defer_by=3600)", fill_o, "jobs/s", "reported (side by side)",
            True, baseline=f"arq {a['enqueue']:,.0f}/s", ratio=_x(fill_o, a["enqueue"]),
            note=f"{setup}; awaited one at a time; {ours_note}"),
        Row("#18", f"cancel {n:,} pending jobs: drain_nowait vs arq Job.abort()", drain_o,
            "jobs/s", "reported (side by side)", True, baseline=f"arq {a['abort']:,.0f}/s",
            ratio=_x(drain_o, a["abort"]),
            note=f"{setup}; {ARQ_ABORTS_IN_FLIGHT} aborts in flight (poll_delay "
                 f"{ARQ_POLL:g} s), worker with allow_abort_jobs=True: an abort completes when "
                 f"the worker has recorded the job as cancelled: {a['aborted']:,} of {n:,} "
                 f"confirmed, {a['abort_ran']:,} ran instead (arq makes the job due before "
                 f"flagging it: a worker can start it in between); {ours_note}"),
        Row("#18", f"memory per pending job at {n:,} pending: TaskBucket vs arq (Redis "
                   "used_memory)", mem_o, "B", "reported (side by side)", True,
            baseline=f"arq {a['memory']:.0f} B", ratio=_x(mem_o, a["memory"]),
            note=f"{setup}; Redis INFO used_memory delta / N, ids included (an 11-character "
                 "id, held twice), job pickled by arq; ours tracemalloc, ids excluded"),
        Row("#18", f"firing lateness p99 ({ARQ_RATE:,.0f} due/s for {ARQ_LATE_S:g} s): arq; "
                   f"TaskBucket at {LATE_RATE:,.0f} due/s", o99, "ms", "reported (side by side)",
            True, baseline=f"arq p99 {a99:.1f} ms", ratio=_x(o99, a99),
            note=f"{setup}; ours is the APScheduler row's run, at {LATE_RATE / ARQ_RATE:g}x "
                 f"arq's rate; body start (time.time()) vs the job's score (ms); "
                 f"{got:,} of {want:,} jobs due in the window ran; p50 ours {o50:.3f} ms vs "
                 f"{a50:.1f} ms ({_x(o50, a50)}); max ours {omax:.1f} ms vs {amax:.1f} ms "
                 f"({_x(omax, amax)}); at arq's default poll_delay 0.5 s: p50/p99/max "
                 f"{d50:.0f}/{d99:.0f}/{dmax:.0f} ms ({a['late_default_n'][0]:,} of "
                 f"{a['late_default_n'][1]:,})"),
    ]
    burst_late = ("" if a["burst_margin"] > 0 else
                  f"; the enqueue ran {-a['burst_margin']:.2f} s past the due time (included)")
    bnote = (f"{setup}; {a['burst_started']:,} of {BURST_N:,} started; ours from the "
             f"APScheduler rows' runs{burst_late}")
    rows += [
        Row("#18", f"burst of {BURST_N:,} jobs due at once, first body starts after due: "
                   "TaskBucket vs arq", burst_ours[0], "ms", "reported (side by side)", True,
            baseline=f"arq {bf:.1f} ms", ratio=_x(burst_ours[0], bf), note=bnote),
        Row("#18", f"burst of {BURST_N:,} jobs due at once, starts per second: TaskBucket vs "
                   "arq", burst_ours[2], "starts/s", "reported (side by side)", True,
            baseline=f"arq {br:,.0f}/s", ratio=_x(burst_ours[2], br),
            note=f"{bnote}; jobs / (last start - due); last start arq {bl:.0f} ms after due"),
        Row("#18", f"immediate fill -> finish, no-op job ({n:,} jobs): TaskBucket vs arq",
            imm_o, "jobs/s", "reported (side by side)", True,
            baseline=f"arq {a['immediate']:,.0f}/s", ratio=_x(imm_o, a["immediate"]),
            note=f"{setup}; enqueue_job awaited one at a time, the worker running in the same "
                 f"loop, until it completed them all ({a['immediate_done']:,} of {n:,}); "
                 f"ours bench.local.throughput, {ours_note}"),
    ]
    return rows


def measure(n: int = N, repeats: int = REPEATS) -> list[Row]:
    """The rows: ours, with APScheduler 3 (and arq) as the baseline of each."""
    started = time.perf_counter()
    late, late_ours = _lateness()
    burst, burst_ours = _burst(repeats=repeats)
    rows = late + burst + _immediate(repeats=repeats) + _scheduling(n, repeats)
    rows += _arq_rows(late_ours, burst_ours)
    print(f"    ({time.perf_counter() - started:.0f} s)", flush=True)
    return rows


def main() -> None:
    save("peers", measure())


if __name__ == "__main__":
    main()
