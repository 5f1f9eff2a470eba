"""The read-only HTTP routes a node serves next to the peer protocol.

- ``GET /``: the dashboard (one static page, nothing fetched from outside);
- ``GET /metrics``: Prometheus text format;
- ``GET /v1/status``: JSON (``?peers=1`` adds each peer's own figures,
  ``?since=N`` returns only events after sequence number N).

By default they need no token: they show counts, states, node ids, bucket
names and the ids of drained tasks, never payloads, and change nothing.
Every mutating endpoint is a POST that needs the signed peer auth. Where the
port is not private, give a ``token``: ``/metrics`` and ``/v1/status`` then
answer only ``Authorization: Bearer <token>`` (401 otherwise). The
dashboard page itself holds no data and is served to anyone; it reads the
token from its URL's fragment (``/#token=...``, which browsers never send to
the server) and sends it with every request it makes.

:class:`Pages` answers them whatever serves them, from a read-only
:class:`~gobucket_py.cluster.view.GroupView`; :func:`add_routes` is the
aiohttp adapter (the ASGI one is in :mod:`gobucket_py.cluster.mount`), and
:func:`serve_pages` adds them to a group's own port. The group does not
know about them: the node runner and the mounts attach them.
"""

from __future__ import annotations

import hmac
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
_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="gobucket"'),)

#: The shortest token accepted: guessing it must not be practical.
MIN_TOKEN = 16


def check_token(token: str | None) -> str | None:
    """``token`` if it is usable as a pages token; ValueError naming it if not."""
    if token is None:
        return None
    if (not isinstance(token, str) or len(token) < MIN_TOKEN or not token.isprintable()
            or any(c.isspace() for c in token)):
        raise ValueError(f"pages_token: must be at least {MIN_TOKEN} printable characters "
                         f"without spaces")
    return token


class Pages:
    """The answers of the read-only routes of one node (paths relative to it)."""

    PATHS = ("/", "/metrics", "/v1/status")

    def __init__(self, view: GroupView, token: str | None = None) -> None:
        self.view = view
        checked = check_token(token)
        self._token = None if checked is None else checked.encode()
        self._page = files(__package__).joinpath("dashboard.html").read_bytes()
        self._registry = registry_for(view)
        self._peer_stats = PeerStats(view)

    def get(self, path: str, query: Mapping[str, str],
            authorization: str | None = None) -> Reply | None:
        """The answer to ``GET path`` with the request's ``Authorization``
        header; None if ``path`` is not one of :attr:`PATHS`."""
        if path == "/":
            return Reply(200, self._page, "text/html; charset=utf-8", _NO_STORE)
        if path in self.PATHS and not self.authorized(authorization):
            return Reply(401, b'{"error": "a bearer token is needed"}', "application/json",
                         _CHALLENGE)
        if path == "/metrics":
            return Reply(200, render(self._registry), CONTENT_TYPE)
        if path == "/v1/status":
            return self.status(query)
        return None

    def authorized(self, authorization: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may read."""
        if self._token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self._token)

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


def add_routes(app: web.Application, view: GroupView, prefix: str = "",
               token: str | None = None) -> None:
    """Register the dashboard, ``/metrics`` and ``/v1/status`` of a group
    (its ``view``) on an aiohttp ``app``, under ``prefix`` (``""`` or
    ``"/path"``); with ``token``, the data routes need it as a bearer token."""
    pages = Pages(view, token)

    async def serve(request: web.Request) -> web.StreamResponse:
        path = request.path[len(prefix):] or "/"
        reply = pages.get(path, request.query, request.headers.get("Authorization"))
        assert reply is not None  # only PATHS are routed here
        return web.Response(status=reply.status, body=reply.body,
                            headers={"Content-Type": reply.content_type, **dict(reply.headers)})

    for path in Pages.PATHS:
        app.router.add_get(prefix + path, serve)
    if prefix:  # the dashboard fetches v1/status relative to its own URL: end it with "/"
        async def to_dashboard(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(prefix + "/")

        app.router.add_get(prefix, to_dashboard)


def serve_pages(group: TaskBucketGroup, token: str | None = None) -> None:
    """Serve the dashboard, ``/metrics`` and ``/v1/status`` on the group's own
    port, next to the peer protocol (what ``gobucket-node`` does). Call it
    before ``group.start()``. With ``token`` (at least 16 characters),
    ``/metrics`` and ``/v1/status`` answer only ``Authorization: Bearer
    <token>``; open the dashboard as ``http://host:port/#token=<token>``.
    A group mounted in an app with :meth:`~gobucket_py.TaskBucketGroup.attach` or
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
    add_routes(transport.app, group.view, token=check_token(token))
