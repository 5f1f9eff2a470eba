"""A node inside the user's own web app: one port for the app and its node.

:meth:`TaskBucketGroup.attach` adds the node's routes to an aiohttp
``web.Application``; :meth:`TaskBucketGroup.asgi` returns an ASGI app to
mount in FastAPI or Starlette. Both are thin adapters over the same answers
as the node's own server (``HttpTransport.respond`` for the signed peer
protocol, ``observe.web.Pages`` for the dashboard, ``/metrics`` and
``/v1/status``), under a path prefix that peers include in this node's
address (``host:port/prefix``).

A mounted node has no server of its own, so its app decides when it stops
listening -- before the node has handed its tasks off, as aiohttp and
uvicorn both close their sockets before running shutdown hooks. Its peers
are told (``LEAVE`` with ``mounted``) and treat a refused connection as
"unknown", not "gone", until the node says it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict

from ..observe.web import Pages, add_routes, check_token
from .transport import HttpTransport, Reply, _error, _response, serve_aiohttp

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["NodeApp", "attach", "mount"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _prefix(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
        raise ValueError(f"path: must start with '/', like '/gobucket', got {path!r}")
    return path.rstrip("/")


def mount(group: TaskBucketGroup, path: str) -> HttpTransport:
    """Turn ``group``'s HTTP transport into a mounted one, served under
    ``path`` by an app; its advertised address gets ``path`` appended
    unless it has a path already. Before ``start`` only."""
    prefix = _prefix(path)
    transport = group.transport
    if not isinstance(transport, HttpTransport):
        raise TypeError("only a group on the HTTP transport can be mounted in an app")
    if group.state.value != "new":
        raise RuntimeError("mount the group in its app before it starts")
    if not transport.listen:
        raise RuntimeError("this group is mounted already")
    if not transport.advertise:
        raise ValueError("advertise: a node mounted in an app needs the address peers "
                         "reach the app at, e.g. advertise='10.0.0.1:8080'")
    if transport.keyring is None and not group.insecure:
        raise ValueError("secret: a node mounted in an app answers on the app's port, where "
                         "anyone who reaches the app could fill and drain tasks; pass "
                         "secret=... (or insecure=True on a trusted network)")
    if "/" not in transport.advertise and prefix:
        transport.advertise += prefix
    transport.listen = False
    return transport


def attach(group: TaskBucketGroup, app: web.Application, path: str,
           pages_token: str | None = None) -> None:
    """See :meth:`TaskBucketGroup.attach`."""
    check_token(pages_token)
    transport = mount(group, path)
    prefix = _prefix(path)

    async def peer(request: web.Request) -> web.StreamResponse:
        return _response(await serve_aiohttp(transport, request,
                                             "/v1/" + request.match_info["kind"]))

    app.router.add_post(prefix + "/v1/{kind}", peer)
    add_routes(app, group.view, prefix, pages_token)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await group.start()
        yield
        await group.stop()

    app.cleanup_ctx.append(lifecycle)


class NodeApp:
    """The ASGI app of one mounted node (see :meth:`TaskBucketGroup.asgi`).

    Serves ``POST /v1/<kind>`` (the signed peer protocol) and the read-only
    ``GET`` routes, relative to where it is mounted (``root_path``). It runs
    the group's lifespan too when it gets one (as a top-level app); mounted
    in FastAPI or Starlette, which do not pass lifespan to mounted apps,
    start and stop the group in the outer app's lifespan.
    """

    def __init__(self, group: TaskBucketGroup, transport: HttpTransport,
                 pages_token: str | None = None) -> None:
        self.group = group
        self.transport = transport
        self._pages: Pages | None = None
        self._pages_token = check_token(pages_token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # nothing else is served (a websocket is closed unanswered)
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]  # Starlette keeps the full path and sets root_path
        path = path or "/"
        method = scope["method"]
        if method in ("GET", "HEAD"):
            if self._pages is None:
                self._pages = Pages(self.group.view, self._pages_token)
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            authorization = next((v.decode("latin-1") for k, v in scope["headers"]
                                  if k.lower() == b"authorization"), None)
            reply = (self._pages.get(path, query, authorization)
                     or _error(404, f"no such page {path[:100]!r}"))
        elif method == "POST":
            reply = await self._post(scope, receive, path)
        else:
            reply = _error(405, f"method {method[:16]} not allowed")
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": [(b"content-type", reply.content_type.encode()),
                                (b"content-length", str(len(reply.body)).encode()),
                                *((k.lower().encode(), v.encode()) for k, v in reply.headers)]})
        await send({"type": "http.response.body",
                    "body": b"" if method == "HEAD" else reply.body})

    async def _post(self, scope: Scope, receive: Receive, path: str) -> Reply:
        transport = self.transport
        headers: CIMultiDict[str] = CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
        length_text = headers.get("Content-Length", "")
        length = int(length_text) if length_text.isdigit() else None
        refused = transport.refuse(path, length, headers)
        if refused is not None:
            return refused
        with transport.admit(path, length) as admitted:
            if admitted is not None:
                return admitted
            body = bytearray()
            try:
                async with asyncio.timeout(transport.read_timeout):
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            return _error(400, "the client went away")
                        body += message.get("body", b"")
                        if len(body) > transport.max_body:
                            return _error(413, f"body exceeds {transport.max_body} bytes")
                        if not message.get("more_body"):
                            break
            except TimeoutError:
                return _error(408, f"body not received within {transport.read_timeout:g}s")
            return await transport.respond(path, headers, bytes(body))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.group.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.group.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
