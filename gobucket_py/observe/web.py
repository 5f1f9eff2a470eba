"""The read-only HTTP routes a node serves next to the peer protocol.

- ``GET /``: the dashboard (one static page, nothing fetched from outside);
- ``GET /metrics``: Prometheus text format;
- ``GET /v1/status``: JSON (``?peers=1`` adds each peer's own figures,
  ``?since=N`` returns only events after sequence number N).

They need no token: they show counts, states, node ids, bucket names and the
ids of drained tasks, never payloads, and change nothing. Every mutating
endpoint is a POST that needs the signed peer auth. Keep the port on a
private network (as the peer protocol already requires).
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import TYPE_CHECKING

from aiohttp import web

from .metrics import CONTENT_TYPE, registry_for, render
from .status import PeerStats, status

if TYPE_CHECKING:
    from ..cluster.group import TaskBucketGroup

__all__ = ["add_routes"]


def add_routes(app: web.Application, group: TaskBucketGroup) -> None:
    """Register the dashboard, ``/metrics`` and ``/v1/status`` for ``group``."""
    page = files(__package__).joinpath("dashboard.html").read_bytes()
    registry = registry_for(group)
    peer_stats = PeerStats(group)

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE})

    async def status_json(request: web.Request) -> web.Response:
        since_text = request.query.get("since", "0")
        if not since_text.isdigit() or len(since_text) > 18:
            return web.json_response({"error": "since must be a non-negative integer"},
                                     status=400)
        with_peers = request.query.get("peers") == "1"
        if with_peers:
            peer_stats.refresh()
        body = status(group, peer_stats=peer_stats if with_peers else None,
                      events_since=int(since_text))
        return web.Response(text=json.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    app.router.add_get("/", dashboard)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status_json)
