"""The three-node docker-compose demo, end to end (marker ``docker``; ``make e2e``).

Builds the images offline (docker/build-base-image.sh: a local Debian base
and a wheelhouse), brings node1..node3 up, runs the demo, drains a task that
lives on node3 through node1, kills node3, restarts node2 gracefully while it
holds pending tasks, and tears everything down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "gobucket-e2e"
SECRET = "e2e-secret-0123456789"
PORT = os.environ.get("E2E_NODE1_PORT", "16666")


def compose_cmd() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is available")


ENV = {**os.environ, "BASE_IMAGE": "gobucket-base:local", "GOBUCKET_SECRET": SECRET,
       "NODE1_PORT": PORT, "GOBUCKET_TAG": "e2e"}


def compose(*args: str, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [*compose_cmd(), "-p", PROJECT, *args]
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


CLIENT = """
import asyncio, json, sys
from gobucket_py import GroupClient, TaskType
async def main(op, *a):
    async with GroupClient("127.0.0.1:6666", secret=sys.argv[1]) as c:
        if op == "stats":
            out = await c.stats()
        elif op == "fill":
            out = []
            for tid in a[1:]:
                r = await c.fill("backups", tid, {"e2e": True}, task_type=TaskType.TIME_BOMB,
                                 run_after=float(a[0]), life_span=float(a[0]) + 30)
                out.append(r.node_id)
        elif op == "drain":
            out = [(await c.drain("backups", t)).outcome.value for t in a]
        elif op == "get":
            out = [None if (i := await c.get("backups", t)) is None else i.node_id for t in a]
        print(json.dumps(out))
asyncio.run(main(*sys.argv[2:]))
"""


def on(service: str, *args: str) -> Any:
    """Run a GroupClient call inside a node's container, against that node."""
    result = compose("exec", "-T", service, "python3", "-c", CLIENT, SECRET, *args, timeout=60)
    return json.loads(result.stdout.strip().splitlines()[-1])


def wait_for(predicate: Any, timeout: float, step: float = 0.2) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("Docker Engine is not reachable")
    subprocess.run([str(ROOT / "docker" / "build-base-image.sh")], cwd=ROOT, check=True,
                   timeout=600)
    try:
        compose("up", "--build", "-d", "--wait", "node1", "node2", "node3", timeout=600)
        yield
    finally:
        compose("down", "--rmi", "all", "--volumes", "--remove-orphans", check=False)
        left = subprocess.run(["docker", "ps", "-a", "-q", "--filter",
                               f"label=com.docker.compose.project={PROJECT}"],
                              capture_output=True, text=True).stdout.strip()
        assert left == "", f"containers left behind: {left}"


def test_compose_demo_end_to_end(cluster: None) -> None:
    # 1-2. The demo through node1 reaches node2 and node3 and loses nothing.
    demo = compose("run", "--rm", "demo", timeout=120)
    print(demo.stdout)
    summary = next(line for line in demo.stdout.splitlines() if line.startswith("filled="))
    fields = dict(part.split("=") for part in summary.split())
    assert fields["lost"] == "0" and "DEMO OK" in demo.stdout
    placed = {line.split()[0]: int(line.split()[1]) for line in demo.stdout.splitlines()
              if line.startswith("node") and line.split()[1].isdigit()}
    assert placed.get("node2", 0) > 0 and placed.get("node3", 0) > 0

    # The dashboard, status and metrics on node1's published port, unchanged.
    base = f"http://127.0.0.1:{PORT}"
    with urllib.request.urlopen(f"{base}/", timeout=10) as resp:
        assert resp.status == 200 and b"gobucket cluster" in resp.read()
    with urllib.request.urlopen(f"{base}/v1/status", timeout=10) as resp:
        status = json.loads(resp.read())
    assert status["node"] == "node1"
    assert {p["node_id"]: p["state"] for p in status["peers"]} == {"node2": "alive",
                                                                   "node3": "alive"}
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'gobucket_fills_total{bucket="backups",node="node1",result="forwarded"}' in metrics

    # 3. A time-bomb that lives on node3, drained through node1: never fires.
    before = on("node3", "stats")["buckets"]["backups"]
    assert on("node3", "fill", "4", "e2e-drain-me") == ["node3"]
    assert on("node1", "drain", "e2e-drain-me") == ["drained"]
    time.sleep(5)  # past its firing time: a real container clock cannot be faked
    after = on("node3", "stats")["buckets"]["backups"]
    assert after["finished"] == before["finished"]
    assert after["drained"] == before["drained"] + 1

    # 4. kill node3: node1 and node2 mark it dead within 3 s.
    compose("kill", "node3")
    t0 = time.monotonic()

    def dead_for(service: str) -> bool:
        return bool(on(service, "stats")["peers"].get("node3") == "dead")

    wait_for(lambda: dead_for("node1"), 10, step=0.05)
    seen_by_node1 = time.monotonic() - t0
    wait_for(lambda: dead_for("node2"), 10, step=0.05)
    print(f"node3 dead at node1 after {seen_by_node1:.2f}s (includes docker exec overhead)")
    assert seen_by_node1 <= 3.0 + 1.5  # each check is a `docker exec` of ~0.5-1 s

    # 5. Graceful restart of node2 while it holds pending tasks: none lost.
    ids = [f"e2e-handoff-{i}" for i in range(20)]
    assert set(on("node2", "fill", "30", *ids)) == {"node2"}
    compose("restart", "node2", timeout=120)
    where = on("node1", "get", *ids)
    assert all(node in ("node1", "node2") for node in where), where
    assert on("node1", "drain", *ids) == ["drained"] * len(ids)
