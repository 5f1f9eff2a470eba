"""The nemesis: seeded faults against the in-memory cluster, judged by a ledger checker.

Each seed drives a 3-5 node cluster through fills, drains, gets and
reschedules while delays, lost replies, partitions, stalls, crash-restarts and
clock steps come and go, then checks every task against the invariants of "a
cluster that never lies" (tests/nemesis.py says which, and how). Loop time is
faked (looptime): a seed takes a fraction of a second.

``make test`` runs ``NEMESIS_SEEDS`` seeds (100); ``make chaos`` runs 2,000.
A failure prints a compact report and the one command that replays it::

    GOBUCKET_SEED=1234 .venv/bin/python -m pytest -q tests/test_nemesis.py -k replay

``python -m tests.nemesis 0-99`` prints a census of the violations by kind.
The checker is tested on hand-made ledgers below: it must catch each kind.
"""

from __future__ import annotations

import os

import pytest

from .nemesis import KINDS, NOOP_CYCLES, Ledger, check, make_plan, replay_command, run_seed

pytestmark = pytest.mark.looptime(noop_cycles=NOOP_CYCLES)

SEEDS = int(os.environ.get("NEMESIS_SEEDS", "100"))
FIRST_SEED = int(os.environ.get("NEMESIS_FIRST_SEED", "0"))


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
async def test_seed(seed: int) -> None:
    outcome = await run_seed(seed)
    if outcome.failed:
        pytest.fail("\n" + outcome.report(), pytrace=False)


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
        fill = ledger.begin("fill", "n1#0", "a")
        drain = ledger.begin("drain", "n3#0", "a")
        book.did("n2#0", "a", "filled")  # placed while the drain looked (not live throughout)
        ledger.end(drain, "not_found")
        ledger.end(fill, "placed", "n2")
        book.did("n2#0", "a", "start", "finished")  # it runs after NOT_FOUND
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
        ledger.loss("n1#0", "n2", ["a"])
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
    else:
        raise AssertionError(f"no hand-made ledger for {kind}")
    assert book.kinds() == {kind: 1}


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


async def test_plan_is_a_function_of_the_seed() -> None:
    assert make_plan(7) == make_plan(7)
    assert make_plan(7) != make_plan(8)
    assert "GOBUCKET_SEED=7 " in replay_command(7) and "-k replay" in replay_command(7)
