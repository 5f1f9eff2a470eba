"""The nemesis: seeded faults against the in-memory cluster, judged by a ledger checker.

Each seed drives a 3-5 node cluster through fills, drains, gets and
reschedules while delays, lost replies, partitions, stalls, crash-restarts and
clock steps come and go, then checks every task against the invariants of "a
cluster that never lies" (tests/nemesis.py says which, and how). Loop time is
faked (looptime): a seed takes a fraction of a second.

``make test`` runs ``NEMESIS_SEEDS`` seeds (100) from ``NEMESIS_FIRST_SEED``
(0); ``make chaos`` runs 2,000.
A failure prints a compact report and the one command that replays it::

    GOBUCKET_SEED=1234 .venv/bin/python -m pytest -q tests/test_nemesis.py -k replay

``python -m tests.nemesis 0-99`` prints a census of the violations by kind.
The checker is tested on hand-made ledgers below: it must catch each kind.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from typing import Any

import pytest

from gobucket_py import MemoryNetwork, PeerUnavailableError, TaskType
from gobucket_py.cluster.protocol import Kind

from .nemesis import (
    KINDS,
    NOOP_CYCLES,
    Ledger,
    Plan,
    Run,
    check,
    filed_tasks,
    make_plan,
    replay_command,
    run_seed,
)

pytestmark = pytest.mark.looptime(noop_cycles=NOOP_CYCLES)

SEEDS = int(os.environ.get("NEMESIS_SEEDS", "100"))
FIRST_SEED = int(os.environ.get("NEMESIS_FIRST_SEED", "0"))


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
async def test_seed(seed: int, caplog: pytest.LogCaptureFixture) -> None:
    # The faults make the library warn all the time; a failing seed's report
    # (and its replay, which keeps them) says more than thousands of warnings.
    caplog.set_level(logging.ERROR, logger="gobucket_py")
    outcome = await run_seed(seed)
    if outcome.failed:
        pytest.fail("\n" + outcome.report(), pytrace=False)


#: Seeds also run with ``replicas=1`` (``NEMESIS_REPLICA_SEEDS``; ``make chaos``: 2,000).
REPLICA_SEEDS = int(os.environ.get("NEMESIS_REPLICA_SEEDS", "100"))
#: Seeds run with ``replicas=1`` and only one-at-a-time kill -9s (``NEMESIS_CRASH_SEEDS``).
CRASH_SEEDS = int(os.environ.get("NEMESIS_CRASH_SEEDS", "100"))


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + REPLICA_SEEDS))
async def test_seed_with_replicas(seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """The same invariants with one backup per time-bomb."""
    caplog.set_level(logging.ERROR, logger="gobucket_py")
    outcome = await run_seed(seed, replicas=1)
    if outcome.failed:
        pytest.fail("\n" + outcome.report(), pytrace=False)


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + REPLICA_SEEDS))
async def test_seed_with_replicas_taking_over_at_death(
        seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """One backup per time-bomb, taken over as soon as its holder is
    declared dead (``promote_after=0``): stalls and partitions now make
    backups take over live holders' tasks, which the start gate and the
    takeover check must keep to one run."""
    caplog.set_level(logging.ERROR, logger="gobucket_py")
    outcome = await run_seed(seed, replicas=1, promote_after=0.0)
    if outcome.failed:
        pytest.fail("\n" + outcome.report(), pytrace=False)


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + CRASH_SEEDS))
async def test_seed_one_crash_at_a_time_with_replicas(seed: int,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """replicas=1, kill -9 and restart of one node at a time: the same invariants,
    and a crash loses nothing that was not starting, being drained or out of life."""
    caplog.set_level(logging.ERROR, logger="gobucket_py")
    outcome = await run_seed(seed, replicas=1, profile="one_crash")
    if outcome.failed:
        pytest.fail("\n" + outcome.report(), pytrace=False)


#: Seeds run with ``replicas=2`` and one-at-a-time kill -9s (``NEMESIS_CRASH2_SEEDS``):
#: seed 5 lost a task there while the rank-1 holder left it to a rank-0 one
#: that had no copy.
CRASH2_SEEDS = int(os.environ.get("NEMESIS_CRASH2_SEEDS", "50"))


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + CRASH2_SEEDS))
async def test_seed_one_crash_at_a_time_with_two_replicas(
        seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """replicas=2, one kill -9 and restart at a time: a crash loses nothing
    that was not starting, being drained or out of life."""
    caplog.set_level(logging.ERROR, logger="gobucket_py")
    outcome = await run_seed(seed, replicas=2, profile="one_crash")
    if outcome.failed:
        pytest.fail("\n" + outcome.report(), pytrace=False)


#: Seeds run with ``replicas=1`` and the ``late_boots`` profile
#: (``NEMESIS_LATE_SEEDS``): kill -9 of a node whose links are slow, restarted
#: before what its old boot sent last arrives. Before the fixes of this
#: profile's first run, 30 of 300 seeds failed (a late message from an old
#: boot taken for a restart; an origin taking over a task it had reported
#: lost; a drain answering NOT_FOUND while a backup of the task was being
#: taken over). The seeds that found them run too.
LATE_SEEDS = int(os.environ.get("NEMESIS_LATE_SEEDS", "30"))
#: (seed, replicas, profile): the late_boots seeds that found those bugs;
#: 889 (replicas=1, its own profile), where the NOT_FOUND fix first left a
#: drain "unknown" for good; 1211 (a late message from a boot replaced while
#: its successor was only suspect, taken for a restart back to it); 1100
#: (replicas=2, its own profile: a handoff's word that came before the
#: forward was settled was dropped, and the task went unreported).
LATE_FOUND = [(44, 1, "late_boots"), (64, 1, "late_boots"), (92, 1, "late_boots"),
              (99, 1, "late_boots"), (193, 2, "late_boots"), (529, 1, "late_boots"),
              (746, 1, "late_boots"), (889, 1, None), (1211, 1, "late_boots"),
              (1100, 2, None)]


@pytest.mark.parametrize(("seed", "replicas", "profile"),
                         [(seed, 1, "late_boots")
                          for seed in range(FIRST_SEED, FIRST_SEED + LATE_SEEDS)] + LATE_FOUND)
async def test_seed_with_late_messages_from_old_boots(
        seed: int, replicas: int, profile: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gobucket_py")
    outcome = await run_seed(seed, replicas=replicas, profile=profile)
    if outcome.failed:
        pytest.fail("\n" + outcome.report(), pytrace=False)


#: Seeds run with ``replicas=2`` and the ``lost_replies`` profile
#: (``NEMESIS_LOST_SEEDS``): lost replies while holders are killed -9 or stop
#: gracefully, so words of handoffs and takeovers race the verdicts of the
#: forwards they concern. Its first run failed 2 of 900 seeds, which run too:
#: 74 (a backup taken over at its own origin while the forward to its
#: primary was being settled: the route added then was reported lost, and
#: the task ran) and 592 (a backup stored after its primary left, found only
#: when it started again: drains "unknown" for good).
LOST_SEEDS = int(os.environ.get("NEMESIS_LOST_SEEDS", "30"))
LOST_FOUND = [74, 592]


@pytest.mark.parametrize("seed", sorted({*range(FIRST_SEED, FIRST_SEED + LOST_SEEDS),
                                         *LOST_FOUND}))
async def test_seed_with_lost_replies_racing_handoffs_and_takeovers(
        seed: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gobucket_py")
    outcome = await run_seed(seed, replicas=2, profile="lost_replies")
    if outcome.failed:
        pytest.fail("\n" + outcome.report(), pytrace=False)


#: Seeds run with ids filled again (``NEMESIS_REUSE_SEEDS``), each with replicas 0 and 1.
REUSE_SEEDS = int(os.environ.get("NEMESIS_REUSE_SEEDS", "30"))
#: Violations the reuse runs find that are known, reported limits of the library
#: (see the test): they mark the seed xfail, unless ``NEMESIS_STRICT=1``.
REUSE_KNOWN = frozenset({"stale_answer", "two_live"})


@pytest.mark.parametrize("replicas", [0, 1])
@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + REUSE_SEEDS))
async def test_seed_reusing_ids(seed: int, replicas: int,
                                caplog: pytest.LogCaptureFixture) -> None:
    await reusing_ids(seed, replicas, caplog)


#: A reuse seed that found a bug (with replicas): a takeover of a restarted
#: primary's earlier task of the id answered for the new one at its gate (it
#: ended HANDED_OFF and ran nowhere, no loss report). (Seed 310 found it too,
#: before lookups changed.) It must stay clean of all but the known limits.
REUSE_FOUND = [425]


@pytest.mark.parametrize("seed", REUSE_FOUND)
async def test_reuse_seeds_that_found_bugs(seed: int, caplog: pytest.LogCaptureFixture) -> None:
    await reusing_ids(seed, 1, caplog)


async def reusing_ids(seed: int, replicas: int, caplog: pytest.LogCaptureFixture) -> None:
    """Some ids are filled again from the node that first filled them, mostly
    just after the earlier task's end (its "ended" notice on its way), and
    judged per generation (tests/nemesis.py ``make_plan``, ``_check_reused``).

    Known limits (xfail): ``stale_answer``, a drain that finds a live task
    of the id stops it and answers, while a second live task of the id,
    filled from another node (or from one that restarted since), lives on
    (a record of an ended task is the answer only once every peer that
    could hold a newer one said it has none); ``two_live``, with replicas, a task whose start
    gate waits (no majority) stays live past its deadline; its holder tells
    the origin so, which keeps its route, but if those words cannot reach
    an origin that sees the holder alive (a one-way cut), the route
    expires (deadline + 1 s), and a fill again places a second task of
    the id. (The seeds in TWO_LIVE_FOUND must not show it.)"""
    caplog.set_level(logging.ERROR, logger="gobucket_py")
    outcome = await run_seed(seed, replicas=replicas, reuse=True)
    if not outcome.failed:
        return
    known = set(outcome.census.kinds) <= REUSE_KNOWN
    if known and os.environ.get("NEMESIS_STRICT", "") in ("", "0"):
        pytest.xfail("known reuse limits: " + outcome.report())
    pytest.fail("\n" + outcome.report(), pytrace=False)


#: Reuse seeds (replicas=1) where a fill again placed a second task of an id
#: while the first waited at its start gate past its deadline, its origin's
#: route expired: 212 (links: the route lapsed while the holder was alive to
#: the origin), 281 (stalls: the holder was dead to the origin, and the route
#: was taken as expired, no forward having re-armed it), 1101 (links: filled
#: again the moment the holder was seen alive again, before its word came).
TWO_LIVE_FOUND = [212, 281, 1101]


@pytest.mark.parametrize("seed", TWO_LIVE_FOUND)
async def test_reuse_seeds_that_showed_two_live(seed: int,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gobucket_py")
    outcome = await run_seed(seed, replicas=1, reuse=True)
    assert "two_live" not in outcome.census.kinds, outcome.report()


@pytest.mark.skipif("GOBUCKET_SEED" not in os.environ,
                    reason="set GOBUCKET_SEED=<seed> to replay one seed of test_seed")
async def test_replay() -> None:
    seed = int(os.environ["GOBUCKET_SEED"])
    outcome = await run_seed(seed)
    print("\n" + outcome.report(full=True))
    if outcome.failed:
        pytest.fail("the replay failed (its report is above)", pytrace=False)


# -- the checker must be able to fail ------------------------------------------------------------


class Book:
    """A hand-made ledger: a fake clock that ticks once per entry."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ledger = Ledger(self.tick)

    def tick(self) -> float:
        self.now += 0.01
        return self.now

    def fill(self, task: str, via: str = "n1#0", to: str | None = "n2", *,
             answer: str = "placed", holder: str | None = "n2#0") -> None:
        call = self.ledger.begin("fill", via, task)
        if holder is not None:
            self.ledger.event(holder, task, "filled")
        self.ledger.end(call, answer, to)

    def ask(self, op: str, task: str, answer: str, via: str = "n3#0",
            node: str | None = None) -> None:
        self.ledger.end(self.ledger.begin(op, via, task), answer, node)

    def did(self, node: str, task: str, *whats: str) -> None:
        for what in whats:
            self.ledger.event(node, task, what)

    def kinds(self) -> dict[str, int]:
        return dict(check(self.ledger).kinds)


async def test_checker_passes_clean_lives() -> None:
    book = Book()
    book.fill("a")
    book.did("n2#0", "a", "start", "finished", "hook:finish")
    book.ask("drain", "a", "finished", node="n2")
    book.fill("b")
    book.ask("drain", "b", "unknown")  # no information: fine
    book.did("n2#0", "b", "drained")
    book.ask("drain", "b", "drained", node="n2")
    book.ask("get", "b", "state:drained", node="n2")
    book.fill("c", via="n5#0", to="n5", holder="n5#0")
    book.did("n5#0", "c", "start")
    book.ledger.crash("n5#0")  # cut short with its origin: nobody left to report it
    book.fill("d", answer="ClusterFullError", to=None, holder=None)
    book.ask("drain", "d", "not_found")
    book.fill("e", answer="PlacementUnknownError", to="n2", holder="n2#0")
    book.did("n2#0", "e", "start", "finished")  # ambiguous: one run is allowed
    book.fill("f", via="n3#0", to="n4", holder="n4#0")
    book.fill("g", to="n4", holder="n4#0")
    book.did("n4#0", "g", "start")
    book.ledger.crash("n4#0")
    book.ledger.loss("n3#0", "n4", ["f"])  # lost, reported once by its origin
    book.ask("drain", "f", "lost", via="n1#0")
    book.did("n3#0", "g", "filled", "start", "failed")  # ran again after n4 crashed mid-run
    book.ask("get", "never", "none")
    fill = book.ledger.begin("fill", "n1#0", "h")  # a get concurrent with the fill
    book.ask("get", "h", "none")  # may be ordered before it
    book.did("n2#0", "h", "filled")
    book.ledger.end(fill, "placed", "n2")
    book.did("n2#0", "h", "start", "finished")
    assert book.kinds() == {}


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_checker_catches(kind: str) -> None:
    book = Book()
    ledger = book.ledger
    if kind == "twice":
        book.fill("a")
        book.did("n2#0", "a", "start", "finished")
        book.did("n3#0", "a", "filled", "start")  # a second copy runs too
    elif kind == "drained_ran":
        book.fill("a")
        book.did("n2#0", "a", "drained")
        book.ask("drain", "a", "drained", node="n2")
        book.did("n3#0", "a", "filled", "start")
    elif kind == "not_found_ran":
        book.fill("a")
        drain = ledger.begin("drain", "n3#0", "a")
        book.did("n4#0", "a", "filled")  # handed from n2 to n4 while the drain looked:
        book.did("n2#0", "a", "handed_off")  # no node held it through the whole call
        ledger.end(drain, "not_found")
        book.did("n4#0", "a", "start", "finished")  # it runs after NOT_FOUND
    elif kind == "not_found_live":
        book.fill("a")
        book.ask("get", "a", "none")
        book.did("n2#0", "a", "drained")
        book.ask("drain", "a", "drained", node="n2")
    elif kind == "no_outcome":
        book.fill("a")  # accepted, then nothing at all
    elif kind == "two_outcomes":
        book.fill("a")
        book.did("n2#0", "a", "drained")
        book.did("n3#0", "a", "filled", "rescued")
    elif kind == "outcome_and_loss":
        book.fill("a")
        book.did("n2#0", "a", "start", "finished")
        ledger.clock = lambda: 10.0  # long after its end, with no fault: notice was due
        ledger.crash("n2#0")
        ledger.loss("n1#0", "n2", ["a"])
    elif kind == "presumed_lost_ended":
        book.fill("a")
        ledger.loss("n1#0", "n2", ["a"])  # n2 only stalled: presumed lost
        book.did("n2#0", "a", "start", "finished")
    elif kind == "lost_twice":
        book.fill("a")
        ledger.crash("n2#0")
        ledger.loss("n1#0", "n2", ["a"])
        ledger.loss("n1#0", "n2", ["a"])
    elif kind == "refused_ran":
        book.fill("a", answer="ClusterFullError", to=None, holder="n2#0")
        book.did("n2#0", "a", "start", "finished")
    elif kind == "false_answer":
        book.fill("a")
        book.did("n2#0", "a", "start", "finished")
        book.ask("drain", "a", "failed", node="n2")
    elif kind == "hang":
        book.fill("a", answer="hang", to=None, holder=None)
    elif kind == "livelock":
        book.fill("a")  # cut short: it need not have ended
        ledger.abort("livelock: loop time stuck at 1.0")
    elif kind == "bad_error":
        book.fill("a", answer="error:KeyError", to=None, holder=None)
    elif kind == "still_unknown":
        book.fill("a")
        book.did("n2#0", "a", "drained")
        ledger.end(ledger.begin("drain", "n3#0", "a", audit=True), "unknown")
    elif kind == "zombie":
        book.fill("a")
        book.did("n2#0", "a", "start")
        ledger.crash("n2#0")
        book.did("n2#0", "a", "zombie")
        ledger.loss("n1#0", "n2", ["a"])
    elif kind == "stale_answer":  # a~1 is the id a filled again
        book.fill("a")
        book.did("n2#0", "a", "start", "finished")
        book.fill("a~1", to="n3", holder="n3#0")
        book.ask("drain", "a", "finished", via="n2#0", node="n2")  # n2's record of a
        book.did("n3#0", "a~1", "start", "finished")
    elif kind == "two_live":
        book.fill("a")  # pending on n2...
        book.fill("a~1", to="n3", holder="n3#0")  # ...when its origin places it again
        book.did("n2#0", "a", "drained")
        book.did("n3#0", "a~1", "start", "finished")
    elif kind == "crash_lost":
        ledger.crash_safe = True
        ledger.deadlines["a"] = 100.0  # it had long to live
        book.fill("a", via="n2#0", to="n2", holder="n2#0")
        ledger.crash("n2#0")  # its backup never took it over
        book.ledger.end(book.ledger.begin("start", "n2#1", None), "ok")
    else:
        raise AssertionError(f"no hand-made ledger for {kind}")
    assert book.kinds() == {kind: 1}


async def test_checker_excuses_what_a_crash_may_lose_with_replicas() -> None:
    """Starting (past the gate), being drained, or out of life by the restart."""
    book = Book()
    ledger = book.ledger
    ledger.crash_safe = True
    for task in "abc":
        ledger.deadlines[task] = 100.0
        book.fill(task, via="n2#0", to="n2", holder="n2#0")
    book.did("n2#0", "a", "gate")
    ledger.begin("drain", "n1#0", "b")  # sent, never answered: the holder died
    ledger.deadlines["c"] = book.now + 0.05
    ledger.crash("n2#0")
    book.ledger.end(book.ledger.begin("start", "n2#1", None), "ok")
    census = check(ledger)
    assert dict(census.kinds) == {}
    assert {k: v for k, v in census.notes.items() if k.startswith("crash_lost")} == {
        "crash_lost_starting": 1, "crash_lost_draining": 1, "crash_lost_out_of_life": 1}


async def test_checker_catches_an_unreported_loss() -> None:
    """A holder crashed, its origin survived and never reported the task."""
    book = Book()
    book.fill("a")
    book.did("n2#0", "a", "start")
    book.ledger.crash("n2#0")
    assert book.kinds() == {"no_outcome": 1}


async def test_checker_catches_lies_about_placement_and_loss() -> None:
    book = Book()
    book.fill("a", to="n3")  # said n3, but n2 took it
    book.did("n2#0", "a", "finished")
    book.fill("b")
    book.ledger.crash("n2#0")
    book.ledger.loss("n4#0", "n2", ["b"])  # n4 never had anything to do with b
    book.ask("drain", "c", "lost")  # never filled, no crash, no report
    assert book.kinds() == {"false_answer": 3}


async def test_checker_attributes_losses_of_reused_ids() -> None:
    """A loss report names only the id: it is the generation its reporter
    placed on that peer and that had no outcome."""
    def run(report: bool, again_on: str = "n2") -> tuple[dict[str, int], dict[str, int]]:
        book = Book()
        book.fill("a")
        book.did("n2#0", "a", "start", "finished")  # a ended on n2...
        book.fill("a~1", to=again_on, holder=f"{again_on}#0")  # ...and is filled again
        book.ledger.crash(f"{again_on}#0")
        if report:
            book.ledger.loss("n1#0", again_on, ["a"])
        census = check(book.ledger)
        return dict(census.kinds), dict(census.notes)

    assert run(True)[0] == {}  # the loss is a~1's
    assert run(False)[0] == {"no_outcome": 1}  # a~1 lost, its origin alive, not reported
    # A report for n2 when a~1 went to n3: about a, which ended on n2 just
    # before n2 crashed (its ended notice may not have left): the known window.
    book = Book()
    book.fill("a")
    book.did("n2#0", "a", "start", "finished")
    book.fill("a~1", to="n3", holder="n3#0")
    book.did("n3#0", "a~1", "start", "finished")
    book.ledger.crash("n2#0")
    book.ledger.loss("n1#0", "n2", ["a"])
    census = check(book.ledger)
    assert dict(census.kinds) == {}
    assert census.notes["ended_then_holder_crashed_unnotified"] == 1
    # Two generations equally fit (both live on n2's incarnations): ambiguous, no verdict.
    book = Book()
    book.fill("a")
    book.ledger.crash("n2#0")
    book.fill("a~1", holder="n2#1")
    book.ledger.crash("n2#1")
    book.ledger.loss("n1#0", "n2", ["a"])
    census = check(book.ledger)
    assert dict(census.kinds) == {} and census.notes["reuse_loss_ambiguous"] == 1


async def test_reuse_plan_adds_fills_again_from_the_same_node() -> None:
    plain, reuse = make_plan(7), make_plan(7, reuse=True)
    assert reuse.ids == plain.ids and set(plain.ops) < set(reuse.ops)
    again = [op for op in reuse.ops if op.reuse]
    assert again and all(len(op.specs) == 1 and op.specs[0].gen >= 1
                         and op.specs[0].id in plain.ids for op in again)
    first = {s.id: op.node for op in plain.ops for s in op.specs}
    assert all(op.node == first[op.specs[0].id] for op in again if op.specs[0].gen == 1)
    assert "NEMESIS_REUSE=1 " in replay_command(7, reuse=True)


async def test_plan_is_a_function_of_the_seed() -> None:
    assert make_plan(7) == make_plan(7)
    assert make_plan(7) != make_plan(8)
    command = replay_command(7)
    assert "GOBUCKET_SEED=7 " in command and "PYTHONHASHSEED=" in command
    assert command.endswith("tests/test_nemesis.py -k replay")


# -- the network's fault controls -----------------------------------------------------------------


class Peers:
    """Transports on one MemoryNetwork whose handlers log what they applied, and when."""

    def __init__(self, *names: str) -> None:
        self.net = MemoryNetwork()
        self.names = names
        self.applied: list[tuple[str, float]] = []  # (receiver, loop time)

    async def __aenter__(self) -> Peers:
        self.ends = {name: self.net.transport(name) for name in self.names}
        for name, end in self.ends.items():
            async def handler(kind: Kind, message: dict[str, Any], name: str = name
                              ) -> dict[str, Any]:
                self.applied.append((name, asyncio.get_running_loop().time()))
                await asyncio.sleep(message.get("work", 0.0))
                return {"v": 1, "by": name, "ctx": WHO.get()}
            WHO.set(name)  # each end serves in the context it was started in
            await end.start(handler)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for end in self.ends.values():
            await end.close()

    async def call(self, src: str, dst: str, timeout: float = 1.0, work: float = 0.0
                   ) -> dict[str, Any]:
        return await self.ends[src].call(dst, Kind.PING, {"v": 1, "work": work}, timeout)

    async def fails(self, src: str, dst: str, timeout: float = 1.0) -> PeerUnavailableError:
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(PeerUnavailableError) as caught:
            await self.call(src, dst, timeout)
        took = asyncio.get_running_loop().time() - t0
        assert caught.value.maybe_delivered and took == pytest.approx(timeout), took
        return caught.value


WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="?")


async def test_network_delay_makes_late_replies_and_still_applies_the_request() -> None:
    async with Peers("a", "b") as p:
        loop = asyncio.get_running_loop()
        slow = p.net.delay("a", "b", 2.0)
        t0 = loop.time()
        await p.fails("a", "b", timeout=1.0)
        assert p.applied == []
        await asyncio.sleep(1.5)
        assert p.applied == [("b", pytest.approx(t0 + 2.0))]  # applied when it arrived
        t1 = loop.time()
        assert (await p.call("b", "a", timeout=3.0))["by"] == "a"  # b's request is not late,
        assert loop.time() - t1 == pytest.approx(2.0)  # a's reply to b is
        assert str(slow) == "delay a->b +2s" and p.net.faults == [slow]
        slow.heal()
        assert (await p.call("a", "b"))["by"] == "b" and p.net.faults == []


async def test_network_drop_replies_applies_but_the_caller_never_hears() -> None:
    async with Peers("a", "b") as p:
        p.net.drop_replies("a", "b")
        await p.fails("a", "b")
        assert [who for who, _ in p.applied] == ["b"]
        assert (await p.call("b", "a"))["by"] == "a"
        p.net.heal()
        assert (await p.call("a", "b"))["by"] == "b"


async def test_network_partition_times_out_and_never_refuses() -> None:
    async with Peers("a", "b", "c") as p:
        cut = p.net.partition(["a"], ["b", "c"])
        await p.fails("a", "b")
        await p.fails("c", "a")
        assert p.applied == []  # nothing crossed
        assert (await p.call("b", "c"))["by"] == "c"  # one side still talks
        cut.heal()
        assert (await p.call("a", "b"))["by"] == "b"
        p.net.partition("a", "b", one_way=True)  # a's messages to b are lost
        await p.fails("a", "b")
        assert [who for who, _ in p.applied] == ["c", "b"]
        await p.fails("b", "a")  # b's request reaches a, the reply is lost
        assert [who for who, _ in p.applied] == ["c", "b", "a"]
        with pytest.raises(ValueError, match="both sides"):
            p.net.partition(["a", "b"], ["b"])


async def test_network_stall_holds_traffic_and_delivers_it_on_resume() -> None:
    async with Peers("a", "b") as p:
        p.net.stall("b")
        await p.fails("a", "b")
        await p.fails("b", "a")  # a stalled node's own calls wait too
        assert p.applied == []
        await asyncio.sleep(2.0)
        t1 = asyncio.get_running_loop().time()
        p.net.resume("b")
        await asyncio.sleep(0.01)
        assert sorted(p.applied) == [("a", pytest.approx(t1)), ("b", pytest.approx(t1))]
        assert (await p.call("a", "b"))["by"] == "b"


async def test_network_crash_resets_in_flight_calls_and_frees_the_address() -> None:
    async with Peers("a", "b") as p:
        loop = asyncio.get_running_loop()
        busy = loop.create_task(p.call("a", "b", timeout=5.0, work=3.0))
        await asyncio.sleep(0.5)
        p.net.crash("b")
        with pytest.raises(PeerUnavailableError) as reset:
            await busy
        assert reset.value.maybe_delivered and "reset" in str(reset.value)
        with pytest.raises(PeerUnavailableError) as refused:
            await p.call("a", "b")
        assert not refused.value.maybe_delivered
        with pytest.raises(PeerUnavailableError):
            await p.call("b", "a")  # the dead end sends nothing either
        again = p.net.transport("b")  # a restart at the same address

        async def handler(kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
            return {"v": 1, "by": "b again"}

        await again.start(handler)
        assert (await p.call("a", "b"))["by"] == "b again"


async def test_network_handlers_outlive_caller_timeouts_and_run_in_their_node_context() -> None:
    async with Peers("a", "b") as p:
        with pytest.raises(PeerUnavailableError):
            await p.call("a", "b", timeout=0.5, work=1.0)  # the caller gives up...
        await asyncio.sleep(1.0)
        assert [who for who, _ in p.applied] == ["b"]  # ...the handler ran to its end
        assert (await p.call("a", "b"))["ctx"] == "b"


# -- the harness's kill -9 ------------------------------------------------------------------------


async def test_harness_crash_stops_everything_the_node_runs() -> None:
    """A crashed incarnation runs nothing more: no timer fires, no task starts,
    no outcome is recorded, and its address takes a new incarnation."""
    plan = Plan(0, "calm", ["n1", "n2"], [5, 5], [], [], [], [])
    run = Run(plan)
    with filed_tasks():
        for name in plan.names:
            await run.boot(name)
        n2 = run.current["n2"]
        assert n2 is not None and n2.group is not None
        for i in range(3):
            await n2.group.fill("jobs", f"bomb{i}", {"w": 0.0}, task_type=TaskType.TIME_BOMB,
                                run_after=0.5, life_span=2.0)
        await n2.group.fill("jobs", "busy", {"w": 5.0}, life_span=10.0)  # running now
        await asyncio.sleep(0.1)
        await run.crash("n2")
        assert not n2.tasks  # every task it had is done
        await asyncio.sleep(1.0)  # the time-bombs' time passes
        await run.boot("n2")
        await asyncio.sleep(0.5)
        for inc in run.current.values():
            assert inc is not None and inc.group is not None
            await inc.group.stop()
    whats = [(e.node, e.task, e.what) for e in run.ledger.events]
    assert ("n2#0", "busy", "start") in whats
    assert not [w for w in whats if w[0] == "n2#0" and w[2] not in ("filled", "start")], whats
    assert run.ledger.post_mortem >= 1  # the running one ended CANCELLED, unrecorded
    assert [c.node for c in run.ledger.crashes] == ["n2#0"]
    assert run.current["n2"] is not None and run.current["n2"].tag == "n2#1"
