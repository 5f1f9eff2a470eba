"""A node inside the user's own app: aiohttp ``group.attach(app)`` and ASGI ``group.asgi()``.

Real servers on loopback: three aiohttp apps (each serving its own routes and
its node on one port), and three FastAPI apps under uvicorn. Tasks overflow
from one app's node to the others, a drain through another app finds them,
the dashboard and status are served under the prefix, an unsigned peer
request is refused with the node still healthy, and a graceful stop of a
mounted node hands its tasks off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gobucket_py import (
    BucketConfig,
    DrainOutcome,
    Executor,
    GroupConfig,
    Task,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)

from .procs import SECRET, free_port, wait_for

BOMB = TaskType.TIME_BOMB


class Ran(Executor):
    """Records which tasks ran, per node."""

    def __init__(self, log: list[tuple[str, str]], node: str) -> None:
        self.log, self.node = log, node

    async def on_execute(self, task: Task) -> None:
        self.log.append((self.node, task.id))


def make_group(name: str, port: int, peers: list[int], ran: list[tuple[str, str]],
               max_bucket: int = 3) -> TaskBucketGroup:
    bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=max_bucket),
                        Ran(ran, name), name="jobs")
    return TaskBucketGroup({"jobs": bucket}, [f"127.0.0.1:{p}/gobucket" for p in peers],
                           node_id=name, advertise=f"127.0.0.1:{port}", secret=SECRET,
                           config=GroupConfig.local())


async def meshed(groups: list[TaskBucketGroup]) -> None:
    def ready() -> bool:
        return all(sum(p.state.value == "alive" for p in g.peers) == len(groups) - 1
                   for g in groups)

    await wait_for(ready, 15, "every node to see the others alive")


# -- aiohttp ------------------------------------------------------------------------


@pytest.fixture
async def aiohttp_apps() -> AsyncIterator[tuple[list[TaskBucketGroup], list[int],
                                                list[tuple[str, str]]]]:
    ports = [free_port() for _ in range(3)]
    ran: list[tuple[str, str]] = []
    groups, runners = [], []
    for i, port in enumerate(ports):
        group = make_group(f"a{i + 1}", port, [p for p in ports if p != port], ran)
        app = web.Application()

        async def hello(request: web.Request, name: str = group.node_id) -> web.Response:
            return web.Response(text=f"hello from {name}")

        app.router.add_get("/hello", hello)  # the app's own route, on the same port
        group.attach(app)
        runner = web.AppRunner(app)
        await runner.setup()  # starts the group (cleanup_ctx)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        groups.append(group)
        runners.append(runner)
    try:
        await meshed(groups)
        yield groups, ports, ran
    finally:
        for runner in runners:
            await runner.cleanup()  # stops the group


async def test_aiohttp_attach_serves_the_node_on_the_app_port(
        aiohttp_apps: tuple[list[TaskBucketGroup], list[int], list[tuple[str, str]]]) -> None:
    groups, ports, ran = aiohttp_apps
    a1, a2, _ = groups
    assert a1.address == f"127.0.0.1:{ports[0]}/gobucket"
    placed = [await a1.fill("jobs", f"job-{i}", task_type=BOMB, run_after=0.5, life_span=30)
              for i in range(7)]
    assert {p.node_id for p in placed} >= {"a1"} and any(p.forwarded for p in placed)
    forwarded = next(p for p in placed if p.forwarded)
    assert (await a2.drain("jobs", forwarded.task_id)).outcome is DrainOutcome.DRAINED
    await wait_for(lambda: len(ran) == 6, 10, "the other six to run")
    assert forwarded.task_id not in {t for _, t in ran}
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{ports[0]}"
        async with http.get(f"{base}/hello") as resp:
            assert await resp.text() == "hello from a1"
        async with http.get(f"{base}/gobucket/v1/status") as resp:
            status = await resp.json()
            assert status["node"] == "a1"
        async with http.get(f"{base}/gobucket/", allow_redirects=False) as resp:
            assert resp.status == 200 and "fetch(`v1/status" in await resp.text()
        async with http.get(f"{base}/gobucket", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/gobucket/"
        async with http.get(f"{base}/gobucket/metrics") as resp:
            assert "gobucket_" in await resp.text()
        # Unsigned: refused before anything happens, and the node is fine.
        async with http.post(f"{base}/gobucket/v1/drain", data=b"\x80") as resp:
            assert resp.status == 401
    assert (await a2.drain("jobs", "nothing-here")).outcome is DrainOutcome.NOT_FOUND


async def test_a_mounted_node_hands_its_tasks_off_when_its_app_stops() -> None:
    ports = [free_port() for _ in range(2)]
    ran: list[tuple[str, str]] = []
    groups, runners = [], []
    for i, port in enumerate(ports):
        group = make_group(f"b{i + 1}", port, [p for p in ports if p != port], ran,
                           max_bucket=10)
        app = web.Application()
        group.attach(app)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        groups.append(group)
        runners.append(runner)
    try:
        await meshed(groups)
        b1, b2 = groups
        for i in range(4):
            await b1.fill("jobs", f"t{i}", task_type=BOMB, run_after=2, life_span=30)
        await runners[0].cleanup()  # SIGTERM-like: the app stops listening, then the node stops
        assert len(b2.buckets["jobs"]) == 4  # handed off, not rescued
        answers = [(await b2.drain("jobs", f"t{i}")).outcome for i in range(2)]
        assert answers == [DrainOutcome.DRAINED] * 2
        await wait_for(lambda: len(ran) == 2, 10, "the other two to run on b2")
        assert sorted(ran) == [("b2", "t2"), ("b2", "t3")]
    finally:
        for runner in runners[1:]:
            await runner.cleanup()


def test_mounting_checks_what_it_needs() -> None:
    bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=3), Ran([], "x"),
                        name="jobs")
    with pytest.raises(ValueError, match="advertise"):
        TaskBucketGroup({"jobs": bucket}, secret=SECRET).attach(web.Application())
    with pytest.raises(ValueError, match="secret"):
        TaskBucketGroup({"jobs": bucket}, advertise="127.0.0.1:1").asgi()
    with pytest.raises(ValueError, match="path"):
        TaskBucketGroup({"jobs": bucket}, advertise="127.0.0.1:1",
                        secret=SECRET).asgi("gobucket")
    with pytest.raises(ValueError, match="peers"):
        TaskBucketGroup({"jobs": bucket}, ["127.0.0.1:80/"], secret=SECRET)


# -- ASGI: FastAPI under uvicorn ----------------------------------------------------


@contextlib.asynccontextmanager
async def fastapi_node(name: str, port: int, peers: list[int], ran: list[tuple[str, str]]
                       ) -> AsyncIterator[TaskBucketGroup]:
    import uvicorn
    from fastapi import FastAPI

    group = make_group(name, port, peers, ran)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with group:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"node": name}

    app.mount("/gobucket", group.asgi())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    serving = asyncio.get_running_loop().create_task(server.serve())
    try:
        await wait_for(lambda: server.started, 10, f"{name} to serve")
        yield group
    finally:
        server.should_exit = True
        await serving


async def test_asgi_mount_in_fastapi_serves_the_node() -> None:
    ports = [free_port() for _ in range(3)]
    ran: list[tuple[str, str]] = []
    async with contextlib.AsyncExitStack() as stack:
        groups = [await stack.enter_async_context(
            fastapi_node(f"f{i + 1}", port, [p for p in ports if p != port], ran))
            for i, port in enumerate(ports)]
        await meshed(groups)
        f1, _, f3 = groups
        placed = [await f1.fill("jobs", f"job-{i}", task_type=BOMB, run_after=0.5,
                                life_span=30) for i in range(7)]
        forwarded = next(p for p in placed if p.forwarded)
        assert (await f3.drain("jobs", forwarded.task_id)).outcome is DrainOutcome.DRAINED
        await wait_for(lambda: len(ran) == 6, 10, "the other six to run")
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{ports[0]}"
            async with http.get(f"{base}/hello") as resp:
                assert await resp.json() == {"node": "f1"}
            async with http.get(f"{base}/gobucket/v1/status") as resp:
                assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
            async with http.get(f"{base}/gobucket/") as resp:
                assert "fetch(`v1/status" in await resp.text()
            async with http.post(f"{base}/gobucket/v1/fill", data=b"junk") as resp:
                assert resp.status == 401
        assert (await f3.drain("jobs", "nothing")).outcome is DrainOutcome.NOT_FOUND


# -- the rule behind it: a mounted node's refusal proves nothing until it is done ----


@pytest.mark.looptime
async def test_a_mounted_leaving_node_that_refuses_is_unknown_until_it_says_done() -> None:
    from gobucket_py import MemoryNetwork, PeerUnavailableError

    from .test_cluster import Cluster

    cluster = Cluster(MemoryNetwork())
    try:
        n1 = await cluster.add("n1", max_bucket=1)
        n2 = await cluster.add("n2", max_bucket=10)
        await cluster.settle()
        await n1.fill("jobs", "mine", task_type=BOMB)
        placed = await n1.fill("jobs", "job", task_type=BOMB)
        assert placed.node_id == "n2"
        # n2's app stopped listening, then its node announced it leaves (mounted).
        await n2._members.announce_leave(mounted=True)
        cluster.net.crash("n2")  # refuses connections, as a closed app port does
        with pytest.raises(PeerUnavailableError):
            await n1.drain("jobs", "job")  # it may still hold the task: not NOT_FOUND
        # The same node saying it is done (handed off, origins told): now it is gone.
        n1._lookup.left(next(m for m in n1._members.members.values() if m.node_id == "n2"),
                        mounted=True, done=True)
        assert (await n1.drain("jobs", "job")).outcome is DrainOutcome.NOT_FOUND
    finally:
        cluster.groups.pop("n2", None)
        await cluster.close()


async def test_port_fallback_makes_each_worker_its_own_node() -> None:
    """Two "workers" on one host and one port setting: the first takes the port,
    the second a free one (advertised with its real port, its own node id), and
    they find each other through the first."""
    port = free_port()
    ran: list[tuple[str, str]] = []
    groups = []
    for name in ("w1", "w2"):
        bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=2),
                            Ran(ran, name), name="jobs")
        groups.append(TaskBucketGroup({"jobs": bucket}, [f"127.0.0.1:{port}"], port=port,
                                      port_fallback=True, advertise="127.0.0.1",
                                      secret=SECRET, config=GroupConfig.local()))
    async with groups[0] as w1, groups[1] as w2:
        assert w1.address == f"127.0.0.1:{port}" and w1.node_id == w1.address
        assert w2.address.startswith("127.0.0.1:") and w2.address != w1.address
        await meshed([w1, w2])
        placed = [await w2.fill("jobs", f"t{i}", task_type=BOMB) for i in range(3)]
        assert placed[-1].node_id == w1.node_id  # overflowed to the other worker
        assert (await w2.drain("jobs", "t2")).outcome is DrainOutcome.DRAINED
    bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=2), Ran(ran, "x"),
                        name="jobs")
    async with TaskBucketGroup({"jobs": bucket}, port=port, secret=SECRET) as first:
        taken = TaskBucketGroup({"jobs": TaskBucket(BucketConfig(60, 30), Ran(ran, "y"),
                                                    name="jobs")}, port=port, secret=SECRET)
        with pytest.raises(OSError, match="cannot listen"):
            await taken.start()  # without the fallback, a taken port is an error
        assert first.running
