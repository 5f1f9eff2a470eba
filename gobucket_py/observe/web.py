"""The read-only HTTP routes a node serves next to the peer protocol.

- ``GET /``: the dashboard (one static page, nothing fetched from outside);
- ``GET /metrics``: Prometheus text format;
- ``GET /v1/status``: JSON (``?peers=1`` adds each peer's own figures,
  ``?since=N`` returns only events after sequence number N).

They need no token: they show counts, states, node ids, bucket names and the
ids of drained tasks, never payloads, and change nothing. Every mutating
endpoint is a POST that needs the signed peer auth. Keep the port on a
private network (as the peer protocol already requires).

:class:`Pages` answers them whatever serves them, from a read-only
:class:`~gobucket_py.cluster.view.GroupView`; :func:`add_routes` is the
aiohttp adapter (the ASGI one is in :mod:`gobucket_py.cluster.mount`), and
:func:`serve_pages` adds them to a group's own port. The group does not
know about them: the node runner and the mounts attach them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.resources import files
from typing import TYPE_CHECKING

from aiohttp import web

from ..cluster.transport import HttpTransport, Reply
from ..cluster.view import GroupView
from .metrics import CONTENT_TYPE, registry_for, render
from .status import PeerStats, status

if TYPE_CHECKING:
    from ..cluster.group import TaskBucketGroup

__all__ = ["Pages", "add_routes", "serve_pages"]

_NO_STORE = (("Cache-Control", "no-store"),)


class Pages:
    """The answers of the read-only routes of one node (paths relative to it)."""

    PATHS = ("/", "/metrics", "/v1/status")

    def __init__(self, view: GroupView) -> None:
        self.view = view
        self._page = files(__package__).joinpath("dashboard.html").read_bytes()
        self._registry = registry_for(view)
        self._peer_stats = PeerStats(view)

    def get(self, path: str, query: Mapping[str, str]) -> Reply | None:
        """The answer to ``GET path``; None if it is not one of :attr:`PATHS`."""
        if path == "/":
            return Reply(200, self._page, "text/html; charset=utf-8", _NO_STORE)
        if path == "/metrics":
            return Reply(200, render(self._registry), CONTENT_TYPE)
        if path == "/v1/status":
            return self.status(query)
        return None

    def status(self, query: Mapping[str, str]) -> Reply:
        since_text = query.get("since", "0")
        if not since_text.isdigit() or len(since_text) > 18:
            return Reply(400, b'{"error": "since must be a non-negative integer"}',
                         "application/json")
        with_peers = query.get("peers") == "1"
        if with_peers:
            self._peer_stats.refresh()
        body = status(self.view, peer_stats=self._peer_stats if with_peers else None,
                      events_since=int(since_text))
        return Reply(200, json.dumps(body).encode(), "application/json", _NO_STORE)


def add_routes(app: web.Application, view: GroupView, prefix: str = "") -> None:
    """Register the dashboard, ``/metrics`` and ``/v1/status`` of a group
    (its ``view``) on an aiohttp ``app``, under ``prefix`` (``""`` or ``"/path"``)."""
    pages = Pages(view)

    async def serve(request: web.Request) -> web.StreamResponse:
        path = request.path[len(prefix):] or "/"
        reply = pages.get(path, request.query)
        assert reply is not None  # only PATHS are routed here
        return web.Response(status=reply.status, body=reply.body,
                            headers={"Content-Type": reply.content_type, **dict(reply.headers)})

    for path in Pages.PATHS:
        app.router.add_get(prefix + path, serve)
    if prefix:  # the dashboard fetches v1/status relative to its own URL: end it with "/"
        async def to_dashboard(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(prefix + "/")

        app.router.add_get(prefix, to_dashboard)


def serve_pages(group: TaskBucketGroup) -> None:
    """Serve the dashboard, ``/metrics`` and ``/v1/status`` on the group's own
    port, next to the peer protocol (what ``gobucket-node`` does). Call it
    before ``group.start()``. A group mounted in an app with
    :meth:`~gobucket_py.TaskBucketGroup.attach` or
    :meth:`~gobucket_py.TaskBucketGroup.asgi` has them already.

    Raises ``ValueError`` if the group has no port of its own (an in-memory
    transport, or a mounted group) or has started."""
    transport = group.transport
    if not isinstance(transport, HttpTransport) or not transport.listen:
        raise ValueError("transport: serve_pages needs a group that listens on its own "
                         "port (a mounted group serves them on the app's port already)")
    if group.state.value != "new":
        raise ValueError(f"state: call serve_pages before start(); the group is "
                         f"{group.state.value}")
    add_routes(transport.app, group.view)
