"""The app that subprocess nodes of the test suite run (``--app tests.node_app:buckets``).

Configured by environment variables so each test can shape it:
``NODE_MAX`` (max_bucket), ``NODE_LIFE`` and ``NODE_RUN_AFTER`` (seconds),
``NODE_WORK`` (seconds on_execute takes) and ``NODE_LEDGER`` (a file that gets
one JSON line per event, ``{"node", "id", "state", "t"}`` with ``t`` the
wall-clock time):

- ``state`` = a terminal outcome (``finished``, ``drained``, ``handed_off``...);
- ``state`` = ``"started"``: on_execute began (so a test can tell *when* a task
  ran, against the answers its clients got);
- ``state`` = ``"lost"``, with ``"peer"``: this node, the origin of a forward,
  reported the task lost through ``group.on_tasks_lost`` (its holder crashed or
  is presumed lost);
- ``state`` = ``"backup"``, with ``"peer"``: this node stored a backup of the
  task for its holder ``peer`` (with replicas; a test hook on a private method,
  so a test can tell which tasks had a copy left after a crash).

With ``NODE_LEDGER`` set the factory returns the ``TaskBucketGroup`` itself
(built from the command line exactly as ``gobucket-node`` builds it), so that
``on_tasks_lost`` can be recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import IO, Any

from gobucket_py import BucketConfig, Executor, Task, TaskBucket, TaskBucketGroup
from gobucket_py.cluster.membership import Member


class Ledger:
    """Appends one JSON line per event (line-buffered: a kill -9 loses no whole line)."""

    def __init__(self, path: str, node: str) -> None:
        self.node = node
        self.file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")

    def write(self, task_id: str, state: str, **extra: object) -> None:
        entry = {"node": self.node, "id": task_id, "state": state, "t": time.time(), **extra}
        self.file.write(json.dumps(entry) + "\n")


class LedgerExecutor(Executor):
    """Sleeps NODE_WORK seconds in on_execute (recording its start in the ledger)."""

    def __init__(self, ledger: Ledger | None) -> None:
        self.work = float(os.environ.get("NODE_WORK", "0"))
        self.ledger = ledger

    async def on_execute(self, task: Task) -> None:
        if self.ledger is not None:
            if task.recovered is None:
                self.ledger.write(task.id, "started")
            else:  # taken over from a dead holder by its backup
                self.ledger.write(task.id, "started", recovered=task.recovered)
        if self.work:
            await asyncio.sleep(self.work)


def _command_line(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """This process's gobucket-node arguments, as ``cli.main`` read them."""
    args = parser.parse_args(sys.argv[1:])
    if args.secret_file:
        with open(args.secret_file, encoding="utf-8") as fh:
            args.secret = fh.read().strip()
    return args


async def buckets() -> dict[str, TaskBucket] | TaskBucketGroup:
    """One bucket, ``jobs``, writing every outcome to NODE_LEDGER if set."""
    config = BucketConfig(life_span=float(os.environ.get("NODE_LIFE", "60")),
                          run_after=float(os.environ.get("NODE_RUN_AFTER", "30")),
                          max_bucket=int(os.environ.get("NODE_MAX", "1000")))
    ledger_path = os.environ.get("NODE_LEDGER")
    node = os.environ.get("GOBUCKET_NODE_ID", str(os.getpid()))
    ledger = Ledger(ledger_path, node) if ledger_path else None
    bucket = TaskBucket(config, LedgerExecutor(ledger), name="jobs")
    made: dict[str, TaskBucket] = {"jobs": bucket}
    if ledger is None:
        return made

    def record(task: Task) -> None:
        ledger.write(task.id, task.state.value)

    bucket.on_outcome = record

    # The group exactly as gobucket-node would build it, plus the loss callback.
    from gobucket_py.cli import _build, build_parser

    group = await _build(_command_line(build_parser()), lambda: made)

    def lost(peer_id: str, bucket_name: str, task_ids: list[str]) -> None:
        for task_id in task_ids:
            ledger.write(task_id, "lost", peer=peer_id, bucket=bucket_name)

    group.on_tasks_lost = lost
    backups = group._backups
    store = backups.store

    def recorded(items: list[Any], primary: Member) -> list[str]:
        verdicts = store(items, primary)
        for item, verdict in zip(items, verdicts, strict=True):
            if verdict == "ok":
                ledger.write(item[1], "backup", peer=primary.node_id)
        return verdicts

    backups.store = recorded  # type: ignore[method-assign]
    return group
