"""Issue 3 targets for the cluster, on loopback with real ``gobucket-node`` subprocesses.

1. Overflow throughput between two nodes vs the local fill rate (same run).
2. Cluster drain latency from the origin vs a bare aiohttp round trip.
3. Balance of overflow over two peers (no over-capacity accepts, no false
   ClusterFullError, occupancy spread).
4. kill -9 detection time with the default GroupConfig, false suspicions
   during the kill cycles, and a ``--soak`` run under continuous overflow
   fill+drain load that counts suspicions.

The origin node is always the in-process ``TaskBucketGroup``; the other nodes
are ``python -m gobucket_py --app bench.app:buckets`` processes whose output
goes to files in a temporary directory (kept, and printed, when a part fails
or a target is not met).
Only processes started here are ever signalled, through their own Popen.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from gobucket_py import (
    BucketConfig,
    ClusterFullError,
    DrainOutcome,
    FillResult,
    GroupClient,
    GroupConfig,
    MemberState,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)
from gobucket_py.cluster.membership import Member
from gobucket_py.cluster.wake import resolve

from .app import Noop
from .common import ROOT, Row, load, median, percentile, save

BOMB = TaskType.TIME_BOMB
APP = "bench.app:buckets"
T = TypeVar("T")

#: Overflow sweep: (batch_size, batch_concurrency, concurrent fills). The first
#: two use the earlier defaults (batch_size 256, batch_concurrency 4); the
#: current ones (1024, 8) are measured by the rows themselves and by
#: ``bench.batching``.
#: Tasks per ``fill_many`` call in the batch-API throughput run.
MANY_WIDTH = 20_000
SWEEP = [(256, 4, 2000), (256, 4, 5000), (1024, 2, 5000), (1024, 4, 5000),
         (4096, 1, 5000), (512, 4, 5000), (256, 8, 5000), (1024, 4, 10000)]

#: The throughput runs' fills start with ``gc.collect(); gc.freeze()`` in the
#: sender's process (and the local baseline's), what the README asks of an
#: app that embeds a group once its startup is done, and what the node
#: runner (the receivers) does once started: the interpreter's objects are
#: left out of the collector's full passes, which come every few thousand
#: fills in these patterns (5,000 fills in flight at once: each's coroutine,
#: task and future live through a few young collections). Each overflow
#: pattern is also run once with nothing frozen, for the note.
#: ``GOBUCKET_BENCH_FREEZE=0`` runs them all with nothing frozen (``bench
#: versus`` sets it: the trees it compares with froze nothing).
FREEZE = os.environ.get("GOBUCKET_BENCH_FREEZE", "1") != "0"


# -- subprocess nodes -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(predicate: Callable[[], T], timeout: float, what: str,
                   interval: float = 0.01) -> T:
    """Poll ``predicate`` without blocking the loop (the origin keeps serving)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


class Node:
    """One ``gobucket-node`` subprocess on loopback."""

    def __init__(self, node_id: str, logdir: Path, *, fast: bool, max_bucket: int,
                 peers: Sequence[str] = (), extra: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.node_id = node_id
        self.extra = list(extra)  # more gobucket-node arguments
        self.env = dict(env or {})  # more environment (BENCH_LAG, ...)
        self.logdir = logdir
        self.fast = fast
        self.max_bucket = max_bucket
        self.peers = list(peers)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def out_path(self) -> Path:
        return self.logdir / f"{self.node_id}.run{self.runs}.out"

    def err_path(self) -> Path:
        return self.logdir / f"{self.node_id}.run{self.runs}.err"

    def launch(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        args = [sys.executable, "-m", "gobucket_py", "--app", APP, "--port", str(self.port),
                "--node-id", self.node_id, "--log-level", "INFO"]
        if self.fast:
            args.append("--fast")
        if self.peers:
            args += ["--peers", ",".join(self.peers)]
        args += self.extra
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GOBUCKET_", "BENCH_"))}
        env.update(PYTHONUNBUFFERED="1", BENCH_MAX=str(self.max_bucket), **self.env)
        with open(self.out_path(), "wb") as out, open(self.err_path(), "wb") as err:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)

    async def wait_listening(self, timeout: float = 20.0) -> None:
        line = f"gobucket-node {self.node_id} listening on {self.addr}"

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited with {self.proc.returncode}:\n"
                                   f"{self.err_path().read_text(errors='replace')[-2000:]}")
            return line in self.out_path().read_text(errors="replace")

        await wait_for(ready, timeout, f"node {self.node_id} to listen", interval=0.02)

    async def start(self) -> None:
        self.launch()
        await self.wait_listening()

    def kill(self) -> None:
        """SIGKILL our own process (no graceful handoff)."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.kill()

    def pause(self) -> None:
        """SIGSTOP our own process: a hung node whose socket still accepts."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGCONT)

    async def wait_exit(self, timeout: float = 10.0) -> None:
        proc = self.proc
        assert proc is not None
        await wait_for(lambda: proc.poll() is not None, timeout,
                       f"node {self.node_id} to exit", interval=0.005)

    async def kill_and_wait(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
            await self.wait_exit()

    def cleanup(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"  warning: node {self.node_id} pid {proc.pid} did not exit",
                  file=sys.stderr)

    def log_size(self) -> int:
        """Bytes in the current run's log so far (a mark for :meth:`log_lines`)."""
        return self.err_path().stat().st_size

    def log_lines(self, since: int, pattern: bytes) -> list[str]:
        """Lines of the current run's log after byte ``since`` that contain
        ``pattern``. Blocking, and the soak's logs run to ~100 MB: call it in
        a thread, so the in-process node keeps answering probes meanwhile."""
        with open(self.err_path(), "rb") as f:
            f.seek(since)
            data = f.read()
        lines = []
        at = data.find(pattern)
        while at != -1:
            start, end = data.rfind(b"\n", 0, at) + 1, data.find(b"\n", at)
            end = len(data) if end == -1 else end
            lines.append(data[start:end].decode(errors="replace"))
            at = data.find(pattern, end)
        return lines

    def log_text(self) -> str:
        return "".join(self.logdir.joinpath(f"{self.node_id}.run{r}.err")
                       .read_text(errors="replace") for r in range(1, self.runs + 1))


def cpu_seconds(node: Node) -> float:
    """User+system CPU seconds of a running node (Linux /proc; 0 elsewhere)."""
    try:
        assert node.proc is not None
        fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def process_cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- the in-process origin ------------------------------------------------------------


@dataclass
class Watch:
    """Membership transitions seen by an origin, via ``membership.on_change``."""

    events: list[tuple[float, str, str | None, str]] = field(default_factory=list)
    #: Nodes this benchmark killed and that have not been seen ALIVE since.
    killed: set[str] = field(default_factory=set)
    false: list[tuple[float, str, str]] = field(default_factory=list)

    def hook(self, group: TaskBucketGroup) -> None:
        membership = group._membership
        assert membership is not None
        previous = membership.on_change
        loop = asyncio.get_running_loop()

        def on_change(member: Member, old: MemberState | None) -> None:
            if previous is not None:
                previous(member, old)
            now = loop.time()
            new = member.state
            self.events.append((now, member.node_id, None if old is None else old.value,
                                new.value))
            if new in (MemberState.SUSPECT, MemberState.DEAD) and (
                    member.node_id not in self.killed):
                self.false.append((now, member.node_id, new.value))

        membership.on_change = on_change

    def bad(self) -> int:
        return len(self.false)


async def origin(peers: Sequence[str], config: GroupConfig, *, max_bucket: int, node_id: str,
                 occupied: bool) -> TaskBucketGroup:
    """Start the in-process node; ``occupied`` fills its one slot so every fill overflows."""
    bucket = TaskBucket(BucketConfig(life_span=600, run_after=300, max_bucket=max_bucket),
                        Noop(), name="jobs")
    if occupied:
        bucket.fill_nowait(BOMB, "occupant")
    group = TaskBucketGroup({"jobs": bucket}, list(peers), port=0, node_id=node_id,
                            config=config)
    await group.start()
    return group


async def stop_quietly(group: TaskBucketGroup) -> None:
    """Drain what is left locally first, so stop has nothing to hand off."""
    for bucket in group.buckets.values():
        for task in list(bucket):
            bucket.drain_nowait(task.id)
    await group.stop()


def alive_with_room(group: TaskBucketGroup, node_ids: Sequence[str], room: int = 1
                    ) -> bool:
    seen = {p.node_id: p for p in group.peers}
    return all(n in seen and seen[n].state is MemberState.ALIVE
               and seen[n].free.get("jobs", 0) >= room for n in node_ids)


# -- fill patterns ---------------------------------------------------------------------


Outcome = FillResult | BaseException


async def fill_chunks(group: TaskBucketGroup, ids: Sequence[str], width: int
                      ) -> list[Outcome]:
    """``asyncio.gather`` over chunks of ``width`` concurrent fills."""
    out: list[Outcome] = []
    for start in range(0, len(ids), width):
        out.extend(await asyncio.gather(
            *(group.fill("jobs", i, None, task_type=BOMB) for i in ids[start:start + width]),
            return_exceptions=True))
    return out


async def fill_futures(group: TaskBucketGroup, ids: Sequence[str], width: int
                       ) -> list[Outcome]:
    """``asyncio.gather`` over chunks of ``width`` ``fill_future`` calls (the
    futures gather takes as they are: no asyncio task per fill)."""
    out: list[Outcome] = []
    for start in range(0, len(ids), width):
        out.extend(await asyncio.gather(
            *(group.fill_future("jobs", i, None, task_type=BOMB)
              for i in ids[start:start + width]),
            return_exceptions=True))
    return out


async def fill_workers(group: TaskBucketGroup, ids: Sequence[str], width: int
                       ) -> list[Outcome]:
    """``width`` long-lived tasks, each awaiting its share of fills in turn (like
    request handlers that each fill): no task is created per fill."""
    out: list[Outcome | None] = [None] * len(ids)

    async def worker(k: int) -> None:
        for j in range(k, len(ids), width):
            try:
                out[j] = await group.fill("jobs", ids[j], None, task_type=BOMB)
            except Exception as exc:
                out[j] = exc

    await asyncio.gather(*(worker(k) for k in range(min(width, len(ids)))))
    return [o for o in out if o is not None]


async def fill_batches(group: TaskBucketGroup, ids: Sequence[str], width: int
                       ) -> list[Outcome]:
    """``group.fill_many`` over chunks of ``width`` tasks."""
    out: list[Outcome] = []
    for start in range(0, len(ids), width):
        out.extend(await group.fill_many("jobs", [(i, None) for i in ids[start:start + width]],
                                         task_type=BOMB))
    return out


#: The group method each pattern calls.
LOCAL_CALL = {"chunks": "fill", "futures": "fill_future", "workers": "fill",
              "fill_many": "fill_many"}

PATTERNS = {"chunks": fill_chunks, "futures": fill_futures, "workers": fill_workers,
            "fill_many": fill_batches}


async def timed_fill(group: TaskBucketGroup, ids: Sequence[str], pattern: str, width: int,
                     frozen: bool = False) -> tuple[float, list[Outcome]]:
    """The rate of one pattern's fills; ``frozen``: with what the process
    holds before them (after a collection) left out of later passes (see
    ``FREEZE``), unfrozen after."""
    gc.collect()
    if frozen:
        gc.freeze()
    try:
        t0 = time.perf_counter()
        out = await PATTERNS[pattern](group, ids, width)
        return len(ids) / (time.perf_counter() - t0), out
    finally:
        gc.unfreeze()


def tally(outcomes: Sequence[Outcome]) -> tuple[int, int, Counter[str]]:
    """(forwarded, local, errors by type)."""
    fwd = loc = 0
    errors: Counter[str] = Counter()
    for o in outcomes:
        if isinstance(o, FillResult):
            if o.forwarded:
                fwd += 1
            else:
                loc += 1
        else:
            errors[type(o).__name__] += 1
    return fwd, loc, errors


# -- 1. overflow throughput ---------------------------------------------------------------


@dataclass
class Run:
    rate: float
    forwarded: int
    n: int
    errors: Counter[str]
    suspicions: int
    cpu: float = 0.0  # the sender's CPU time over the run's wall time


async def local_rate(n: int, pattern: str, width: int, tag: str) -> float:
    group = await origin([], GroupConfig(), max_bucket=n, node_id="local", occupied=False)
    try:
        ids = [f"{tag}-{i}" for i in range(n)]
        rate, out = await timed_fill(group, ids, pattern, width, FREEZE)
        _, loc, errors = tally(out)
        if loc != n:
            raise RuntimeError(f"local baseline: {loc}/{n} local, errors {dict(errors)}")
        return rate
    finally:
        await stop_quietly(group)


async def suspension_rate(n: int, width: int, batch: int = 256) -> float:
    """The workers pattern with nothing but one suspension per "fill": each
    awaits a future that is resolved, ``batch`` at a time, a loop pass later,
    as the library resolves a batch's fills (``wake.resolve``: one callback
    wakes the batch); no bucket, no network, no peer. A fill that waits for
    its peer's answer (it never lies about where the task went) pays at
    least this."""
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future[int]] = []

    def answer() -> None:
        nonlocal waiting
        ready, waiting = waiting, []
        for start in range(0, len(ready), batch):
            loop.call_soon(settle, ready[start:start + batch])

    def settle(chunk: list[asyncio.Future[int]]) -> None:
        resolve(loop, chunk, [1] * len(chunk))

    async def fill() -> int:
        future: asyncio.Future[int] = loop.create_future()
        if not waiting:
            loop.call_soon(answer)
        waiting.append(future)
        return await future

    out = [0] * n

    async def worker(k: int) -> None:
        for j in range(k, n, width):
            out[j] = await fill()

    gc.collect()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(min(width, n))))
    rate = n / (time.perf_counter() - t0)
    assert sum(out) == n
    return rate


async def gather_rate(n: int, width: int) -> float:
    """``asyncio.gather`` alone over chunks of ``width`` coroutines that return
    at once: no bucket, no fill. gather wraps each coroutine in a task, so
    the chunks pattern, local or overflowing, cannot go faster than this."""

    async def nothing(i: int) -> int:
        return i

    gc.collect()
    t0 = time.perf_counter()
    done = 0
    for start in range(0, n, width):
        done += len(await asyncio.gather(*(nothing(i) for i in range(start, min(n, start + width))),
                                         return_exceptions=True))
    rate = n / (time.perf_counter() - t0)
    assert done == n
    return rate


async def overflow_rate(logdir: Path, n: int, pattern: str, width: int, batch_size: int,
                        batch_concurrency: int, tag: str, loop: str = "asyncio",
                        receivers: int = 1, frozen: bool = FREEZE) -> Run:
    """Fresh receiver subprocesses (``receivers`` of them, on event loop
    ``loop``) and a fresh sender (on the running loop) whose one slot is
    taken; ``frozen``: see ``FREEZE``."""
    names = ["recv"] + [f"recv{k}" for k in range(2, receivers + 1)]
    recvs = [Node(name, logdir, fast=True, max_bucket=2_000_000, extra=["--loop", loop])
             for name in names]
    try:
        for recv in recvs:
            await recv.start()
        config = GroupConfig(batch_size=batch_size, batch_concurrency=batch_concurrency)
        group = await origin([recv.addr for recv in recvs], config, max_bucket=1,
                             node_id="send", occupied=True)
        watch = Watch()
        watch.hook(group)
        try:
            await wait_for(lambda: alive_with_room(group, names, n), 10,
                           "the receivers to be alive with room")
            ids = [f"{tag}-{i}" for i in range(n)]
            cpu = time.process_time()
            rate, out = await timed_fill(group, ids, pattern, width, frozen)
            cpu = (time.process_time() - cpu) * rate / n
            fwd, _, errors = tally(out)
            return Run(rate, fwd, n, errors, watch.bad(), cpu)
        finally:
            await stop_quietly(group)
    finally:
        for recv in recvs:
            await recv.kill_and_wait()


async def throughput(logdir: Path, n: int = 100_000, sweep_n: int = 50_000,
                     repeats: int = 5, loop: str = "asyncio") -> list[Row]:
    """The overflow rows; ``loop``: the receiver's event loop (the sender's
    is the running one). The sweep runs on asyncio only."""
    # Sweep batch settings and concurrency once with a shorter run, for
    # information; the reported figures use the library's defaults (what a
    # user gets), in fresh runs.
    sweep: list[tuple[float, tuple[int, int, int]]] = []
    for bs, bc, width in SWEEP if loop == "asyncio" else []:
        run = await overflow_rate(logdir, sweep_n, "chunks", width, bs, bc, f"s{bs}-{bc}-{width}")
        ok = run.forwarded == run.n
        print(f"    sweep batch_size={bs} batch_concurrency={bc} concurrent={width}: "
              f"{run.rate:,.0f}/s{'' if ok else f' ERRORS {dict(run.errors)}'}", flush=True)
        if ok:
            sweep.append((run.rate, (bs, bc, width)))
    if not sweep and loop == "asyncio":
        raise RuntimeError("every sweep run had failed fills")
    defaults = GroupConfig()
    bs, bc, width = defaults.batch_size, defaults.batch_concurrency, 5_000
    sweep_note = ", ".join(f"{b}/{c}/{w}: {r / 1e3:.1f}k" for r, (b, c, w) in sweep)
    rows = []
    for pattern in ("chunks", "futures", "workers", "fill_many"):
        if pattern == "fill_many":
            width = MANY_WIDTH
        over: list[Run] = []
        loc: list[float] = []
        alone: list[float] = []
        for rep in range(repeats):
            loc.append(await local_rate(n, pattern, width, f"l{pattern}{rep}"))
            if pattern == "workers":
                alone.append(await suspension_rate(n, width))
            elif pattern in ("chunks", "futures"):
                alone.append(await gather_rate(n, width))
            over.append(await overflow_rate(logdir, n, pattern, width, bs, bc,
                                            f"o{pattern}{rep}", loop))
            if FREEZE and rep == 0:
                unfrozen = await overflow_rate(logdir, n, pattern, width, bs, bc,
                                               f"u{pattern}", loop, frozen=False)
            print(f"    {pattern} rep {rep}: local {loc[-1]:,.0f}/s, overflow "
                  f"{over[-1].rate:,.0f}/s ({over[-1].forwarded:,}/{n:,} forwarded, sender "
                  f"CPU {over[-1].cpu:.0%})"
                  + (f", {'one suspension' if pattern == 'workers' else 'gather'} alone "
                     f"{alone[-1]:,.0f}/s" if alone else ""),
                  flush=True)
        mo, ml = median([r.rate for r in over]), median(loc)
        all_fwd = all(r.forwarded == r.n for r in over)
        errors = sum((r.errors for r in over), Counter())
        sus = sum(r.suspicions for r in over)
        how = {"chunks": f"{width:,} fills per asyncio.gather chunk",
               "futures": f"{width:,} group.fill_future per asyncio.gather chunk",
               "workers": f"{width:,} worker tasks each awaiting fills in turn",
               "fill_many": f"group.fill_many of {width:,} tasks per call, calls in turn"}[pattern]
        note = (f"{how}; sender GroupConfig(batch_size={bs}, batch_concurrency={bc}), "
                f"default timers, no secret; receiver subprocess --fast; every fill "
                f"forwarded: {'yes' if all_fwd else f'NO ({dict(errors)})'}; sender saw "
                f"{sus} suspicion(s) of the receiver; runs "
                f"{', '.join(f'{r.rate / 1e3:.1f}k' for r in over)}/s; "
                + (f"each run's fills (and the local baseline's) start with gc.collect(); "
                   f"gc.freeze(), as the README asks of an embedding app; one more run with "
                   f"nothing frozen: {unfrozen.rate / 1e3:.1f}k/s" if FREEZE else
                   "nothing frozen (GOBUCKET_BENCH_FREEZE=0)"))
        if pattern == "chunks" and sweep:
            note += (f"; best of sweep (batch_size/batch_concurrency/concurrent: "
                     f"tasks/s, {sweep_n:,} tasks each): {sweep_note}")
        rows.append(Row(
            "#3", f"overflow throughput, 2 nodes on loopback ({n:,} time-bombs, {pattern})",
            mo, "tasks/s", ">= 50,000/s and >= 0.5x local fill",
            mo >= 50_000 and mo >= 0.5 * ml and all_fwd,
            baseline=f"local group.{LOCAL_CALL[pattern]} "
                     f"{ml:,.0f}/s (same pattern)",
            ratio=f"{mo / ml:.2f}x local", note=note))
        cpu = median([r.cpu for r in over])
        why = (f"sender CPU {cpu:.0%} of the run (median): "
               + ("the sender is the bottleneck" if cpu >= 0.9 else
                  "the sender waits for the receiver (one core each), whose work per "
                  "task is decoding and checking it and a fill (a cold one for "
                  "time-bombs due after 2 s)"))
        if alone and pattern in ("chunks", "futures"):
            ceiling = median(alone)
            why += (f"; asyncio.gather alone over coroutines that return at once (a task "
                    f"each, as for fill's coroutines; same chunks, same run) "
                    f"{ceiling:,.0f}/s: {1e6 / ceiling:.2f} us per task, of the "
                    f"{1e6 / ml:.2f} us a local fill takes in this pattern")
        elif alone:
            us_s, us_l, us_o = 1e6 / median(alone), 1e6 / ml, 1e6 / mo
            rest = 1.25 * us_l - us_s
            why += (f"; per task: a local fill {us_l:.2f} us, an overflowing one "
                    f"{us_o:.2f} us, of which {us_s:.2f} us is the one suspension it cannot "
                    f"avoid (it waits for the peer's answer: workers awaiting futures "
                    f"resolved 256 a loop pass as the library wakes them, nothing else, "
                    f"same run); 0.8x local "
                    f"would leave {rest:.2f} us for the rest (encode, place, send, "
                    f"settle), {'less' if rest < us_l else 'more'} than the local fill "
                    f"itself")
        rows.append(Row(
            "#18", f"overflow throughput, 2 nodes on loopback ({n:,} time-bombs, {pattern}), "
            "against local", mo, "tasks/s", ">= 100,000/s and >= 0.8x local fill",
            mo >= 100_000 and mo >= 0.8 * ml and all_fwd,
            baseline=f"local {ml:,.0f}/s (same pattern)", ratio=f"{mo / ml:.2f}x local",
            note=f"the runs of the #3 row above; {why}"))
        if loop == "asyncio" and pattern in ("workers", "fill_many"):
            rows.append(await three_nodes(logdir, n, pattern, width, bs, bc, repeats, ml))
    return rows


async def three_nodes(logdir: Path, n: int, pattern: str, width: int, batch_size: int,
                      batch_concurrency: int, repeats: int, local: float) -> Row:
    """The overflow rate with two receivers (two candidates: two choices per
    task), for information: on this 2-core machine three processes share
    two cores, so it is not the 2-node figure's match."""
    over = [await overflow_rate(logdir, n, pattern, width, batch_size, batch_concurrency,
                                f"t{pattern}{rep}", receivers=2) for rep in range(repeats)]
    print(f"    {pattern}, 3 nodes: "
          f"{', '.join(f'{r.rate:,.0f}/s' for r in over)}", flush=True)
    rate = median([r.rate for r in over])
    all_fwd = all(r.forwarded == r.n for r in over)
    errors = sum((r.errors for r in over), Counter())
    return Row(
        "#18", f"overflow throughput, 3 nodes on loopback (one sender, two receivers; "
        f"{n:,} time-bombs, {pattern})", rate, "tasks/s",
        "every fill forwarded (the rate is reported: the issue's targets are for 2 nodes)",
        all_fwd, baseline=f"local {local:,.0f}/s (same pattern, the 2-node row's runs)",
        ratio=f"{rate / local:.2f}x local",
        note=f"median of {repeats} runs, each with fresh nodes: "
             f"{', '.join(f'{r.rate / 1e3:.1f}k' for r in over)}/s; every fill forwarded: "
             f"{'yes' if all_fwd else f'NO ({dict(errors)})'}; sender CPU "
             f"{median([r.cpu for r in over]):.0%} (median); three processes on two cores")


# -- 2. cluster drain latency --------------------------------------------------------------


async def drain_latency(logdir: Path, n: int = 2000, rounds: int = 3) -> list[Row]:
    recv = Node("recv", logdir, fast=True, max_bucket=100_000)
    try:
        await recv.start()
        group = await origin([recv.addr], GroupConfig(), max_bucket=1, node_id="send",
                             occupied=True)
        try:
            await wait_for(lambda: alive_with_room(group, ["recv"], n), 10,
                           "the receiver to be alive with room")
            url = f"http://{recv.addr}/v1/nope"
            p50s, p99s, b50s, b99s = [], [], [], []
            bad: Counter[str] = Counter()
            pc = time.perf_counter
            async with aiohttp.ClientSession() as session:
                for rnd in range(rounds):
                    ids = [f"d{rnd}-{i}" for i in range(n)]
                    out = await fill_chunks(group, ids, 100)
                    fwd, _, errors = tally(out)
                    if fwd != n:
                        raise RuntimeError(f"only {fwd}/{n} forwarded: {dict(errors)}")
                    gc.collect()
                    times, base = [], []
                    for task_id in ids:  # interleaved: both see the same noise
                        t0 = pc()
                        async with session.post(url, data=b"\x80") as resp:
                            await resp.read()
                        base.append(pc() - t0)
                        assert resp.status == 404
                        t0 = pc()
                        result = await group.drain("jobs", task_id)
                        times.append(pc() - t0)
                        if result.outcome is not DrainOutcome.DRAINED:
                            bad[result.outcome.value] += 1
                    p50s.append(percentile(times, 50) * 1e3)
                    p99s.append(percentile(times, 99) * 1e3)
                    b50s.append(percentile(base, 50) * 1e3)
                    b99s.append(percentile(base, 99) * 1e3)
                    print(f"    round {rnd}: drain p50 {p50s[-1]:.3f} p99 {p99s[-1]:.3f} ms; "
                          f"bare POST p50 {b50s[-1]:.3f} p99 {b99s[-1]:.3f} ms", flush=True)
        finally:
            await stop_quietly(group)
    finally:
        await recv.kill_and_wait()
    p50, p99, b50, b99 = median(p50s), median(p99s), median(b50s), median(b99s)
    ok = not bad
    return [Row(
        "#3", f"cluster drain from the origin, p99 ({n:,} forwarded time-bombs, sequential)",
        p99, "ms", "p99 <= 3 ms", p99 <= 3.0 and ok,
        baseline=f"aiohttp POST /v1/nope (404) p50 {b50:.3f} / p99 {b99:.3f} ms",
        ratio=f"{p99 / b99:.2f}x (p99)",
        note=f"p50 {p50:.3f} ms ({p50 / b50:.2f}x bare p50); median of {rounds} rounds "
             f"(p99s {', '.join(f'{x:.2f}' for x in p99s)} ms); all DRAINED: "
             f"{'yes' if ok else f'NO {dict(bad)}'}; no secret")]


# -- 3. balance -------------------------------------------------------------------------


async def balance(logdir: Path, n: int = 2500, cap: int = 1000, chunk: int = 100,
                  rounds: int = 3) -> list[Row]:
    nodes: list[Node] = []
    group: TaskBucketGroup | None = None
    try:
        a = Node("peer-a", logdir, fast=True, max_bucket=cap)
        b = Node("peer-b", logdir, fast=True, max_bucket=cap)
        nodes = [a, b]
        group = g = await origin([a.addr, b.addr], GroupConfig.local(), max_bucket=cap,
                                 node_id="origin", occupied=False)
        a.peers, b.peers = [g.address, b.addr], [g.address, a.addr]
        for node in nodes:
            node.launch()
        await asyncio.gather(*(node.wait_listening() for node in nodes))
        names = [node.node_id for node in nodes]
        spreads, over_caps, false_full, others = [], 0, 0, Counter[str]()
        detail = []
        for rnd in range(rounds):
            await wait_for(lambda: alive_with_room(g, names, cap), 15,
                           "both peers alive and empty")
            ids = [f"b{rnd}-{i}" for i in range(n)]
            out = await fill_chunks(g, ids, chunk)
            placed = Counter(o.node_id for o in out if isinstance(o, FillResult))
            full = sum(isinstance(o, ClusterFullError) for o in out)
            # Total capacity is 3 x cap > n and nothing else fills: every
            # ClusterFullError was raised while the cluster had room.
            false_full += full
            others.update(type(o).__name__ for o in out
                          if not isinstance(o, FillResult | ClusterFullError))
            live = {"origin": len(g.buckets["jobs"])}
            for node in nodes:
                async with GroupClient(node.addr) as client:
                    stats = await client.stats()
                live[node.node_id] = int(stats["buckets"]["jobs"]["live"])
            over_caps += sum(max(0, v - cap) for v in live.values())
            if any(placed.get(k, 0) != v for k, v in live.items()):
                others["tally != live"] += 1
            pa, pb = live["peer-a"], live["peer-b"]
            spreads.append(abs(pa - pb) / max(pa, pb, 1))
            detail.append(f"{live['origin']}/{pa}/{pb}")
            print(f"    round {rnd}: origin/peer-a/peer-b live {detail[-1]}, "
                  f"ClusterFullError {full}", flush=True)
            # Empty the cluster for the next round: drain every task from the origin.
            drained = await gather_chunks([g.drain("jobs", i) for i in ids], chunk)
            if sum(d.outcome is DrainOutcome.DRAINED for d in drained) != n - full:
                others["drain misses"] += 1
    finally:
        if group is not None:
            await stop_quietly(group)
        for node in nodes:
            node.cleanup()
    spread = median(spreads)
    clean = not others
    setup = (f"origin in-process + 2 subprocess peers, max_bucket {cap} each, {n:,} "
             f"time-bombs filled at the origin {chunk} at a time, {rounds} rounds; "
             f"GroupConfig.local()")
    return [
        Row("#3", "balance: accepts over capacity (sum over nodes and rounds)", over_caps,
            "tasks", "0", over_caps == 0 and clean,
            note=f"{setup}; live origin/peer-a/peer-b per round: {', '.join(detail)}"
                 + ("" if clean else f"; anomalies {dict(others)}")),
        Row("#3", "balance: ClusterFullError while the cluster had room", false_full,
            "fills", "0", false_full == 0,
            note=f"capacity {3 * cap:,} > {n:,} filled, so any ClusterFullError is one"),
        Row("#3", "balance: peer occupancy spread abs(a-b)/max(a,b)", spread * 100, "%",
            "<= 5%", spread <= 0.05,
            note=f"median of {rounds} rounds: {', '.join(f'{s:.1%}' for s in spreads)}"),
    ]


async def gather_chunks(coros: list[Awaitable[T]], width: int) -> list[T]:
    out: list[T] = []
    for start in range(0, len(coros), width):
        out.extend(await asyncio.gather(*coros[start:start + width]))
    return out


# -- 4. failure detection and false suspicions ------------------------------------------------


async def detection(logdir: Path, soak: float, kills: int = 10, stops: int = 5,
                    load_width: int = 1000) -> list[Row]:
    nodes: list[Node] = []
    group: TaskBucketGroup | None = None
    loop = asyncio.get_running_loop()
    try:
        nodes = [Node(f"n{i}", logdir, fast=False, max_bucket=200_000) for i in range(3)]
        group = g = await origin([n.addr for n in nodes], GroupConfig(), max_bucket=1,
                                 node_id="observer", occupied=True)
        watch = Watch()
        watch.hook(g)
        for node in nodes:
            node.peers = [g.address] + [m.addr for m in nodes if m is not node]
            node.launch()
        await asyncio.gather(*(node.wait_listening() for node in nodes))
        names = [node.node_id for node in nodes]
        await wait_for(lambda: alive_with_room(g, names), 15,
                       "all three nodes alive")
        members = g._members.members

        async def cycles(count: int, how: str) -> tuple[list[float], int]:
            """Kill (SIGKILL, then restart) or hang (SIGSTOP, then SIGCONT) one node at
            a time; time from the signal to DEAD on the observer; wait until ALIVE."""
            times: list[float] = []
            failures = 0
            for k in range(count):
                victim = nodes[k % len(nodes)]
                await wait_for(lambda: alive_with_room(g, names), 15, "all three nodes alive")
                await asyncio.sleep(0.3 + 0.5 * k / count)  # vary the phase vs the probe loop
                watch.killed.add(victim.node_id)
                seen = len(watch.events)
                t_signal = loop.time()
                if how == "kill":
                    victim.kill()
                else:
                    victim.pause()
                try:
                    await wait_for(lambda v=victim: members[v.node_id].state
                                   is MemberState.DEAD, 15, f"{victim.node_id} to be DEAD")
                except TimeoutError:
                    failures += 1
                else:
                    t_dead = next(t for t, node_id, _, new in watch.events[seen:]
                                  if node_id == victim.node_id and new == "dead")
                    times.append(t_dead - t_signal)
                    print(f"    {how} {k} ({victim.node_id}): DEAD after "
                          f"{times[-1] * 1e3:.0f} ms", flush=True)
                if how == "kill":
                    await victim.wait_exit()
                    await victim.start()
                else:
                    victim.resume()
                await wait_for(lambda v=victim: members[v.node_id].state
                               is MemberState.ALIVE, 15, f"{victim.node_id} to be ALIVE again")
                watch.killed.discard(victim.node_id)
            return times, failures

        t_start = loop.time()
        times, failures = await cycles(kills, "kill")
        hung, hung_failures = await cycles(stops, "stop")
        kill_secs = loop.time() - t_start
        kill_false = list(watch.false)

        # Soak: continuous overflow fill + drain from the observer; count suspicions.
        await wait_for(lambda: alive_with_room(g, names), 15,
                       "all three nodes alive")
        log_marks = [node.log_size() for node in nodes]
        watch.false.clear()
        filled = drained = failed = 0
        errors: Counter[str] = Counter()
        t0 = loop.time()
        cpu0 = [cpu_seconds(node) for node in nodes], process_cpu()
        rnd = 0
        while loop.time() - t0 < soak:
            ids = [f"s{rnd}-{i}" for i in range(load_width)]
            rnd += 1
            out = await asyncio.gather(*(g.fill("jobs", i, None, task_type=BOMB)
                                         for i in ids), return_exceptions=True)
            ok_ids = [o.task_id for o in out if isinstance(o, FillResult)]
            filled += len(ok_ids)
            failed += len(out) - len(ok_ids)
            errors.update(type(o).__name__ for o in out if not isinstance(o, FillResult))
            res = await asyncio.gather(*(g.drain("jobs", i) for i in ok_ids),
                                       return_exceptions=True)
            drained += sum(1 for r in res if not isinstance(r, BaseException)
                           and r.outcome is DrainOutcome.DRAINED)
            errors.update(type(r).__name__ for r in res if isinstance(r, BaseException))
        soak_secs = loop.time() - t0
        node_cpu = sum(cpu_seconds(n) - c for n, c in zip(nodes, cpu0[0], strict=True))
        own_cpu = process_cpu() - cpu0[1]
        soak_false = list(watch.false)
        # Off the loop: reading ~100 MB of INFO logs here once blocked the
        # observer for over a second, and a node suspected it for that.
        found = await asyncio.gather(*(
            asyncio.to_thread(node.log_lines, mark, b"event=peer_")
            for node, mark in zip(nodes, log_marks, strict=True)))
        node_lines = [f"{node.node_id}: {line.split(' event=')[1][:60]}"
                      for node, lines in zip(nodes, found, strict=True) for line in lines
                      if "event=peer_suspect" in line or "event=peer_dead" in line]
    finally:
        if group is not None:
            await stop_quietly(group)
        for node in nodes:
            node.cleanup()
    p50 = percentile(times, 50) if times else float("nan")
    p99 = percentile(times, 99) if times else float("nan")
    h50 = percentile(hung, 50) if hung else float("nan")
    h99 = percentile(hung, 99) if hung else float("nan")
    cfg = GroupConfig()
    bound = cfg.probe_interval + 2 * cfg.probe_timeout + cfg.suspicion_timeout
    print(f"    soak: {soak_secs:.0f} s, {filled:,} fills, {drained:,} drains, "
          f"observer suspicions {len(soak_false)}, node-log suspicions {len(node_lines)}",
          flush=True)
    rows = [
        Row("#3", f"kill -9 detection time p99 (default GroupConfig, {len(times)} kills)",
            p99, "s", "p99 <= 3 s", p99 <= 3.0 and failures == 0,
            baseline=f"documented bound probe_interval + 2 x probe_timeout + "
                     f"suspicion_timeout = {bound:.1f} s",
            ratio=f"{p99 / bound:.2f}x bound",
            note=f"p50 {p50:.2f} s, max {max(times, default=float('nan')):.2f} s; time from "
                 f"SIGKILL to MemberState.DEAD on an in-process observer, 3 subprocess nodes "
                 f"(no --fast), victim restarted and seen ALIVE between kills"
                 + (f"; {failures} kill(s) not detected within 15 s" if failures else "")),
        Row("#3", f"hung node (SIGSTOP) detection time p99 (default GroupConfig, "
                  f"{len(hung)} stops)", h99, "s", "p99 <= 3 s (not in the issue; kill -9's)",
            h99 <= 3.0 and hung_failures == 0,
            baseline=f"documented bound {bound:.1f} s", ratio=f"{h99 / bound:.2f}x bound",
            note=f"p50 {h50:.2f} s, max {max(hung, default=float('nan')):.2f} s; the stopped "
                 f"node's socket still accepts, so probes time out instead of being refused; "
                 f"SIGCONT between stops"
                 + (f"; {hung_failures} not detected within 15 s" if hung_failures else "")),
        Row("#3", f"false suspicions by the observer during the kill/stop cycles "
                  f"({kill_secs:.0f} s, idle)", len(kill_false), "events", "0",
            not kill_false,
            note="SUSPECT/DEAD of a node that was not killed or stopped, via "
                 "membership.on_change"
                 + (f": {kill_false[:5]}" if kill_false else "")),
        Row("#3", f"false suspicions under continuous overflow fill+drain load "
                  f"({soak_secs:.0f} s run)",
            len(soak_false) + len(node_lines), "events", "0 in 10 min of full load",
            not soak_false and not node_lines and soak_secs >= 600,
            note=f"ran {soak_secs:.0f} s (--soak {soak:g}; the target needs >= 600 s); "
                 f"observer (default GroupConfig) saw {len(soak_false)}, the 3 nodes' logs "
                 f"{len(node_lines)}; load: rounds of {load_width:,} concurrent overflow "
                 f"fills then their drains, {filled / soak_secs:,.0f} fills/s + "
                 f"{drained / soak_secs:,.0f} drains/s, {failed} failed fills; CPU: observer "
                 f"{own_cpu / soak_secs:.0%}, 3 nodes {node_cpu / soak_secs:.0%} of one core"
                 + (f", errors {dict(errors)}" if errors else "")
                 + (f"; observer: {soak_false[:3]}" if soak_false else "")
                 + (f"; nodes: {node_lines[:3]}" if node_lines else "")),
    ]
    return rows


# -- entry point ----------------------------------------------------------------------------


def failed_row(part: str, exc: BaseException) -> Row:
    return Row("#3", f"{part} (FAILED)", float("nan"), "", "-", False,
               note=f"{type(exc).__name__}: {str(exc)[:200]}")


#: Each part's name (``--only``) and the names its rows start with.
PART_ROWS = {"throughput": ("overflow throughput",),
             "drain": ("cluster drain",), "balance": ("balance",),
             "detection": ("kill -9", "hung node", "false suspicions")}


async def run_all(soak: float, logdir: Path, only: str | None = None
                  ) -> tuple[list[Row], bool]:
    rows: list[Row] = []
    ok = True
    parts: list[tuple[str, Callable[[], Awaitable[list[Row]]]]] = [
        ("throughput", lambda: throughput(logdir)),
        ("drain", lambda: drain_latency(logdir)),
        ("balance", lambda: balance(logdir)),
        ("detection", lambda: detection(logdir, soak)),
    ]
    for name, part in parts:
        if only and name != only:
            continue
        print(f"  {name}", flush=True)
        t0 = time.perf_counter()
        try:
            rows.extend(await part())
        except Exception as exc:
            traceback.print_exc()
            rows.append(failed_row(name, exc))
            ok = False
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows, ok


def main(args: Any = None) -> None:
    soak = float(getattr(args, "soak", 600.0))
    only = getattr(args, "only", None)
    # Suspicions are counted through membership.on_change; keep stderr readable.
    logging.getLogger("gobucket_py").setLevel(logging.ERROR)
    logdir = Path(tempfile.mkdtemp(prefix="gobucket-bench-"))
    rows, ok = asyncio.run(run_all(soak, logdir, only))
    if only:  # keep the other parts' saved rows, with the fresh ones in their place
        saved = load("cluster")
        mine = [i for i, r in enumerate(saved) if r.name.startswith(PART_ROWS[only])]
        at = mine[0] if mine else len(saved)
        kept = [r for i, r in enumerate(saved) if i not in mine]
        rows = kept[:at] + rows + kept[at:]
    save("cluster", rows)
    if ok and all(r.met for r in rows):
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        print(f"  node logs kept in {logdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
