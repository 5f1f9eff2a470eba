"""Issue 18, target 7: the local figures again on uvloop's event loop.

``python -m bench uvloop`` (needs ``pip install 'gobucket_py[uvloop]'``): the
measurements of ``bench local`` (schedule, drain, drains per second, lateness
at 10,000/s, memory per pending task) and ``bench burst`` (a burst of time-bombs
due at once), each run with uvloop's loop (``--loop uvloop`` for a node), and
each next to its own baseline measured on the same loop; the 800,000-pending
lateness run (in a fresh interpreter, as in ``bench local``); and the 2-node
overflow throughput of ``bench cluster`` (sender and receiver on uvloop; 3
rounds, no sweep). The rows carry ``[uvloop]``; the asyncio figures are the
``local``, ``burst`` and ``cluster`` groups' rows.

uvloop's ``loop.time()`` has a resolution of 1 ms and is read once per loop
turn, so the lateness and burst figures on uvloop are whole milliseconds (a
baseline below that shows as 0, with no ratio).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from pathlib import Path

from . import burst, cluster, local
from .common import Row, save


def scale_run() -> local.ScaleRun:
    """``local.scale_run`` on uvloop (run it in a fresh interpreter)."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return local.scale_run()


def measure() -> list[Row]:
    """The local, burst and overflow rows on uvloop's loop."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        rows = (local.throughput() + local.drain() + local.drain_rate() + local.lateness()
                + local.memory() + burst.measure(burst.N, 7))
        rows += local.lateness_at_scale(run=scale_run)
        logdir = Path(tempfile.mkdtemp(prefix="gobucket-bench-uvloop-"))
        rows += asyncio.run(cluster.throughput(logdir, repeats=3, loop="uvloop"))
        shutil.rmtree(logdir, ignore_errors=True)
    finally:
        asyncio.set_event_loop_policy(None)
    return [dataclasses.replace(row, name=f"{row.name} [uvloop]") for row in rows]


def main() -> None:
    save("uvloop", measure())


if __name__ == "__main__":
    main()
