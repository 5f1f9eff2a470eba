"""The read-only pages behind a bearer token (issue: peer-port hardening).

Real servers on loopback: a node on its own port (``serve_pages(group,
token)``), one mounted in an aiohttp app (``attach(pages_token=...)``), and
the ASGI app (``asgi(pages_token=...)``) driven with real ASGI messages. With
a token, ``/metrics`` and ``/v1/status`` answer 401 (and a ``Bearer``
challenge) to a missing or wrong token and 200 to the right one; the
dashboard page, which holds no data, is served to anyone. A bad token is a
``ValueError`` naming ``pages_token``, and the node runner exits 2 on it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gobucket_py import BucketConfig, TaskBucket, TaskBucketGroup, serve_pages

from .conftest import Recorder
from .procs import SECRET, clean_env, free_port

TOKEN = "s3cret-pages-token-0123"


def _group(**kwargs: Any) -> TaskBucketGroup:
    bucket = TaskBucket(BucketConfig(life_span=60, max_bucket=4), Recorder(), name="jobs")
    return TaskBucketGroup({"jobs": bucket}, [], node_id="n1", secret=SECRET, **kwargs)


async def _check(base: str) -> None:
    """The token rules, against a server whose pages live under ``base``."""
    async with aiohttp.ClientSession() as http:
        for path in ("metrics", "v1/status"):
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                            {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
                async with http.get(f"{base}/{path}", headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert "gobucket_" not in await resp.text()
            async with http.get(f"{base}/{path}",
                                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200, path
                body = await resp.text()
            assert ("gobucket_bucket_capacity{" in body) if path == "metrics" else (
                '"state": "running"' in body)
        async with http.get(f"{base}/") as resp:  # the page itself: no data, no token
            assert resp.status == 200
            assert "text/html" in resp.headers["Content-Type"]


async def test_a_node_on_its_own_port_guards_its_pages_with_the_token() -> None:
    group = _group(port=0)
    serve_pages(group, TOKEN)
    async with group:
        await _check(f"http://{group.address}")
        # The peer protocol is unaffected: a peer's signed probe still works.
        assert group.state.value == "running"


async def test_a_node_without_a_token_serves_its_pages_openly() -> None:
    group = _group(port=0)
    serve_pages(group)
    async with group, aiohttp.ClientSession() as http:
        async with http.get(f"http://{group.address}/metrics") as resp:
            assert resp.status == 200


@pytest.fixture
async def attached() -> AsyncIterator[str]:
    port = free_port()
    group = _group(advertise=f"127.0.0.1:{port}")
    app = web.Application()
    group.attach(app, pages_token=TOKEN)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/gobucket"
    finally:
        await runner.cleanup()


async def test_a_node_mounted_in_aiohttp_guards_its_pages(attached: str) -> None:
    await _check(attached)


async def _asgi_get(app: Any, path: str,
                    headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "root_path": "",
             "query_string": b"", "headers": headers}
    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"])


async def test_the_asgi_app_guards_its_pages() -> None:
    group = _group(advertise="127.0.0.1:1")
    app = group.asgi(pages_token=TOKEN)
    async with group:
        for path in ("/metrics", "/v1/status"):
            status, headers = await _asgi_get(app, path, [])
            assert (status, headers[b"www-authenticate"][:6]) == (401, b"Bearer")
            status, _ = await _asgi_get(app, path, [(b"authorization", b"Bearer nope")])
            assert status == 401
            status, _ = await _asgi_get(app, path,
                                        [(b"Authorization", f"Bearer {TOKEN}".encode())])
            assert status == 200
        assert (await _asgi_get(app, "/", []))[0] == 200


@pytest.mark.parametrize("token", ["short", "has a space in it 0123", "tab\there-0123456789"])
def test_a_bad_token_is_a_value_error_naming_it(token: str) -> None:
    group = _group(port=0)
    with pytest.raises(ValueError, match="pages_token"):
        serve_pages(group, token)
    with pytest.raises(ValueError, match="pages_token"):
        _group(advertise="127.0.0.1:1").attach(web.Application(), pages_token=token)
    with pytest.raises(ValueError, match="pages_token"):
        _group(advertise="127.0.0.1:1").asgi(pages_token=token)


def test_the_node_runner_refuses_a_short_token() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gobucket_py", "--app", "tests.node_app:buckets", "--port", "0",
         "--pages-token", "short"], capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.returncode == 2, result.stderr
    assert "pages_token" in result.stderr


async def test_the_node_runner_takes_the_token_from_its_environment() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gobucket_py", "--app", "tests.node_app:buckets",
        "--port", str(port), "--fast", env=clean_env(GOBUCKET_PAGES_TOKEN=TOKEN),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"event=node_started" in line, line
        await _check(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
