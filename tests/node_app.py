"""The app that subprocess nodes of the test suite run (``--app tests.node_app:buckets``).

Configured by environment variables so each test can shape it:
``NODE_MAX`` (max_bucket), ``NODE_LIFE`` and ``NODE_RUN_AFTER`` (seconds),
``NODE_WORK`` (seconds on_execute takes) and ``NODE_LEDGER`` (a file that gets
one JSON line per terminal outcome: ``{"node", "id", "state"}``).
"""

from __future__ import annotations

import asyncio
import json
import os

from gobucket_py import BucketConfig, Executor, Task, TaskBucket


class LedgerExecutor(Executor):
    """Sleeps NODE_WORK seconds in on_execute."""

    def __init__(self) -> None:
        self.work = float(os.environ.get("NODE_WORK", "0"))

    async def on_execute(self, task: Task) -> None:
        if self.work:
            await asyncio.sleep(self.work)


def buckets() -> dict[str, TaskBucket]:
    """One bucket, ``jobs``, writing every outcome to NODE_LEDGER if set."""
    config = BucketConfig(life_span=float(os.environ.get("NODE_LIFE", "60")),
                          run_after=float(os.environ.get("NODE_RUN_AFTER", "30")),
                          max_bucket=int(os.environ.get("NODE_MAX", "1000")))
    bucket = TaskBucket(config, LedgerExecutor(), name="jobs")
    ledger_path = os.environ.get("NODE_LEDGER")
    if ledger_path:
        node = os.environ.get("GOBUCKET_NODE_ID", str(os.getpid()))
        ledger = open(ledger_path, "a", buffering=1, encoding="utf-8")

        def record(task: Task) -> None:
            ledger.write(json.dumps({"node": node, "id": task.id, "state": task.state.value})
                         + "\n")

        bucket.on_outcome = record
    return {"jobs": bucket}
