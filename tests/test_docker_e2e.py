"""The three-node docker-compose demo, end to end (marker ``docker``; ``make e2e``).

Builds the images offline (docker/build-base-image.sh: a local Debian base
and a wheelhouse), brings node1..node3 up, runs the demo, drains a task that
lives on node3 through node1, kills node3, restarts node2 gracefully while it
holds pending tasks, and tears everything down.

Then two faults of a holder, each longer than the suspicion timeout (and far
shorter than ``lost_after``): ``docker pause`` of node3, and ``docker network
disconnect`` of node3. Time-bombs are placed through node1's published port
(``GroupClient`` from the host); drains of node3's tasks are sent through
node1 while the fault lasts (they must answer PeerUnavailableError, "try
again", or the truth), retried once it heals (DRAINED, or how the task
ended). The nodes' logs (``docker logs -t``: the host's clock, like the
client's) are the ledger: no task runs twice, none answered DRAINED runs,
none answered NOT_FOUND runs after the answer, every task has one outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gobucket_py import (
    DrainOutcome,
    GobucketError,
    GroupClient,
    PeerUnavailableError,
    TaskType,
)

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


def up(*services: str, build: bool = False, timeout: float = 300) -> None:
    """``compose up -d`` and wait until every service's healthcheck passes (by hand:
    docker-compose v1 has no ``--wait``, and prints its usage with exit code 0)."""
    compose("up", *(["--build"] if build else []), "-d", *services, timeout=timeout)
    deadline = time.monotonic() + 120
    for service in services:
        cid = compose("ps", "-q", service).stdout.strip()
        while True:
            health = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", cid],
                capture_output=True, text=True, timeout=30).stdout.strip()
            if health == "healthy":
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{service} is {health or 'not running'}, not healthy")
            time.sleep(0.5)


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
        up("node1", "node2", "node3", build=True, timeout=600)
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


# -- a holder frozen or cut off -------------------------------------------------------------------

NETWORK = f"{PROJECT}_default"
FAULT_FOR = 7.0  # > detection (~2.5 s with the default GroupConfig), << lost_after (30 s)
SHORT, LONG = 3.0, 30.0  # run_after: fires during the fault / long after it healed
DEFINITE = {o.value for o in DrainOutcome}
# What each outcome of a task looks like in the nodes' logs (examples/cluster/app.py
# logs every hook; the library logs drains, cancels and handoffs).
APP_LINE = re.compile(r"backup job (runs|finished|failed|ran out of time|rescued) "
                      r"node=(\S+) task_id=(\S+)")
LIB_LINE = re.compile(r"event=(drained|cancelled|handed_off) node=(\S+) bucket=backups "
                      r"task_id=(\S+)")
STATES = {"runs": "started", "ran out of time": "exhausted"}
FINAL = {"finished", "failed", "exhausted", "rescued", "drained", "cancelled"}


def container(service: str) -> str:
    cid = compose("ps", "-q", service).stdout.strip()
    assert cid, f"no container for {service}"
    return cid


def stamp(text: str) -> float:
    """``2026-11-26T15:57:35.874123456Z`` (docker logs -t) -> seconds since the epoch."""
    whole, _, frac = text.rstrip("Z").partition(".")
    when = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return when.timestamp() + float(f"0.{frac or 0}")


def ledger(prefix: str) -> dict[str, list[tuple[float, str, str]]]:
    """``{task_id: [(time, node, state), ...]}`` for our tasks, from every node's log."""
    out: dict[str, list[tuple[float, str, str]]] = {}
    for service in ("node1", "node2", "node3"):
        logs = subprocess.run(["docker", "logs", "-t", container(service)],
                              capture_output=True, text=True, timeout=60)
        for line in (logs.stdout + logs.stderr).splitlines():
            if prefix not in line:
                continue
            found = APP_LINE.search(line) or LIB_LINE.search(line)
            if found is None or not found.group(3).startswith(prefix):
                continue
            state = STATES.get(found.group(1), found.group(1))
            out.setdefault(found.group(3), []).append(
                (stamp(line.split(" ", 1)[0]), found.group(2), state))
    for entries in out.values():
        entries.sort()
    return out


@dataclass
class Answer:
    value: str  # a DrainOutcome value, or "unknown" (PeerUnavailableError), or an error name
    sent: float
    at: float
    during: bool  # sent while the fault lasted

    def __str__(self) -> str:
        return (f"{self.value}@{self.at:.3f} (sent {self.sent:.3f}"
                f"{', during the fault' if self.during else ''})")


@dataclass
class Drains:
    client: GroupClient
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    faulty: bool = False

    async def one(self, task_id: str) -> str:
        sent = time.time()
        try:
            value = (await self.client.drain("backups", task_id)).outcome.value
        except PeerUnavailableError:
            value = "unknown"
        except GobucketError as exc:
            value = type(exc).__name__
        during = self.faulty
        self.answers.setdefault(task_id, []).append(Answer(value, sent, time.time(), during))
        return value

    async def many(self, ids: list[str]) -> Counter[str]:
        return Counter(await asyncio.gather(*(self.one(t) for t in ids)))

    async def until_definite(self, ids: list[str], timeout: float = 30.0) -> Counter[str]:
        """Ask again until each gets a definite answer (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        todo = list(ids)
        while todo and time.monotonic() < deadline:
            await self.many(todo)
            todo = [t for t in todo if self.answers[t][-1].value not in DEFINITE]
            if todo:
                await asyncio.sleep(0.5)
        return Counter(self.answers[t][-1].value for t in ids)


async def peer_state(client: GroupClient, peer: str) -> str | None:
    try:
        peers: dict[str, str] = (await client.stats())["peers"]
    except GobucketError:
        return None
    return peers.get(peer)


async def until_state(client: GroupClient, peer: str, state: str, timeout: float) -> float:
    start = time.monotonic()
    while await peer_state(client, peer) != state:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"node1 did not see {peer} {state} within {timeout}s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


def fault_on(fault: str, service: str) -> None:
    if fault == "pause":
        compose("pause", service)
    else:
        subprocess.run(["docker", "network", "disconnect", NETWORK, container(service)],
                       check=True, capture_output=True, timeout=60)


def fault_off(fault: str, service: str) -> None:
    if fault == "pause":
        compose("unpause", service)
    else:  # back under its service name, which its peers dial (node3:6666)
        subprocess.run(["docker", "network", "connect", "--alias", service, NETWORK,
                        container(service)], check=True, capture_output=True, timeout=60)


def check_ledger(prefix: str, placed: dict[str, str], drains: Drains
                 ) -> tuple[Counter[str], dict[str, list[str]]]:
    """The census of one fault: counts, and violations with their evidence."""
    seen = ledger(prefix)
    counts: Counter[str] = Counter()
    bad: dict[str, list[str]] = {}

    def violation(kind: str, task_id: str, why: str = "") -> None:
        answers = ", ".join(map(str, drains.answers.get(task_id, []))) or "-"
        bad.setdefault(kind, []).append(
            f"{task_id} on {placed.get(task_id)}: answers [{answers}]; log "
            f"{[(f'{t:.3f}', n, s) for t, n, s in seen.get(task_id, [])]}" + (
                f"; {why}" if why else ""))

    for task_id in sorted(set(seen) - set(placed)):
        violation("in a log, never accepted", task_id)
    for task_id in sorted(placed):
        entries = seen.get(task_id, [])
        starts = [t for t, _, s in entries if s == "started"]
        finals = [(t, s) for t, _, s in entries if s in FINAL]
        counts[f"outcome {finals[0][1] if len(finals) == 1 else len(finals)}"] += 1
        if len(starts) > 1:
            violation("ran twice", task_id)
        if len(finals) != 1:
            violation("not exactly one outcome", task_id)
        outcome = finals[0][1] if len(finals) == 1 else None
        answers = drains.answers.get(task_id, [])
        for answer in answers:
            counts[f"{'during' if answer.during else 'after'} the fault: {answer.value}"] += 1
            if answer.value == "drained" and starts:
                violation("DRAINED-then-ran", task_id)
            elif answer.value == "not_found":
                if any(t > answer.at for t in starts):
                    violation("NOT_FOUND-then-ran", task_id)
                else:
                    violation("NOT_FOUND for an accepted task", task_id)
            elif answer.value in FINAL and answer.value != outcome:
                violation(f"answered {answer.value.upper()}, the log says otherwise", task_id)
            elif answer.value not in DEFINITE and answer.value != "unknown":
                violation(f"drain raised {answer.value}", task_id)
        if answers and answers[-1].value not in DEFINITE:
            violation("no definite answer after the fault healed", task_id)
        if any(a.value == "unknown" for a in answers) and answers[-1].value in DEFINITE:
            counts[f"unknown, then on retry: {answers[-1].value}"] += 1
    return counts, bad


@pytest.mark.parametrize("fault", ["pause", "disconnect"])
async def test_holder_paused_or_cut_off_drains_never_lie(cluster: None, fault: str) -> None:
    """node3 frozen (docker pause) or cut off (docker network disconnect) for FAULT_FOR
    seconds; drains of its tasks through node1 meanwhile, and after it heals."""
    await asyncio.to_thread(up, "node1", "node2", "node3")  # node3 was killed above
    prefix = f"e2e-{fault}-"
    rng = random.Random(fault)
    async with GroupClient(f"127.0.0.1:{PORT}", secret=SECRET, timeout=10.0) as client:
        for peer in ("node2", "node3"):
            await until_state(client, peer, "alive", 60)
        # 1. Time-bombs through node1 (it holds 100; the rest overflow to node2 and node3)
        #    and a few filled by node3 itself (no node holds a route to them).
        placed: dict[str, str] = {}
        short: set[str] = set()
        for i in range(230):
            task_id = f"{prefix}{i:03d}"
            run_after = SHORT if i % 4 == 0 else LONG
            short.update([task_id] if run_after == SHORT else [])
            result = await client.fill("backups", task_id, {"e2e": fault},
                                       task_type=TaskType.TIME_BOMB, run_after=run_after,
                                       life_span=run_after + 60)
            placed[task_id] = result.node_id
        local3 = [f"{prefix}n3-{i:02d}" for i in range(12)]
        nodes = await asyncio.to_thread(on, "node3", "fill", str(LONG), *local3)
        placed.update(zip(local3, nodes, strict=True))
        filled = time.monotonic()
        on3 = [t for t, n in placed.items() if n == "node3"]
        others = [t for t, n in placed.items() if n != "node3"]
        rng.shuffle(on3)
        print(f"\n{fault}: placed {dict(Counter(placed.values()))}; node3 holds {len(on3)} "
              f"({sum(t in short for t in on3)} fire during the fault)")
        assert len(on3) >= 30, Counter(placed.values())

        # 2. The fault; drains of node3's tasks through node1 while it lasts.
        drains = Drains(client)
        third = len(on3) // 3
        await asyncio.to_thread(fault_on, fault, "node3")
        drains.faulty, t0 = True, time.monotonic()
        try:
            early = await drains.many(on3[:third])  # node3 not yet suspected: timeouts
            dead_after = await until_state(client, "node3", "dead", 15)
            late = await drains.many(on3[third:2 * third])  # dead, maybe only stalled
            healthy = await drains.many(others[:20])  # the other nodes' tasks: unaffected
            await asyncio.sleep(max(0.0, t0 + FAULT_FOR - time.monotonic()))
        finally:
            await asyncio.to_thread(fault_off, fault, "node3")
            drains.faulty, lasted = False, time.monotonic() - t0

        # 3. Healed: every unknown asked again, and the rest drained.
        alive_after = await until_state(client, "node3", "alive", 60)
        retried = await drains.until_definite(on3[:2 * third])
        rest = await drains.until_definite(on3[2 * third:] + others[20:])
        print(f"{fault}: node3 dead to node1 after {dead_after:.1f} s, fault lasted "
              f"{lasted:.1f} s, alive again {alive_after:.1f} s later; drains during the "
              f"fault: before dead {dict(early)}, once dead {dict(late)}, other nodes' "
              f"tasks {dict(healthy)}; retried after: {dict(retried)}; the rest: {dict(rest)}")

        # 4. Past every firing time, the logs are the ledger.
        await asyncio.sleep(max(0.0, filled + LONG + 3 - time.monotonic()))
        counts, bad = await asyncio.to_thread(check_ledger, prefix, placed, drains)
    print(f"{fault}: census {dict(sorted(counts.items()))}")
    for kind, items in bad.items():
        print(f"  VIOLATION {kind}: {len(items)}")
        for item in items[:5]:
            print(f"    {item}")
    assert not bad, {kind: items[:3] for kind, items in bad.items()}
    assert lasted > dead_after and lasted < 30, (lasted, dead_after)
    assert set(early) | set(late) <= {"unknown"} | DEFINITE - {"not_found"}, (early, late)
    assert set(healthy) <= {"drained", "finished", "cancelled"}, healthy
    assert set(retried) <= DEFINITE - {"not_found", "lost"}, retried
    assert set(rest) <= DEFINITE - {"not_found", "lost"}, rest
    assert all(drains.answers[t][-1].value == "drained"
               for t in on3 + others if t not in short), "a long time-bomb was not drained"
