"""The ledger chaos test: every accepted task reaches exactly one final outcome,
and no answer a client got was a lie.

Three ``gobucket-node`` subprocesses with small buckets (so fills overflow
and sometimes find the cluster full). Tasks, half immediate and half
time-bombs with short random delays, are filled through all three nodes
(``GroupClient`` -> SUBMIT, the node is the origin); about 30% are drained at
random moments, some racing their firing time, through a random node. Every
node appends to its ledger (tests/node_app.py) each terminal outcome, each
start of on_execute, and each task it reports lost through
``on_tasks_lost``, with the wall-clock time; the clients log every drain
answer with the wall-clock time it arrived (one machine, one clock). The
checker joins the two and counts, for every variant:

- duplicates: a task with two final outcomes (``handed_off`` is not final:
  the task goes on elsewhere), or whose on_execute started twice;
- lost: an accepted task with neither an outcome nor a loss report (or with
  both, outside the documented window: a task that ended on a killed node
  just before the kill may still be reported lost; those are counted apart);
- DRAINED-then-ran: a drain said DRAINED, yet on_execute started;
- NOT_FOUND-then-ran: a drain said NOT_FOUND, and on_execute started after
  that answer arrived;
- wrong answers: a drain said how a task ended (FINISHED, CANCELLED...) and
  the ledger says otherwise;
- unknown: a drain answered ``PeerUnavailableError`` ("try again"); it is
  retried after the fault heals and must then get a definite answer.

Variants: ``steady``; ``rolling`` (each node SIGTERM'd and restarted in turn
during the run); ``sigstop`` (one holder frozen with SIGSTOP for longer than
the suspicion timeout but less than ``lost_after``, drains of its tasks sent
through the other nodes meanwhile, then SIGCONT: nothing is lost);
``kill9`` (one node SIGKILL'd, either left dead past ``lost_after`` or
restarted once the others see it dead: the origins report what it held
through ``on_tasks_lost``; left dead, 30% of the time-bombs live only 1.5 s
after firing, less than ``lost_after``, as a backup job with ``life_span=60,
run_after=30`` does against the default ``lost_after=30``). The tasks a
killed node filled itself have no origin left to report them: counted apart.
With ``replicas=1`` (``CHAOS_REPLICAS=1``): ``kill9`` of one node and restart
(every time-bomb it held that was not yet starting runs once, on its backup's
node), and of two nodes at once (the nodes record each backup they store, so
the checker knows which tasks had a copy left: exactly those without one are
lost).
Size: ``CHAOS_TASKS`` (default 10,000 in ``make test``, about 100 s for the
file on 2 cores; ``make chaos`` runs 100,000).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from gobucket_py import (
    BucketClosedError,
    ClusterFullError,
    DrainOutcome,
    GobucketError,
    GroupClient,
    PeerUnavailableError,
    PlacementUnknownError,
    TaskType,
)

from .procs import SECRET, Node, Nodes, wait_for

TASKS = int(os.environ.get("CHAOS_TASKS", "10000"))
# n1 (asked twice as often as the others) holds few tasks, so it overflows to n2 and n3
# all the time, whatever the machine's speed: every node holds forwarded tasks.
NODE_MAX = {"n1": 40, "n2": 120, "n3": 120}
CONCURRENCY = 24  # in-flight fills per client
FINAL = {"finished", "failed", "exhausted", "drained", "cancelled", "rescued"}
DEFINITE = {o.value for o in DrainOutcome}
LOST_AFTER = 5.0  # GroupConfig.local().lost_after: the nodes run with --fast
STOP_FOR = 4.0  # SIGSTOP: well past the suspicion timeout (0.3 s), under lost_after
# An outcome this close before a kill -9 may still be reported lost (the holder's ENDED
# notice is batched every 0.05 s, plus a round trip on a loaded machine).
KILL_WINDOW = 0.25
RETRY_FOR = 20.0  # after a fault heals, a drain must get a definite answer within this

pytestmark = pytest.mark.timeout(max(300, TASKS // 100))


@dataclass
class Answer:
    """One drain answer, as the client saw it."""

    via: str  # the node asked
    sent: float  # wall clock
    at: float  # wall clock, when the answer arrived
    value: str  # a DrainOutcome value, "unknown" (PeerUnavailableError) or an error name
    fault: str | None  # the fault going on when it was sent, if any

    def __str__(self) -> str:
        return f"{self.value}@{self.at:.3f} (sent {self.sent:.3f}) via {self.via}" + (
            f" during {self.fault}" if self.fault else "")


@dataclass
class Run:
    """What the clients were told."""

    accepted: dict[str, str] = field(default_factory=dict)  # id -> node it was placed on
    via: dict[str, str] = field(default_factory=dict)  # id -> node asked to fill (the origin)
    forwarded: int = 0  # accepted on another node than the one asked (overflow)
    # id -> node it may be on: PlacementUnknownError (its node), or a timed-out SUBMIT (None).
    ambiguous: dict[str, str | None] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)  # error type -> count
    answers: dict[str, list[Answer]] = field(default_factory=dict)  # every drain answer
    due: dict[str, float] = field(default_factory=dict)  # id -> when it may still run
    fires: dict[str, float] = field(default_factory=dict)  # id -> earliest wall clock it fires
    asked: dict[str, float] = field(default_factory=dict)  # id -> wall clock the fill was sent
    # id -> wall clock the accepting answer came (see Kill.old).
    answered: dict[str, float] = field(default_factory=dict)
    deadline: dict[str, float] = field(default_factory=dict)  # id -> wall clock of its deadline
    fault: str | None = None  # the fault going on now (for the answers' log)
    fill_seconds: float = 0.0  # how long filling took

    def final(self, task_id: str) -> str | None:
        """The definite answer a task's drain ended with, if any."""
        answers = self.answers.get(task_id, [])
        return answers[-1].value if answers and answers[-1].value in DEFINITE else None


class Load:
    """Fills through every node that is up, and drains ~30% at random moments."""

    def __init__(self, ring: list[Node], run: Run, seed: int, short_life: float = 0.0) -> None:
        self.short_life = short_life  # this share of the time-bombs live 1.5 s after firing
        self.ring = ring
        self.run = run
        self.rng = random.Random(seed)
        self.clients: dict[str, GroupClient] = {}
        self.down: set[str] = set()  # nodes being restarted, frozen or killed: not used
        self.drainers: set[asyncio.Task[None]] = set()
        self.healed = asyncio.Event()  # cleared during a fault: unknown drains wait for it
        self.healed.set()

    async def __aenter__(self) -> Load:
        for node in self.ring:
            client = GroupClient(node.addr, secret=SECRET, timeout=5.0)
            await client.__aenter__()
            self.clients[node.node_id] = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.heal()  # (after a failure) no drain waits for a fault that will not heal
        if self.drainers:
            await asyncio.gather(*self.drainers)
        for client in self.clients.values():
            await client.close()

    def fault(self, name: str) -> None:
        self.run.fault = name
        self.healed.clear()

    def heal(self) -> None:
        self.run.fault = None
        self.healed.set()

    def client(self, avoid: frozenset[str] = frozenset()) -> tuple[str, GroupClient]:
        """A node that is up; the first one twice as often (it overflows most)."""
        up = [n.node_id for n in self.ring if n.node_id not in self.down | avoid]
        node_id = self.rng.choice(up + up[:1])
        return node_id, self.clients[node_id]

    async def fill(self, task_id: str) -> None:
        run, rng = self.run, self.rng
        bomb = rng.random() < 0.5
        run_after = rng.uniform(0.05, 1.5) if bomb else 0.0
        life = run_after + (1.5 if bomb and rng.random() < self.short_life else 5.0)
        for attempt in range(20):
            via, client = self.client()
            run.asked[task_id] = time.time()
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
            except PlacementUnknownError as exc:
                run.ambiguous[task_id] = exc.node_id  # maybe there, certainly nowhere else
                run.via[task_id] = via
                run.due[task_id] = time.monotonic() + life
                return
            except PeerUnavailableError as exc:
                if exc.maybe_delivered:
                    run.ambiguous[task_id] = None
                    run.via[task_id] = via
                    run.due[task_id] = time.monotonic() + life
                    return  # it may live somewhere: never fill the same id twice
                continue  # that node is down: another one
            except GobucketError as exc:
                run.refused[type(exc).__name__] += 1
                return
            run.accepted[task_id] = placed.node_id
            run.answered[task_id] = time.time()
            run.via[task_id] = via
            run.fires[task_id] = run.asked[task_id] + run_after  # the earliest it can
            run.deadline[task_id] = time.time() + life
            run.forwarded += placed.forwarded
            run.due[task_id] = time.monotonic() + life
            if rng.random() < 0.3:
                # Mostly before the firing time, some racing it or just after.
                delay = rng.uniform(0, run_after * 1.1) if bomb else rng.uniform(0, 0.01)
                self.spawn_drain(task_id, delay)
            return
        run.refused["ClusterFullError"] += 1

    def spawn_drain(self, task_id: str, delay: float = 0.0,
                    avoid: frozenset[str] = frozenset()) -> None:
        task = asyncio.get_running_loop().create_task(self.drain(task_id, delay, avoid))
        self.drainers.add(task)
        task.add_done_callback(self.drainers.discard)

    async def drain(self, task_id: str, delay: float = 0.0,
                    avoid: frozenset[str] = frozenset()) -> None:
        """Drain until a definite answer; after an unknown, wait for the fault to heal.

        Every answer is logged; the last one of a drain that never got a
        definite answer (RETRY_FOR after healing) is not definite, and the
        checker counts it."""
        await asyncio.sleep(delay)
        give_up: float | None = None
        answers = self.run.answers.setdefault(task_id, [])
        while True:
            via, client = self.client(avoid)
            fault, sent = self.run.fault, time.time()
            try:
                value = (await client.drain("jobs", task_id)).outcome.value
            except PeerUnavailableError:
                value = "unknown"
            except GobucketError as exc:  # e.g. that node is stopping: ask another
                value = type(exc).__name__
            answers.append(Answer(via, sent, time.time(), value, fault or self.run.fault))
            if value in DEFINITE:
                return
            await self.healed.wait()  # a fault: ask again once it is over
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if give_up is None:
                give_up = now + RETRY_FOR
            elif now > give_up:
                return

    async def fill_all(self, ids: list[str]) -> None:
        queue = iter(ids)

        async def worker() -> None:
            for task_id in queue:
                await self.fill(task_id)

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY * len(self.ring))))
        self.run.fill_seconds = time.monotonic() - start


# -- the ledgers ----------------------------------------------------------------------------------


@dataclass
class Entry:
    node: str
    state: str
    t: float
    peer: str | None = None

    def __str__(self) -> str:
        return f"{self.node}:{self.state}@{self.t:.3f}" + (f"(peer {self.peer})"
                                                          if self.peer else "")


class Ledgers:
    """Every node's ledger, read incrementally (a file is appended across restarts)."""

    def __init__(self, ring: list[Node]) -> None:
        self.ring = ring
        self.offsets = {n.node_id: 0 for n in ring}
        self.tasks: dict[str, list[Entry]] = {}
        self.lines: dict[str, list[str]] = {}  # task id -> raw lines (evidence)
        self.backups: dict[str, list[Entry]] = {}  # task id -> backups stored (peer: holder)

    def update(self) -> Ledgers:
        for node in self.ring:
            if not node.ledger.exists():
                continue
            with open(node.ledger, "rb") as fh:
                fh.seek(self.offsets[node.node_id])
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a line cut short by a kill -9 is skipped
            self.offsets[node.node_id] += end
            for line in data[:end].decode().splitlines():
                if not line.strip():
                    continue
                raw = json.loads(line)
                if raw["state"] == "backup":
                    self.backups.setdefault(raw["id"], []).append(
                        Entry(raw["node"], raw["state"], raw["t"], raw.get("peer")))
                    continue
                self.tasks.setdefault(raw["id"], []).append(
                    Entry(raw["node"], raw["state"], raw["t"], raw.get("peer")))
                self.lines.setdefault(raw["id"], []).append(line)
        return self

    def finals(self, task_id: str) -> list[Entry]:
        return [e for e in self.tasks.get(task_id, ()) if e.state in FINAL]

    def starts(self, task_id: str) -> list[Entry]:
        return [e for e in self.tasks.get(task_id, ()) if e.state == "started"]

    def losses(self, task_id: str) -> list[Entry]:
        return [e for e in self.tasks.get(task_id, ()) if e.state == "lost"]

    def count(self, state: str) -> int:
        return sum(e.state == state for entries in self.tasks.values() for e in entries)


async def settle(ledgers: Ledgers, run: Run, expect: set[str],
                 extra: float = 3.0) -> None:
    """Wait until every task in ``expect`` has a final outcome or a loss report, or all
    are past due (plus ``extra`` seconds)."""
    deadline = max(run.due.values(), default=time.monotonic()) + extra

    def done() -> bool:
        ledgers.update()
        return (all(ledgers.finals(t) or ledgers.losses(t) for t in expect)
                or time.monotonic() > deadline)

    await wait_for(done, max(5.0, deadline - time.monotonic() + 5), "the tasks to end",
                   interval=0.5)


# -- the checker ----------------------------------------------------------------------------------


@dataclass
class Kill:
    """A kill -9 of ``victims`` (node ids) at wall-clock time ``at``, restarted
    at ``restarted`` (if they were)."""

    victims: frozenset[str]
    at: float
    restarted: float = math.inf

    @classmethod
    def of(cls, *nodes: Node) -> Kill:
        return cls(frozenset(n.node_id for n in nodes), time.time())

    def old(self, run: Run, task_id: str) -> bool:
        """Was the task placed on a victim's old incarnation? Its fill was
        answered before the restart (the answer may come after the kill: the
        origin passes on what the victim said just before it died)."""
        holder = run.accepted.get(task_id) or run.ambiguous.get(task_id)
        when = run.answered.get(task_id, run.asked.get(task_id, 0.0))
        return holder in self.victims and when < self.restarted


@dataclass
class Census:
    counts: Counter[str] = field(default_factory=Counter)
    violations: dict[str, list[str]] = field(default_factory=dict)  # kind -> evidence
    notes: dict[str, list[str]] = field(default_factory=dict)  # counted apart, with evidence

    def bad(self, kind: str, task_id: str, run: Run, ledgers: Ledgers, why: str = "") -> None:
        self.violations.setdefault(kind, []).append(evidence(task_id, run, ledgers, why))

    def note(self, kind: str, task_id: str, run: Run, ledgers: Ledgers, why: str = "") -> None:
        self.notes.setdefault(kind, []).append(evidence(task_id, run, ledgers, why))


def evidence(task_id: str, run: Run, ledgers: Ledgers, why: str = "") -> str:
    placed = run.accepted.get(task_id, f"ambiguous:{run.ambiguous.get(task_id, '?')}")
    answers = ", ".join(map(str, run.answers.get(task_id, []))) or "-"
    return (f"{task_id}: placed on {placed} via {run.via.get(task_id)}; answers [{answers}]; "
            f"ledger {ledgers.lines.get(task_id, [])}" + (f"; {why}" if why else ""))


def check(run: Run, ledgers: Ledgers, kill: Kill | None = None) -> Census:
    """Count everything listed in the module docstring; violations with evidence."""
    ledgers.update()
    census = Census()
    counts = census.counts
    known = set(run.accepted) | set(run.ambiguous)
    for task_id in sorted(set(ledgers.tasks) - known):
        census.bad("stray (in a ledger, no fill accepted it)", task_id, run, ledgers)
    for task_id in sorted(known):
        finals, starts = ledgers.finals(task_id), ledgers.starts(task_id)
        losses = ledgers.losses(task_id)
        if len(finals) > 1:
            census.bad("duplicate outcome", task_id, run, ledgers)
        if len(starts) > 1:
            census.bad("ran twice", task_id, run, ledgers)
        if len(losses) > 1:
            census.bad("reported lost twice", task_id, run, ledgers)
        # Placed on the victim before the kill (not on its new incarnation).
        on_victim = kill is not None and kill.old(run, task_id)
        # A fill that said "may be on X" (PlacementUnknownError) is reported
        # lost when X dies: it will not run, whether or not it got there.
        maybe_on_victim = (kill is not None and task_id in run.ambiguous
                           and run.ambiguous[task_id] in kill.victims)
        if losses and maybe_on_victim and not on_victim:
            census.counts["ambiguous fills reported lost with the victim"] += 1
        elif losses and not on_victim:
            census.bad("reported lost, not held by a crashed node", task_id, run, ledgers)
        elif losses and finals:
            before = kill.at - finals[0].t if kill else 0.0
            if finals[0].node in kill.victims and 0 <= before <= KILL_WINDOW:  # type: ignore[union-attr]
                counts[f"ended <= {KILL_WINDOW} s before the kill, then reported lost"] += 1
                census.note("ended just before the kill, reported lost", task_id, run,
                            ledgers, f"ended {before:.3f} s before the kill")
            else:
                census.bad("an outcome and a loss report", task_id, run, ledgers,
                           f"ended {before:.3f} s before the kill on {finals[0].node}")
        if task_id in run.accepted and not finals and not losses:
            if on_victim and run.via.get(task_id) in kill.victims:  # type: ignore[union-attr]
                counts["lost with their origin (no node left to report them)"] += 1
            elif on_victim:
                assert kill is not None
                census.bad("lost, not reported", task_id, run, ledgers,
                           f"{'running' if starts else 'pending'} at the kill; its deadline "
                           f"was {run.deadline[task_id] - kill.at:+.2f} s after the kill")
            else:
                census.bad("lost", task_id, run, ledgers)
        if task_id in run.ambiguous:
            counts["ambiguous fills"] += 1
            counts[f"ambiguous fills that ran {len(starts)} times"] += 1
        check_answers(task_id, run, ledgers, census)
    return census


def check_answers(task_id: str, run: Run, ledgers: Ledgers, census: Census) -> None:
    """Each drain answer of one task against its ledger."""
    answers = run.answers.get(task_id)
    if not answers:
        return
    counts = census.counts
    finals, starts = ledgers.finals(task_id), ledgers.starts(task_id)
    outcome = finals[0].state if len(finals) == 1 else None
    unknowns = sum(a.value == "unknown" for a in answers)
    last = answers[-1]
    if unknowns:
        counts["drains answered unknown"] += 1
        if last.value in DEFINITE:
            counts[f"unknown, then on retry: {last.value}"] += 1
        else:
            census.bad("no definite answer after the fault healed", task_id, run, ledgers)
    for answer in answers:
        if answer.fault:
            counts[f"answers during {answer.fault}: {answer.value}"] += 1
        value = answer.value
        if value == "drained" and starts:
            census.bad("DRAINED-then-ran", task_id, run, ledgers)
        elif value == "not_found":
            counts["NOT_FOUND answers"] += 1
            ran_after = [s for s in starts if s.t > answer.at]
            ran_during = [s for s in starts if answer.sent < s.t <= answer.at]
            if ran_after:
                census.bad("NOT_FOUND-then-ran", task_id, run, ledgers,
                           f"started {ran_after[0].t - answer.at:.3f} s after the answer")
            elif ran_during:
                census.bad("NOT_FOUND for a live task (it started during the drain call)",
                           task_id, run, ledgers, f"started {ran_during[0].t - answer.sent:.3f}"
                           " s after the drain was sent, "
                           f"{answer.at - ran_during[0].t:.3f} s before the answer")
            elif task_id in run.ambiguous and not finals:
                counts["NOT_FOUND: an ambiguous fill that never landed"] += 1
            elif finals and finals[0].t < answer.sent:
                counts["NOT_FOUND for a task that had ended"] += 1
                census.note("NOT_FOUND for a task that had ended", task_id, run, ledgers)
            elif ledgers.losses(task_id) or not finals:
                counts["NOT_FOUND for a lost task"] += 1
            else:
                counts["NOT_FOUND, other"] += 1
                census.note("NOT_FOUND, other", task_id, run, ledgers)
        elif value == "lost":
            counts["LOST answers"] += 1
            if finals and finals[0].t < answer.sent:
                counts["LOST for a task that had ended"] += 1
                census.note("LOST for a task that had ended", task_id, run, ledgers)
        elif value in FINAL and value != outcome:
            census.bad(f"answered {value.upper()}, ledger says otherwise", task_id, run,
                       ledgers)


def summary(name: str, run: Run, ledgers: Ledgers, census: Census, seconds: float,
            extra: str = "") -> None:
    placed = Counter(run.accepted.values())
    firsts = Counter(a[0].value for a in run.answers.values() if a)
    lasts = Counter(a[-1].value for a in run.answers.values() if a)
    outcomes = {s: ledgers.count(s) for s in sorted(FINAL | {"handed_off", "lost", "started"})}
    print(f"\nchaos {name}: {TASKS:,} tasks, {len(run.accepted):,} accepted "
          f"(placed on {dict(sorted(placed.items()))}, {run.forwarded:,} by overflow), "
          f"{len(run.ambiguous)} ambiguous {dict(Counter(map(str, run.ambiguous.values())))}, "
          f"refused {dict(run.refused)}; {len(run.answers):,} drains, first answers "
          f"{dict(firsts)}, last answers {dict(lasts)}; ledger {outcomes}; "
          f"{seconds:.1f} s (filling {run.fill_seconds:.1f} s){extra}")
    print(f"  census: {dict(sorted(census.counts.items()))}")
    for kind, items in census.notes.items():
        print(f"  counted apart: {kind}: {len(items)}")
        for item in items[:5]:
            print(f"    {item}")
    for kind, items in census.violations.items():
        print(f"  VIOLATION {kind}: {len(items)}")
        for item in items[:5]:
            print(f"    {item}")


def no_violations(census: Census) -> None:
    assert not census.violations, "; ".join(
        f"{kind}: {len(items)} (e.g. {items[0]})" for kind, items in census.violations.items())


# -- the cluster ----------------------------------------------------------------------------------


def start_ring(nodes: Nodes, **extra: Any) -> list[Node]:
    env = {"NODE_LIFE": 10, "NODE_RUN_AFTER": 1, "NODE_WORK": 0.002, **extra}
    n1 = nodes.add("n1", env={**env, "NODE_MAX": NODE_MAX["n1"]})
    n2 = nodes.add("n2", [n1], env={**env, "NODE_MAX": NODE_MAX["n2"]})
    n3 = nodes.add("n3", [n1, n2], env={**env, "NODE_MAX": NODE_MAX["n3"]})
    return [n1, n2, n3]


async def peer_states(node: Node) -> dict[str, Any]:
    async with GroupClient(node.addr, secret=SECRET) as client:
        peers: dict[str, Any] = (await client.stats())["peers"]
    return peers


async def all_alive(ring: list[Node]) -> None:
    async def meshed() -> bool:
        for node in ring:
            peers = await peer_states(node)
            if sorted(p for p, s in peers.items() if s == "alive") != sorted(
                    n.node_id for n in ring if n is not node):
                return False
        return True
    await wait_for(meshed, 15, "every node to see the others alive", interval=0.2)


async def seen_dead(survivors: list[Node], victim: Node) -> None:
    for node in survivors:
        async def dead(node: Node = node) -> bool:
            return bool((await peer_states(node)).get(victim.node_id) == "dead")
        await wait_for(dead, 10, f"{node.node_id} to see {victim.node_id} dead", interval=0.05)


async def holding(run: Run, victim: Node, count: int = 20, timeout: float = 5.0) -> int:
    """Wait (up to ``timeout``) until ``victim`` holds ``count`` time-bombs that other
    nodes forwarded to it and that fire at least 0.5 s later; how many it holds."""
    def forwarded() -> int:
        soon = time.time() + 0.5
        return sum(1 for t, n in run.accepted.items() if n == victim.node_id
                   and run.via[t] != victim.node_id and run.fires[t] > soon)
    try:
        await wait_for(lambda: forwarded() >= count, timeout, "forwarded tasks", interval=0.1)
    except AssertionError:
        pass  # a slow run: fault it anyway (the summary says how many it held)
    return forwarded()


def pending_on(run: Run, ledgers: Ledgers, victim: Node, limit: int,
               rng: random.Random) -> list[str]:
    """Tasks placed on ``victim`` that have not ended (as far as the ledgers say), no
    drain yet: a random sample of at most ``limit``."""
    ledgers.update()
    ids = [t for t, n in run.accepted.items() if n == victim.node_id
           and not ledgers.finals(t) and t not in run.answers]
    return rng.sample(ids, min(limit, len(ids)))


async def drain_ambiguous(load: Load, run: Run) -> None:
    """A fill that raised PlacementUnknownError: drain (or get) finds out. Drain each."""
    for task_id in sorted(run.ambiguous):
        if task_id not in run.answers:
            load.spawn_drain(task_id)


# -- the variants ---------------------------------------------------------------------------------


async def test_chaos_steady(nodes: Nodes) -> None:
    ring = start_ring(nodes)
    await nodes.start(*ring)
    await all_alive(ring)
    run, ledgers = Run(), Ledgers(ring)
    t0 = time.monotonic()
    async with Load(ring, run, seed=1) as load:
        await load.fill_all([f"s-{i}" for i in range(TASKS)])
        await drain_ambiguous(load, run)
    await settle(ledgers, run, set(run.accepted))
    census = check(run, ledgers)
    summary("steady", run, ledgers, census, time.monotonic() - t0)
    no_violations(census)
    assert len(run.accepted) >= 0.9 * TASKS, run.refused
    assert set(run.accepted.values()) == {"n1", "n2", "n3"}
    # Drains race the firing time on a loaded machine: mostly, they win.
    assert ledgers.count("drained") > 0.04 * TASKS and ledgers.count("finished") > 0.3 * TASKS
    assert run.forwarded > 0.05 * TASKS, "the buckets never overflowed"
    assert not run.ambiguous
    assert census.counts["NOT_FOUND answers"] == 0, "NOT_FOUND for an accepted task"


async def test_chaos_rolling_sigterm_restart_loses_nothing(nodes: Nodes) -> None:
    ring = start_ring(nodes)
    await nodes.start(*ring)
    await all_alive(ring)
    run, ledgers = Run(), Ledgers(ring)
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
        await drain_ambiguous(load, run)
    await settle(ledgers, run, set(run.accepted))
    census = check(run, ledgers)
    handed = ledgers.count("handed_off")
    incomplete = [line.split("event=")[1] for node in ring
                  for run_no in range(1, node.runs + 1)
                  for line in (node.logdir / f"{node.node_id}.run{run_no}.err").read_text()
                  .splitlines() if "event=handoff_incomplete" in line]
    summary("rolling", run, ledgers, census, time.monotonic() - t0,
            f"; restarts {[n.runs for n in ring]}, {handed:,} handed off; {incomplete}")
    no_violations(census)
    assert all(n.runs == 2 for n in ring)
    assert handed > 0, "no pending task was moved by a restart"


async def test_chaos_sigstop_holder_loses_nothing_and_never_lies(nodes: Nodes) -> None:
    """SIGSTOP one holder for STOP_FOR seconds (dead to the others, not presumed
    lost), drain some of its tasks through the others meanwhile, SIGCONT."""
    ring = start_ring(nodes)
    await nodes.start(*ring)
    await all_alive(ring)
    victim, survivors = ring[2], ring[:2]
    run, ledgers = Run(), Ledgers(ring)
    rng = random.Random(4)
    t0 = time.monotonic()
    async with Load(ring, run, seed=4) as load:
        filling = asyncio.get_running_loop().create_task(
            load.fill_all([f"p-{i}" for i in range(TASKS)]))
        await asyncio.sleep(max(1.0, TASKS / 4_000))  # spread over the run
        forwarded = await holding(run, victim)
        load.down.add(victim.node_id)
        load.fault(f"SIGSTOP of {victim.node_id}")
        victim.pause()
        stopped = time.monotonic()
        avoid = frozenset({victim.node_id})
        # Drains while the others still think it alive (they time out)...
        for task_id in pending_on(run, ledgers, victim, 150, rng):
            load.spawn_drain(task_id, avoid=avoid)
        await seen_dead(survivors, victim)
        dead_after = time.monotonic() - stopped
        # ... and once it is dead to them (maybe only stalled: "unknown", never NOT_FOUND).
        for task_id in pending_on(run, ledgers, victim, 150, rng):
            load.spawn_drain(task_id, avoid=avoid)
        await asyncio.sleep(max(0.0, stopped + STOP_FOR - time.monotonic()))
        victim.resume()
        stop_for = time.monotonic() - stopped
        await all_alive(ring)
        load.down.discard(victim.node_id)
        load.heal()
        await filling
        await drain_ambiguous(load, run)
    await settle(ledgers, run, set(run.accepted))
    census = check(run, ledgers)
    during = {k: v for k, v in census.counts.items() if k.startswith("answers during")}
    summary("sigstop", run, ledgers, census, time.monotonic() - t0,
            f"; {victim.node_id} stopped {stop_for:.1f} s holding {forwarded} forwarded "
            f"time-bombs, dead to both others after {dead_after:.1f} s")
    no_violations(census)
    assert stop_for < LOST_AFTER and during, during
    assert census.counts["drains answered unknown"] > 0, "no drain met the frozen holder"


@pytest.mark.parametrize("restart", [False, True], ids=["stays-dead", "restarted"])
async def test_chaos_kill9_reports_what_the_dead_node_held(nodes: Nodes, restart: bool) -> None:
    """kill -9 one node. Left dead: past lost_after its tasks are reported lost by their
    origins. Restarted at once: the new boot id tells the origins at once."""
    ring = start_ring(nodes)
    await nodes.start(*ring)
    await all_alive(ring)
    victim, survivors = ring[2], ring[:2]
    run, ledgers = Run(), Ledgers(ring)
    rng = random.Random(3)
    size = TASKS if not restart else TASKS // 2
    t0 = time.monotonic()
    # Left dead, some time-bombs have less time left after firing than lost_after.
    async with Load(ring, run, seed=3 + restart, short_life=0.0 if restart else 0.3) as load:
        filling = asyncio.get_running_loop().create_task(
            load.fill_all([f"k-{i}" for i in range(size)]))
        await asyncio.sleep(max(1.0, size / 4_000))  # spread over the run
        forwarded = await holding(run, victim)
        load.down.add(victim.node_id)
        load.fault(f"kill -9 of {victim.node_id}")
        assert victim.proc is not None
        victim.proc.kill()
        kill = Kill.of(victim)
        await asyncio.to_thread(victim.proc.wait)
        await seen_dead(survivors, victim)  # so they stop asking it
        dead_at = time.monotonic()
        avoid = frozenset({victim.node_id})
        sample = pending_on(run, ledgers, victim, 300, rng)
        for task_id in sample:  # "unknown" until the loss is known
            load.spawn_drain(task_id, avoid=avoid)
        if restart:
            kill.restarted = time.time()
            await victim.start()
            await all_alive(ring)
            load.down.discard(victim.node_id)
        else:
            await asyncio.sleep(max(0.0, dead_at + LOST_AFTER + 1.0 - time.monotonic()))
        load.heal()
        await filling
        await drain_ambiguous(load, run)
    # Held by the victim's old incarnation; tasks its new one took after a restart must end.
    held = {t for t in run.accepted if kill.old(run, t)}
    await settle(ledgers, run, set(run.accepted) - held)
    await settle(ledgers, run, {t for t in held if run.via[t] != victim.node_id}, extra=0)
    census = check(run, ledgers, kill)
    reported = ledgers.count("lost")
    summary(f"kill9 ({'restarted' if restart else 'stays dead'})", run, ledgers, census,
            time.monotonic() - t0,
            f"; {victim.node_id} held {len(held):,} by placement ({forwarded} forwarded "
            f"time-bombs pending at the kill), {reported:,} reported lost; "
            f"{len(sample)} of its pending tasks drained after the kill")
    no_violations(census)
    assert reported > 0, "no loss reported"
    finals = Counter(run.final(t) for t in sample)
    assert set(finals) <= {"lost", "not_found"} | FINAL, finals


async def mid_run(load: Load, run: Run, prefix: str, size: int) -> asyncio.Task[None]:
    """Start filling ``size`` tasks; return once a third are accepted (mid-run,
    whatever the machine's speed: most still pending)."""
    filling = asyncio.get_running_loop().create_task(
        load.fill_all([f"{prefix}-{i}" for i in range(size)]))
    await wait_for(lambda: len(run.accepted) >= size // 3, 120, "a third of the fills",
                   interval=0.05)
    return filling


@pytest.mark.skipif(not os.environ.get("CHAOS_REPLICAS"),
                    reason="make chaos runs it (with the other replicas variant)")
async def test_chaos_kill9_with_replicas_loses_nothing(nodes: Nodes) -> None:
    """replicas=1: kill -9 one node and restart it once the others see it dead.
    Every time-bomb it held that was not yet due is taken over by its backup and
    runs once; tasks running (or starting) at the kill are reported lost (or go
    with their origin, if the dead node filled them itself); nothing runs twice."""
    ring = start_ring(nodes, GOBUCKET_REPLICAS=1)
    await nodes.start(*ring)
    await all_alive(ring)
    victim, survivors = ring[2], ring[:2]
    run, ledgers = Run(), Ledgers(ring)
    size = TASKS // 2
    t0 = time.monotonic()
    async with Load(ring, run, seed=11) as load:
        filling = await mid_run(load, run, "r", size)
        forwarded = await holding(run, victim, timeout=1.0)
        load.down.add(victim.node_id)
        load.fault(f"kill -9 of {victim.node_id}")
        assert victim.proc is not None
        victim.proc.kill()
        kill = Kill.of(victim)
        await asyncio.to_thread(victim.proc.wait)
        await seen_dead(survivors, victim)
        kill.restarted = time.time()
        await victim.start()
        await all_alive(ring)
        load.down.discard(victim.node_id)
        load.heal()
        await filling
        await drain_ambiguous(load, run)
    await settle(ledgers, run, set(run.accepted))
    census = check(run, ledgers, kill)
    ledgers.update()
    held = {t for t in run.accepted if kill.old(run, t)}
    started_before = {t for t in held if any(e.node == victim.node_id and e.t < kill.at
                                             for e in ledgers.starts(t))}
    pending = held - started_before - {t for t in held if any(
        e.t < kill.at for e in ledgers.finals(t))}
    recovered = {t for t in pending if any(e.node != victim.node_id
                                           for e in ledgers.finals(t))}
    # A task due by the kill may have been starting: its backups were told it
    # started (that is the last step before on_execute), so it is lost like a
    # running one. Only those not yet due must never be lost.
    lost_due = sorted(t for t in pending if not ledgers.finals(t)
                      and run.fires.get(t, 0.0) <= kill.at)
    # A drain the victim was serving at the kill may have dropped the backups
    # already (the step before it drains the task): the task is gone, as asked.
    lost_draining = sorted(t for t in pending if not ledgers.finals(t) and any(
        a.sent < kill.at and a.value == "unknown" for a in run.answers.get(t, ())))
    lost_pending = sorted(t for t in pending if not ledgers.finals(t)
                          and t not in lost_due and t not in lost_draining)
    summary("kill9 with replicas=1", run, ledgers, census, time.monotonic() - t0,
            f"; {victim.node_id} held {len(held):,} ({forwarded} forwarded time-bombs "
            f"pending), {len(pending):,} not started at the kill: {len(recovered):,} "
            f"ran or ended on a survivor, {len(lost_due)} lost while due (starting), "
            f"{len(lost_draining)} lost while a drain of them was served, "
            f"{len(lost_pending)} lost before they were due")
    no_violations(census)
    assert pending, "the victim held no pending task at the kill"
    assert lost_pending == [], [evidence(t, run, ledgers) for t in lost_pending[:5]]


@pytest.mark.skipif(not os.environ.get("CHAOS_REPLICAS"),
                    reason="make chaos runs it (with the other replicas variant)")
async def test_chaos_kill9_two_at_once_with_replicas(nodes: Nodes) -> None:
    """replicas=1: kill -9 two of the three nodes at once, then restart both. A
    time-bomb pending on a killed node runs once on some node if a backup of it
    was on the survivor; exactly those whose holder and backup both died are lost,
    reported once by their origin if it survived; nothing runs twice."""
    ring = start_ring(nodes, GOBUCKET_REPLICAS=1)
    await nodes.start(*ring)
    await all_alive(ring)
    victims = ring[1:]
    run, ledgers = Run(), Ledgers(ring)
    size = TASKS // 2
    t0 = time.monotonic()
    async with Load(ring, run, seed=13) as load:
        filling = await mid_run(load, run, "w", size)
        load.down.update(v.node_id for v in victims)
        load.fault("kill -9 of n2 and n3")
        for victim in victims:
            assert victim.proc is not None
            victim.proc.kill()
        kill = Kill.of(*victims)
        for victim in victims:
            assert victim.proc is not None
            await asyncio.to_thread(victim.proc.wait)
        kill.restarted = time.time()
        await asyncio.gather(*(victim.start() for victim in victims))
        await all_alive(ring)
        load.down.clear()
        load.heal()
        await filling
        await drain_ambiguous(load, run)
    await settle(ledgers, run, set(run.accepted))
    census = check(run, ledgers, kill)
    ledgers.update()
    held = {t: n for t, n in run.accepted.items() if kill.old(run, t)}
    pending = {t for t in held
               if not any(e.t < kill.at for e in ledgers.starts(t) + ledgers.finals(t))}

    def survivors_with_a_copy(task_id: str) -> set[str]:
        return {e.node for e in ledgers.backups.get(task_id, ())
                if e.peer == held[task_id] and e.t < kill.at} - kill.victims

    def excused(task_id: str) -> bool:  # starting, or being drained, at the kill
        return run.fires.get(task_id, 0.0) <= kill.at or any(
            a.sent < kill.at and a.value == "unknown" for a in run.answers.get(task_id, ()))

    saved = {t for t in pending if survivors_with_a_copy(t)}
    doomed = pending - saved
    lost_saved = sorted(t for t in saved if not ledgers.finals(t) and not excused(t))
    reported_saved = sorted(t for t in saved if ledgers.losses(t) and not excused(t))
    ran_doomed = sorted(t for t in doomed if any(e.t > kill.at for e in ledgers.starts(t)))
    reported = {t for t in doomed if ledgers.losses(t)}
    orphans = {t for t in doomed if run.via[t] in kill.victims}
    summary("kill9 of two with replicas=1", run, ledgers, census, time.monotonic() - t0,
            f"; {len(held):,} held by n2 and n3, {len(pending):,} pending at the kill: "
            f"{len(saved):,} with a backup on n1 ({len(saved) - len(lost_saved):,} ran or "
            f"ended), {len(doomed):,} with no copy left ({len(reported):,} reported lost, "
            f"{len(orphans):,} lost with their origin)")
    no_violations(census)
    assert saved and doomed, (len(saved), len(doomed))
    assert lost_saved == [], [evidence(t, run, ledgers) for t in lost_saved[:5]]
    assert reported_saved == [], [evidence(t, run, ledgers) for t in reported_saved[:5]]
    assert ran_doomed == [], [evidence(t, run, ledgers) for t in ran_doomed[:5]]
    assert reported == {t for t in doomed if t not in orphans and not ledgers.finals(t)}
