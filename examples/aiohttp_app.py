"""An order service on aiohttp, with its gobucket node on the app's own port.

Each order gets a backup job: "if it is not confirmed within N seconds, run
the backup". Confirming an order drains its job, wherever in the cluster it
lives. Every instance of the app is a node of one cluster:
``group.attach(app)`` serves the node under ``/gobucket`` on the app's port
(peers list each other as ``host:port/gobucket``) and starts and stops it
with the app; on SIGTERM the pending jobs are handed to the other instances.

    POST /orders/{id}          arm the backup job            201 (409 if armed)
    POST /orders/{id}/confirm  drain it (safe to repeat)     200 stopped, 404, 409
    GET  /orders/{id}          where its job is, its state   200, 404

    export GOBUCKET_SECRET=change-me
    python examples/aiohttp_app.py --port 8081 --peers 127.0.0.1:8082/gobucket
    python examples/aiohttp_app.py --port 8082 --peers 127.0.0.1:8081/gobucket
    curl -X POST 127.0.0.1:8081/orders/42 && curl -X POST 127.0.0.1:8082/orders/42/confirm

A confirmation that cannot be settled (``PeerUnavailableError``: a node that
may hold the job did not answer) is a 503 with ``Retry-After``: we could not
find out, the job may still run, retry. Every flag has an environment
variable (see ``--help``); the secret is required, as the node answers on
the app's own port.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiohttp import web

from gobucket_py import (
    BucketConfig,
    ClusterFullError,
    DrainOutcome,
    DrainResult,
    DuplicateTaskError,
    Executor,
    PeerUnavailableError,
    PlacementUnknownError,
    Task,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)

BUCKET = "backups"
Handler = Callable[[web.Request], Awaitable[web.Response]]
RETRY_AFTER = "1"  # seconds: about one probe round, time for a peer to answer or be known gone


class BackupJob(Executor):
    """The backup job of an order. Here it appends one JSON line per event
    (``{"event", "order", "node", "t"}``) to a ledger file, if one is given."""

    def __init__(self, ledger: str | None) -> None:
        self.ledger = ledger
        self.node = "-"  # this node's id, known once the group has started

    def record(self, task: Task, event: str) -> None:
        line = json.dumps({"event": event, "order": task.id, "node": self.node,
                           "t": time.time()})
        logging.getLogger("orders").info("backup job %s event=backup_job_%s node=%s order=%s",
                                         event, event, self.node, task.id)
        if self.ledger:  # one O_APPEND write per line: instances may share the file
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


class Answer(NamedTuple):
    """An HTTP answer, whatever the framework."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None


def unavailable(order_id: str, error: PeerUnavailableError) -> Answer:
    """We could not find out: the job may still run. Retrying is safe."""
    return Answer(503, {"order": order_id, "outcome": "unknown",
                        "message": "could not find out whether the backup job was stopped: "
                                   "a node that may hold it did not answer, so it may still "
                                   "run; retry (repeating a confirmation is safe)",
                        "error": str(error)}, {"Retry-After": RETRY_AFTER})


TOO_LATE = {
    DrainOutcome.FINISHED: "too late: the backup job already ran",
    DrainOutcome.FAILED: "too late: the backup job already ran, and failed",
    DrainOutcome.EXHAUSTED: "too late: the backup job ran out of time while running",
    DrainOutcome.RESCUED: "the backup job was abandoned when its node stopped",
    DrainOutcome.LOST: "the node holding the backup job crashed before it ran",
}


def confirmed(order_id: str, result: DrainResult, node: str) -> Answer:
    """A drain's outcome, told as it is (``node``: the one that answered)."""
    body = {"order": order_id, "outcome": result.outcome.value, "held_by": result.node_id,
            "node": node}
    if result.outcome.stopped:  # DRAINED or CANCELLED: it will not run
        return Answer(200, {**body, "message": "confirmed: the backup job will not run"})
    if result.outcome is DrainOutcome.NOT_FOUND:
        return Answer(404, {**body, "message": "no backup job for this order (never "
                                               "armed, or ended long ago)"})
    return Answer(409, {**body, "message": TOO_LATE[result.outcome]})


class Orders:
    """The order endpoints over one node of the cluster."""

    def __init__(self, group: TaskBucketGroup, confirm_within: float) -> None:
        self.group = group
        self.confirm_within = confirm_within

    async def create(self, order_id: str) -> Answer:
        try:
            placed = await self.group.fill(BUCKET, order_id, {"order": order_id},
                                           task_type=TaskType.TIME_BOMB)
        except DuplicateTaskError:
            return Answer(409, {"order": order_id, "message": "its backup job is armed already"})
        except ClusterFullError:
            return Answer(503, {"order": order_id, "message": "no node has room for the "
                                "backup job; retry"}, {"Retry-After": RETRY_AFTER})
        except PlacementUnknownError as exc:  # do not simply fill again: it may be there
            return Answer(503, {"order": order_id, "message": f"node {exc.node_id} did not "
                                "say whether it took the backup job; GET the order before "
                                "retrying"}, {"Retry-After": RETRY_AFTER})
        return Answer(201, {"order": order_id, "outcome": "armed", "node": self.group.node_id,
                            "held_by": placed.node_id, "forwarded": placed.forwarded,
                            "fires_in": self.confirm_within})

    async def confirm(self, order_id: str) -> Answer:
        try:
            result = await self.group.drain(BUCKET, order_id)
        except PeerUnavailableError as exc:
            return unavailable(order_id, exc)
        return confirmed(order_id, result, self.group.node_id)

    async def show(self, order_id: str) -> Answer:
        try:
            info = await self.group.get(BUCKET, order_id)
        except PeerUnavailableError as exc:
            return unavailable(order_id, exc)
        if info is None:
            return Answer(404, {"order": order_id, "message": "no backup job for this order"})
        return Answer(200, {"order": order_id, "state": info.state.value,
                            "held_by": info.node_id, "fires_in": round(info.seconds_to_run, 3)})


def build_app(args: argparse.Namespace) -> web.Application:
    """The aiohttp app, with its node attached under ``/gobucket``."""
    backup = BackupJob(args.ledger)
    config = BucketConfig(life_span=args.confirm_within + 60, run_after=args.confirm_within,
                          max_bucket=args.max_jobs)
    group = TaskBucketGroup(
        {BUCKET: TaskBucket(config, backup, name=BUCKET)},
        [p for p in args.peers.split(",") if p],
        advertise=args.advertise or f"{args.host}:{args.port}",  # the app's address
        node_id=args.node_id, secret=args.secret)
    orders = Orders(group, args.confirm_within)

    def route(answer: Callable[[str], Awaitable[Answer]]) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            reply = await answer(request.match_info["order_id"])
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        return handler

    app = web.Application()
    app.router.add_post("/orders/{order_id}", route(orders.create))
    app.router.add_post("/orders/{order_id}/confirm", route(orders.confirm))
    app.router.add_get("/orders/{order_id}", route(orders.show))
    group.attach(app)  # peer routes, dashboard, /metrics; starts and stops with the app
    backup.node = group.node_id  # final once attached: --node-id, else the app's address
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, each with its environment variable (in brackets) as default."""
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=env("HOST", "127.0.0.1"),
                   help="listen here (127.0.0.1) [HOST]")
    p.add_argument("--port", type=int, default=int(env("PORT", "8081")),
                   help="the app's port (8081) [PORT]")
    p.add_argument("--advertise", default=env("GOBUCKET_ADVERTISE"), metavar="HOST:PORT",
                   help="the app's address as peers reach it (host:port) [GOBUCKET_ADVERTISE]")
    p.add_argument("--peers", default=env("GOBUCKET_PEERS", ""), metavar="H:P/gobucket,...",
                   help="other instances, comma-separated [GOBUCKET_PEERS]")
    p.add_argument("--secret", default=env("GOBUCKET_SECRET"),
                   help="the cluster's shared HMAC secret, required [GOBUCKET_SECRET]")
    p.add_argument("--node-id", default=env("GOBUCKET_NODE_ID"),
                   help="this node's id (its address) [GOBUCKET_NODE_ID]")
    p.add_argument("--ledger", default=env("ORDERS_LEDGER"), metavar="PATH",
                   help="append one JSON line per backup-job event here [ORDERS_LEDGER]")
    p.add_argument("--confirm-within", type=float, metavar="SECONDS",
                   default=float(env("ORDERS_CONFIRM_WITHIN", "30")),
                   help="a backup job runs unless its order is confirmed by then (30) "
                        "[ORDERS_CONFIRM_WITHIN]")
    p.add_argument("--max-jobs", type=int, metavar="N",
                   default=int(env("ORDERS_MAX_JOBS", "10000")),
                   help="backup jobs held here before the other instances take them "
                        "(10000) [ORDERS_MAX_JOBS]")
    args = p.parse_args(argv)
    if not args.secret:
        p.error("a secret is required (--secret or GOBUCKET_SECRET): the node answers on the "
                "app's own port, where anyone reaching the app could fill and drain jobs")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Each peer probes this node twice a second on the app's port: keep them out of
    # the access log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        app = build_app(args)
    except ValueError as exc:  # a setting the library refuses, with the reason
        raise SystemExit(f"aiohttp_app.py: error: {exc}") from None
    # run_app stops on SIGTERM and SIGINT: the app stops listening, then the
    # group hands its pending jobs to the other instances.
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
