"""The node app of the backup-job demo: ``gobucket-node --app examples.cluster.app:buckets``.

One bucket, ``backups``, whose executor logs every hook with the node id and
the task id. ``DEMO_MAX`` sets max_bucket (default 100), so a burst through
node 1 overflows to its peers.
"""

from __future__ import annotations

import logging
import os
import socket

from gobucket_py import BucketConfig, Executor, Task, TaskBucket

log = logging.getLogger("gobucket_py.demo")


class LoggingBackup(Executor):
    """The backup job: runs when no confirmation drained it in time."""

    def __init__(self, node: str) -> None:
        self.node = node

    async def on_execute(self, task: Task) -> None:
        log.info("backup job runs event=backup_job_runs node=%s task_id=%s", self.node, task.id)

    async def on_finish(self, task: Task) -> None:
        log.info("backup job finished event=backup_job_finished node=%s task_id=%s",
                 self.node, task.id)

    async def on_execute_error(self, task: Task, error: BaseException) -> None:
        log.warning("backup job failed event=backup_job_failed node=%s task_id=%s error=%r",
                    self.node, task.id, error)

    async def on_task_exhausted(self, task: Task) -> None:
        log.warning("backup job ran out of time event=backup_job_exhausted node=%s "
                    "task_id=%s", self.node, task.id)

    async def on_panic(self, task: Task) -> None:
        log.warning("backup job rescued event=backup_job_rescued node=%s task_id=%s",
                    self.node, task.id)


def buckets() -> dict[str, TaskBucket]:
    """The demo node's buckets."""
    # A scaled service's replicas have no GOBUCKET_NODE_ID: their container names.
    node = os.environ.get("GOBUCKET_NODE_ID") or socket.gethostname()
    config = BucketConfig(life_span=60, run_after=5, max_bucket=int(os.environ.get("DEMO_MAX",
                                                                                   "100")))
    return {"backups": TaskBucket(config, LoggingBackup(node), name="backups")}
