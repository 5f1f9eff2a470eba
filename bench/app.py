"""The app the cluster benchmark's subprocess nodes run (``--app bench.app:buckets``).

One bucket, ``jobs``, with a no-op executor. ``BENCH_MAX`` sets max_bucket
(default 2,000,000); time-bombs wait 300 s and live 600 s, so nothing fires
during a benchmark run. ``BENCH_LAG=path`` adds a :class:`LoopLag` probe.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from gobucket_py import BucketConfig, Executor, Task, TaskBucket


class Noop(Executor):
    async def on_execute(self, task: Task) -> None:
        return None


class LoopLag:
    """How late a timer due every millisecond fires on the running loop --
    what the node's own time-bombs would see -- in ``lates`` (seconds).
    With a ``path`` (a node subprocess): SIGUSR2 starts a window, and
    SIGUSR1 writes the lateness of each tick in it there (a JSON list)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.lates: list[float] = []
        loop = self.loop = asyncio.get_running_loop()
        if path is not None:
            loop.add_signal_handler(signal.SIGUSR2, self.lates.clear)
            loop.add_signal_handler(signal.SIGUSR1, self.dump)
        self.handle: asyncio.TimerHandle | None = None
        due = loop.time() + 0.001
        self.handle = loop.call_at(due, self.tick, due)

    def tick(self, due: float) -> None:
        now = self.loop.time()
        self.lates.append(now - due)
        self.handle = self.loop.call_at(now + 0.001, self.tick, now + 0.001)

    def dump(self) -> None:
        assert self.path is not None
        self.path.write_text(json.dumps(self.lates))

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


def buckets() -> dict[str, TaskBucket]:
    config = BucketConfig(life_span=600, run_after=300,
                          max_bucket=int(os.environ.get("BENCH_MAX", "2000000")))
    if os.environ.get("BENCH_LAG"):
        LoopLag(os.environ["BENCH_LAG"])
    return {"jobs": TaskBucket(config, Noop(), name="jobs")}
