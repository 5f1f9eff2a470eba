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

The nodes run with ``GOBUCKET_REPLICAS=1`` (docker-compose.yml passes it on;
the plain demo keeps 0): every pending time-bomb has a backup on another
node. The last test kills a holder (``docker kill``: SIGKILL) and restarts
it: its new boot id proves its tasks gone, its backups take them over, and
every task it held that had not started runs once on a survivor (or stays
drained, if it was drained before the kill).

Last, docker-compose.scale.yml on its own project: one ``node`` service
scaled to 5 (``--scale node=5``) whose replicas find each other through
``GOBUCKET_PEERS=dns:node:6666``, each advertising its own IP; every node
must see the 4 others alive, and tasks filled through one of them overflow to
the others and run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import ssl
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
    TLSConfig,
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
       "NODE1_PORT": PORT, "GOBUCKET_TAG": "e2e", "GOBUCKET_REPLICAS": "1",
       # Per-task drains are DEBUG lines (INFO counts them): the ledger reads them.
       "GOBUCKET_LOG_LEVEL": "DEBUG"}


def compose(*args: str, check: bool = True, timeout: float = 300, project: str = PROJECT,
            file: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*compose_cmd(), "-p", project, *(["-f", file] if file else []), *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env or ENV, capture_output=True, text=True,
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


async def backups_held() -> dict[str, int]:
    """Backups each node holds for its peers (bucket ``backups``)."""
    stats = await asyncio.gather(*(asyncio.to_thread(on, n, "stats")
                                   for n in ("node1", "node2", "node3")))
    return {n: s["buckets"]["backups"]["backups"]
            for n, s in zip(("node1", "node2", "node3"), stats, strict=True)}


def wait_for(predicate: Any, timeout: float, step: float = 0.2) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def needs_docker() -> None:
    """Skip without a reachable Docker Engine."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("Docker Engine is not reachable")


def build_base_image() -> None:
    """The local Debian base image and the host's wheelhouse (no registry)."""
    subprocess.run([str(ROOT / "docker" / "build-base-image.sh")], cwd=ROOT, check=True,
                   timeout=600)


def torn_down(down: Any, project: str) -> None:
    """``down`` (a compose runner of ``project``) removes everything; nothing is left."""
    down("down", "--rmi", "all", "--volumes", "--remove-orphans", check=False)
    left = subprocess.run(["docker", "ps", "-a", "-q", "--filter",
                           f"label=com.docker.compose.project={project}"],
                          capture_output=True, text=True).stdout.strip()
    assert left == "", f"containers left behind: {left}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    needs_docker()
    build_base_image()
    try:
        up("node1", "node2", "node3", build=True, timeout=600)
        yield
    finally:
        torn_down(compose, PROJECT)


def demo_reached_every_node(stdout: str) -> None:
    """The demo's summary: nothing lost, DEMO OK, tasks placed on node2 and node3."""
    print(stdout)
    summary = next(line for line in stdout.splitlines() if line.startswith("filled="))
    fields = dict(part.split("=") for part in summary.split())
    assert fields["lost"] == "0" and "DEMO OK" in stdout
    placed = {line.split()[0]: int(line.split()[1]) for line in stdout.splitlines()
              if line.startswith("node") and line.split()[1].isdigit()}
    assert placed.get("node2", 0) > 0 and placed.get("node3", 0) > 0


def test_compose_demo_end_to_end(cluster: None) -> None:
    # 1-2. The demo through node1 reaches node2 and node3 and loses nothing.
    demo_reached_every_node(compose("run", "--rm", "demo", timeout=120).stdout)

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
    assert ('gobucket_fills_total{bucket_name="backups",node_id="node1",result="forwarded"}'
            in metrics)

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
                      r"event=\S+ node=(\S+) task_id=(\S+)")
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


def log_lines(service: str) -> list[str]:
    """A node's whole log (every run of its container), each line stamped by the host."""
    logs = subprocess.run(["docker", "logs", "-t", container(service)],
                          capture_output=True, text=True, timeout=60)
    return (logs.stdout + logs.stderr).splitlines()


def ledger(prefix: str) -> dict[str, list[tuple[float, str, str]]]:
    """``{task_id: [(time, node, state), ...]}`` for our tasks, from every node's log."""
    out: dict[str, list[tuple[float, str, str]]] = {}
    for service in ("node1", "node2", "node3"):
        for line in log_lines(service):
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
            # The other nodes' tasks: a live one is drained; one that already
            # ended there may be unknown (node3 cannot say whether the id was
            # filled again onto it), never a record's answer taken on trust.
            healthy = await drains.many(others[:20])
            await asyncio.sleep(max(0.0, t0 + FAULT_FOR - time.monotonic()))
        finally:
            await asyncio.to_thread(fault_off, fault, "node3")
            drains.faulty, lasted = False, time.monotonic() - t0

        # 3. Healed: every unknown asked again, and the rest drained.
        alive_after = await until_state(client, "node3", "alive", 60)
        retried = await drains.until_definite(on3[:2 * third] + others[:20])
        rest = await drains.until_definite(on3[2 * third:] + others[20:])
        print(f"{fault}: node3 dead to node1 after {dead_after:.1f} s, fault lasted "
              f"{lasted:.1f} s, alive again {alive_after:.1f} s later; drains during the "
              f"fault: before dead {dict(early)}, once dead {dict(late)}, other nodes' "
              f"tasks {dict(healthy)}; retried after: {dict(retried)}; the rest: {dict(rest)}")

        # 4. Past every firing time, the logs are the ledger; every task ended, so no
        #    backup is left (node3's stale ones go once it is back: it asks their primary).
        await asyncio.sleep(max(0.0, filled + LONG + 3 - time.monotonic()))
        counts, bad = await asyncio.to_thread(check_ledger, prefix, placed, drains)
        held = await backups_held()
        for _ in range(20):
            if not any(held.values()):
                break
            await asyncio.sleep(0.5)
            held = await backups_held()
    print(f"{fault}: backups left after every task ended {held}")
    print(f"{fault}: census {dict(sorted(counts.items()))}")
    for kind, items in bad.items():
        print(f"  VIOLATION {kind}: {len(items)}")
        for item in items[:5]:
            print(f"    {item}")
    assert not bad, {kind: items[:3] for kind, items in bad.items()}
    assert not any(held.values()), held
    assert lasted > dead_after and lasted < 30, (lasted, dead_after)
    assert set(early) | set(late) <= {"unknown"} | DEFINITE - {"not_found"}, (early, late)
    assert set(healthy) <= {"drained", "finished", "cancelled", "unknown"}, healthy
    live_unknown = [t for t in others[:20] if t not in short
                    and any(a.value == "unknown" for a in drains.answers[t] if a.during)]
    assert not live_unknown, f"a live task on another node was not drained: {live_unknown}"
    assert set(retried) <= DEFINITE - {"not_found", "lost"}, retried
    assert set(rest) <= DEFINITE - {"not_found", "lost"}, rest
    assert all(drains.answers[t][-1].value == "drained"
               for t in on3 + others if t not in short), "a long time-bomb was not drained"


# -- a holder killed (kill -9) and restarted, with replicas=1 -------------------------------------

KILL_PREFIX = "e2e-kill9-"
KILL_TASKS = 240  # through node1: it holds 100, the rest overflow to node2 and node3
KILL_DRAINED = 0.3  # the share of them drained through node1 before the kill
KILL_AT = 8.0  # s after the first fill: the fills and drains are done by then
# Each task is due this long after the (planned) kill: pending at it; the first ones are
# due before the backups take over (~2 s: detection and restart), and run at once then.
KILL_DUE = (1.0, 8.0)
PENDING = "pending at the kill"
MUST_END = {PENDING, "drained before the kill", "held by a survivor"}
PROMOTED = re.compile(r"event=tasks_promoted node=(\S+) peer=(\S+) count=(\d+)")
REPORTED_LOST = re.compile(r"event=tasks_lost node=(\S+) peer=(\S+) .*count=(\d+)")


@dataclass
class KillRun:
    """What the client saw of the kill: placements, due times, drain answers."""

    placed: dict[str, str]  # task id -> the node its fill put it on
    fires: dict[str, float]  # task id -> wall clock it is due (the earliest it may run)
    drains: Drains
    victim: str
    killed: float  # wall clock once `docker kill` returned


@dataclass
class KillCensus:
    """The ledger of the kill: counts, violations with their evidence, lateness."""

    counts: Counter[str] = field(default_factory=Counter)
    bad: dict[str, list[str]] = field(default_factory=dict)
    late: list[float] = field(default_factory=list)  # start - due, of pending tasks that ran


def counted_since(pattern: re.Pattern[str], peer: str, since: float) -> Counter[str]:
    """``{node: count}``: the counts of ``pattern``'s lines about ``peer`` logged after
    ``since`` (groups: node, peer, count)."""
    out: Counter[str] = Counter()
    for service in ("node1", "node2", "node3"):
        for line in log_lines(service):
            found = pattern.search(line)
            if found and found.group(2) == peer and stamp(line.split(" ", 1)[0]) > since:
                out[found.group(1)] += int(found.group(3))
    return out


def all_ended(prefix: str, ids: set[str]) -> bool:
    """Whether every one of ``ids`` has an outcome in the nodes' logs."""
    seen = ledger(prefix)
    return all(any(s in FINAL for _, _, s in seen.get(t, [])) for t in ids)


def check_kill(run: KillRun) -> KillCensus:
    """Sort every task by what it was at the kill, and check its outcome.

    The victim's tasks that had not started by the kill (nor were due: one due
    may have been starting, which loses it like a running one) must end exactly
    once, on a survivor; those drained before the kill must never run; every
    other task ends exactly once where it was placed. Nothing runs twice.
    """
    seen = ledger(KILL_PREFIX)
    census = KillCensus()

    def violation(kind: str, task_id: str) -> None:
        answers = ", ".join(map(str, run.drains.answers.get(task_id, []))) or "-"
        census.bad.setdefault(kind, []).append(
            f"{task_id} on {run.placed.get(task_id)}, due {run.fires.get(task_id, 0.0):.3f} "
            f"(killed {run.killed:.3f}): answers [{answers}]; log "
            f"{[(f'{t:.3f}', n, s) for t, n, s in seen.get(task_id, [])]}")

    for task_id in sorted(set(seen) - set(run.placed)):
        violation("in a log, never accepted", task_id)
    for task_id, node in sorted(run.placed.items()):
        entries = seen.get(task_id, [])
        starts = [(t, n) for t, n, s in entries if s == "started"]
        finals = [(t, n, s) for t, n, s in entries if s in FINAL]
        drained = any(a.value == "drained" for a in run.drains.answers.get(task_id, []))
        if node != run.victim:
            kind = "held by a survivor"
        elif drained:
            kind = "drained before the kill"
        elif any(t < run.killed for t, _, _ in entries):
            kind = "started before the kill"  # running at the kill: may be lost (documented)
        elif run.fires[task_id] <= run.killed:
            kind = "due by the kill"  # may have been starting: may be lost
        else:
            kind = PENDING
        outcome = f"{finals[0][2]} on {finals[0][1]}" if len(finals) == 1 else (
            f"{len(finals)} outcomes")
        census.counts[f"{kind}: {outcome if kind == PENDING else outcome.split()[0]}"] += 1
        if len(starts) > 1:
            violation("ran twice", task_id)
        if drained and starts:
            violation("DRAINED-then-ran", task_id)
        if len(finals) > 1:
            violation("more than one outcome", task_id)
        elif not finals and kind in MUST_END:
            violation("lost" if kind == PENDING else "no outcome", task_id)
        elif kind == PENDING and finals[0][1] == run.victim:
            violation("ended on the victim after its restart", task_id)
        if kind == PENDING and starts:
            census.late.append(starts[0][0] - run.fires[task_id])
    return census


async def test_holder_killed_and_restarted_backups_take_over(cluster: None) -> None:
    """replicas=1: ``docker kill`` (SIGKILL) a holder of pending time-bombs (node2 or
    node3: the test talks to node1) and ``docker start`` it again. Its new boot id proves
    its tasks gone; each one not started by the kill runs once on a survivor, or stays
    drained if a drain answered DRAINED before the kill. Nothing runs twice."""
    await asyncio.to_thread(up, "node1", "node2", "node3")
    rng = random.Random("kill9")
    async with GroupClient(f"127.0.0.1:{PORT}", secret=SECRET, timeout=10.0) as client:
        for peer in ("node2", "node3"):
            await until_state(client, peer, "alive", 60)
        print(f"\nkill9: backups held before the test {await backups_held()}")
        # 1. Time-bombs through node1, each due KILL_DUE after the planned kill.
        t0 = time.time()
        kill_at = t0 + KILL_AT
        ids = [f"{KILL_PREFIX}{i:03d}" for i in range(KILL_TASKS)]
        fires = {t: kill_at + rng.uniform(*KILL_DUE) for t in ids}
        placed: dict[str, str] = {}

        async def fill(task_id: str) -> None:
            run_after = fires[task_id] - time.time()
            result = await client.fill("backups", task_id, {"e2e": "kill9"},
                                       task_type=TaskType.TIME_BOMB, run_after=run_after,
                                       life_span=run_after + 60)
            placed[task_id] = result.node_id

        for i in range(0, len(ids), 20):  # 20 at a time: node1 fills up, then overflows
            await asyncio.gather(*(fill(t) for t in ids[i:i + 20]))
        filled = time.time() - t0

        # 2. About 30% drained through node1, wherever they live.
        drains = Drains(client)
        drained = await drains.many(rng.sample(ids, round(len(ids) * KILL_DRAINED)))
        ready = time.time() - t0
        left = Counter(n for t, n in placed.items() if t not in drains.answers)
        victim = max(("node2", "node3"), key=lambda n: left[n])
        print(f"\nkill9: placed {dict(sorted(Counter(placed.values()).items()))} in "
              f"{filled:.1f} s; drained {dict(drained)} ({ready:.1f} s in); not drained "
              f"{dict(sorted(left.items()))}; victim {victim}")
        assert set(drained) == {"drained"}, drained
        assert left[victim] >= 30, left

        # 3. kill -9 of the victim; once node1 sees it dead, it starts again (new boot id).
        await asyncio.sleep(max(0.0, kill_at - time.time()))
        cid = container(victim)
        await asyncio.to_thread(subprocess.run, ["docker", "kill", cid], check=True,
                                capture_output=True, timeout=60)
        killed = time.time()
        dead_after = await until_state(client, victim, "dead", 15)
        await asyncio.to_thread(subprocess.run, ["docker", "start", cid], check=True,
                                capture_output=True, timeout=60)
        back_after = await until_state(client, victim, "alive", 60)

        # 4. Past every due time, until every task has an outcome (or 30 s more).
        await asyncio.sleep(max(0.0, max(fires.values()) + 2.0 - time.time()))
        deadline = time.monotonic() + 30
        while (not await asyncio.to_thread(all_ended, KILL_PREFIX, set(placed))
               and time.monotonic() < deadline):
            await asyncio.sleep(1.0)
    run = KillRun(placed, fires, drains, victim, killed)
    census = await asyncio.to_thread(check_kill, run)
    promoted = await asyncio.to_thread(counted_since, PROMOTED, victim, killed)
    reported = await asyncio.to_thread(counted_since, REPORTED_LOST, victim, killed)

    counts, bad = census.counts, census.bad
    print(f"kill9: census {dict(sorted(counts.items()))}")
    for kind, items in bad.items():
        print(f"  VIOLATION {kind}: {len(items)}")
        for item in items[:5]:
            print(f"    {item}")
    held = sum(n for k, n in counts.items() if k.startswith(PENDING))
    ran = Counter(k.rsplit(" ", 1)[1] for k in counts.elements()
                  if k.startswith(f"{PENDING}: finished on "))
    at_kill = sum(n for k, n in counts.items()
                  if k.startswith(("started before the kill", "due by the kill")))
    print(f"kill9 summary: {victim} killed holding {sum(placed[t] == victim for t in ids)} "
          f"({sum(n for k, n in counts.items() if k.startswith('drained before'))} drained "
          f"before the kill, {held} pending, {at_kill} due or running); of the pending: "
          f"{sum(ran.values())} ran once on a survivor {dict(sorted(ran.items()))}, "
          f"lost {len(bad.get('lost', []))}, ran twice {len(bad.get('ran twice', []))}, "
          f"ran after DRAINED {len(bad.get('DRAINED-then-ran', []))}; dead to node1 after "
          f"{dead_after:.1f} s, back {back_after:.1f} s later; taken over "
          f"{dict(sorted(promoted.items()))}, reported lost {dict(sorted(reported.items()))}; "
          f"started up to {max(census.late, default=0.0):.1f} s after due "
          f"({sum(late > 0.5 for late in census.late)} more than 0.5 s late)")
    assert not bad, {kind: items[:3] for kind, items in bad.items()}
    assert held >= 30, counts


# -- one service scaled with --scale, peers found through DNS -----------------------------------

SCALE_FILE = "docker-compose.scale.yml"
SCALE_PROJECT = f"{PROJECT}-scale"
SCALE = 5
SCALE_ENV = {**ENV, "GOBUCKET_TAG": "e2e-scale", "GOBUCKET_REPLICAS": "0"}


def scaled(*args: str, check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``compose`` on the scale variant's own project (and image tag)."""
    return compose(*args, check=check, timeout=timeout, project=SCALE_PROJECT,
                   file=SCALE_FILE, env=SCALE_ENV)


def on_replica(index: int, *args: str) -> Any:
    """A GroupClient call inside replica ``index`` (1-based) of the scaled service."""
    result = scaled("exec", "-T", f"--index={index}", "node", "python3", "-c", CLIENT,
                    SECRET, *args, timeout=60)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def scaled_cluster() -> Iterator[None]:
    needs_docker()
    build_base_image()
    try:
        scaled("up", "--build", "-d", "--scale", f"node={SCALE}", timeout=600)
        yield
    finally:
        torn_down(scaled, SCALE_PROJECT)


def test_scaled_service_discovers_its_peers_by_dns(scaled_cluster: None) -> None:
    """``--scale node=5`` with ``GOBUCKET_PEERS=dns:node:6666``: every node sees the 4
    others alive, each under its own container IP; tasks filled through one node
    overflow to the others and all of them run."""
    ids = scaled("ps", "-q", "node").stdout.split()
    assert len(ids) == SCALE, ids
    ips = {subprocess.run(["docker", "inspect", "-f",
                           "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid],
                          capture_output=True, text=True, check=True).stdout.strip()
           for cid in ids}
    expected = {f"{ip}:6666" for ip in ips}
    assert len(expected) == SCALE, expected

    # 1. Every node sees the 4 others alive, by their container IPs (their node ids).
    views: dict[int, dict[str, Any]] = {}

    def meshed() -> bool:
        for index in range(1, SCALE + 1):
            views[index] = on_replica(index, "stats")
        return all(set(v["peers"]) | {v["node"]} == expected
                   and set(v["peers"].values()) == {"alive"} for v in views.values())

    took = wait_for(meshed, 90, step=1.0)
    print(f"\nscale: {SCALE} nodes meshed through dns:node:6666 within {took:.1f} s of the "
          f"first check: {sorted(v['node'] for v in views.values())}")
    assert {v["node"] for v in views.values()} == expected
    assert all(len(v["peers"]) == SCALE - 1 for v in views.values())
    for cid in ids:  # each found its own IP; the name resolved from the start
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True,
                              timeout=60)
        text = logs.stdout + logs.stderr
        assert "event=advertise_detected" in text and "event=dns_lookup_failed" not in text

    # 2. 300 time-bombs through node 1 (whose bucket holds 100): 200 overflow.
    tasks = [f"e2e-scale-{i:03d}" for i in range(300)]
    placed = on_replica(1, "fill", "4", *tasks)
    first = views[1]["node"]
    where = Counter(placed)
    print(f"scale: placed {dict(sorted(where.items()))} through {first}")
    assert where[first] == 100 and sum(where.values()) == 300
    assert len(where) >= 3, where  # the overflow spread over at least two peers

    # 3. They all run, each once, where they were placed.
    def finished() -> dict[str, int]:
        stats = [on_replica(i, "stats") for i in range(1, SCALE + 1)]
        return {s["node"]: s["buckets"]["backups"]["finished"] for s in stats}

    wait_for(lambda: sum(finished().values()) >= 300, 60, step=1.0)
    done = finished()
    print(f"scale: finished {dict(sorted(done.items()))}")
    assert sum(done.values()) == 300
    assert all(done.get(node, 0) == count for node, count in where.items()), (done, where)


# -- the TLS profile ----------------------------------------------------------------

TLS_PROJECT = "gobucket-e2e-tls"
TLS_PORT = os.environ.get("E2E_TLS_NODE1_PORT", "16667")


def test_compose_demo_over_mutual_tls(tmp_path: Path) -> None:
    """docker-compose.tls.yml on top of the demo, with docker/make-tls-certs.sh's
    certificates: the nodes mesh and the demo runs over mutual TLS (lost 0), and
    node1's published port speaks only HTTPS, only to holders of a certificate
    from the demo CA."""
    needs_docker()
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (make test installs it)")
    certs = tmp_path / "tls"
    made = subprocess.run([str(ROOT / "docker" / "make-tls-certs.sh"), str(certs)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    build_base_image()
    env = {**ENV, "GOBUCKET_TAG": "e2e-tls", "GOBUCKET_REPLICAS": "0",
           "GOBUCKET_LOG_LEVEL": "INFO", "NODE1_PORT": TLS_PORT,
           "GOBUCKET_TLS_DIR": str(certs)}
    files = ["-f", "docker-compose.yml", "-f", "docker-compose.tls.yml"]

    def tls(*args: str, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return compose(*files, *args, check=check, timeout=timeout, project=TLS_PROJECT,
                       env=env)

    try:
        tls("up", "--build", "-d", "node1", "node2", "node3", timeout=600)
        demo_reached_every_node(tls("run", "--rm", "demo", timeout=180).stdout)  # over TLS

        # From the host: plain HTTP gets no answer, HTTPS without a client
        # certificate is refused, and a client with the demo's certificate is served.
        addr = f"127.0.0.1:{TLS_PORT}"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{addr}/v1/status", timeout=10).read()
        no_cert = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with pytest.raises(OSError):
            urllib.request.urlopen(f"https://{addr}/v1/status", timeout=10,
                                   context=no_cert).read()
        client_tls = TLSConfig(str(certs / "demo.pem"), str(certs / "demo.key"),
                               str(certs / "ca.pem"))
        with urllib.request.urlopen(f"https://{addr}/v1/status", timeout=10,
                                    context=client_tls.client_context()) as resp:
            status = json.loads(resp.read())
        assert status["node"] == "node1"
        assert {p["node_id"]: p["state"] for p in status["peers"]} == {"node2": "alive",
                                                                       "node3": "alive"}

        async def fill_and_drain() -> tuple[str, str]:
            async with GroupClient(addr, secret=SECRET, tls=client_tls) as client:
                placed = await client.fill("backups", "e2e-tls-1", task_type=TaskType.TIME_BOMB,
                                           run_after=30, life_span=60)
                drained = await client.drain("backups", "e2e-tls-1")
                return placed.node_id, drained.outcome.value

        node, outcome = asyncio.run(fill_and_drain())
        assert node == "node1" and outcome == "drained"
    finally:
        torn_down(tls, TLS_PROJECT)
