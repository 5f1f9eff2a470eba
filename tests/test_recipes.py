"""The runnable recipes, run for real: examples/aiohttp_app.py and examples/fastapi_app.py.

Every app is a real process on loopback, driven over HTTP as its users would,
and judged by the ledger its backup jobs write (one JSON line per event,
``{"event", "order", "node", "t"}``) and by the answers of its endpoints:

- three instances of each app, mounted mode (the node on the app's own port;
  FastAPI under ``python -m uvicorn``): 30 orders through instance 1 overflow
  to the others, half are confirmed through instances 2 and 3, a confirm
  that cannot be settled (instance 3 frozen) is a 503 with Retry-After and
  its retry drains, SIGTERM of instance 3 hands its pending jobs off, and
  every unconfirmed job runs exactly once, no confirmed one at all;
- ``uvicorn --workers 2`` (node-port mode, ``port_fallback``): orders over
  one keep-alive connection (one worker) overflow to the other worker, and
  confirms on fresh connections drain jobs held by either;
- the README's gunicorn recipe (``workers.py``, extracted from README.md and
  run as printed, with the command its docstring gives, ``-w 2`` and a free
  port): the same checks through gunicorn's aiohttp worker, then SIGTERM
  stops the master and both workers cleanly.

Every process runs in its own session and is terminated at teardown by its
pid (the servers' workers through its process group), even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .procs import ROOT, SECRET, clean_env, free_port, wait_for

pytestmark = pytest.mark.slow

#: Seconds before an unconfirmed order's backup job runs, in the three-instance
#: tests: room for the freeze (about 1 s) and the SIGTERM before anything fires.
CONFIRM_WITHIN = 6.0

Reply = tuple[int, dict[str, Any], dict[str, str]]


class App:
    """One app process, in a session of its own (so its children can be reached)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int,
                 logdir: Path) -> None:
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = logdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def group_alive(self) -> bool:
        """Is any process of its session's group (uvicorn's workers) still there?"""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.alive(), f"{self.name} is not running"
        self.proc.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            self.paused = sig is signal.SIGSTOP

    def pids(self, pattern: str) -> list[int]:
        """The pids that ``pattern`` (one group: the pid) finds in the log, in order."""
        return [int(pid) for pid in re.findall(pattern, self.log())]

    async def wait_exit(self, timeout: float) -> int:
        proc = self.proc
        assert proc is not None
        await wait_for(lambda: proc.poll() is not None, timeout, f"{self.name} to exit")
        return proc.returncode

    def cleanup(self) -> None:
        """Terminate, then kill if needed: the process, then what is left of its group."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            if self.paused:
                proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self.group_alive():  # the workers, should their supervisor have died first
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


class Apps:
    """The app processes of one test, and the ledger file they share."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.ledger = logdir / "ledger.jsonl"
        self.apps: list[App] = []

    def base_env(self, **extra: str) -> dict[str, str]:
        settings = {"GOBUCKET_SECRET": SECRET, "ORDERS_LEDGER": str(self.ledger),
                    "ORDERS_CONFIRM_WITHIN": str(CONFIRM_WITHIN), **extra}
        return clean_env(**settings)

    def add(self, name: str, argv: list[str], env: dict[str, str], port: int) -> App:
        app = App(name, argv, env, port, self.logdir)
        self.apps.append(app)
        app.start()
        return app

    def events(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        return [json.loads(line) for line in self.ledger.read_text().splitlines() if line]

    def done(self, event: str) -> set[str]:
        return {e["order"] for e in self.events() if e["event"] == event}


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Apps]:
    made = Apps(tmp_path)
    try:
        yield made
    finally:
        for app in made.apps:
            app.cleanup()
        for app in made.apps:  # shown by pytest only when the test failed
            print(f"--- {app.name} (tail) ---\n{app.log()[-3000:]}")
    for app in made.apps:
        assert "Traceback" not in app.log(), app.log()[-3000:]


async def post(http: aiohttp.ClientSession, url: str) -> Reply:
    async with http.post(url) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def confirm(http: aiohttp.ClientSession, app: App, order: str,
                  timeout: float = 10.0) -> dict[str, Any]:
    """Confirm ``order`` through ``app``, retrying after each 503 as its Retry-After says."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, headers = await post(http, f"{app.url}/orders/{order}/confirm")
        if status != 503:
            assert status == 200, body
            return body
        assert body["outcome"] == "unknown", body
        assert time.monotonic() < deadline, f"{order}: still unknown after {timeout:g}s"
        await asyncio.sleep(float(headers["Retry-After"]) / 4)


async def meshed(http: aiohttp.ClientSession, apps: list[App], status_urls: list[str],
                 peers: int) -> list[str]:
    """Wait until every node sees ``peers`` alive peers; return the node ids."""
    async def ready() -> list[str] | None:
        ids = []
        for url in status_urls:
            for app in apps:
                assert app.alive(), f"{app.name} exited:\n{app.log()[-3000:]}"
            try:
                async with http.get(url) as resp:
                    status = await resp.json()
            except (aiohttp.ClientError, ValueError):
                return None
            if sum(p["state"] == "alive" for p in status["peers"]) != peers:
                return None
            ids.append(status["node"])
        return ids

    found: list[str] = await wait_for(ready, 30, "every node to see the others", 0.1)
    return found


def uvicorn(port: int, *args: str) -> list[str]:
    """``python -m uvicorn examples.fastapi_app:app`` on ``port`` (its INFO lines
    say when a shutdown completed; no access log)."""
    return [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", *args]


def reachable(address: str) -> bool:
    """Does anything accept a TCP connection on ``host:port``?"""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


async def stopped_cleanly(app: App, timeout: float = 20.0) -> None:
    """SIGTERM, then a clean exit: 0, or uvicorn's re-raised SIGTERM once its
    shutdown (the lifespan's: the group's stop) completed."""
    app.signal(signal.SIGTERM)
    code = await app.wait_exit(timeout)
    log = app.log()
    assert code == 0 or (code == -signal.SIGTERM and "Application shutdown complete" in log), (
        f"{app.name} exited with {code}:\n{log[-3000:]}")
    # uvicorn's workers too (a zombie is reaped by init soon after its parent exits)
    await wait_for(lambda: not app.group_alive(), 10, f"{app.name}'s children to exit")


# -- three instances of each app (mounted: the node on the app's port) ---------------


def aiohttp_instances(apps: Apps) -> list[App]:
    ports = [free_port() for _ in range(3)]
    env = apps.base_env(ORDERS_MAX_JOBS="12")
    made = []
    for i, port in enumerate(ports):
        peers = ",".join(f"127.0.0.1:{p}/gobucket" for p in ports if p != port)
        made.append(apps.add(f"a{i + 1}", [
            sys.executable, "examples/aiohttp_app.py", "--port", str(port),
            "--node-id", f"a{i + 1}", "--peers", peers], env, port))
    return made


def fastapi_instances(apps: Apps) -> list[App]:
    ports = [free_port() for _ in range(3)]
    made = []
    for i, port in enumerate(ports):
        env = apps.base_env(ORDERS_MAX_JOBS="12", GOBUCKET_MOUNT="1", GOBUCKET_NODE_ID=f"f{i + 1}",
                            GOBUCKET_ADVERTISE=f"127.0.0.1:{port}",
                            GOBUCKET_PEERS=",".join(f"127.0.0.1:{p}/gobucket"
                                                    for p in ports if p != port))
        made.append(apps.add(f"f{i + 1}", uvicorn(port), env, port))
    return made


@pytest.mark.parametrize("start", [aiohttp_instances, fastapi_instances],
                         ids=["aiohttp", "fastapi"])
async def test_three_instances_confirm_anywhere_and_hand_off(apps: Apps, start: Any) -> None:
    a1, a2, a3 = instances = start(apps)
    orders = [f"order-{i}" for i in range(30)]
    async with aiohttp.ClientSession() as http:
        ids = await meshed(http, instances, [f"{a.url}/gobucket/v1/status" for a in instances], 2)
        node = dict(zip(instances, ids, strict=True))
        # 30 orders through instance 1, which holds 12 jobs: the rest overflow.
        held: dict[str, str] = {}
        for order in orders:
            status, body, _ = await post(http, f"{a1.url}/orders/{order}")
            assert status == 201 and body["node"] == node[a1], body
            held[order] = body["held_by"]
        assert Counter(held.values())[node[a1]] == 12 and set(held.values()) == set(ids)
        assert (await post(http, f"{a1.url}/orders/order-0"))[0] == 409  # armed already
        for order in orders[:1] + orders[-1:]:  # seen from another instance
            async with http.get(f"{a2.url}/orders/{order}") as resp:
                body = await resp.json()
            assert (resp.status, body["state"], body["held_by"]) == (200, "pending", held[order])
        # Confirm half the jobs of each holder, through instances 2 and 3 in turn
        # (instance 3 holds 6 at least: 18 overflowed, instance 2 holds 12 at most).
        to_confirm = [o for n in ids for o in [o for o in orders if held[o] == n][::2]]
        confirmed = set(to_confirm)
        for k, order in enumerate(to_confirm):
            via = (a2, a3)[k % 2]
            body = await confirm(http, via, order)
            assert (body["outcome"], body["held_by"], body["node"]) == (
                "drained", held[order], node[via]), body
        # Instance 3 frozen: a confirm of a job it holds cannot be settled -> 503.
        on_a3 = [o for o in orders if o not in confirmed and held[o] == node[a3]]
        assert len(on_a3) >= 3, held
        frozen = on_a3.pop()
        a3.signal(signal.SIGSTOP)
        try:
            status, body, headers = await post(http, f"{a2.url}/orders/{frozen}/confirm")
        finally:
            a3.signal(signal.SIGCONT)
        assert status == 503 and headers["Retry-After"] == "1", (status, body)
        assert body["outcome"] == "unknown" and "may still run" in body["message"]
        assert (await confirm(http, a2, frozen))["outcome"] == "drained"  # the retry settles it
        confirmed.add(frozen)
        # SIGTERM instance 3: its pending jobs are handed to 1 and 2, and still found.
        await stopped_cleanly(a3)
        late = on_a3.pop()
        body = await confirm(http, a1, late)
        assert body["outcome"] == "drained" and body["held_by"] in (node[a1], node[a2]), body
        confirmed.add(late)
        status, body, _ = await post(http, f"{a2.url}/orders/never-made/confirm")
        assert (status, body["outcome"]) == (404, "not_found")
        # The rest fire: exactly once each, never a confirmed one.
        expected = set(orders) - confirmed
        await wait_for(lambda: apps.done("finished") >= expected, CONFIRM_WITHIN + 15,
                       "every unconfirmed order's backup job to run", 0.1)
        await asyncio.sleep(0.5)  # a confirmed job that ran anyway would show by now
        status, body, _ = await post(http, f"{a1.url}/orders/{sorted(expected)[0]}/confirm")
        assert (status, body["outcome"]) == (409, "finished")  # too late, said so
    events = apps.events()
    assert Counter(e["order"] for e in events if e["event"] == "started") == Counter(expected)
    assert Counter(e["order"] for e in events if e["event"] == "finished") == Counter(expected)
    assert {e["event"] for e in events} == {"started", "finished"}, events
    ran_on = {e["order"]: e["node"] for e in events}
    for order in expected:  # where it was placed, or where instance 3 handed it
        handed = held[order] == node[a3]
        assert ran_on[order] in ((node[a1], node[a2]) if handed else (held[order],)), order
    assert set(on_a3) <= expected and on_a3, "instance 3 held pending jobs when it stopped"


# -- uvicorn --workers 2: each worker its own node (node ports, port_fallback) -------


async def overflow_and_confirm_across_workers(
        app: App, node_port: int, fired: Any, confirm_within: float) -> dict[str, str]:
    """Two workers, each its own node (the first on ``node_port``, advertised
    as ``127.0.0.1:PORT``, holding 4 jobs): orders over one keep-alive
    connection overflow from one worker to the other, confirms on fresh
    connections drain jobs held by either, across workers, and every
    unconfirmed job runs exactly once (``fired()``: the orders whose backup
    job ran, one entry per run), none of the confirmed ones. Returns where
    each order's job was held."""
    async with aiohttp.ClientSession() as http:
        first = f"http://127.0.0.1:{node_port}/v1/status"
        await meshed(http, [app], [first], 1)
        async with http.get(first) as resp:  # the other worker took a free port
            other = (await resp.json())["peers"][0]["address"]
        ids = await meshed(http, [app], [first, f"http://{other}/v1/status"], 1)
        assert ids == [f"127.0.0.1:{node_port}", other]
    # Seven orders over one keep-alive connection: one worker takes them all,
    # holds four and places the rest on the other worker.
    held: dict[str, str] = {}
    answering = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one:
        for i in range(7):
            order = f"w-{i}"
            status, body, _ = await post(one, f"{app.url}/orders/{order}")
            assert status == 201, body
            held[order] = body["held_by"]
            answering.add(body["node"])
    assert len(answering) == 1 and sorted(Counter(held.values()).values()) == [3, 4], held
    # Confirms on fresh connections, so either worker may answer: two jobs of each.
    by_holder = {n: [o for o in held if held[o] == n] for n in ids}
    to_confirm = by_holder[ids[0]][:2] + by_holder[ids[1]][:2]
    answers = []
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        for order in to_confirm:
            body = await confirm(fresh, app, order)
            assert (body["outcome"], body["held_by"]) == ("drained", held[order]), body
            answers.append(body)
        # Which worker takes a fresh connection is the kernel's pick: confirm again
        # (a repeated confirm is safe: it answers drained again) until one was
        # answered by the worker that does not hold the job.
        for attempt in range(24):
            if any(b["node"] != b["held_by"] for b in answers):
                break
            order = to_confirm[attempt % len(to_confirm)]
            body = await confirm(fresh, app, order)
            assert (body["outcome"], body["held_by"]) == ("drained", held[order]), body
            answers.append(body)
    assert any(b["node"] != b["held_by"] for b in answers), answers  # across workers
    expected = set(held) - set(to_confirm)
    await wait_for(lambda: set(fired()) >= expected, confirm_within + 15,
                   "the three unconfirmed jobs to run", 0.1)
    await asyncio.sleep(0.3)  # a confirmed job that ran anyway would show by now
    assert Counter(fired()) == Counter(expected)
    return held


async def test_uvicorn_two_workers_overflow_and_confirm_across_workers(apps: Apps) -> None:
    port, node_port = free_port(), free_port()
    env = apps.base_env(GOBUCKET_NODE_PORT=str(node_port), ORDERS_MAX_JOBS="4",
                        ORDERS_CONFIRM_WITHIN="3")
    app = apps.add("workers", uvicorn(port, "--workers", "2"), env, port)

    def fired() -> list[str]:
        return [e["order"] for e in apps.events() if e["event"] == "finished"]

    held = await overflow_and_confirm_across_workers(app, node_port, fired, 3.0)
    events = apps.events()
    assert Counter(e["order"] for e in events if e["event"] == "started") == Counter(fired())
    assert all(e["node"] == held[e["order"]] for e in events), events
    await stopped_cleanly(app)


# -- the README's gunicorn recipe: gunicorn -w 2 -k aiohttp.GunicornWebWorker ------------

#: The README's gunicorn recipe: a ```python block whose docstring is
#: ``"""workers.py -- gunicorn ...command..."""``.
GUNICORN_RECIPE = re.compile(
    r'^```python\n(?P<code>"""workers\.py -- (?P<command>gunicorn [^"\n]+)""".*?)^```$',
    re.M | re.S)
#: Seconds before an unconfirmed order's backup job runs, in the gunicorn test.
CONFIRM = 5.0
#: What the recipe's backup job prints when it runs.
RAN = re.compile(r"^(\S+) was not confirmed in time: running its backup job$", re.M)


def listening_pid(pids: list[int], port: int) -> int:
    """Which of ``pids`` listens on TCP ``port`` (read from /proc: Linux)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()  # local address (hex ip:port), ..., state, ..., inode
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    sockets.add(f"socket:[{fields[9]}]")
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                        return pid
    raise AssertionError(f"none of {pids} listens on port {port}")


def gunicorn_recipe(directory: Path, port: int, workers: int) -> list[str]:
    """Write the README's recipe to ``directory/workers.py`` as printed; return its
    command (``python -m gunicorn``, from ``directory``) with ``-w workers`` and
    ``-b 127.0.0.1:port`` instead of the README's."""
    found = GUNICORN_RECIPE.search((ROOT / "README.md").read_text())
    assert found, "README.md has no gunicorn recipe (a workers.py block)"
    (directory / "workers.py").write_text(found["code"])
    command = shlex.split(found["command"])
    assert command[:2] == ["gunicorn", "workers:make_app"], command
    assert "aiohttp.GunicornWebWorker" in command, command  # the aiohttp worker (-k)
    options = {"-w": str(workers), "-b": f"127.0.0.1:{port}"}
    assert set(options) <= set(command), command
    argv = [options.get(before, arg)
            for before, arg in zip(["", *command[:-1]], command, strict=True)]
    return [sys.executable, "-m", *argv, "--chdir", str(directory)]


async def test_gunicorn_recipe_two_workers(apps: Apps) -> None:
    """The README's recipe under ``gunicorn -w 2 -k aiohttp.GunicornWebWorker``:
    each worker its own node (overflow and confirms across workers), a worker
    stopped alone hands its jobs to the other, SIGTERM stops the whole server."""
    if importlib.util.find_spec("gunicorn") is None:
        pytest.fail("gunicorn is not installed (a test extra): run make install")
    port, node_port = free_port(), free_port()
    env = apps.base_env(GOBUCKET_NODE_PORT=str(node_port), ORDERS_MAX_JOBS="4",
                        ORDERS_CONFIRM_WITHIN=str(CONFIRM),
                        # gunicorn's control socket (gunicorn >= 25): here, not in ~/.gunicorn
                        XDG_RUNTIME_DIR=str(apps.logdir))
    app = apps.add("gunicorn", gunicorn_recipe(apps.logdir, port, 2), env, port)

    def fired() -> list[str]:
        return RAN.findall(app.log())

    held = await overflow_and_confirm_across_workers(app, node_port, fired, CONFIRM)
    ran = Counter(fired())
    workers = app.pids(r"Booting worker with pid: (\d+)")
    assert len(workers) == 2, app.log()[-3000:]
    # One worker stopped alone (as gunicorn recycles workers: --max-requests,
    # TTOU): the jobs it holds are handed to the other one and run there, once,
    # and gunicorn boots a new worker in its place.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one:
        placed = [await post(one, f"{app.url}/orders/r-{i}") for i in range(2)]
    holder = placed[0][1]["node"]
    assert all((status, body["node"], body["held_by"]) == (201, holder, holder)
               for status, body, _ in placed), placed
    recycled = listening_pid(workers, int(holder.rpartition(":")[2]))
    os.kill(recycled, signal.SIGTERM)  # a worker of the server started above
    await wait_for(lambda: recycled in app.pids(r"Worker exiting \(pid: (\d+)\)"), 20,
                   "the stopped worker to exit", 0.1)
    await wait_for(lambda: len(set(fired()) & {"r-0", "r-1"}) == 2, CONFIRM + 15,
                   "the handed-off jobs to run on the other worker", 0.1)
    await asyncio.sleep(0.3)
    assert Counter(fired()) == ran + Counter(["r-0", "r-1"])
    log = app.log()  # they ran after it had exited: on the other worker, not rescued
    exited = log.index(f"Worker exiting (pid: {recycled})")
    assert all(log.index(f"r-{i} was not confirmed") > exited for i in range(2)), log[-3000:]
    workers = await wait_for(lambda: (p := app.pids(r"Booting worker with pid: (\d+)"))[2:]
                             and p, 20, "gunicorn to boot a new worker", 0.1)
    survivor = next(n for n in held.values() if n != holder)
    async with aiohttp.ClientSession() as http:  # the new worker's node joins the survivor
        await meshed(http, [app], [f"http://{survivor}/v1/status"], 1)
        async with http.get(f"http://{survivor}/v1/status") as resp:
            [newcomer] = [p["address"] for p in (await resp.json())["peers"]
                          if p["state"] == "alive"]
        assert (await meshed(http, [app], [f"http://{newcomer}/v1/status"], 1)) == [newcomer]
    # SIGTERM: the master stops both workers, each stopping its node in cleanup_ctx.
    await stopped_cleanly(app)
    log = app.log()
    assert sorted(app.pids(r"Worker exiting \(pid: (\d+)\)")) == sorted(workers), log[-3000:]
    assert "Shutting down: Master" in log, log[-3000:]
    for trouble in ("[ERROR]", "[CRITICAL]", "WORKER TIMEOUT", "SIGKILL", "handoff_incomplete"):
        assert trouble not in log, log[-3000:]
    # the app's port and every node port, the new worker's too
    for address in {f"127.0.0.1:{port}", *held.values(), newcomer}:
        assert not reachable(address), f"{address} still answers"
