"""Issue 13 figures: what replicas cost, and how fast a crash is recovered.

``python -m bench replicas``. Each figure with ``replicas=1`` is measured next
to ``replicas=0`` in the same run:

- fill throughput: an in-process node fills 100,000 time-bombs into its own
  bucket (``fill_many`` of 1,000, and 5,000 concurrent ``fill``); with
  ``replicas=1`` each is backed up on a ``gobucket-node`` subprocess over
  loopback before the fill returns. Target: >= 0.5x of ``replicas=0``.
- drain p99: 2,000 sequential drains of pending replicated time-bombs (each
  drops its backup first). Target: <= 2 ms.
- memory per backup: bytes allocated (tracemalloc) per backup record held,
  100,000 records without payload. Target: <= 300 B plus payload.
- recovery: three ``gobucket-node --replicas 1`` subprocesses; one holding
  2,000 pending time-bombs (filled through it) is killed with SIGKILL; the
  time from the kill until the survivors hold all of them again. Target:
  p99 <= 3 s (median and max reported). Three ways: restarted at once
  (``--fast`` timers: the new boot id proves it gone; 5 kills), left dead
  with ``--promote-after 0`` and the default timers (the backups take over
  once the survivors declare it dead; 5 kills), and left dead with the
  default ``promote_after`` (``lost_after``, 30 s; 3 kills).
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from gobucket_py import GroupClient, GroupConfig, MemoryNetwork, TaskBucket, TaskBucketGroup
from gobucket_py.cluster.membership import Member

from .cluster import (
    BOMB,
    MANY_WIDTH,
    Node,
    Noop,
    alive_with_room,
    origin,
    stop_quietly,
    tally,
    timed_fill,
    wait_for,
)
from .common import Row, median, percentile, save

N = 100_000
DRAINS = 2_000
RECORDS = 100_000
KILLS = 5
HELD = 2_000


def replica_node(node_id: str, logdir: Path, *, fast: bool, max_bucket: int) -> Node:
    """A ``gobucket-node`` subprocess with ``--replicas 1``."""
    return Node(node_id, logdir, fast=fast, max_bucket=max_bucket, extra=["--replicas", "1"])


async def fill_rate(logdir: Path, replicas: int, pattern: str, tag: str) -> float:
    peer = replica_node("peer", logdir, fast=False, max_bucket=2_000_000)
    try:
        await peer.start()
        group = await origin([peer.addr], GroupConfig(replicas=replicas), max_bucket=N + 10,
                             node_id="filler", occupied=False)
        try:
            await wait_for(lambda: alive_with_room(group, ["peer"]), 10, "the peer")
            ids = [f"{tag}-{i}" for i in range(N)]
            width = MANY_WIDTH if pattern == "fill_many" else 5_000
            rate, out = await timed_fill(group, ids, pattern, width)
            _, local, errors = tally(out)
            if local != N:
                raise RuntimeError(f"{tag}: {local}/{N} filled, errors {dict(errors)}")
            if replicas and group._backups.records:
                raise RuntimeError("backups landed on the filler")
            return rate
        finally:
            await stop_quietly(group)
    finally:
        await peer.kill_and_wait()


async def drain_p99(logdir: Path, replicas: int) -> float:
    peer = replica_node("peer", logdir, fast=False, max_bucket=100_000)
    try:
        await peer.start()
        group = await origin([peer.addr], GroupConfig(replicas=replicas), max_bucket=DRAINS + 10,
                             node_id="drainer", occupied=False)
        try:
            await wait_for(lambda: alive_with_room(group, ["peer"]), 10, "the peer")
            ids = [f"d{replicas}-{i}" for i in range(DRAINS)]
            await group.fill_many("jobs", {i: None for i in ids}, task_type=BOMB)
            took = []
            for task_id in ids:
                t0 = time.perf_counter()
                result = await group.drain("jobs", task_id)
                took.append(time.perf_counter() - t0)
                assert result.outcome.value == "drained", result
            return percentile(took, 99) * 1000
        finally:
            await stop_quietly(group)
    finally:
        await peer.kill_and_wait()


async def backup_bytes() -> float:
    """Bytes held per backup record (no payload), 100,000 of them, as they
    arrive: batches decoded from the wire, checked and stored, the decoded
    messages then freed. The task ids are not counted (a backup keeps its id,
    as the primary does): their size is taken off. Each task has a stamp of
    its own (filled at a different time: the costlier case, a float per
    record; tasks filled in one loop pass share one)."""
    net = MemoryNetwork()
    bucket = TaskBucket(__import__("gobucket_py").BucketConfig(
        life_span=600, run_after=300, max_bucket=10, max_backups=RECORDS), Noop(), name="jobs")
    group = TaskBucketGroup({"jobs": bucket}, [], node_id="holder",
                            transport=net.transport("holder"), config=GroupConfig(replicas=1))
    await group.start()
    try:
        from gobucket_py.cluster.columns import pack_columns, pack_stamps, read_columns
        from gobucket_py.cluster.items import PACKED_NONE
        from gobucket_py.cluster.protocol import decode, encode

        primary = Member("primary", "primary", "0123456789abcdef")
        holder = ("holder",)
        batches = [[("jobs", f"task-{i:08d}", 1, PACKED_NONE, 300.0, 600.0, "primary", 0,
                     holder, 1000.0 + i / 1000) for i in range(start, min(start + 1_024, RECORDS))]
                   for start in range(0, RECORDS, 1_024)]
        bodies = [encode({"v": 1, "cols": pack_columns(items), "stamps": pack_stamps(items)})
                  for items in batches]
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        ids = 0
        stored = 0
        for body in bodies:
            message = decode(body, 1 << 24)
            batch = read_columns(message["cols"], message["stamps"])
            ids += sum(map(sys.getsizeof, batch.columns[1]))
            stored += group._backups.store(batch, primary, batch.stamps).count("ok")
            del message
            del batch
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert stored == RECORDS, stored
        return (after - before - ids) / stored
    finally:
        await group.stop()


async def live(nodes: list[Node]) -> int:
    """Live tasks in ``jobs`` on these nodes."""
    total = 0
    for node in nodes:
        async with GroupClient(node.addr) as client:
            total += (await client.stats())["buckets"]["jobs"]["live"]
    return total


async def recovery(logdir: Path, *, restart: bool, fast: bool, kills: int,
                   promote_after: float | None = None) -> list[float]:
    """Seconds from SIGKILL of a holder (``restart``: restarted at once, else
    left dead) until the others hold its tasks."""
    nodes = [replica_node(f"r{i}", logdir, fast=fast, max_bucket=HELD * 3) for i in range(3)]
    if promote_after is not None:
        for node in nodes:
            node.extra = [*node.extra, "--promote-after", str(promote_after)]
    for i, node in enumerate(nodes):
        node.peers = [n.addr for n in nodes[:i]] or []
    nodes[0].peers = [nodes[1].addr, nodes[2].addr]
    out: list[float] = []
    try:
        for node in nodes:
            await node.start()
        await asyncio.sleep(2.0)
        rng = random.Random(13)
        for kill in range(kills):
            victim = nodes[kill % 3]
            others = [n for n in nodes if n is not victim]
            async with GroupClient(victim.addr) as client:
                for i in range(HELD):
                    await client.fill("jobs", f"k{kill}-{i}", task_type=BOMB,
                                      run_after=120 + rng.random(), life_span=300)
            before = await live(others)
            assert victim.proc is not None
            t0 = time.monotonic()
            victim.proc.kill()
            await asyncio.to_thread(victim.proc.wait)
            if restart:
                await victim.start()

            while await live(others) < before + HELD:
                if time.monotonic() - t0 > 90:
                    raise RuntimeError(f"kill {kill}: the survivors hold "
                                       f"{await live(others) - before}/{HELD} after 90 s")
                await asyncio.sleep(0.02)
            out.append(time.monotonic() - t0)
            print(f"    kill {kill} of {victim.node_id} ({'restarted' if restart else 'dead'}, "
                  f"{'fast' if fast else 'default'} timers): all {HELD} pending again on the "
                  f"survivors after {out[-1]:.2f} s", flush=True)
            if not restart:  # back for the next round, seen alive by the others
                await victim.start()
                await asyncio.sleep(3.0 if fast else 6.0)
            for node in others:  # clean the promoted tasks away for the next round
                async with GroupClient(node.addr) as client:
                    for i in range(HELD):
                        await client.drain("jobs", f"k{kill}-{i}")
    finally:
        for node in nodes:
            await node.kill_and_wait()
    return out


async def run() -> list[Row]:
    logdir = Path(tempfile.mkdtemp(prefix="gobucket-bench-replicas-"))
    rows: list[Row] = []
    for pattern in ("fill_many", "chunks"):
        base, rep = [], []
        for round_ in range(3):
            base.append(await fill_rate(logdir, 0, pattern, f"b{pattern}{round_}"))
            rep.append(await fill_rate(logdir, 1, pattern, f"r{pattern}{round_}"))
            print(f"    {pattern} round {round_}: replicas=0 {base[-1]:,.0f}/s, replicas=1 "
                  f"{rep[-1]:,.0f}/s", flush=True)
        mb, mr = median(base), median(rep)
        rows.append(Row("#13", f"fill throughput with replicas=1, 2 nodes ({N:,} time-bombs, "
                               f"{pattern})", mr, "tasks/s", ">= 0.5x replicas=0",
                        mr >= 0.5 * mb, baseline=f"replicas=0 {mb:,.0f}/s",
                        ratio=f"{mr / mb:.2f}x",
                        note=f"runs replicas=0 {', '.join(f'{x / 1e3:.0f}k' for x in base)}; "
                             f"replicas=1 {', '.join(f'{x / 1e3:.0f}k' for x in rep)}"))
    d0, d1 = await drain_p99(logdir, 0), await drain_p99(logdir, 1)
    rows.append(Row("#13", f"drain p99 with replicas=1 ({DRAINS:,} sequential drains of "
                           "pending replicated time-bombs)", d1, "ms", "<= 2 ms", d1 <= 2.0,
                    baseline=f"replicas=0 {d0:.3f} ms", ratio=f"{d1 / max(d0, 1e-9):.1f}x"))
    per = await backup_bytes()
    rows.append(Row("#13", "memory per backup held (no payload)", per, "B", "<= 300 B",
                    per <= 300, note=f"tracemalloc over {RECORDS:,} records, each with a "
                    "stamp of its own (the costlier case); ids excluded"))
    for restart, fast, promote, kills, how in (
            (True, True, None, KILLS, "restarted at once, --fast timers"),
            (False, False, 0.0, KILLS, "left dead, --promote-after 0, default timers"),
            (False, False, None, 3, "left dead, default promote_after (lost_after, 30 s)")):
        times = await recovery(logdir, restart=restart, fast=fast, kills=kills,
                               promote_after=promote)
        worst = max(times)
        rows.append(Row("#13", f"kill -9 of a holder of {HELD:,} pending time-bombs ({how}) "
                               "until the survivors hold them all, 3 nodes",
                        median(times), "s", "p99 <= 3 s", worst <= 3.0,
                        note=f"{kills} kills: {', '.join(f'{t:.2f}' for t in times)} s; max "
                             f"{worst:.2f} s"))
    return rows


def main() -> None:
    save("replicas", asyncio.run(run()))
