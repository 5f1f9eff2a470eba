"""The ledger chaos test: every accepted task reaches exactly one final outcome.

Three ``gobucket-node`` subprocesses with small buckets (so fills overflow
and sometimes find the cluster full). Tasks, half immediate and half
time-bombs with short random delays, are filled through all three nodes
(``GroupClient`` -> SUBMIT, the node is the origin); about 30% are drained at
random moments, some racing their firing time, through a random node. Every
node appends each terminal outcome to its ledger (tests/node_app.py); the
test joins the ledgers with what the clients were told and checks:

- every accepted task has exactly one final outcome (``handed_off`` is not
  final: the task goes on elsewhere): lost = 0, duplicated = 0;
- a task a drain reported DRAINED never ran; CANCELLED ones were cancelled;
- the ledgers hold no task that no fill accepted (ambiguous fills aside).

Variants: ``steady``; ``rolling`` (each node SIGTERM'd and restarted in turn
during the run: still lost = 0); ``kill9`` (one node SIGKILL'd: the lost
tasks are exactly some of those it held, and the survivors answer
``get``/``drain`` for them with "unknown"). Size: ``CHAOS_TASKS`` (default
10,000 in ``make test``; ``make chaos`` runs 100,000).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from gobucket_py import (
    BucketClosedError,
    ClusterFullError,
    DrainOutcome,
    GobucketError,
    GroupClient,
    PeerUnavailableError,
    TaskType,
)

from .procs import SECRET, Node, Nodes, wait_for

TASKS = int(os.environ.get("CHAOS_TASKS", "10000"))
NODE_MAX = 100  # ~350 time-bombs pend at once: the origins overflow
CONCURRENCY = 24  # in-flight fills per client
FINAL = {"finished", "failed", "exhausted", "drained", "cancelled", "rescued"}

pytestmark = pytest.mark.timeout(max(300, TASKS // 100))


@dataclass
class Run:
    """What the clients were told."""

    accepted: dict[str, str] = field(default_factory=dict)  # id -> node it was placed on
    forwarded: int = 0  # accepted on another node than the one asked (overflow)
    ambiguous: set[str] = field(default_factory=set)  # the fill may or may not have landed
    refused: Counter[str] = field(default_factory=Counter)  # error type -> count
    drains: dict[str, DrainOutcome] = field(default_factory=dict)
    drain_errors: Counter[str] = field(default_factory=Counter)
    due: dict[str, float] = field(default_factory=dict)  # id -> when it may still run


class Load:
    """Fills through every node that is up, and drains ~30% at random moments."""

    def __init__(self, ring: list[Node], run: Run, seed: int) -> None:
        self.ring = ring
        self.run = run
        self.rng = random.Random(seed)
        self.clients: dict[str, GroupClient] = {}
        self.down: set[str] = set()  # nodes being restarted or killed: not used
        self.drainers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Load:
        for node in self.ring:
            client = GroupClient(node.addr, secret=SECRET, timeout=5.0)
            await client.__aenter__()
            self.clients[node.node_id] = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.drainers:
            await asyncio.gather(*self.drainers)
        for client in self.clients.values():
            await client.close()

    def client(self) -> tuple[str, GroupClient]:
        """A node that is up; the first one twice as often (it overflows most)."""
        up = [n.node_id for n in self.ring if n.node_id not in self.down]
        node_id = self.rng.choice(up + up[:1])
        return node_id, self.clients[node_id]

    async def fill(self, task_id: str) -> None:
        run, rng = self.run, self.rng
        bomb = rng.random() < 0.5
        run_after = rng.uniform(0.05, 1.5) if bomb else 0.0
        life = run_after + 5.0
        for attempt in range(20):
            _, client = self.client()
            try:
                placed = await client.fill(
                    "jobs", task_id, None,
                    task_type=TaskType.TIME_BOMB if bomb else TaskType.IMMEDIATE,
                    run_after=run_after if bomb else None, life_span=life)
            except ClusterFullError:
                await asyncio.sleep(0.02 * (attempt + 1))  # wait for room, then try again
                continue
            except BucketClosedError:
                continue  # that node is stopping (rolling restart): another one
            except PeerUnavailableError as exc:
                if exc.maybe_delivered:
                    run.ambiguous.add(task_id)
                    return  # it may live somewhere: never fill the same id twice
                continue  # that node is down: another one
            except GobucketError as exc:
                run.refused[type(exc).__name__] += 1
                return
            run.accepted[task_id] = placed.node_id
            run.forwarded += placed.forwarded
            run.due[task_id] = time.monotonic() + life
            if rng.random() < 0.3:
                # Mostly before the firing time, some racing it or just after.
                delay = rng.uniform(0, run_after * 1.1) if bomb else rng.uniform(0, 0.01)
                task = asyncio.get_running_loop().create_task(self.drain(task_id, delay))
                self.drainers.add(task)
                task.add_done_callback(self.drainers.discard)
            return
        run.refused["ClusterFullError"] += 1

    async def drain(self, task_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        for _ in range(5):
            _, client = self.client()
            try:
                result = await client.drain("jobs", task_id)
            except GobucketError as exc:  # a holder was restarting: ask again
                self.run.drain_errors[type(exc).__name__] += 1
                await asyncio.sleep(0.1)
                continue
            self.run.drains[task_id] = result.outcome
            return

    async def fill_all(self, ids: list[str]) -> None:
        queue = iter(ids)

        async def worker() -> None:
            for task_id in queue:
                await self.fill(task_id)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY * len(self.ring))))


def ledgers(ring: list[Node]) -> dict[str, list[str]]:
    """Every task's outcomes across all nodes and all their runs."""
    joined: dict[str, list[str]] = {}
    for node in ring:
        for task_id, states in node.ledger_states().items():
            joined.setdefault(task_id, []).extend(states)
    return joined


def finals(joined: dict[str, list[str]]) -> dict[str, list[str]]:
    return {tid: [s for s in states if s in FINAL] for tid, states in joined.items()}


async def settle(ring: list[Node], run: Run, expect: set[str]) -> dict[str, list[str]]:
    """Wait until every task in ``expect`` has a final outcome, or all are past due."""
    deadline = max(run.due.values(), default=time.monotonic()) + 3.0

    def done() -> bool:
        got = finals(ledgers(ring))
        return all(got.get(t) for t in expect) or time.monotonic() > deadline

    await wait_for(done, max(5.0, deadline - time.monotonic() + 5), "the tasks to end",
                   interval=0.5)
    return finals(ledgers(ring))


def check_ledger(run: Run, got: dict[str, list[str]], may_lose: set[str]) -> Counter[str]:
    """The assertions shared by all variants; returns the outcome mix."""
    stray = set(got) - set(run.accepted) - run.ambiguous
    assert not stray, f"{len(stray)} ledger tasks no fill accepted: {sorted(stray)[:5]}"
    lost = sorted(t for t in run.accepted if not got.get(t) and t not in may_lose)
    duplicated = sorted(t for t in run.accepted if len(got.get(t, [])) > 1)
    assert not lost, f"lost = {len(lost)}: {lost[:10]}"
    assert not duplicated, f"duplicated = {len(duplicated)}: " + str(
        [(t, got[t]) for t in duplicated[:5]])
    for task_id, outcome in run.drains.items():
        if outcome is DrainOutcome.DRAINED:
            assert got.get(task_id) == ["drained"], (task_id, got.get(task_id))
        elif outcome is DrainOutcome.CANCELLED:
            assert got.get(task_id) == ["cancelled"], (task_id, got.get(task_id))
    mix = Counter(s for states in got.values() for s in states)
    return mix


def summary(name: str, run: Run, mix: Counter[str], seconds: float, extra: str = "") -> None:
    placed = Counter(run.accepted.values())
    print(f"\nchaos {name}: {TASKS:,} tasks, {len(run.accepted):,} accepted "
          f"(placed on {dict(sorted(placed.items()))}, {run.forwarded:,} by overflow), "
          f"{len(run.ambiguous)} ambiguous, "
          f"refused {dict(run.refused)}, "
          f"{len(run.drains):,} drains {dict(Counter(o.value for o in run.drains.values()))}, "
          f"drain retries {dict(run.drain_errors)}; outcomes {dict(mix)}; "
          f"{seconds:.1f} s{extra}")


def start_ring(nodes: Nodes) -> list[Node]:
    env = {"NODE_MAX": NODE_MAX, "NODE_LIFE": 10, "NODE_RUN_AFTER": 1, "NODE_WORK": 0.002}
    n1 = nodes.add("n1", env=env)
    n2 = nodes.add("n2", [n1], env=env)
    n3 = nodes.add("n3", [n1, n2], env=env)
    return [n1, n2, n3]


async def all_alive(ring: list[Node]) -> None:
    async def meshed() -> bool:
        for node in ring:
            async with GroupClient(node.addr, secret=SECRET) as client:
                peers = (await client.stats())["peers"]
            if sorted(p for p, s in peers.items() if s == "alive") != sorted(
                    n.node_id for n in ring if n is not node):
                return False
        return True
    await wait_for(meshed, 15, "every node to see the others alive", interval=0.2)


async def test_chaos_steady(nodes: Nodes) -> None:
    ring = start_ring(nodes)
    await nodes.start(*ring)
    await all_alive(ring)
    run = Run()
    t0 = time.monotonic()
    async with Load(ring, run, seed=1) as load:
        await load.fill_all([f"s-{i}" for i in range(TASKS)])
    got = await settle(ring, run, set(run.accepted))
    mix = check_ledger(run, got, may_lose=set())
    summary("steady", run, mix, time.monotonic() - t0)
    assert len(run.accepted) >= 0.9 * TASKS, run.refused
    assert set(run.accepted.values()) == {"n1", "n2", "n3"}
    assert mix["drained"] > 0.08 * TASKS and mix["finished"] > 0.3 * TASKS
    assert run.forwarded > 0.05 * TASKS, "the buckets never overflowed"
    assert not run.ambiguous


async def test_chaos_rolling_sigterm_restart_loses_nothing(nodes: Nodes) -> None:
    ring = start_ring(nodes)
    await nodes.start(*ring)
    await all_alive(ring)
    run = Run()
    t0 = time.monotonic()
    async with Load(ring, run, seed=2) as load:
        filling = asyncio.get_running_loop().create_task(
            load.fill_all([f"r-{i}" for i in range(TASKS)]))
        for node in ring:
            await asyncio.sleep(max(1.0, TASKS / 4_000))  # spread over the run
            load.down.add(node.node_id)
            await asyncio.sleep(0.3)  # let fills already sent to it return
            code = await node.stop(timeout=20)
            assert code == 0, node.stderr()[-3000:]
            await node.start()
            load.down.discard(node.node_id)
            await all_alive(ring)
        await filling
    got = await settle(ring, run, set(run.accepted))
    mix = check_ledger(run, got, may_lose=set())
    handed = sum(states.count("handed_off") for states in ledgers(ring).values())
    incomplete = [line.split("event=")[1] for node in ring
                  for run_no in range(1, node.runs + 1)
                  for line in (node.logdir / f"{node.node_id}.run{run_no}.err").read_text()
                  .splitlines() if "event=handoff_incomplete" in line]
    summary("rolling", run, mix, time.monotonic() - t0,
            f"; restarts {[n.runs for n in ring]}, {handed:,} handed off; {incomplete}")
    assert all(n.runs == 2 for n in ring)
    assert handed > 0, "no pending task was moved by a restart"



async def test_chaos_kill9_loses_only_what_the_dead_node_held(nodes: Nodes) -> None:
    ring = start_ring(nodes)
    await nodes.start(*ring)
    await all_alive(ring)
    victim = ring[2]
    run = Run()
    t0 = time.monotonic()
    async with Load(ring, run, seed=3) as load:
        filling = asyncio.get_running_loop().create_task(
            load.fill_all([f"k-{i}" for i in range(TASKS)]))
        await asyncio.sleep(max(1.0, TASKS / 4_000))  # spread over the run
        load.down.add(victim.node_id)
        assert victim.proc is not None
        victim.proc.kill()
        await asyncio.to_thread(victim.proc.wait)
        await filling
        # The survivors see it dead (so they stop asking it).
        for node in ring[:2]:
            async def dead(node: Node = node) -> bool:
                async with GroupClient(node.addr, secret=SECRET) as client:
                    return bool((await client.stats())["peers"].get(victim.node_id) == "dead")
            await wait_for(dead, 10, f"{node.node_id} to see {victim.node_id} dead")
    held = {t for t, n in run.accepted.items() if n == victim.node_id}
    got = await settle(ring, run, set(run.accepted) - held)
    mix = check_ledger(run, got, may_lose=held)
    lost = sorted(t for t in run.accepted if not got.get(t))
    assert set(lost) <= held and lost, f"{len(lost)} lost, {len(held)} held by the victim"
    # The survivors answer "unknown" for every lost task, from either of them.
    sample = lost[:200]
    async with GroupClient(ring[0].addr, secret=SECRET) as c1, \
            GroupClient(ring[1].addr, secret=SECRET) as c2:
        for i, task_id in enumerate(sample):
            client = (c1, c2)[i % 2]
            assert await client.get("jobs", task_id) is None, task_id
            assert (await client.drain("jobs", task_id)).outcome is DrainOutcome.NOT_FOUND
    summary("kill9", run, mix, time.monotonic() - t0,
            f"; victim held {len(held):,} (by placement), lost {len(lost):,}; "
            f"{len(sample)} checked unknown on the survivors")
