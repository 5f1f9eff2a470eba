"""Instructions per fill, counted by valgrind: the workers pattern of the
overflow rows (``bench.cluster``), local and overflowing, in a figure the
machine's noise does not move.

Wall-clock rates on a shared 2-core machine drift by tens of per cent
within a minute; the number of instructions a fill executes does not (about
2% between runs: the collector's passes fall a little differently). This
runs the sender of each pattern under ``valgrind --tool=callgrind``, counts
only the timed part (a client request zeroes the counters before it and
dumps them after), and prints instructions per fill and the ratio
overflowing / local. It is slow (~1 minute per run) and not part of
``make bench``; it needs ``valgrind``, its headers and a C compiler
(Debian: ``apt-get install valgrind gcc``).

    python -m bench.instructions [--n 100000] [--width 5000]

Instructions are not time: an overflowing fill's objects (5,000 callers
suspended at once) miss the cache more than a local fill's, so the
wall-clock ratio is lower than this one. It tells whether a change made a
path cheaper, whatever the machine was doing meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gobucket_py import BucketConfig, FillResult, TaskBucket, TaskBucketGroup, TaskType

from .app import Noop
from .cluster import Node, alive_with_room, wait_for

BOMB = TaskType.TIME_BOMB

_HELPER = """#include <valgrind/callgrind.h>
void zero(void) { CALLGRIND_ZERO_STATS; }
void dump(void) { CALLGRIND_DUMP_STATS; }
"""


async def child(mode: str, n: int, width: int, receiver: str, helper: str) -> None:
    """The measured sender (run under valgrind): ``n`` fills from ``width``
    workers, local (room for all) or overflowing to ``receiver``."""
    over = mode == "over"
    bucket = TaskBucket(BucketConfig(life_span=600, run_after=300,
                                     max_bucket=1 if over else n), Noop(), name="jobs")
    if over:
        bucket.fill_nowait(BOMB, "occupant")
    group = TaskBucketGroup({"jobs": bucket}, [receiver] if over else [], port=0,
                            node_id=f"counted-{os.getpid()}")
    await group.start()
    if over:
        await wait_for(lambda: alive_with_room(group, ["recv"], n), 120, "the receiver")
    ids = [f"{os.getpid()}-{i}" for i in range(n)]
    out: list[FillResult] = []  # held, as the wall-clock bench holds them

    async def worker(k: int) -> None:
        for j in range(k, n, width):
            out.append(await group.fill("jobs", ids[j], None, task_type=BOMB))

    counters = ctypes.CDLL(helper)
    gc.collect()
    counters.zero()
    await asyncio.gather(*(worker(k) for k in range(min(width, n))))
    counters.dump()
    went = sum(result.forwarded is over for result in out)
    if went != n:
        raise SystemExit(f"{mode}: {went}/{n} fills went where expected")
    sys.stdout.flush()
    os._exit(0)  # the count is taken; stopping the group is not measured


def count(mode: str, n: int, width: int, receiver: str, helper: str, workdir: Path) -> int:
    """Instructions in the timed part of one run of the sender."""
    prefix = workdir / f"callgrind.{mode}"
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p", sys.executable,
         "-m", "bench.instructions", "--child", mode, "--n", str(n), "--width", str(width),
         "--receiver", receiver, "--helper", helper],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        check=False)
    dumps = sorted(workdir.glob(f"callgrind.{mode}.*.1"))
    if proc.returncode != 0 or not dumps:
        raise RuntimeError(f"{mode} run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            for old in workdir.glob(f"callgrind.{mode}.*"):
                old.unlink()
            return int(line.split()[1])
    raise RuntimeError(f"no instruction count in {dumps[-1]}")


def build_helper(workdir: Path) -> Path:
    """The shared library whose two functions zero and dump callgrind's counters."""
    if not shutil.which("valgrind") or not shutil.which("gcc"):
        raise SystemExit("needs valgrind and gcc (Debian: apt-get install valgrind gcc)")
    helper = workdir / "counters.so"
    source = workdir / "counters.c"
    source.write_text(_HELPER)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(helper), str(source)],
                   check=True)
    return helper


async def main(n: int, width: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="gobucket-instructions-"))
    helper = str(build_helper(workdir))
    recv = Node("recv", workdir, fast=True, max_bucket=4 * n)
    await recv.start()
    try:
        started = time.perf_counter()
        local = await asyncio.to_thread(count, "local", n, width, recv.addr, helper, workdir)
        over = await asyncio.to_thread(count, "over", n, width, recv.addr, helper, workdir)
        local, over = local / n, over / n
    finally:
        await recv.kill_and_wait()
    print(f"instructions per fill, workers pattern ({width:,} workers, {n:,} time-bombs): "
          f"local {local:,.0f}, overflowing {over:,.0f}: local / overflowing "
          f"{local / over:.3f} ({time.perf_counter() - started:.0f} s)")
    shutil.rmtree(workdir, ignore_errors=True)


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="fills per run")
    parser.add_argument("--width", type=int, default=5_000, help="concurrent workers")
    parser.add_argument("--child", choices=["local", "over"], help=argparse.SUPPRESS)
    parser.add_argument("--receiver", help=argparse.SUPPRESS)
    parser.add_argument("--helper", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.n, args.width, args.receiver, args.helper))
    else:
        asyncio.run(main(args.n, args.width))


if __name__ == "__main__":
    cli()
