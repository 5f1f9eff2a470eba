"""Overflow batch settings: the forwarding rate, and how late each node's own
timers run meanwhile (``python -m bench batching``).

Bigger batches and more of them in flight forward faster (issue 18, target
6), but a node holds its loop longer per batch: the receiver taking one,
the sender packing and settling one. This measures both, for the earlier
defaults (``batch_size`` 256, ``batch_concurrency`` 4) and the current
ones, in the same run: a fresh receiver subprocess with a
:class:`~bench.app.LoopLag` probe (a timer due every millisecond), an
in-process sender with its own, and 100,000 time-bombs forwarded by
``fill_many`` (20,000 per call) and by 5,000 workers filling one at a time.
The lag of an idle node is the baseline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from gobucket_py import GroupConfig

from .app import LoopLag
from .cluster import (
    MANY_WIDTH,
    Node,
    alive_with_room,
    local_rate,
    origin,
    stop_quietly,
    tally,
    timed_fill,
    wait_for,
)
from .common import Row, median, percentile, save

#: Runs per setting and pattern; the figures are their medians.
REPEATS = 3
#: Time-bombs forwarded per run.
TASKS = 100_000
#: The earlier defaults, measured beside the current ones.
EARLIER = (256, 4)


def _read_lags(path: Path) -> list[float]:
    return [float(x) for x in json.loads(path.read_text())]


async def _receiver_lags(path: Path, timeout: float = 5.0) -> list[float]:
    """The lags the receiver's probe wrote (after SIGUSR1), in seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return _read_lags(path)
        except (OSError, ValueError):
            await asyncio.sleep(0.02)
    raise RuntimeError(f"the receiver's loop-lag probe wrote nothing to {path}")


async def one_run(logdir: Path, pattern: str, batch_size: int, concurrency: int, tag: str
                  ) -> tuple[float, list[float], list[float]]:
    """(tasks/s, receiver lags, sender lags) of one overflow run."""
    lagfile = logdir / f"lag-{tag}.json"
    recv = Node("recv", logdir, fast=True, max_bucket=2_000_000,
                env={"BENCH_LAG": str(lagfile)})
    try:
        await recv.start()
        assert recv.proc is not None
        config = GroupConfig(batch_size=batch_size, batch_concurrency=concurrency)
        group = await origin([recv.addr], config, max_bucket=1, node_id="send", occupied=True)
        try:
            await wait_for(lambda: alive_with_room(group, ["recv"], TASKS), 10,
                           "the receiver to be alive with room")
            probe = LoopLag()
            await asyncio.sleep(0.05)
            os.kill(recv.proc.pid, signal.SIGUSR2)  # the receiver's window starts
            probe.lates.clear()
            ids = [f"{tag}-{i}" for i in range(TASKS)]
            width = MANY_WIDTH if pattern == "fill_many" else 5_000
            rate, out = await timed_fill(group, ids, pattern, width)
            sender = list(probe.lates)
            probe.stop()
            os.kill(recv.proc.pid, signal.SIGUSR1)
            receiver = await _receiver_lags(lagfile)
            forwarded, _, errors = tally(out)
            if forwarded != TASKS:
                raise RuntimeError(f"{forwarded:,}/{TASKS:,} forwarded: {dict(errors)}")
            return rate, receiver, sender
        finally:
            await stop_quietly(group)
    finally:
        await recv.kill_and_wait()


async def idle_lag(logdir: Path) -> list[float]:
    """The receiver's probe with nothing to do for a second: the baseline."""
    lagfile = logdir / "lag-idle.json"
    recv = Node("idle", logdir, fast=True, max_bucket=1000, env={"BENCH_LAG": str(lagfile)})
    try:
        await recv.start()
        assert recv.proc is not None
        os.kill(recv.proc.pid, signal.SIGUSR2)
        await asyncio.sleep(1.0)
        os.kill(recv.proc.pid, signal.SIGUSR1)
        return await _receiver_lags(lagfile)
    finally:
        await recv.kill_and_wait()


def _ms(lags: list[float], q: float) -> float:
    return percentile(lags, q) * 1e3


async def measure(logdir: Path) -> list[Row]:
    defaults = GroupConfig()
    current = (defaults.batch_size, defaults.batch_concurrency)
    settings = [EARLIER] + ([current] if current != EARLIER else [])
    idle = await idle_lag(logdir)
    base = f"idle node: p99 {_ms(idle, 99):.2f} ms, max {max(idle) * 1e3:.2f} ms"
    rows: list[Row] = []
    for pattern in ("fill_many", "workers"):
        width = MANY_WIDTH if pattern == "fill_many" else 5_000
        locals_: list[float] = []
        local_p99: list[float] = []
        local_max: list[float] = []
        for rep in range(REPEATS):
            probe = LoopLag()
            locals_.append(await local_rate(TASKS, pattern, width, f"l{pattern}{rep}"))
            probe.stop()
            local_p99.append(_ms(probe.lates, 99))
            local_max.append(max(probe.lates) * 1e3)
        local = median(locals_)
        local_lag = (f"the same fills kept local (no peer): p99 {median(local_p99):.1f} ms, "
                     f"max {median(local_max):.1f} ms")
        for size, concurrency in settings:
            rates: list[float] = []
            recv_p99: list[float] = []
            recv_max: list[float] = []
            send_p99: list[float] = []
            send_max: list[float] = []
            for rep in range(REPEATS):
                rate, receiver, sender = await one_run(
                    logdir, pattern, size, concurrency, f"{pattern}{size}-{concurrency}-{rep}")
                rates.append(rate)
                recv_p99.append(_ms(receiver, 99))
                recv_max.append(max(receiver) * 1e3)
                send_p99.append(_ms(sender, 99))
                send_max.append(max(sender) * 1e3)
                print(f"    {pattern} batch_size={size} batch_concurrency={concurrency} rep "
                      f"{rep}: {rate:,.0f}/s; receiver lag p99 {recv_p99[-1]:.2f} ms max "
                      f"{recv_max[-1]:.2f} ms; sender lag p99 {send_p99[-1]:.2f} ms max "
                      f"{send_max[-1]:.2f} ms", flush=True)
            which = "current defaults" if (size, concurrency) == current else "earlier defaults"
            label = (f"{pattern}, batch_size={size}, batch_concurrency={concurrency} "
                     f"({which})")
            rate = median(rates)
            runs = ", ".join(f"{r / 1e3:.1f}k" for r in rates)
            rows.append(Row(
                "#18", f"overflow rate, {TASKS:,} time-bombs, {label}", rate, "tasks/s",
                ">= 100,000/s and >= 0.8x local fill",
                rate >= 100_000 and rate >= 0.8 * local,
                baseline=f"local {local:,.0f}/s (same pattern, same run)",
                ratio=f"{rate / local:.2f}x local",
                note=f"runs {runs}/s; receiver subprocess --fast, in-process sender. For "
                     f"information, the sender's loop lag (a timer due every 1 ms on the loop "
                     f"that also runs the fills, its full GC passes included): p99 "
                     f"{median(send_p99):.1f} ms, max {median(send_max):.1f} ms; {local_lag} "
                     f"(a local fill never yields: the pattern holds the loop throughout)"))
            p99, worst = median(recv_p99), median(recv_max)
            rows.append(Row(
                "#18", f"receiver loop lag p99 while forwarded to, {label}", p99, "ms",
                "<= 2 ms (target 1's bound)", p99 <= 2.0, baseline=base,
                note=f"a timer due every 1 ms on the receiver's loop, median of "
                     f"{REPEATS} runs; max {worst:.2f} ms (each run's: "
                     f"{', '.join(f'{m:.1f}' for m in recv_max)} ms)"))
    return rows


def main(args: Any = None) -> None:
    logging.getLogger("gobucket_py").setLevel(logging.ERROR)
    logdir = Path(tempfile.mkdtemp(prefix="gobucket-bench-"))
    rows = asyncio.run(measure(logdir))
    save("batching", rows)
    shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main()
