"""The order service of ``aiohttp_app.py`` on FastAPI, for uvicorn with any number of workers.

Each order gets a backup job: "if it is not confirmed within N seconds, run
the backup"; confirming the order drains the job wherever it lives. The
group starts and stops in the app's lifespan (``async with group:``); on
SIGTERM its pending jobs are handed to the other nodes.

    POST /orders/{id}          arm the backup job            201 (409 if armed)
    POST /orders/{id}/confirm  drain it (safe to repeat)     200 stopped, 404, 409
    GET  /orders/{id}          where its job is, its state   200, 404

Two ways to run the node, chosen by ``GOBUCKET_MOUNT``:

- **A node port per worker** (the default), for ``uvicorn --workers N``. The
  workers are separate processes, so each is its own node, on its own port:
  ``port_fallback=True`` makes the first worker take ``GOBUCKET_NODE_PORT``
  (7001) and the others a free port each, advertised with the real port and
  named after it; they all list ``127.0.0.1:7001`` as a seed, so they find
  each other through the first. A confirmation lands on whichever worker
  and finds the job on any of them::

      uvicorn examples.fastapi_app:app --port 8000 --workers 2

- **Mounted** (``GOBUCKET_MOUNT=1``): ``app.mount("/gobucket", group.asgi())``
  serves the node on the app's own port. Only with **one worker** per
  instance: the workers of one server share its port, so a peer's request
  to ``host:port/gobucket`` reaches whichever worker accepts it, not the
  node it meant -- a peer could not probe, fill or drain one node. Run more
  instances instead, each with its port and ``GOBUCKET_ADVERTISE``::

      GOBUCKET_MOUNT=1 GOBUCKET_ADVERTISE=127.0.0.1:8001 \\
      GOBUCKET_PEERS=127.0.0.1:8002/gobucket uvicorn examples.fastapi_app:app --port 8001

Environment: ``GOBUCKET_SECRET`` (the cluster's shared HMAC secret; required
when mounted or beyond loopback), ``GOBUCKET_PEERS`` (other instances,
comma-separated: ``host:port`` node ports, or ``host:port/gobucket`` when
mounted), ``GOBUCKET_NODE_PORT`` and ``GOBUCKET_HOST`` (the node port's
listening address, 127.0.0.1), ``GOBUCKET_ADVERTISE`` (the host peers reach,
127.0.0.1; when mounted, the app's ``host:port``), ``GOBUCKET_NODE_ID``
(mounted only: with workers, leave it unset so each gets its own),
``ORDERS_CONFIRM_WITHIN`` (seconds, 30), ``ORDERS_MAX_JOBS`` (jobs held here
before other nodes take them, 10000), ``ORDERS_LEDGER`` (a file that gets
one JSON line per backup-job event).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gobucket_py import (
    BucketConfig,
    ClusterFullError,
    DrainOutcome,
    DuplicateTaskError,
    Executor,
    PeerUnavailableError,
    PlacementUnknownError,
    Task,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
    serve_pages,
)

BUCKET = "backups"
RETRY_AFTER = {"Retry-After": "1"}  # about one probe round: time for a peer to answer
MOUNTED = os.environ.get("GOBUCKET_MOUNT", "").lower() in ("1", "true", "yes")
CONFIRM_WITHIN = float(os.environ.get("ORDERS_CONFIRM_WITHIN", "30"))


class BackupJob(Executor):
    """The backup job of an order: one JSON line per event (``{"event",
    "order", "node", "t"}``) in the ledger file, if one is given."""

    def __init__(self, ledger: str | None) -> None:
        self.ledger = ledger
        self.node = "-"  # this node's id, known once the group has started

    def record(self, task: Task, event: str) -> None:
        if self.ledger:  # one O_APPEND write per line: workers share the file
            line = json.dumps({"event": event, "order": task.id, "node": self.node,
                               "t": time.time()})
            fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)

    async def on_execute(self, task: Task) -> None:
        self.record(task, "started")  # the real backup work goes here

    async def on_finish(self, task: Task) -> None:
        self.record(task, "finished")

    async def on_execute_error(self, task: Task, error: BaseException) -> None:
        self.record(task, "failed")

    async def on_task_exhausted(self, task: Task) -> None:
        self.record(task, "exhausted")

    async def on_panic(self, task: Task) -> None:
        self.record(task, "rescued")  # stopped before it could run or be handed off


def make_group(backup: BackupJob) -> TaskBucketGroup:
    """This process's node, configured from the environment."""
    env = os.environ.get
    config = BucketConfig(life_span=CONFIRM_WITHIN + 60, run_after=CONFIRM_WITHIN,
                          max_bucket=int(env("ORDERS_MAX_JOBS", "10000")))
    buckets = {BUCKET: TaskBucket(config, backup, name=BUCKET)}
    peers = [p for p in env("GOBUCKET_PEERS", "").split(",") if p]
    secret = env("GOBUCKET_SECRET") or None
    if MOUNTED:  # one node per server: the app's address is the node's
        return TaskBucketGroup(buckets, peers, advertise=env("GOBUCKET_ADVERTISE"),
                               node_id=env("GOBUCKET_NODE_ID") or None, secret=secret)
    host, port = env("GOBUCKET_HOST", "127.0.0.1"), int(env("GOBUCKET_NODE_PORT", "7001"))
    advertise = env("GOBUCKET_ADVERTISE", "127.0.0.1")  # a host alone: the real port is added
    group = TaskBucketGroup(buckets, [f"{advertise}:{port}", *peers],  # the first worker seeds
                            host=host, port=port, port_fallback=True, advertise=advertise,
                            secret=secret)
    serve_pages(group)  # its own port also serves the dashboard, /metrics and /v1/status
    return group


backup = BackupJob(os.environ.get("ORDERS_LEDGER"))
group = make_group(backup)


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Start the node with the app; stopping hands its pending jobs off."""
    async with group:
        backup.node = group.node_id
        yield


app = FastAPI(title="orders", lifespan=lifespan)
if MOUNTED:
    app.mount("/gobucket", group.asgi())  # peer routes, dashboard, /metrics, /v1/status


def answer(status: int, order_id: str, headers: dict[str, str] | None = None,
           **body: Any) -> JSONResponse:
    """A JSON answer about one order."""
    return JSONResponse({"order": order_id, **body}, status_code=status, headers=headers)


def unavailable(order_id: str, error: PeerUnavailableError) -> JSONResponse:
    """We could not find out: the job may still run. Retrying is safe."""
    return answer(503, order_id, RETRY_AFTER, outcome="unknown", error=str(error),
                  message="could not find out whether the backup job was stopped: a node "
                          "that may hold it did not answer, so it may still run; retry "
                          "(repeating a confirmation is safe)")


TOO_LATE = {
    DrainOutcome.FINISHED: "too late: the backup job already ran",
    DrainOutcome.FAILED: "too late: the backup job already ran, and failed",
    DrainOutcome.EXHAUSTED: "too late: the backup job ran out of time while running",
    DrainOutcome.RESCUED: "the backup job was abandoned when its node stopped",
    DrainOutcome.LOST: "the node holding the backup job crashed before it ran",
}


@app.post("/orders/{order_id}")
async def create_order(order_id: str) -> JSONResponse:
    """Arm the order's backup job (here, or on a node with room)."""
    try:
        placed = await group.fill(BUCKET, order_id, {"order": order_id},
                                  task_type=TaskType.TIME_BOMB)
    except DuplicateTaskError:
        return answer(409, order_id, message="its backup job is armed already")
    except ClusterFullError:
        return answer(503, order_id, RETRY_AFTER,
                      message="no node has room for the backup job; retry")
    except PlacementUnknownError as exc:  # do not simply fill again: it may be there
        return answer(503, order_id, RETRY_AFTER,
                      message=f"node {exc.node_id} did not say whether it took the backup "
                              "job; GET the order before retrying")
    return answer(201, order_id, outcome="armed", node=group.node_id, held_by=placed.node_id,
                  forwarded=placed.forwarded, fires_in=CONFIRM_WITHIN)


@app.post("/orders/{order_id}/confirm")
async def confirm_order(order_id: str) -> JSONResponse:
    """The confirmation: drain the backup job wherever it lives."""
    try:
        result = await group.drain(BUCKET, order_id)
    except PeerUnavailableError as exc:
        return unavailable(order_id, exc)
    said: dict[str, Any] = {"outcome": result.outcome.value, "held_by": result.node_id,
                            "node": group.node_id}
    if result.outcome.stopped:  # DRAINED or CANCELLED: it will not run
        return answer(200, order_id, **said, message="confirmed: the backup job will not run")
    if result.outcome is DrainOutcome.NOT_FOUND:
        return answer(404, order_id, **said,
                      message="no backup job for this order (never armed, or ended long ago)")
    return answer(409, order_id, **said, message=TOO_LATE[result.outcome])


@app.get("/orders/{order_id}")
async def show_order(order_id: str) -> JSONResponse:
    """Where the order's backup job is, and its state."""
    try:
        info = await group.get(BUCKET, order_id)
    except PeerUnavailableError as exc:
        return unavailable(order_id, exc)
    if info is None:
        return answer(404, order_id, message="no backup job for this order")
    return answer(200, order_id, state=info.state.value, held_by=info.node_id,
                  fires_in=round(info.seconds_to_run, 3))


if __name__ == "__main__":  # `python examples/fastapi_app.py --help`
    print(__doc__)
