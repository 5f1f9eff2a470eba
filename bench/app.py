"""The app the cluster benchmark's subprocess nodes run (``--app bench.app:buckets``).

One bucket, ``jobs``, with a no-op executor. ``BENCH_MAX`` sets max_bucket
(default 2,000,000); time-bombs wait 300 s and live 600 s, so nothing fires
during a benchmark run.
"""

from __future__ import annotations

import os

from gobucket_py import BucketConfig, Executor, Task, TaskBucket


class Noop(Executor):
    async def on_execute(self, task: Task) -> None:
        return None


def buckets() -> dict[str, TaskBucket]:
    config = BucketConfig(life_span=600, run_after=300,
                          max_bucket=int(os.environ.get("BENCH_MAX", "2000000")))
    return {"jobs": TaskBucket(config, Noop(), name="jobs")}
