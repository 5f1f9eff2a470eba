"""A seeded nemesis for the in-memory cluster, and the ledger checker that judges it.

``run_seed(seed)`` builds a cluster of 3 to 5 nodes on one
:class:`~gobucket_py.MemoryNetwork` (tiny buckets, so tasks overflow to
peers) and drives it for a few seconds of loop time with a workload drawn
from ``random.Random(seed)``: fills and ``fill_many`` through random nodes
(immediate tasks and time-bombs with short ``run_after`` and ``life_span``;
``on_execute`` returns, sleeps past the lifespan, or raises), drains (retried
while they answer "unknown"), gets, and local reschedules of pending
time-bombs. Meanwhile the nemesis injects faults at random times and heals
them: link delays beyond the timeouts, lost replies, partitions (two-way and
one-way), stalls (SIGSTOP), crash-restarts (kill -9, then a new incarnation
with a new boot id at the same address) and wall-clock steps. Then every
fault is healed, time passes beyond every lifespan and ``lost_after``, every
task is drained once more (the audit), and every node stops gracefully.

Everything observable goes to a :class:`Ledger`, ordered by one sequence
number: each node's ``filled``, ``start`` (of on_execute), terminal outcome
(``on_outcome``) and hook calls; every call the workload made with its answer
and when it began and returned; every crash; every ``on_tasks_lost`` report.
:func:`check` then judges each task against the invariants of the issue "a
cluster that never lies" (kinds of violation, in :data:`KINDS`):

1. ``twice``: on_execute started twice, and no crash cut the first run short.
2. ``drained_ran``: a drain answered DRAINED and on_execute started anyway
   (ever, anywhere), or it started after a CANCELLED answer.
3. ``not_found_ran``: a drain answered NOT_FOUND or LOST, or a get answered
   None (or LOST), and on_execute started after that answer;
   ``not_found_live``: such an answer while a copy of the task was live on a
   node that had not crashed, through the whole call. Only for lookups that
   began after the task's fill returned (one concurrent with the fill may be
   ordered before it).
4. ``no_outcome``, ``two_outcomes``, ``lost_twice``, ``outcome_and_loss``
   (it ended, then its holder crashed and it was reported lost),
   ``presumed_lost_ended`` (reported lost while its holder lived, and ended):
   every accepted task ends exactly once (finished, failed, exhausted,
   drained, cancelled, rescued) or is reported lost exactly once through
   ``on_tasks_lost``, never both. A task may have neither only if a node
   holding it crashed *and* its origin (the node whose fill accepted it)
   crashed too, since only the origin reports losses. ``refused_ran``: a
   fill that raised ClusterFullError, DuplicateTaskError or
   BucketClosedError (not accepted anywhere), or an id never filled, yet the
   task ran or lived (ended other than drained). PlacementUnknownError (and a
   fill cut short by the crash of the node asked) allows at most one run.
   ``false_answer``: a definite answer that the ledger contradicts (DRAINED,
   CANCELLED, FINISHED... with no such outcome; a fill that names a node
   that never took the task; a get that describes a live task when none was;
   LOST with no crash and no loss report; a loss reported by a node that
   neither filled nor handed off the task).
5. ``hang``: a call did not return within its bound (:func:`call_bound`,
   :func:`stop_bound`); ``livelock``: the loop kept running callbacks while
   its fake time stood still (a :class:`Watchdog` thread sees it and cuts
   the run short: no asyncio timeout can fire then); ``bad_error``: a call
   raised an exception its contract does not list; ``still_unknown``: after
   every fault healed and time passed, the audit drain still could not get
   a definite answer.
6. ``crash_lost`` (profile ``one_crash`` with replicas: kill -9 and restart
   of one node at a time): a task pending on a node when it crashed never
   ran, although its gate had not told the backups it was starting, no drain
   of it had been sent, and it still had life when its holder came back.

7. Reuse (``make_plan(reuse=True)``, ``NEMESIS_REUSE=1``, ``--reuse``): some
   ids are filled again, only through the node that first filled them.
   Each fill's data carries its generation ``g``, so every event is keyed
   ``id~g`` (``id`` for the first) and each generation is judged as a task
   of its own. Drains and gets name only the id: NOT_FOUND, LOST and None
   are judged against every generation (none may be live, or run later);
   an outcome answer must be true of some generation (DRAINED: of one that
   drained, and not all of those may have run); ``stale_answer``: an
   earlier generation's outcome while a later one, filled before the call,
   was live through it. Loss reports name only ids: each goes to one
   generation (:func:`_attribute_losses`: not reported already, accepted,
   no outcome before the report, placed or handed off by the reporter, a
   copy on the reported peer; ties on all five are ambiguous and cover each
   tied generation against ``no_outcome``, noted). ``two_live``: a later
   generation was placed by the same origin incarnation while an earlier
   one, not reported lost, was live ("an id filled from one node is live on
   at most one node").

``zombie`` is a harness defect: a crashed incarnation ran something.
Notes (counted, not violations): ``not_found_for_ended`` (NOT_FOUND or None
for a task that ended on a node that crashed since) and
``not_found_for_ended_holder_alive`` (its holder is alive and should have
answered how it ended, within ``outcome_retention``), answers that were
"unknown", tasks lost with their origin.

Crashes: each node runs in its own :mod:`contextvars` context (the
MemoryNetwork runs each handler in its receiver's context), and a task
factory files every asyncio task under the incarnation whose context created
it. A crash closes the node's transport (``MemoryNetwork.crash``) and
cancels every task of that incarnation; tasks it would create afterwards
(a timer firing) are cancelled before they start, and its buckets are closed
at once (``close(0)``) for whatever its context did not reach. What it does
while dying (a runner cancelled mid-run ends CANCELLED, a closed bucket
rescues) is not recorded: a killed process says nothing. An on_execute that
still starts on a crashed incarnation is recorded as ``zombie``.

Replay: ``GOBUCKET_SEED=<seed> .venv/bin/python -m pytest -q tests/test_nemesis.py -k replay``
(the run is deterministic under looptime: the report's ``trace`` digest says
whether a replay took the same path). ``python -m tests.nemesis 0-99`` runs
seeds outside pytest and prints a census by kind, with one replay command
per kind.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import math
import os
import random
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gobucket_py import (
    BucketConfig,
    DrainResult,
    Executor,
    FillResult,
    GroupConfig,
    MemoryNetwork,
    PlacementUnknownError,
    Task,
    TaskBucket,
    TaskBucketGroup,
    TaskInfo,
    TaskState,
    TaskType,
)

__all__ = ["KINDS", "Call", "Census", "Ledger", "Outcome", "Plan", "call_bound", "check",
           "make_plan", "replay_command", "run_seed", "stop_bound"]

BUCKET = "jobs"
FINAL = frozenset({"finished", "failed", "exhausted", "drained", "cancelled", "rescued"})
#: "withdrawn": a fill taken back because its backups could not be placed.
ENDS = FINAL | {"handed_off", "withdrawn"}
#: Fill errors that mean "not accepted anywhere".
REFUSED = frozenset({"ClusterFullError", "DuplicateTaskError", "BucketClosedError",
                     "NoBackupRoomError"})
#: Everything fill may raise by contract.
FILL_ERRORS = REFUSED | {"PlacementUnknownError"}
#: Documented "no answer" errors of drain and get.
LOOKUP_ERRORS = {"PeerUnavailableError": "unknown", "BucketClosedError": "BucketClosedError"}
#: Answers that say nothing about the task.
NO_INFO = frozenset({"unknown", "hang", "interrupted", "BucketClosedError"})
INF = math.inf

#: Every kind of violation, with the invariant it breaks.
KINDS: dict[str, str] = {
    "twice": "1 at most once: on_execute started twice, no crash cut a run short",
    "drained_ran": "2 DRAINED is final: answered DRAINED (or CANCELLED), then on_execute started",
    "not_found_ran": "3 NOT_FOUND is certain: answered NOT_FOUND/LOST/None, then on_execute "
                     "started",
    "not_found_live": "3 NOT_FOUND is certain: answered NOT_FOUND/LOST/None while a live node "
                      "held the task through the whole call",
    "no_outcome": "4 every end is told: accepted, no outcome and no loss report (and not lost "
                  "together with its origin)",
    "two_outcomes": "4 every end is told: two terminal outcomes",
    "outcome_and_loss": "4 every end is told: it ended, and was reported lost when its holder "
                        "crashed later",
    "presumed_lost_ended": "4 every end is told: reported lost while its holder lived (presumed "
                           "lost), and it ended anyway",
    "lost_twice": "4 every end is told: reported lost twice",
    "refused_ran": "4 a refused fill (or an id never filled) ran or lived",
    "false_answer": "2-4 answers are true: a definite answer the ledger contradicts",
    "hang": "5 nothing hangs: a call outlived its bound (or the run its real-time limit)",
    "livelock": "5 nothing hangs: the loop kept running while its (fake) time stood still",
    "bad_error": "5 a call raised an exception its contract does not list",
    "still_unknown": "5 after healing, the audit drain still answered unknown",
    "zombie": "harness defect: a crashed incarnation ran on_execute",
    "two_live": "one id filled from one node is live on at most one node (reuse): a fill "
                "again was placed while an earlier task of the id, filled by the same "
                "incarnation and not reported lost, was live",
    "stale_answer": "2-4 answers are true (reuse): a drain or get told how an earlier task "
                    "of the id ended, while a later one, filled before it asked, was live "
                    "through the call",
    "crash_lost": "6 a crash loses nothing (replicas, at most one node down at a time): a "
                  "task pending at the crash never ran, and was not starting, being "
                  "drained or out of life before its holder came back",
}


# -- the ledger ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Something a node did to a task: ``filled``, ``restored``, ``start``,
    a terminal state (``finished`` ... ``handed_off``), ``hook:<name>`` or ``zombie``."""

    seq: int
    t: float
    node: str  # incarnation tag, "n2#1"
    task: str
    what: str


@dataclass(slots=True)
class Call:
    """One call of the workload and its answer.

    ``answer``: fill: ``placed`` (``node`` = FillResult.node_id), an error
    name (``PlacementUnknownError``: ``node`` = exc.node_id); drain: a
    DrainOutcome value (``node`` = DrainResult.node_id) or ``unknown``
    (PeerUnavailableError); get: ``none`` or ``state:<TaskState>``; any:
    ``hang`` (outlived its bound), ``interrupted`` (the node asked crashed
    meanwhile), ``error:<Type>`` (an undocumented exception), ``ok``.
    """

    op: str
    via: str
    task: str | None
    seq0: int
    t0: float
    seq1: int = -1
    t1: float = -1.0
    answer: str = "pending"
    node: str | None = None
    audit: bool = False


@dataclass(frozen=True, slots=True)
class Crash:
    seq: int
    t: float
    node: str  # the incarnation that died


@dataclass(frozen=True, slots=True)
class Loss:
    seq: int
    t: float
    reporter: str  # incarnation tag
    peer: str
    tasks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Action:
    seq: int
    t: float
    text: str


class Ledger:
    """Everything observable in one run, in one order (``seq``)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or (lambda: 0.0)
        self.seq = 0
        self.events: list[Event] = []
        self.calls: list[Call] = []
        self.crashes: list[Crash] = []
        self.losses: list[Loss] = []
        self.actions: list[Action] = []
        self.post_mortem = 0  # what dying incarnations did (not recorded)
        #: Each task's deadline (loop time) as last filled or rescheduled.
        self.deadlines: dict[str, float] = {}
        #: Judge "a crash loses nothing" (replicas, one node down at a time).
        self.crash_safe = False
        self.aborted: str | None = None  # why the run was cut short (a livelock)
        self.skipped = 0  # reuse: fills again skipped (the id's first origin was down)

    def stamp(self) -> tuple[int, float]:
        self.seq += 1
        return self.seq, self.clock()

    def event(self, node: str, task: str, what: str) -> None:
        self.events.append(Event(*self.stamp(), node, task, what))

    def begin(self, op: str, via: str, task: str | None, *, audit: bool = False) -> Call:
        call = Call(op, via, task, *self.stamp(), audit=audit)
        self.calls.append(call)
        return call

    def end(self, call: Call, answer: str, node: str | None = None,
            stamp: tuple[int, float] | None = None) -> Call:
        call.seq1, call.t1 = stamp or self.stamp()
        call.answer, call.node = answer, node
        return call

    def crash(self, node: str) -> None:
        self.crashes.append(Crash(*self.stamp(), node))

    def loss(self, reporter: str, peer: str, tasks: Iterable[str]) -> None:
        self.losses.append(Loss(*self.stamp(), reporter, peer, tuple(tasks)))

    def action(self, text: str) -> None:
        self.actions.append(Action(*self.stamp(), text))

    def abort(self, reason: str) -> None:
        """The run was cut short: the loop stopped making progress."""
        self.aborted = reason

    def digest(self) -> str:
        """A short hash of the whole run: two runs with the same digest took the same path."""
        h = hashlib.sha256()
        for e in self.events:
            h.update(f"e{e.seq},{e.t:.6f},{e.node},{e.task},{e.what};".encode())
        for c in self.calls:
            h.update(f"c{c.seq0},{c.seq1},{c.op},{c.via},{c.task},{c.answer},{c.node};".encode())
        for x in self.losses:
            h.update(f"l{x.seq},{x.reporter},{x.peer},{x.tasks};".encode())
        return h.hexdigest()[:12]


# -- the checker ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    task: str | None
    why: str


@dataclass(frozen=True, slots=True)
class Copy:
    """The task's life on one incarnation: from ``filled`` to its end."""

    node: str
    opened: int
    closed: float  # seq, INF while open
    by: str  # the end event, "crash" or "open"


def node_of(tag: str) -> str:
    return tag.split("#", 1)[0]


#: Separates an id from its generation in the ledger's task keys (``t7~1``).
GEN = "~"


def task_key(task_id: str, gen: int = 0) -> str:
    """The ledger's name for one generation of an id: the id itself for the
    first fill (so runs without reuse record what they always did)."""
    return f"{task_id}{GEN}{gen}" if gen else task_id


def key_of(task_id: str, data: Any) -> str:
    """The key of a task the harness filled (its data carries ``g``)."""
    gen = data.get("g", 0) if isinstance(data, dict) else 0
    return task_key(task_id, gen)


def split_key(key: str) -> tuple[str, int]:
    task_id, _, gen = key.partition(GEN)
    return task_id, int(gen or 0)


def _id_key(key: str) -> tuple[str, int, int]:
    task, gen = split_key(key)
    head = task.rstrip("0123456789")
    return head, int(task[len(head):] or 0), gen


@dataclass
class Census:
    """What :func:`check` found."""

    ledger: Ledger
    violations: list[Violation] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)

    def bad(self, kind: str, task: str | None, why: str) -> None:
        assert kind in KINDS, kind
        self.violations.append(Violation(kind, task, why))

    @property
    def kinds(self) -> Counter[str]:
        return Counter(v.kind for v in self.violations)

    def timeline(self, task: str) -> str:
        """Everything about one task, in order, with the faults of its lifetime
        (a reused id's: every generation's, each event naming its key)."""
        ledger = self.ledger
        rows: list[tuple[int, str]] = []
        nodes: set[str] = set()
        task_id = split_key(task)[0]
        reused = task != task_id or any(split_key(e.task) != (task_id, 0) and
                                        split_key(e.task)[0] == task_id for e in ledger.events)

        def ours(key: str | None) -> bool:
            return key == task or (reused and key is not None and split_key(key)[0] == task_id)

        for e in ledger.events:
            if ours(e.task) and not e.what.startswith("hook:"):
                label = f"[{e.task}] " if reused else ""
                rows.append((e.seq, f"{e.t:.3f} {e.node} {label}{e.what}"))
                nodes.add(e.node)
        audits: set[int] = set()
        task_calls = [c for c in ledger.calls if ours(c.task)]
        for c in task_calls:
            if True:
                if c.audit:
                    audits.add(c.seq0)
                to = f"@{c.node}" if c.node else ""
                label = f"[{c.task}] " if reused else ""
                rows.append((c.seq0, f"{c.t0:.3f}-{c.t1:.3f} {'audit ' if c.audit else ''}"
                                     f"{label}{c.op} via {c.via} -> {c.answer}{to}"))
                nodes.add(c.via)
        for x in ledger.losses:
            if task_id in x.tasks:
                rows.append((x.seq, f"{x.t:.3f} lost, reported by {x.reporter} (peer {x.peer})"))
        if not rows:
            return "(nothing recorded)"
        first = min(s for s, _ in rows)
        last = max([c.seq1 for c in task_calls if not c.audit]
                   + [s for s, _ in rows if s not in audits])
        for crash in ledger.crashes:
            if crash.node in nodes or node_of(crash.node) in {node_of(n) for n in nodes}:
                if first - 50 <= crash.seq <= last + 50:
                    rows.append((crash.seq, f"{crash.t:.3f} CRASH {crash.node}"))
        for action in ledger.actions:
            if first <= action.seq <= last:
                rows.append((action.seq, f"{action.t:.3f} nemesis {action.text}"))
        return "; ".join(text for _, text in sorted(rows))


#: How soon after a task's end its holder tells the origin, faults aside:
#: the notices' batching (cluster/ended.py FLUSH) plus one request timeout.
NOTICE_WINDOW = 0.05 + 0.5


def unnotified(ledger: Ledger, end: Event, origin: str) -> bool:
    """Did the holder of ``end`` crash before its ended notice could reach
    ``origin``: within NOTICE_WINDOW, or with a fault touching either node
    (started up to MAX_FAULT before the end) in between?"""
    crash: Crash | Call | None = next(
        (c for c in ledger.crashes if c.node == end.node and c.seq > end.seq), None)
    if crash is None:  # a graceful stop ends the incarnation (and its notices) too
        crash = next((c for c in ledger.calls if c.op == "stop" and c.via == end.node
                      and c.seq1 > end.seq), None)
    if crash is None:
        return False
    gone = crash.t if isinstance(crash, Crash) else crash.t1
    if gone - end.t <= NOTICE_WINDOW:
        return True
    names = {node_of(end.node), node_of(origin)}
    return any(end.t - MAX_FAULT <= a.t <= gone and any(n in a.text for n in names)
               for a in ledger.actions)


def origin_left_first(ledger: Ledger, origin: str, holder: str) -> bool:
    """Did incarnation ``origin`` stop gracefully before it could have
    presumed the crashed incarnation ``holder`` lost (``lost_after``)?"""
    crash_t = next((c.t for c in ledger.crashes if c.node == holder), None)
    if crash_t is None:
        return False
    lost_after = group_config().lost_after
    return any(c.op == "stop" and c.via == origin and c.t0 <= crash_t + lost_after
               for c in ledger.calls)


def check(ledger: Ledger) -> Census:
    """Judge every task of ``ledger`` against the invariants (see the module docstring)."""
    census = Census(ledger)
    if ledger.aborted is not None:
        census.bad("livelock" if ledger.aborted.startswith("livelock") else "hang", None,
                   ledger.aborted)
    crashed = {c.node: c.seq for c in ledger.crashes}
    events: dict[str, list[Event]] = {}
    for e in ledger.events:
        events.setdefault(e.task, []).append(e)
        if e.what == "zombie":
            census.bad("zombie", e.task, f"{e.node} ran on_execute after its crash")
    calls: dict[str, list[Call]] = {}
    for c in ledger.calls:
        if c.task is not None:
            calls.setdefault(c.task, []).append(c)
        if c.answer == "hang":
            census.bad("hang", c.task, f"{c.op} via {c.via} at {c.t0:.3f} did not return "
                                       f"within its bound")
        elif c.answer.startswith("error:"):
            census.bad("bad_error", c.task, f"{c.op} via {c.via} at {c.t0:.3f} raised "
                                            f"{c.answer[6:]}")
    losses: dict[str, list[Loss]] = {}
    for x in ledger.losses:
        for task in x.tasks:
            losses.setdefault(task, []).append(x)
    if ledger.skipped:
        census.notes["reuse_skipped_origin_down"] += ledger.skipped
    complete = ledger.aborted is None
    generations: dict[str, list[str]] = {}  # id -> its keys, in order
    for key in sorted(set(events) | set(calls) | set(losses), key=_id_key):
        generations.setdefault(split_key(key)[0], []).append(key)
    for task_id, keys in generations.items():
        if keys == [task_id]:  # filled once (or never): the id is the task
            _check_task(census, task_id, events.get(task_id, []), calls.get(task_id, []),
                        losses.get(task_id, []), crashed, complete=complete, ledger=ledger)
        else:
            _check_reused(census, task_id, keys, events, calls, losses.get(task_id, []),
                          crashed, complete=complete, ledger=ledger)
    return census


LOOKUPS = ("drain", "get")


@dataclass
class Generation:
    """One fill (or more, retried) of a reused id: what the ledger says of it."""

    key: str
    evs: list[Event]
    calls: list[Call]  # its own: fills and reschedules
    copies: list[Copy]
    fill0: float  # seq of its first fill's start
    refused: bool

    @property
    def allowed(self) -> set[str]:
        """Who may report it lost: whoever filled it, or handed it off."""
        return ({c.via for c in self.calls if c.op in ("fill", "fill_many")}
                | {e.node for e in self.evs if e.what == "handed_off"})

    def ended_before(self, seq: int) -> bool:
        return any(e.what in FINAL and e.seq < seq for e in self.evs)

    def had(self, what: str, before: int) -> bool:
        return any(e.what == what and e.seq < before for e in self.evs)


def _check_reused(census: Census, task_id: str, keys: list[str], events: dict[str, list[Event]],
                  calls: dict[str, list[Call]], losses: list[Loss], crashed: dict[str, int], *,
                  complete: bool, ledger: Ledger) -> None:
    """An id filled more than once (from one origin node): each generation is
    judged as a task of its own (its key carries the generation), against the
    drains and gets of the id and the loss reports attributed to it
    (:func:`_attribute_losses`); the answers to drains and gets, which name
    only the id, are judged against every generation (:func:`_check_lookups`)."""
    mine = calls.get(task_id, [])
    lookups = [c for c in mine if c.op in LOOKUPS]
    own = {key: [c for c in calls.get(key, []) if c.op not in LOOKUPS] for key in keys}
    gens = []
    for key in keys:
        fills = [c for c in own[key] if c.op in ("fill", "fill_many")]
        gens.append(Generation(key, events.get(key, []), own[key],
                               _copies(events.get(key, []), crashed),
                               min((c.seq0 for c in fills), default=INF),
                               bool(fills) and all(c.answer in REFUSED for c in fills)))
    census.counts["reused_ids"] += 1
    census.counts["generations"] += len(gens)
    attributed, covered = _attribute_losses(census, gens, losses)
    for g in gens:
        _check_task(census, g.key, g.evs, g.calls + lookups, attributed[g.key], crashed,
                    complete=complete, ledger=ledger, shared=True, covered=g.key in covered)
    _check_lookups(census, task_id, gens, lookups, losses, crashed, complete=complete)
    _check_one_live(census, gens, attributed)


def _check_one_live(census: Census, gens: list[Generation],
                    attributed: dict[str, list[Loss]]) -> None:
    """``two_live``: a later generation took a copy while an earlier one,
    filled through the same incarnation (the origin remembers where it sent
    it: a restart forgets), was live on a node, and the earlier one had not
    been reported lost before the later fill began (a presumed loss may come
    back: a documented limit)."""
    for b in gens:
        fills_b = [c for c in b.calls if c.op in ("fill", "fill_many") and c.answer == "placed"]
        if not fills_b:
            continue
        origin = fills_b[0].via
        first = min((cp.opened for cp in b.copies), default=None)
        if first is None:
            continue
        for a in gens:
            if a.fill0 >= b.fill0 or a.refused or not any(
                    c.via == origin for c in a.calls if c.op in ("fill", "fill_many")):
                continue
            if any(x.seq < b.fill0 for x in attributed[a.key]):
                continue
            live = [cp for cp in a.copies if cp.opened < first < cp.closed]
            if any(e.what in FINAL and e.seq < first for e in a.evs):
                # It ended (where a backup took it over, say) before the
                # new fill, as its origin was told. A copy left on a node
                # cut off then that never starts, and ends handed off as
                # its gate learns of the takeover, is a husk, not a live
                # task of the id. (Not a copy that runs, or stays.)
                live = [cp for cp in live if not (cp.by == "handed_off" and not any(
                    e.what == "start" and e.node == cp.node and cp.opened < e.seq < cp.closed
                    for e in a.evs))]
            if live:
                census.bad("two_live", b.key, f"placed by {origin} on {fills_b[0].node} while "
                                              f"{a.key} (filled by {origin} too) was live on "
                                              f"{live[0].node}")


def _attribute_losses(census: Census, gens: list[Generation], losses: list[Loss]
                      ) -> tuple[dict[str, list[Loss]], set[str]]:
    """Which generation each loss report of a reused id is about.

    A report (reporter R, peer P, the id) is about a generation whose fill had
    begun before it. Of those, the best is one that (in this order) was not
    reported lost already, was accepted (not refused), had no outcome before
    the report, was filled or handed off by R, and had a copy on (any
    incarnation of) P before the report; among equals, the latest. If two or
    more generations meet all five, the report is ambiguous: it is given to
    none of them, and each is "covered" (not judged ``no_outcome``; noted
    ``reuse_loss_ambiguous``). Otherwise it goes to the best, which is then
    judged as any task with that report (a report that fits no generation
    cleanly is a violation of the one it fits best: lost twice, outcome and
    loss, a reporter that never filled it...)."""
    attributed: dict[str, list[Loss]] = {g.key: [] for g in gens}
    covered: set[str] = set()
    for x in sorted(losses, key=lambda x: x.seq):
        began = [g for g in gens if g.fill0 < x.seq] or gens

        def rank(g: Generation, x: Loss = x) -> tuple[bool, ...]:
            return (bool(attributed[g.key]) or g.key in covered, g.refused,
                    g.ended_before(x.seq), x.reporter not in g.allowed,
                    not any(node_of(cp.node) == x.peer and cp.opened < x.seq
                            for cp in g.copies))

        best = min(rank(g) for g in began)
        tied = [g for g in began if rank(g) == best]
        if len(tied) > 1 and not any(best):
            covered.update(g.key for g in tied)
            census.notes["reuse_loss_ambiguous"] += 1
            continue
        chosen = max(tied, key=lambda g: g.fill0)
        attributed[chosen.key].append(x)
        if split_key(chosen.key)[1]:
            census.counts["reuse_losses_of_later_generations"] += 1
    return attributed, covered


def _check_lookups(census: Census, task_id: str, gens: list[Generation], lookups: list[Call],
                   losses: list[Loss], crashed: dict[str, int], *, complete: bool) -> None:
    """The answers about a reused id that name no generation: each must be
    true of one generation at least (a drain's DRAINED of one that drained,
    and none of those may ever run; a FINISHED of one that finished...).
    NOT_FOUND, LOST and None are judged per generation (:func:`_check_task`):
    they say that none is live. ``stale_answer``: how an earlier generation
    ended, while a later one, filled before the call began, was live on a
    node through the whole call (and did not end so)."""
    bad = census.bad

    def stale(c: Call, told: list[Generation]) -> None:
        for g in gens:
            fills = [f for f in g.calls if f.op in ("fill", "fill_many")]
            if g in told or min((f.seq1 for f in fills), default=INF) > c.seq0:
                continue
            live = [cp for cp in g.copies if cp.opened < c.seq0 and cp.closed > c.seq1]
            if live and told and all(t.fill0 < g.fill0 for t in told):
                bad("stale_answer", g.key, f"{c.op} via {c.via} at {c.t1:.3f} answered "
                                           f"{c.answer} (of {', '.join(t.key for t in told)}) "
                                           f"while {g.key} was live on {live[0].node}")

    for c in lookups:
        a = c.answer
        state = a[6:] if c.op == "get" and a.startswith("state:") else None
        ended = a if c.op == "drain" and a in FINAL else state if state in FINAL else None
        if ended is not None:
            told = [g for g in gens if g.had(ended, c.seq1)]
            if not told:
                bad("false_answer", task_id, f"{a.upper()} via {c.via} at {c.t1:.3f}: no "
                                             "generation of the id ended so")
                continue
            if c.op == "drain" and a == "drained" and all(
                    any(e.what == "start" for e in g.evs) for g in told):
                bad("drained_ran", task_id, f"DRAINED via {c.via} at {c.t1:.3f}, yet every "
                                            "generation drained also ran")
            if c.op == "drain" and a == "cancelled" and all(
                    any(e.what == "start" and e.seq > c.seq1 for e in g.evs) for g in told):
                bad("drained_ran", task_id, f"CANCELLED via {c.via} at {c.t1:.3f}, then "
                                            "on_execute started")
            stale(c, told)
        elif state in ("pending", "running") and not any(
                cp.opened < c.seq1 and cp.closed > c.seq0 for g in gens for cp in g.copies):
            bad("false_answer", task_id, f"get said {state} via {c.via} at {c.t1:.3f}, when "
                                         "no node held any generation")
        if a == "lost" or (c.op == "get" and a == "state:lost"):
            if not losses and not any(cp.by == "crash" and cp.closed < c.seq1
                                      for g in gens for cp in g.copies):
                bad("false_answer", task_id, f"LOST via {c.via} at {c.t1:.3f}: no holder "
                                             "crashed and no loss was reported")
        if a == "not_found" or (c.op == "get" and a == "none"):
            ended_before = [e for g in gens for e in g.evs if e.what in FINAL and e.seq < c.seq0]
            if ended_before:
                crash = crashed.get(max(ended_before, key=lambda e: e.seq).node)
                since = crash is not None and crash < c.seq0
                census.notes["not_found_for_ended" + ("" if since else "_holder_alive")] += 1
        if a == "unknown":
            census.notes["unknown_answers"] += 1
    audits = [c for c in lookups if c.audit]
    if complete and audits and all(c.answer in NO_INFO for c in audits):
        bad("still_unknown", task_id, f"the audit drain answered {audits[-1].answer} "
                                      f"{len(audits)} times, after every fault healed")


def _copies(evs: list[Event], crashed: dict[str, int]) -> list[Copy]:
    opened: dict[str, int] = {}
    out: list[Copy] = []
    for e in evs:
        if e.what == "filled":
            opened.setdefault(e.node, e.seq)
        elif e.what in ENDS and e.node in opened:
            out.append(Copy(e.node, opened.pop(e.node), e.seq, e.what))
    for node, seq in opened.items():
        crash = crashed.get(node)
        out.append(Copy(node, seq, crash, "crash") if crash is not None and crash > seq
                   else Copy(node, seq, INF, "open"))
    return out


def _check_task(census: Census, task: str, evs: list[Event], calls: list[Call],
                losses: list[Loss], crashed: dict[str, int], *, complete: bool = True,
                ledger: Ledger | None = None, shared: bool = False,
                covered: bool = False) -> None:
    """One task; ``complete`` is False for a run cut short (then tasks need not have ended).

    ``shared``: one generation of a reused id (``calls`` holds the drains and
    gets of the id too): only what NOT_FOUND, LOST and None say of it is
    judged here, the other answers against every generation
    (:func:`_check_lookups`). ``covered``: an ambiguous loss report may be
    about it (no ``no_outcome``)."""
    bad = census.bad
    starts = [e for e in evs if e.what == "start"]
    finals = [e for e in evs if e.what in FINAL]
    copies = _copies(evs, crashed)
    fills = [c for c in calls if c.op in ("fill", "fill_many")]
    placed = [c for c in fills if c.answer == "placed"]
    refused = bool(fills) and all(c.answer in REFUSED for c in fills)
    census.counts["tasks"] += 1

    def at(events: list[Event]) -> str:
        return ", ".join(f"{e.node}@{e.t:.3f}" for e in events)

    # 1. At most once: runs cut short by a crash of their node are excused.
    def cut(start: Event) -> bool:
        crash = crashed.get(start.node)
        return crash is not None and crash > start.seq and not any(
            f.node == start.node and start.seq < f.seq < crash for f in finals)

    uncut = [s for s in starts if not cut(s)]
    if len(uncut) > 1:
        bad("twice", task, f"on_execute started {len(starts)} times: {at(starts)}")

    # 2 and 3: every definite answer against the ledger.
    def had(what: str, before: int) -> bool:
        return any(e.what == what and e.seq < before for e in evs)

    # A lookup that began before any fill of the task returned may be ordered
    # before the fill (linearizably): "nowhere" is then a true answer.
    filled_at = min((c.seq1 for c in fills), default=INF)

    def nowhere(c: Call, label: str) -> None:
        if filled_at > c.seq0:
            return
        later = [s for s in starts if s.seq > c.seq1]
        if later:
            bad("not_found_ran", task, f"{label} via {c.via} at {c.t1:.3f}, then on_execute "
                                       f"started: {at(later)}")
        live = [cp for cp in copies if cp.opened < c.seq0 and cp.closed > c.seq1]
        if live:
            bad("not_found_live", task, f"{label} via {c.via} ({c.t0:.3f}-{c.t1:.3f}) while "
                                        f"{', '.join(cp.node for cp in live)} held it")

    def forgot(c: Call) -> None:
        """NOT_FOUND (or None) for a task that had ended: its holder should
        say how (outcome_retention), unless it crashed since."""
        ended = [f for f in finals if f.seq < c.seq0]
        if ended:
            crash = crashed.get(ended[0].node)
            since = crash is not None and crash < c.seq0
            census.notes["not_found_for_ended" + ("" if since else "_holder_alive")] += 1

    for c in calls:
        a = c.answer
        if shared:  # a reused id: only "nowhere" is judged per generation
            if a in ("not_found", "lost") and c.op == "drain":
                nowhere(c, a.upper())
            elif c.op == "get" and a in ("none", "state:lost"):
                nowhere(c, "get None" if a == "none" else "get LOST")
            continue
        if c.op == "drain":
            if a == "drained":
                if starts:
                    bad("drained_ran", task, f"DRAINED via {c.via} at {c.t1:.3f}, yet "
                                             f"on_execute started: {at(starts)}")
                elif not had("drained", c.seq1):
                    bad("false_answer", task, f"DRAINED via {c.via} at {c.t1:.3f}: no node "
                                              "drained it")
            elif a == "cancelled":
                later = [s for s in starts if s.seq > c.seq1]
                if later:
                    bad("drained_ran", task, f"CANCELLED via {c.via} at {c.t1:.3f}, then "
                                             f"on_execute started: {at(later)}")
                if not had("cancelled", c.seq1):
                    bad("false_answer", task, f"CANCELLED via {c.via} at {c.t1:.3f}: no node "
                                              "cancelled it")
            elif a in FINAL:
                if not had(a, c.seq1):
                    bad("false_answer", task, f"{a.upper()} via {c.via} at {c.t1:.3f}: the "
                                              f"ledger has no such outcome")
            elif a in ("not_found", "lost"):
                nowhere(c, a.upper())
            if a == "not_found":
                forgot(c)
        elif c.op == "get":
            state = a[6:] if a.startswith("state:") else None
            if a == "none":
                nowhere(c, "get None")
                forgot(c)
            elif state in FINAL:
                if not had(state, c.seq1):
                    bad("false_answer", task, f"get said {state} via {c.via} at {c.t1:.3f}: "
                                              "the ledger has no such outcome")
            elif state == "lost":
                nowhere(c, "get LOST")
            elif state in ("pending", "running") and not any(
                    cp.opened < c.seq1 and cp.closed > c.seq0 for cp in copies):
                bad("false_answer", task, f"get said {state} via {c.via} at {c.t1:.3f}, "
                                          "when no node held it")
        if a == "lost" or (c.op == "get" and a == "state:lost"):
            if not losses and not any(cp.by == "crash" and cp.closed < c.seq1 for cp in copies):
                bad("false_answer", task, f"LOST via {c.via} at {c.t1:.3f}: no holder crashed "
                                          "and no loss was reported")
        if a == "unknown":
            census.notes["unknown_answers"] += 1
    audits = [c for c in calls if c.audit]
    if complete and audits and not shared and all(c.answer in NO_INFO for c in audits):
        bad("still_unknown", task, f"the audit drain answered {audits[-1].answer} "
                                   f"{len(audits)} times, after every fault healed")

    # 4. Every end is told.
    if placed or (fills and not refused):
        for c in placed:
            if not any(e.what == "filled" and node_of(e.node) == c.node
                       and c.seq0 < e.seq < c.seq1 for e in evs):
                bad("false_answer", task, f"fill via {c.via} said it lives on {c.node}, "
                                          f"which did not take it")
        if len(finals) > 1:
            bad("two_outcomes", task, f"{len(finals)} outcomes: "
                                      + ", ".join(f"{e.what} on {e.node}" for e in finals))
        if len(losses) > 1:
            bad("lost_twice", task, "reported lost by "
                                    + ", ".join(f"{x.reporter}@{x.t:.3f}" for x in losses))
        if finals and losses:
            end, loss = finals[0], losses[0]
            crash = crashed.get(end.node)
            kind = ("outcome_and_loss" if crash is not None and crash < loss.seq
                    else "presumed_lost_ended")
            if (kind in ("outcome_and_loss", "presumed_lost_ended") and ledger is not None
                    and unnotified(ledger, end, loss.reporter)):
                # The documented window: the holder crashed before its "ended"
                # notice could reach the origin (too soon, or a fault between).
                census.notes["ended_then_holder_crashed_unnotified"] += 1
                kind = ""
        if finals and losses and kind:
            bad(kind, task, f"{end.what} on {end.node} at {end.t:.3f} and reported lost by "
                            f"{loss.reporter} at {loss.t:.3f}"
                + (f" (after {end.node} crashed)" if kind == "outcome_and_loss"
                   else f" ({end.node} never crashed)"))
        if placed:
            census.counts["accepted"] += 1
            origin = placed[0].via
            if not finals:  # lost (reported or not): by a crash, while it ran or not
                census.counts["lost_running" if starts else "lost_pending"] += 1
                if ledger is not None and ledger.crash_safe and not starts:
                    _crash_safe(census, task, evs, calls, copies, ledger)
            if not finals and not losses and complete:
                lost = [cp for cp in copies if cp.by == "crash"]
                # Its last copy was left to a peer (or its backups) by a node
                # that stopped: a copy that crashed before it had moved on
                # (taken over from a backup), so that crash did not lose it.
                last = max(copies, key=lambda cp: cp.opened, default=None)
                left_last = last is not None and last.by == "handed_off" and any(
                    e.what == "handoff_unknown" and e.node == last.node for e in evs)
                if (not lost or left_last) and any(e.what == "handoff_unknown" for e in evs):
                    # Reported as "may or may not be on <peer>" by a stopping
                    # node that could not settle the handoff (and whose
                    # origin, if another node, could not settle it either).
                    census.notes["handoff_unknown_not_taken"] += 1
                elif covered:
                    census.notes["reuse_loss_ambiguous_covered"] += 1
                elif not lost:
                    bad("no_outcome", task, "accepted, no outcome, no loss report, and no node "
                                            "holding it crashed")
                elif origin in crashed:
                    census.notes["lost_with_origin"] += 1
                elif ledger is not None and origin_left_first(ledger, origin, lost[0].node):
                    # The origin stopped gracefully before it could presume the
                    # holder lost (lost_after): nobody is left to tell.
                    census.notes["lost_with_stopped_origin"] += 1
                else:
                    bad("no_outcome", task, f"held by {lost[0].node} when it crashed; the "
                                            f"origin {origin} survived and did not report it")
        else:
            census.counts["ambiguous"] += 1
        allowed = {c.via for c in fills} | {e.node for e in evs if e.what == "handed_off"}
        for x in losses:
            if x.reporter not in allowed:
                bad("false_answer", task, f"reported lost by {x.reporter}, which neither "
                                          "filled it nor handed it off")
    else:
        census.counts["refused" if refused else "never_filled"] += 1
        lived = [e for e in evs if e.what == "start" or (e.what in FINAL and e.what != "drained")]
        if lived:
            what = "a refused fill" if refused else "never filled"
            bad("refused_ran", task, f"{what}, yet: "
                                     + ", ".join(f"{e.what} on {e.node}@{e.t:.3f}" for e in lived))
        if losses:
            bad("false_answer", task, f"not accepted, yet reported lost by {losses[0].reporter}")
    for e in finals:
        census.counts[f"outcome:{e.what}"] += 1


def _crash_safe(census: Census, task: str, evs: list[Event], calls: list[Call],
                copies: list[Copy], ledger: Ledger) -> None:
    """With replicas and at most one node down at a time, a task lost by a
    crash must have been starting there (its gate told the backups), being
    drained (a drain sent before the crash may have dropped the backups
    already), or out of life before its holder came back (the backup could
    not take it over in time)."""
    crashes = [cp for cp in copies if cp.by == "crash"]
    if not crashes:
        return  # not lost by a crash: the other invariants judge it
    crash = max(crashes, key=lambda cp: cp.closed)
    seq = int(crash.closed)
    why = ""
    if any(e.what == "gate" and e.node == crash.node and e.seq < seq for e in evs):
        why = "starting"
    elif any(c.op == "drain" and c.seq0 < seq for c in calls):
        why = "draining"
    else:
        name, back = node_of(crash.node), None
        for c in ledger.calls:  # the next incarnation's start
            if c.op == "start" and c.seq0 > seq and node_of(c.via) == name:
                back = c.t1
                break
        if back is not None and ledger.deadlines.get(task, INF) <= back + 0.3:
            why = "out_of_life"
    if why:
        census.notes[f"crash_lost_{why}"] += 1
    else:
        census.bad("crash_lost", task, f"pending on {crash.node} when it crashed; not "
                                       "starting, not being drained, and alive long after "
                                       "its holder was back")


# -- the plan -------------------------------------------------------------------------------------

PROFILES = ("calm", "links", "stalls", "crashes", "mixed")
PROFILE_WEIGHTS = (1, 2, 2, 2, 3)
WORK_FOR = 4.0  # seconds of workload and faults (loop time)
WARMUP = 1.0  # membership settles and capacities are exchanged before the workload
MAX_LIFE = 3.0  # longest life_span of a task
MAX_PUSH = 1.0  # longest reschedule
MAX_FAULT = 3.0  # longest fault


def group_config(replicas: int | None = None, promote_after: float | None = None
                 ) -> GroupConfig:
    """The cluster's tuning: the local preset, with losses presumed after 8 s
    (and backups taking over then, unless ``promote_after`` says sooner;
    default: ``NEMESIS_PROMOTE_AFTER``)."""
    # Longer than any fault the nemesis heals: a stall or partition it heals
    # must be "unknown", never presumed lost (presumption is for a node that
    # stays dead, and is tested on its own in test_truth.py).
    # Faults can overlap, so a node may be silent for most of the workload.
    return GroupConfig.local(lost_after=WORK_FOR + MAX_FAULT + 1.0,
                             replicas=REPLICAS if replicas is None else replicas,
                             promote_after=PROMOTE_AFTER if promote_after is None
                             else promote_after)


#: Backups per time-bomb (``NEMESIS_REPLICAS``, default 0).
REPLICAS = int(os.environ.get("NEMESIS_REPLICAS", "0"))
#: Backups take a dead holder's tasks over after this long (``NEMESIS_PROMOTE_AFTER``;
#: default: when it is presumed lost).
PROMOTE_AFTER = float(os.environ["NEMESIS_PROMOTE_AFTER"]) if os.environ.get(
    "NEMESIS_PROMOTE_AFTER") else None
#: Run every seed with this profile (``NEMESIS_PROFILE``; default: each seed draws one).
PROFILE = os.environ.get("NEMESIS_PROFILE") or None
#: Fill some ids again (``NEMESIS_REUSE=1``; see :func:`make_plan`).
REUSE = os.environ.get("NEMESIS_REUSE", "") not in ("", "0")


HOOK_TIMEOUT = 0.5
#: looptime's idle cycles before it moves the clock (its default, 42, only costs
#: time here: the same seed takes the same path with 4).
NOOP_CYCLES = 4


def call_bound(cfg: GroupConfig) -> float:
    """The bound on fill, fill_many, drain and get: every attempt's forward
    timeout, a settle round, three request round trips, and a second of margin."""
    return (cfg.forward_timeout * cfg.max_attempts + cfg.settle_timeout
            + 3 * cfg.request_timeout + 1.0)


def stop_bound(cfg: GroupConfig, hook_timeout: float = HOOK_TIMEOUT) -> float:
    """The bound on stop: the leave announcement, the handoff (until stop_grace,
    plus a placement that started just before it), the rescue hooks, the
    forwards in flight (forward + settle), the background round trip, margin."""
    return (cfg.request_timeout + cfg.stop_grace
            + cfg.forward_timeout * cfg.max_attempts + cfg.settle_timeout + hook_timeout
            + cfg.forward_timeout + cfg.settle_timeout + cfg.request_timeout + 1.0)


def start_bound(cfg: GroupConfig) -> float:
    """The bound on start: one join round of probes, and margin."""
    return 2 * cfg.probe_timeout + cfg.request_timeout + 1.0


@dataclass(frozen=True, slots=True)
class Spec:
    """A task to fill: its times and what its on_execute does (``work`` seconds
    of sleep; negative: it raises)."""

    id: str
    bomb: bool
    run_after: float
    life_span: float
    work: float
    gen: int = 0  # reuse: the how-manieth fill of this id (0: its first)

    @property
    def key(self) -> str:
        return task_key(self.id, self.gen)

    @property
    def data(self) -> dict[str, Any]:
        return {"w": self.work, "g": self.gen} if self.gen else {"w": self.work}


@dataclass(frozen=True, slots=True)
class Op:
    at: float  # seconds into the workload
    kind: str  # fill, fill_many, drain, get, reschedule
    node: int  # index of the node asked (the next one up if it is down)
    specs: tuple[Spec, ...] = ()
    task: str = ""
    retries: tuple[tuple[int, float], ...] = ()  # drain: (node, pause) for each retry
    u: float = 0.0  # reschedule: which pending time-bomb
    value: float = 0.0  # reschedule: run_after
    reuse: bool = False  # fill: an id filled before, again, through the node that first filled it


@dataclass(frozen=True, slots=True)
class Strike:
    """One blow of the nemesis, ``at`` seconds into the workload, for ``lasts`` seconds."""

    at: float
    kind: str  # delay, drop, partition, one_way, stall, crash, slow_crash, leave, clock
    nodes: tuple[int, ...]  # delay/drop: (src, dst); partition: side a; stall/crash: (node,)
    other: tuple[int, ...] = ()  # partition: side b
    value: float = 0.0  # delay seconds (slow_crash: of its outgoing links), clock step
    lasts: float = 0.0

    def text(self, names: list[str]) -> str:
        a = ",".join(names[i] for i in self.nodes)
        b = ",".join(names[i] for i in self.other)
        return {
            "delay": f"delay {a.replace(',', '->')} +{self.value:.2f}s for {self.lasts:.2f}s",
            "drop": f"drop replies {a.replace(',', '->')} for {self.lasts:.2f}s",
            "partition": f"partition {a} | {b} for {self.lasts:.2f}s",
            "one_way": f"one-way partition {a} -> {b} for {self.lasts:.2f}s",
            "stall": f"stall {a} for {self.lasts:.2f}s",
            "crash": f"crash {a}, restart after {self.lasts:.2f}s",
            "slow_crash": f"crash {a} with its links slowed +{self.value:.2f}s, restart "
                          f"before its last messages arrive",
            "leave": f"graceful stop of {a}, restart after {self.lasts:.2f}s",
            "clock": f"wall clock step {self.value:+.1f}s",
        }[self.kind]


@dataclass
class Plan:
    seed: int
    profile: str
    names: list[str]
    caps: list[int]
    ops: list[Op]
    faults: list[Strike]
    ids: list[str]  # every id the workload fills, in order (each once)
    ghosts: list[str]  # ids drained but never filled
    reuse: bool = False  # some ids are filled again (see make_plan)

    def describe(self) -> str:
        tasks = len(self.ids)
        again = sum(len(op.specs) for op in self.ops if op.reuse)
        return (f"profile {self.profile}{', reuse' if self.reuse else ''}, {len(self.names)} "
                f"nodes (bucket sizes {self.caps}), {tasks} tasks"
                + (f" ({again} fills again)" if self.reuse else "")
                + f", {len(self.ops)} ops, {len(self.faults)} faults")


FAULTS_OF = {
    "calm": (),
    "links": ("delay", "drop", "partition", "one_way"),
    "stalls": ("stall", "stall", "delay"),
    "crashes": ("crash", "crash", "leave"),
    "mixed": ("delay", "drop", "partition", "one_way", "stall", "crash", "leave", "clock"),
    # Only kill -9 and restart, one node at a time, a second apart: with
    # replicas, "a crash loses nothing" is judged too (Ledger.crash_safe).
    "one_crash": ("crash",),
    # kill -9 of a node whose outgoing links are slow, restarted (and its
    # links healed) before what its old boot sent last arrives: late
    # messages from a boot its peers have seen replaced.
    "late_boots": ("slow_crash", "crash", "delay"),
    # Lost replies while holders are killed -9 or stop gracefully: words of
    # handoffs and takeovers racing the verdicts of the forwards they concern.
    "lost_replies": ("drop", "drop", "crash", "leave", "delay"),
}


def make_plan(seed: int, profile: str | None = None, reuse: bool = False) -> Plan:
    """Everything a run will do, drawn from ``random.Random(seed)`` up front
    (so the plan does not depend on how the run interleaves). ``profile``
    overrides the drawn one (the rest of the plan is drawn the same).

    ``reuse``: some ids are filled again (generations 1, 2), drawn from a
    second generator (``Random(f"{seed}/reuse")``) after the rest, so the
    plan is the plain one plus those fills (and drains and gets of them).
    A fill again goes through the node that first filled the id (never
    another origin: the cluster keeps one id live on one node per origin);
    if that node is down then, it is skipped. Mostly just after the earlier
    generation's expected end (its run_after plus its work: its "ended"
    notice is then queued or on the wire), some while it is still live
    (DuplicateTaskError is a legal answer), some later. Each generation's
    data carries ``g``, so the ledger tells them apart."""
    rng = random.Random(seed)
    n = rng.randint(3, 5)
    names = [f"n{i + 1}" for i in range(n)]
    caps = [rng.randint(2, 5) for _ in names]
    drawn = rng.choices(PROFILES, PROFILE_WEIGHTS)[0]  # drawn anyway: the rest stays the same
    profile = profile or drawn
    ops: list[Op] = []
    ids: list[str] = []
    ghosts: list[str] = []
    counter = 0

    def spec(bomb: bool, run_after: float, life: float) -> Spec:
        nonlocal counter
        counter += 1
        r = rng.random()
        work = (0.0 if r < 0.4 else rng.uniform(0.05, 0.6) if r < 0.8
                else -1.0 if r < 0.9 else life + 0.5)
        return Spec(f"t{counter}", bomb, run_after, life, work)

    def times() -> tuple[bool, float, float]:
        bomb = rng.random() < 0.6
        run_after = rng.uniform(0.05, 1.5) if bomb else 0.0
        life = min(MAX_LIFE, run_after + rng.uniform(0.2, 1.5))
        return bomb, run_after, life

    def drain_at(at: float, task: str) -> None:
        retries = tuple((rng.randrange(n), rng.uniform(0.2, 0.6)) for _ in range(3))
        ops.append(Op(at, "drain", rng.randrange(n), task=task, retries=retries))

    t = 0.0
    while True:
        t += rng.expovariate(12.0)
        if t >= WORK_FOR:
            break
        r = rng.random()
        node = rng.randrange(n)
        if r < 0.62:
            many = r >= 0.52
            bomb, run_after, life = times()
            specs = tuple(spec(bomb, run_after, life)
                          for _ in range(rng.randint(2, 5) if many else 1))
            ops.append(Op(t, "fill_many" if many else "fill", node, specs=specs))
            for s in specs:
                ids.append(s.id)
                if rng.random() < 0.35:  # drained: mostly before it fires, some racing it
                    drain_at(t + rng.uniform(0.0, s.run_after * 1.2 + 0.2), s.id)
        elif r < 0.75:
            if ids and rng.random() < 0.9:
                drain_at(t, rng.choice(ids))
            else:
                ghosts.append(f"ghost{len(ghosts) + 1}")
                drain_at(t, ghosts[-1])
        elif r < 0.9:
            if ids:
                ops.append(Op(t, "get", node, task=rng.choice(ids)))
        elif ids:
            ops.append(Op(t, "reschedule", node, u=rng.random(),
                          value=rng.uniform(0.05, MAX_PUSH)))
    if reuse:
        _reuse(ops, random.Random(f"{seed}/reuse"), n)
    ops.sort(key=lambda op: op.at)

    faults: list[Strike] = []
    kinds = FAULTS_OF[profile]
    down: list[tuple[float, float, int]] = []  # crash or stall windows: (from, to, node)
    t = 0.2
    while kinds:
        t += rng.uniform(0.2, 0.9)
        if t >= WORK_FOR:
            break
        kind = rng.choice(kinds)
        lasts = rng.uniform(0.2, MAX_FAULT)
        if kind in ("delay", "drop"):
            src, dst = rng.sample(range(n), 2)
            value = rng.uniform(0.05, 1.2) if kind == "delay" else 0.0
            faults.append(Strike(t, kind, (src, dst), value=value, lasts=lasts))
        elif kind in ("partition", "one_way"):
            order = rng.sample(range(n), n)
            cut = rng.randint(1, n - 1)
            faults.append(Strike(t, kind, tuple(sorted(order[:cut])), tuple(sorted(order[cut:])),
                                lasts=lasts))
        elif kind in ("stall", "crash", "leave", "slow_crash"):
            busy = {node for start, end, node in down if start <= t + lasts and t <= end}
            if profile == "one_crash" and any(start - 1.0 <= t + lasts and t <= end + 1.0
                                              for start, end, _ in down):
                continue  # one node down at a time, a second apart
            free = [i for i in range(n) if i not in busy]
            if len(busy) >= n - 1 or not free:
                continue
            node = rng.choice(free)
            down.append((t, t + lasts, node))
            value = rng.uniform(0.3, 1.2) if kind == "slow_crash" else 0.0
            faults.append(Strike(t, kind, (node,), value=value, lasts=lasts))
        else:
            step = rng.choice((-1, 1)) * rng.uniform(0.5, 60.0)
            faults.append(Strike(t, "clock", (), value=step))
    return Plan(seed, profile, names, caps, ops, faults, ids, ghosts, reuse)


#: reuse: the chance that a filled id is filled again, and again after that.
REUSE_P = (0.4, 0.3)


def _reuse(ops: list[Op], rng: random.Random, n: int) -> None:
    """Add fills again of ids filled by ``ops`` (see :func:`make_plan`)."""
    def again(op: Op, s: Spec) -> Op | None:
        ended = op.at + s.run_after + max(s.work, 0.0)
        r = rng.random()
        at = (ended + rng.uniform(0.0, 0.12) if r < 0.6  # just ended: its notice in flight
              else op.at + rng.uniform(0.0, max(ended - op.at, 0.05)) if r < 0.8  # still live
              else ended + rng.uniform(0.1, 2.0))
        if at >= WORK_FOR:
            return None
        bomb = rng.random() < 0.6
        run_after = rng.uniform(0.05, 1.2) if bomb else 0.0
        life = min(MAX_LIFE, run_after + rng.uniform(0.2, 1.5))
        w = rng.random()
        work = (0.0 if w < 0.45 else rng.uniform(0.05, 0.6) if w < 0.85
                else -1.0 if w < 0.93 else life + 0.5)
        spec = Spec(s.id, bomb, run_after, life, work, s.gen + 1)
        return Op(at, "fill" if rng.random() < 0.6 else "fill_many", op.node, specs=(spec,),
                  reuse=True)

    queue = [(op, s) for op in ops if op.kind in ("fill", "fill_many") for s in op.specs]
    while queue:
        op, s = queue.pop(0)
        if s.gen >= len(REUSE_P) or rng.random() >= REUSE_P[s.gen]:
            continue
        new = again(op, s)
        if new is None:
            continue
        ops.append(new)
        queue.append((new, new.specs[0]))
        r = rng.random()
        if r < 0.35:  # drained: before it fires, racing it, or racing the earlier one's end
            retries = tuple((rng.randrange(n), rng.uniform(0.2, 0.6)) for _ in range(3))
            ops.append(Op(new.at + rng.uniform(-0.05, new.specs[0].run_after * 1.2 + 0.2),
                          "drain", rng.randrange(n), task=s.id, retries=retries))
        elif r < 0.55:
            ops.append(Op(new.at + rng.uniform(0.0, 0.5), "get", rng.randrange(n), task=s.id))


# -- the run ----------------------------------------------------------------------------------


class Incarnation:
    """One life of one node: its group, bucket and every asyncio task it made."""

    def __init__(self, name: str, number: int) -> None:
        self.name = name
        self.tag = f"{name}#{number}"
        self.dying = False
        self.tasks: dict[asyncio.Task[Any], None] = {}  # insertion-ordered: deterministic
        self.context = contextvars.copy_context()
        self.context.run(NODE.set, self)
        self.group: TaskBucketGroup | None = None
        self.bucket: LedgerBucket | None = None

    def forget(self, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(task, None)


#: The incarnation whose code is running (set in each node's context).
NODE: contextvars.ContextVar[Incarnation | None] = contextvars.ContextVar("nemesis_node",
                                                                          default=None)


class LedgerExecutor(Executor):
    """Records each on_execute start and hook; does what the task's data says."""

    def __init__(self, inc: Incarnation, ledger: Ledger) -> None:
        self.inc = inc
        self.ledger = ledger

    async def on_execute(self, task: Task) -> None:
        key = key_of(task.id, task.data)
        if self.inc.dying:
            self.ledger.event(self.inc.tag, key, "zombie")
            return
        self.ledger.event(self.inc.tag, key, "start")
        work = task.data.get("w", 0.0) if isinstance(task.data, dict) else 0.0
        if work < 0:
            raise RuntimeError("on_execute fails, as planned")
        if work:
            await asyncio.sleep(work)

    def _hook(self, name: str, task: Task) -> None:
        if not self.inc.dying:
            self.ledger.event(self.inc.tag, key_of(task.id, task.data), f"hook:{name}")

    async def on_finish(self, task: Task) -> None:
        self._hook("finish", task)

    async def on_execute_error(self, task: Task, error: BaseException) -> None:
        self._hook("error", task)

    async def on_task_exhausted(self, task: Task) -> None:
        self._hook("exhausted", task)

    async def on_panic(self, task: Task) -> None:
        self._hook("panic", task)


class LedgerBucket(TaskBucket):
    """A TaskBucket that records each task it takes (``filled``, ``restored``)
    and each terminal outcome (through ``on_outcome``)."""

    def __init__(self, config: BucketConfig, inc: Incarnation, ledger: Ledger) -> None:
        super().__init__(config, LedgerExecutor(inc, ledger), name=BUCKET)
        self.inc = inc
        self.ledger = ledger
        self.on_outcome = self._outcome
        #: Each id's key as last taken here (reuse: for what names only the id).
        self.keys: dict[str, str] = {}

    def _note(self, key: str, what: str) -> None:
        if self.inc.dying:
            self.ledger.post_mortem += 1
        else:
            self.ledger.event(self.inc.tag, key, what)

    def _took(self, task_id: str, data: Any, what: str) -> None:
        key = self.keys[task_id] = key_of(task_id, data)
        self._note(key, what)

    def _outcome(self, task: Task) -> None:
        self._note(key_of(task.id, task.data), task.state.value)

    def _held(self, task: Task) -> None:
        self.ledger.deadlines[key_of(task.id, task.data)] = task._deadline

    async def reschedule(self, task_id: str, run_after: float) -> bool:
        moved = await super().reschedule(task_id, run_after)
        task = self.get(task_id)
        if moved and task is not None:
            self._held(task)
        return moved

    def set_gate(self, gate: Callable[[Task], Awaitable[bool]] | None,
                 moved: Callable[[Task, float], None] | None = None) -> None:
        if gate is None:
            super().set_gate(None, moved)
            return
        inner = gate

        async def noted(task: Task) -> bool:
            # starting: from here a crash loses it (at most once)
            self._note(key_of(task.id, task.data), "gate")
            return await inner(task)

        super().set_gate(noted, moved)

    def fill_nowait(self, task_type: TaskType, task_id: str, data: Any = None, *,
                    run_after: float | None = None, life_span: float | None = None) -> Task:
        task = super().fill_nowait(task_type, task_id, data, run_after=run_after,
                                   life_span=life_span)
        self._took(task_id, data, "filled")
        self._held(task)
        return task

    def fill_validated(self, task_type: TaskType, task_id: str, data: Any, run_after: float,
                       life_span: float, *, over: bool = False) -> Task:
        task = super().fill_validated(task_type, task_id, data, run_after, life_span,
                                      over=over)
        self._took(task_id, data, "filled")
        self._held(task)
        return task

    def restore(self, task: Task) -> None:
        super().restore(task)
        self._took(task.id, task.data, "restored")

    def withdraw(self, task_id: str) -> bool:
        taken = super().withdraw(task_id)
        if taken:
            self._note(self.keys.get(task_id, task_id), "withdrawn")
        return taken


@contextmanager
def filed_tasks() -> Iterator[None]:
    """Install a task factory that files each new task under the incarnation
    whose context makes it, and cancels (before it starts) any task a dying
    incarnation would make."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        context = kwargs.get("context")
        task: asyncio.Task[Any]
        if previous is not None:
            task = previous(loop, coro, **kwargs)  # type: ignore[assignment]
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        inc = context.get(NODE) if context is not None else NODE.get()
        if inc is not None:
            if inc.dying:
                task.cancel()
            else:
                inc.tasks[task] = None
                task.add_done_callback(inc.forget)
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        yield
    finally:
        loop.set_task_factory(previous)


@contextmanager
def wall_clock() -> Iterator[Callable[[float], None]]:
    """Let the nemesis step the wall clock (``time.time`` and ``time.time_ns``:
    boot ids and first batch numbers are read from the latter, so a node
    restarted after a step back starts "earlier" than its dead boot);
    durations in the library must not notice. Yields ``step(seconds)``;
    restored on exit."""
    real, real_ns = time.time, time.time_ns
    offset = [0.0]

    def fake() -> float:
        return real() + offset[0]

    def fake_ns() -> int:
        return real_ns() + int(offset[0] * 1e9)

    def step(seconds: float) -> None:
        offset[0] += seconds

    time.time, time.time_ns = fake, fake_ns
    try:
        yield step
    finally:
        time.time, time.time_ns = real, real_ns


def _describe(callback: Any) -> str:
    """A callback's name; for a task's step, the coroutine it runs."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return f"task {getattr(coro, '__qualname__', coro)}"
    return str(getattr(callback, "__qualname__", callback))


class Watchdog:
    """Cuts a run short when the loop's (fake) time stops advancing for
    ``frozen_for`` seconds of real time while the loop keeps running -- a
    livelock, which no asyncio timeout can catch since time stands still --
    or when the run takes more than ``limit`` real seconds. ``reason`` says
    why, with the loop thread's stack at that moment; the body is cancelled."""

    def __init__(self, loop: asyncio.AbstractEventLoop, body: asyncio.Task[Any], *,
                 frozen_for: float = 2.0, limit: float = 90.0) -> None:
        self.loop = loop
        self.body = body
        self.frozen_for = frozen_for
        self.limit = limit
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread_id = threading.get_ident()
        self._thread = threading.Thread(target=self._watch, name="nemesis-watchdog",
                                        daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _busy(self, samples: int = 60) -> str:
        """Where the loop thread spends its time: the commonest stacks of
        library and test frames, and the callbacks the loop keeps running."""
        stacks: Counter[str] = Counter()
        callbacks: Counter[str] = Counter()
        for _ in range(samples):
            frame = sys._current_frames().get(self._thread_id)
            ours = [f for f in traceback.extract_stack(frame)
                    if "gobucket_py" in f.filename or os.sep + "tests" + os.sep in f.filename]
            if ours:
                stacks[" <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                                   for f in reversed(ours[-6:]))] += 1
            handles = [*getattr(self.loop, "_ready", ()), *getattr(self.loop, "_scheduled", ())]
            for handle in handles[:50]:
                callbacks[_describe(getattr(handle, "_callback", None))] += 1
            time.sleep(0.005)
        top = "; or ".join(stack for stack, _ in stacks.most_common(2)) or "(no frame of ours)"
        ready = ", ".join(f"{name} x{n}" for name, n in callbacks.most_common(3))
        return f"{top}; callbacks queued most: {ready}"

    def _watch(self) -> None:
        began = last_change = time.perf_counter()
        last = self.loop.time()
        while not self._done.wait(0.25):
            now, real = self.loop.time(), time.perf_counter()
            if now != last:
                last, last_change = now, real
            if real - last_change > self.frozen_for:
                why = (f"livelock: loop time stuck at {now:.6f} for {real - last_change:.1f} s "
                       "of real time while the loop kept running")
            elif real - began > self.limit:
                why = f"the run took more than {self.limit:g} s of real time"
            else:
                continue
            self.reason = f"{why}; the loop was busy in: {self._busy()}"
            self.loop.call_soon_threadsafe(self.body.cancel)
            return


@dataclass
class Outcome:
    """A finished run: its plan, ledger and census."""

    plan: Plan
    ledger: Ledger
    census: Census
    leaked: int = 0  # asyncio tasks of stopped groups still alive (cancelled by the harness)
    replicas: int = 0  # backups per time-bomb in this run
    promote_after: float | None = None  # its GroupConfig.promote_after

    @property
    def failed(self) -> bool:
        return bool(self.census.violations)

    def report(self, *, full: bool = False, per_kind: int = 3) -> str:
        census, plan = self.census, self.plan
        counts = census.counts
        lines = [
            f"nemesis seed {plan.seed}: {len(census.violations)} violations "
            f"{dict(sorted(census.kinds.items()))}; {plan.describe()}; "
            f"accepted {counts['accepted']}, refused {counts['refused']}, ambiguous "
            f"{counts['ambiguous']}; notes {dict(sorted(census.notes.items()))}; "
            f"trace {self.ledger.digest()}"]
        shown: Counter[str] = Counter()
        for v in census.violations:
            shown[v.kind] += 1
            if not full and shown[v.kind] > per_kind:
                continue
            lines.append(f"  {v.kind} [{KINDS[v.kind]}]")
            lines.append(f"    {v.task}: {v.why}")
            if v.task is not None:
                lines.append(f"    timeline: {census.timeline(v.task)}")
        if full:
            lines.append("  faults: " + "; ".join(f"{a.t:.3f} {a.text}"
                                                 for a in self.ledger.actions))
        exact = "" if os.environ.get("PYTHONHASHSEED") else (
            " (this run's PYTHONHASHSEED was random: the replay may take another path; "
            "compare the trace)")
        overridden = plan.profile if plan.profile not in PROFILES else None
        command = replay_command(plan.seed, self.replicas, overridden, self.promote_after,
                                 plan.reuse)
        lines.append(f"  replay: {command}{exact}")
        return "\n".join(lines)


def replay_command(seed: int, replicas: int | None = None, profile: str | None = None,
                   promote_after: float | None = None, reuse: bool | None = None) -> str:
    """The one command that replays ``seed``, with this process's hash seed.

    Set iteration order (string hashing) steers a few interleavings, so an
    exact replay needs the same ``PYTHONHASHSEED``; without one set, the
    command uses 0, which takes the same path for most seeds (compare the
    ``trace`` digest of the two reports)."""
    hashseed = os.environ.get("PYTHONHASHSEED") or "0"
    k = REPLICAS if replicas is None else replicas
    profile = profile or PROFILE
    promote = PROMOTE_AFTER if promote_after is None else promote_after
    env = ("NEMESIS_REUSE=1 " if (REUSE if reuse is None else reuse) else "") + (
        f"NEMESIS_REPLICAS={k} " if k else "") + (
        f"NEMESIS_PROFILE={profile} " if profile else "") + (
        f"NEMESIS_PROMOTE_AFTER={promote:g} " if promote is not None else "")
    return (f"PYTHONHASHSEED={hashseed} {env}GOBUCKET_SEED={seed} .venv/bin/python -m "
            "pytest -q tests/test_nemesis.py -k replay")


class Run:
    """One seeded run (see the module docstring)."""

    def __init__(self, plan: Plan, replicas: int | None = None,
                 promote_after: float | None = None) -> None:
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.ledger = Ledger(self.loop.time)
        self.net = MemoryNetwork()
        self.crash_locks: dict[str, asyncio.Lock] = {}
        self.config = group_config(replicas, promote_after)
        self.ledger.crash_safe = plan.profile == "one_crash" and self.config.replicas > 0
        self.bound = call_bound(self.config)
        self.names = plan.names
        self.current: dict[str, Incarnation | None] = dict.fromkeys(self.names)
        self.lives: dict[str, int] = dict.fromkeys(self.names, 0)
        self.all: list[Incarnation] = []
        self.step_clock: Callable[[float], None] = lambda seconds: None
        self.jobs: list[asyncio.Task[None]] = []
        self.nemesis: list[asyncio.Task[None]] = []
        #: reuse: the node that first filled each id (its fills again go there).
        self.origin_of: dict[str, str] = {}

    # -- nodes --

    def _build(self, inc: Incarnation) -> None:
        index = self.names.index(inc.name)
        bucket = LedgerBucket(BucketConfig(life_span=MAX_LIFE, run_after=1.0,
                                           max_bucket=self.plan.caps[index],
                                           hook_timeout=HOOK_TIMEOUT), inc, self.ledger)
        group = TaskBucketGroup({BUCKET: bucket}, [n for n in self.names if n != inc.name],
                                node_id=inc.name, transport=self.net.transport(inc.name),
                                config=self.config,
                                rng=random.Random(f"{self.plan.seed}/{inc.tag}"))
        ledger = self.ledger

        def lost(peer: str, bucket: str, task_ids: list[str]) -> None:
            if not inc.dying:
                ledger.loss(inc.tag, peer, task_ids)

        group.on_tasks_lost = lost
        add_event = group.events.add

        def event(kind: str, text: str, **fields: Any) -> None:
            # The stopping node's report that a handoff could not be settled.
            if kind == "handoff_unknown" and not inc.dying:
                task_id = str(fields["task_id"])
                ledger.event(inc.tag, bucket.keys.get(task_id, task_id), kind)
            add_event(kind, text, **fields)

        group.events.add = event  # type: ignore[method-assign]
        inc.group, inc.bucket = group, bucket

    async def boot(self, name: str) -> None:
        inc = Incarnation(name, self.lives[name])
        self.lives[name] += 1
        inc.context.run(self._build, inc)
        self.all.append(inc)
        group = inc.group
        assert group is not None
        call, (answer, _, stamp), _ = await self.invoke(inc, "start", None, group.start,
                                                        start_bound(self.config))
        self.ledger.end(call, answer if answer in ("ok", "hang", "interrupted")
                        else f"error:{answer}", None, stamp)
        if call.answer == "ok":
            self.current[name] = inc

    async def crash(self, name: str) -> None:
        inc = self.current[name]
        if inc is None:
            return
        self.current[name] = None
        inc.dying = True  # from here on it records nothing, and its new tasks never start
        self.ledger.crash(inc.tag)
        self.net.crash(name)
        for _ in range(20):
            tasks = list(inc.tasks)
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.5)
        # What its context did not reach (a timer armed from another context):
        # the buckets let nothing run any more (what they do now is not recorded).
        if inc.group is not None:
            for bucket in inc.group.buckets.values():
                await bucket.close(0)

    def pick(self, index: int) -> Incarnation | None:
        """The node at ``index``, or the next one that is up."""
        n = len(self.names)
        for k in range(n):
            inc = self.current[self.names[(index + k) % n]]
            if inc is not None:
                return inc
        return None

    # -- calls --

    async def invoke(self, inc: Incarnation, op: str, task: str | None,
                     fn: Callable[[], Awaitable[Any]], bound: float, *, audit: bool = False
                     ) -> tuple[Call, tuple[str, str | None, tuple[int, float] | None], Any]:
        """Run ``fn()`` in the node's context, bounded: the call record, the
        answer (``ok`` or the exception's name, or hang/interrupted) with the
        stamp of its return, and the result."""
        ledger = self.ledger
        call = ledger.begin(op, inc.tag, task, audit=audit)
        stamp: list[tuple[int, float]] = []

        async def inner() -> tuple[Any, BaseException | None]:
            try:
                result = await fn()
            except Exception as exc:
                stamp.append(ledger.stamp())
                return None, exc
            stamp.append(ledger.stamp())
            return result, None

        job = self.loop.create_task(inner(), context=inc.context.copy())
        try:
            async with asyncio.timeout(bound):
                result, exc = await job
        except TimeoutError:
            return call, ("hang", None, None), None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return call, ("interrupted", None, None), None
        if exc is None:
            return call, ("ok", None, stamp[0]), result
        if isinstance(exc, PlacementUnknownError):
            return call, ("PlacementUnknownError", exc.node_id, stamp[0]), exc
        return call, (type(exc).__name__, None, stamp[0]), exc

    def spawn(self, coro: Awaitable[None]) -> None:
        self.jobs.append(self.loop.create_task(coro))  # type: ignore[arg-type]

    async def at(self, when: float) -> None:
        delay = when - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def fill(self, op: Op) -> None:
        if op.reuse:  # only through the node that filled the id first, if it is up
            name = self.origin_of.get(op.specs[0].id)
            inc = self.current[name] if name is not None else None
            if inc is None:
                self.ledger.skipped += 1
                return
        else:
            inc = self.pick(op.node)
            if inc is None:
                return
            for s in op.specs:
                self.origin_of.setdefault(s.id, inc.name)
        group = inc.group
        assert group is not None
        first = op.specs[0]
        kw: dict[str, Any] = {
            "task_type": TaskType.TIME_BOMB if first.bomb else TaskType.IMMEDIATE,
            "run_after": first.run_after if first.bomb else None,
            "life_span": first.life_span}
        if op.kind == "fill":
            def one() -> Awaitable[FillResult]:
                return group.fill(BUCKET, first.id, first.data, **kw)
            call, (answer, node, stamp), result = await self.invoke(inc, "fill", first.key, one,
                                                                    self.bound)
            if answer == "ok":
                answer, node = "placed", result.node_id
            elif answer not in FILL_ERRORS | NO_INFO:
                answer = f"error:{answer}"
            self.ledger.end(call, answer, node, stamp)
            return

        def many() -> Awaitable[list[FillResult | Exception]]:
            return group.fill_many(BUCKET, [(s.id, s.data) for s in op.specs], **kw)
        call, (answer, node, stamp), result = await self.invoke(inc, "fill_many", None, many,
                                                                self.bound)
        self.ledger.calls.remove(call)
        for i, s in enumerate(op.specs):
            each = Call("fill_many", call.via, s.key, call.seq0, call.t0)
            self.ledger.calls.append(each)
            a, where = answer, node
            if answer == "ok":
                item = result[i]
                if isinstance(item, FillResult):
                    a, where = "placed", item.node_id
                elif isinstance(item, PlacementUnknownError):
                    a, where = "PlacementUnknownError", item.node_id
                else:
                    a, where = type(item).__name__, None
            if a not in FILL_ERRORS | NO_INFO | {"placed"}:
                a = f"error:{a}"
            self.ledger.end(each, a, where, stamp)

    async def drain(self, op: Op, *, audit: bool = False) -> None:
        attempts = [(op.node, 0.0), *op.retries]
        for index, pause in attempts:
            if pause:
                await asyncio.sleep(pause)
            inc = self.pick(index)
            if inc is None:
                continue
            group = inc.group
            assert group is not None

            def go(group: TaskBucketGroup = group) -> Awaitable[DrainResult]:
                return group.drain(BUCKET, op.task)
            call, (answer, node, stamp), result = await self.invoke(inc, "drain", op.task, go,
                                                                    self.bound, audit=audit)
            if answer == "ok":
                answer, node = result.outcome.value, result.node_id
            else:
                answer = LOOKUP_ERRORS.get(answer, answer)
                if answer not in NO_INFO:
                    answer = f"error:{answer}"
            self.ledger.end(call, answer, node, stamp)
            if answer not in NO_INFO:
                return

    async def get(self, op: Op) -> None:
        inc = self.pick(op.node)
        if inc is None:
            return
        group = inc.group
        assert group is not None

        def go() -> Awaitable[TaskInfo | None]:
            return group.get(BUCKET, op.task)
        call, (answer, node, stamp), result = await self.invoke(inc, "get", op.task, go,
                                                                self.bound)
        if answer == "ok":
            if result is None:
                answer = "none"
            else:
                answer, node = f"state:{TaskState(result.state).value}", result.node_id
        else:
            answer = LOOKUP_ERRORS.get(answer, answer)
            if answer not in NO_INFO:
                answer = f"error:{answer}"
        self.ledger.end(call, answer, node, stamp)

    async def reschedule(self, op: Op) -> None:
        inc = self.pick(op.node)
        if inc is None or inc.bucket is None:
            return
        bucket = inc.bucket
        pending = [(t.id, key_of(t.id, t.data)) for t in bucket
                   if t.state is TaskState.PENDING and t.type is TaskType.TIME_BOMB]
        if not pending:
            return
        task_id, key = pending[int(op.u * len(pending))]

        def go() -> Awaitable[bool]:
            return bucket.reschedule(task_id, op.value)
        call, (answer, _, stamp), result = await self.invoke(inc, "reschedule", key, go,
                                                             self.bound)
        if answer == "ok":
            answer = "ok" if result else "no"
        elif answer not in NO_INFO:
            answer = f"error:{answer}"
        self.ledger.end(call, answer, None, stamp)

    async def workload(self, start: float) -> None:
        for op in self.plan.ops:
            await self.at(start + op.at)
            if op.kind in ("fill", "fill_many"):
                self.spawn(self.fill(op))
            elif op.kind == "drain":
                self.spawn(self.drain(op))
            elif op.kind == "get":
                self.spawn(self.get(op))
            else:
                self.spawn(self.reschedule(op))

    # -- the nemesis --

    async def fault(self, start: float, fault: Strike) -> None:
        await self.at(start + fault.at)
        names = self.names
        text = fault.text(names)
        self.ledger.action(text)
        net = self.net
        a = [names[i] for i in fault.nodes]
        b = [names[i] for i in fault.other]
        if fault.kind == "clock":
            self.step_clock(fault.value)
            return
        if fault.kind == "leave":  # a rolling restart: SIGTERM, then start again
            lock = self.crash_locks.setdefault(a[0], asyncio.Lock())
            async with lock:
                inc = self.current[a[0]]
                if inc is None or inc.group is None:
                    return
                group = inc.group
                call, (answer, _, stamp), _ = await self.invoke(
                    inc, "stop", None, group.stop, stop_bound(self.config))
                self.ledger.end(call, answer if answer in ("ok", "hang") else f"error:{answer}",
                                None, stamp)
                self.current[a[0]] = None
                await asyncio.sleep(fault.lasts)
                self.ledger.action(f"restart {a[0]}")
                await self.boot(a[0])
            return
        if fault.kind == "slow_crash":
            lock = self.crash_locks.setdefault(a[0], asyncio.Lock())
            async with lock:
                slow = [net.delay(a[0], other, fault.value) for other in names
                        if other != a[0]]
                await asyncio.sleep(fault.value / 2)  # its messages are on the slow links
                await self.crash(a[0])
                await asyncio.sleep(fault.value / 4)
                for handle in slow:
                    handle.heal()  # the new boot's messages overtake the old one's
                self.ledger.action(f"restart {a[0]}")
                await self.boot(a[0])
            return
        if fault.kind == "crash":
            # One crash-and-restart of a node at a time: a crash that comes
            # while a restart is still booting waits for it (a real kill -9
            # hits whichever process is running).
            lock = self.crash_locks.setdefault(a[0], asyncio.Lock())
            async with lock:
                await self.crash(a[0])
                await asyncio.sleep(fault.lasts)
                self.ledger.action(f"restart {a[0]}")
                await self.boot(a[0])
            return
        if fault.kind == "delay":
            handle = net.delay(a[0], a[1], fault.value)
        elif fault.kind == "drop":
            handle = net.drop_replies(a[0], a[1])
        elif fault.kind in ("partition", "one_way"):
            handle = net.partition(a, b, one_way=fault.kind == "one_way")
        else:
            handle = net.stall(a[0])
        await asyncio.sleep(fault.lasts)
        self.ledger.action(f"heal: {text}")
        handle.heal()

    # -- the whole run --

    async def run(self) -> Outcome:
        with filed_tasks(), wall_clock() as step:
            self.step_clock = step
            body = self.loop.create_task(self._body())
            with Watchdog(self.loop, body) as dog:
                try:
                    await body
                except asyncio.CancelledError:
                    if dog.reason is None:
                        raise
                    self.ledger.abort(dog.reason)
                    for job in [*self.jobs, *self.nemesis]:
                        job.cancel()
                    self.current = dict.fromkeys(self.names)
            leaked = await self.sweep()
        census = check(self.ledger)
        if leaked and self.ledger.aborted is None:
            census.notes["tasks_running_after_stop"] += leaked
        return Outcome(self.plan, self.ledger, census, leaked, self.config.replicas,
                       self.config.promote_after)

    async def _body(self) -> None:
        plan = self.plan
        for name in self.names:
            await self.boot(name)
        await asyncio.sleep(WARMUP)
        start = self.loop.time()
        self.nemesis = [self.loop.create_task(self.fault(start, f)) for f in plan.faults]
        await self.workload(start)
        await asyncio.gather(*self.nemesis)
        # Heal everything, restart whatever is down, and let every task end.
        self.net.heal()
        self.ledger.action("heal everything")
        for name in self.names:
            if self.current[name] is None:
                await self.boot(name)
        while self.jobs:
            jobs, self.jobs = self.jobs, []
            await asyncio.gather(*jobs)
        await asyncio.sleep(MAX_LIFE + MAX_PUSH + self.config.lost_after + 1.0)
        # The audit: every task once more; unknown is retried (the faults are over).
        n = len(self.names)
        audits = [self.drain(Op(0.0, "drain", i % n, task=task_id,
                                retries=((i % n, 0.5), ((i + 1) % n, 1.0))), audit=True)
                  for i, task_id in enumerate([*plan.ids, *plan.ghosts])]
        await asyncio.gather(*audits)
        await self.stop_all()

    async def stop_all(self) -> None:
        bound = stop_bound(self.config)

        async def stop(inc: Incarnation) -> None:
            group = inc.group
            assert group is not None
            call, (answer, _, stamp), _ = await self.invoke(inc, "stop", None, group.stop, bound)
            self.ledger.end(call, answer if answer in ("ok", "hang") else f"error:{answer}",
                            None, stamp)

        await asyncio.gather(*(stop(inc) for inc in self.current.values() if inc is not None))

    async def sweep(self) -> int:
        """Cancel what stopped (or crashed) nodes left running; how many there were."""
        left = [t for inc in self.all for t in inc.tasks if not t.done()]
        for inc in self.all:
            inc.dying = True
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=5.0)
        return len(left)


async def run_seed(seed: int, replicas: int | None = None, profile: str | None = None,
                   promote_after: float | None = None, reuse: bool | None = None) -> Outcome:
    """Run one seed on the running loop (use a looptime loop: it takes loop-time
    seconds), with ``replicas`` backups per time-bomb (default: ``NEMESIS_REPLICAS``),
    ``profile`` (default: ``NEMESIS_PROFILE``, else the seed's own) and
    ``promote_after`` (default: ``NEMESIS_PROMOTE_AFTER``, else ``lost_after``) and
    ``reuse`` (fill some ids again; default: ``NEMESIS_REUSE``)."""
    plan = make_plan(seed, profile or PROFILE, REUSE if reuse is None else reuse)
    return await Run(plan, replicas, promote_after).run()


# -- outside pytest: a census over many seeds ------------------------------------------------------


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def main(argv: list[str]) -> int:
    """``python -m tests.nemesis 0-99 [--verbose] [--reuse] [--replicas=K]``: run the
    seeds, print a census (``--reuse``: fill some ids again, as NEMESIS_REUSE=1)."""
    import looptime

    flags = [a for a in argv if a.startswith("-")]
    args = [a for a in argv if not a.startswith("-")]
    known = ("--verbose", "--reuse", "--replicas=", "--profile=")
    if "-h" in flags or "--help" in flags or any(not f.startswith(known) for f in flags):
        print("usage: python -m tests.nemesis [SEEDS] [--verbose] [--reuse] [--replicas=K]"
              " [--profile=NAME]\n\n"
              "Run nemesis seeds (SEEDS: N, N-M or N,M,...; default 0-99) on the in-memory\n"
              "cluster and print a census of invariant violations.\n"
              "  --verbose     print each failed seed's report\n"
              "  --reuse       fill some ids again (as NEMESIS_REUSE=1)\n"
              "  --replicas=K  K backups per time-bomb (as NEMESIS_REPLICAS)\n"
              "  --profile=NAME  every seed with this fault profile (e.g. one_crash)")
        return 0 if "-h" in flags or "--help" in flags else 2
    seeds = _seeds(args[0] if args else "0-99")
    verbose = "--verbose" in flags
    reuse = True if "--reuse" in flags else None
    replicas = next((int(a.split("=", 1)[1]) for a in flags if a.startswith("--replicas=")),
                    None)
    profile = next((a.split("=", 1)[1] for a in flags if a.startswith("--profile=")), None)
    by_kind: dict[str, list[int]] = {}
    notes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    profiles: Counter[str] = Counter()
    failed_profiles: Counter[str] = Counter()
    began = time.perf_counter()
    for seed in seeds:
        loop = looptime.new_event_loop(noop_cycles=NOOP_CYCLES)
        try:
            outcome = loop.run_until_complete(run_seed(seed, replicas, profile, reuse=reuse))
        finally:
            loop.close()
        profiles[outcome.plan.profile] += 1
        notes.update(outcome.census.notes)
        counts.update(outcome.census.counts)
        if outcome.failed:
            failed_profiles[outcome.plan.profile] += 1
            for kind in outcome.census.kinds:
                by_kind.setdefault(kind, []).append(seed)
            if verbose:
                print(outcome.report(), flush=True)
    took = time.perf_counter() - began
    failed = len({s for v in by_kind.values() for s in v})
    print(f"\n{len(seeds)} seeds in {took:.1f} s: {failed} failed; by profile "
          + ", ".join(f"{p} {failed_profiles[p]}/{profiles[p]}" for p in profiles))
    for kind, seeds_of in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
        print(f"  {kind:17} {len(seeds_of):4} seeds  [{KINDS[kind]}]  e.g. {seeds_of[:8]}\n"
              f"                    {replay_command(seeds_of[0], replicas, reuse=reuse)}")
    print(f"  notes: {dict(notes)}")
    print(f"  accepted {counts['accepted']}; lost while pending {counts['lost_pending']}, "
          f"lost while running {counts['lost_running']} (replicas="
          f"{REPLICAS if replicas is None else replicas}"
          + (f"; reused ids {counts['reused_ids']}, generations {counts['generations']}, "
             f"losses of later generations {counts['reuse_losses_of_later_generations']}"
             if reuse or REUSE else "") + ")")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
