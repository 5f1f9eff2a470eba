"""A single-node backup job: "if the confirmation has not arrived in N s, do X".

Two orders are placed. Each gets a time-bomb backup job. The confirmation for
order-1 arrives in time, so its job is drained and never runs; order-2's never
arrives, so its job fires.

    python examples/local_backup.py [--delay SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from gobucket_py import BucketConfig, DrainOutcome, Executor, Task, TaskBucket, TaskType


class Backup(Executor):
    """Logs every hook so the lifecycle is visible."""

    def __init__(self) -> None:
        self.fired: list[str] = []
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"  [{time.monotonic() - self.t0:5.2f}s] {text}")

    async def on_execute(self, task: Task) -> None:
        self.say(f"{task.id}: no confirmation for {task.data['order']} -> running the backup job")
        self.fired.append(task.id)

    async def on_finish(self, task: Task) -> None:
        self.say(f"{task.id}: backup job finished")


async def main(delay: float) -> int:
    backup = Backup()
    config = BucketConfig(life_span=delay + 5, run_after=delay, max_bucket=100)
    async with TaskBucket(config, backup, name="backups") as bucket:
        for order in ("order-1", "order-2"):
            await bucket.fill(TaskType.TIME_BOMB, f"backup-{order}", {"order": order})
            backup.say(f"backup-{order}: armed, fires in {delay:g}s unless drained")

        await asyncio.sleep(delay / 3)
        result = await bucket.drain("backup-order-1")
        backup.say(f"backup-order-1: confirmation arrived -> drain: {result.outcome.value}")

        await bucket.join()  # order-2's job fires and finishes
        stats = bucket.stats()
    print(f"\nfilled={stats['filled']} drained={stats['drained']} "
          f"finished={stats['finished']} fired={backup.fired}")
    ok = result.outcome is DrainOutcome.DRAINED and backup.fired == ["backup-order-2"]
    print("OK" if ok else "UNEXPECTED RESULT")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=1.5,
                        help="seconds before a backup job fires (default 1.5)")
    raise SystemExit(asyncio.run(main(parser.parse_args().delay)))
