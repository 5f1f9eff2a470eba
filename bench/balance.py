"""Balance at N = 50: overflow placement filling a whole cluster, simulated.

``python -m bench.balance [--nodes 50] [--seeds 0,1,2] [--json PATH]`` (also
run by ``python -m bench balance``, which saves its rows for BENCHMARKS.md).

Every node is a real :class:`~gobucket_py.TaskBucketGroup` (one bucket
``jobs`` of ``--cap`` slots, default :class:`~gobucket_py.GroupConfig`, as in
:mod:`bench.swim`) on one :class:`~gobucket_py.MemoryNetwork`, all in one
process on :class:`~bench.swim.VirtualClockLoop`. Once every node sees every
other ALIVE and has a free-slot report from each, and 10 more idle simulated
seconds have passed (they measure the idle traffic), the cluster is filled with
time-bomb tasks (``run_after`` one hour: they all stay pending) in batches of
``--batch`` concurrent ``fill`` calls, one batch every ``--gap`` simulated
seconds, until it is full. Each fill enters at a node chosen by the pattern:

- **uniform**: any node, at random;
- **hot**: with probability ``--hot-share`` one of ``--hot`` "hot" nodes, else
  any node -- most fills arrive where they do not fit, which is what
  overflow is for.

``fill`` tries the local bucket first (GoBucket parity) and overflows to a
peer by two random choices on the free-slot figures this node holds. A batch
never asks for more tasks than the cluster has free slots, so every
:class:`~gobucket_py.ClusterFullError` (or subclass) raised before the
cluster is full is one raised while it had room. After the cluster is full,
1% more fills must all be refused. Measured, per run:

- **over-capacity**: after every batch, every bucket's live count against its
  ``max_bucket`` (any excess is counted, in tasks);
- **ClusterFullError with room**: how many, and the free slots left in the
  cluster when each was raised; a fill that failed for another reason is
  counted apart;
- **occupancy spread** ``(max - min) / max_bucket`` of the per-node live
  counts when exactly 50%, 80% and 95% of the cluster's slots are taken:
  over all nodes, and over the nodes that only receive overflow plus a small
  uniform share (the non-hot nodes of the hot pattern: the spread that
  two-choice placement controls, as in the two-peer balance of issue 3);
- **messages per placement**: messages sent during the fill (the network's
  ``traffic()`` counters) less what the same span costs idle (measured just
  before), per task placed and per task placed on a peer; and FILL and
  SETTLE requests per task placed on a peer.

Each pattern runs with ``--seeds`` (3) seeds, once per ``--placements``
value of :attr:`~gobucket_py.GroupConfig.placement` (``local``, the default
local-first rule, and ``balanced``, where a fill that fits here still goes
to a peer with more room: the all-nodes spread under uniform entry comes
from where the fills arrive, which only ``balanced`` evens out); the rows
give the median and the worst run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gobucket_py import (
    BucketConfig,
    ClusterFullError,
    FillResult,
    GroupConfig,
    MemoryNetwork,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)
from gobucket_py.cluster.membership import Member, MemberState
from gobucket_py.cluster.protocol import Kind

from .common import RESULTS, Row, save
from .swim import Noop, VirtualClockLoop

ISSUE = "#17"
#: Time-bombs wait this long: far beyond any simulated run, so all stay pending.
RUN_AFTER = 3600.0
LIFE_SPAN = 7200.0
#: Cluster fill fractions at which the occupancy spread is taken.
MARKS = (0.50, 0.80, 0.95)
SPREAD_TARGET = 0.05
PATTERNS = ("uniform", "hot")


def progress(text: str) -> None:
    print(f"    {text}", file=sys.stderr, flush=True)


class Fleet:
    """Groups with one bucket of long time-bombs each, on one MemoryNetwork;
    counts the requests each node sends, by kind."""

    def __init__(self, config: GroupConfig | None = None, *, seed: int = 0,
                 max_bucket: int = 1000) -> None:
        self.net = MemoryNetwork(record_calls=False)
        self.config = config or GroupConfig()
        self.seed = seed
        self.max_bucket = max_bucket
        self.groups: dict[str, TaskBucketGroup] = {}
        self.calls: Counter[Kind] = Counter()

    async def add(self, name: str, seeds: list[str]) -> TaskBucketGroup:
        config = BucketConfig(life_span=LIFE_SPAN, run_after=RUN_AFTER,
                              max_bucket=self.max_bucket)
        bucket = TaskBucket(config, Noop(), name="jobs")
        transport = self.net.transport(name)
        real_call, calls = transport.call, self.calls

        async def call(addr: str, kind: Kind, message: dict[str, Any],
                       timeout: float) -> dict[str, Any]:
            calls[kind] += 1
            return await real_call(addr, kind, message, timeout)

        transport.call = call  # type: ignore[method-assign]
        group = TaskBucketGroup({"jobs": bucket}, seeds, node_id=name, transport=transport,
                                config=self.config,
                                rng=random.Random(f"{self.seed}:{name}"))
        await group.start()
        self.groups[name] = group
        return group

    @staticmethod
    def members(group: TaskBucketGroup) -> dict[str, Member]:
        membership = group._membership
        return {} if membership is None else membership.members

    def settled(self) -> bool:
        """Does every node see every other ALIVE, with a free-slot report from it?"""
        others = len(self.groups) - 1
        for group in self.groups.values():
            members = self.members(group)
            if sum(m.state is MemberState.ALIVE and "jobs" in m.free
                   for m in members.values()) < others:
                return False
        return True

    def live(self) -> dict[str, int]:
        return {name: len(g.buckets["jobs"]) for name, g in self.groups.items()}

    async def close(self) -> None:
        """Take every task back first (as if never accepted: no hook, no
        outcome), so that stopping hands nothing off: the run is over. Then
        crash every node and wait for its group to end."""
        for group in self.groups.values():
            bucket = group.buckets["jobs"]
            for task in list(bucket):
                bucket.withdraw(task.id)
        for name in self.groups:
            self.net.crash(name)
        stops = [asyncio.ensure_future(g.stop()) for g in self.groups.values()]
        self.groups.clear()
        if stops:
            await asyncio.wait(stops, timeout=60)


def spread(values: list[int], cap: int) -> float:
    return (max(values) - min(values)) / cap if values else float("nan")


async def simulate(n: int = 50, *, pattern: str = "uniform", seed: int = 0, cap: int = 1000,
                   batch: int = 250, gap: float = 0.1, hot: int = 3, hot_share: float = 0.9,
                   overfill: int | None = None, settle_limit: float = 120.0,
                   stuck_batches: int = 50, config: GroupConfig | None = None,
                   log: Any = progress) -> dict[str, Any]:
    """Fill an ``n``-node cluster to the brim by ``pattern``; the figures."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    loop = asyncio.get_running_loop()
    wall0 = time.perf_counter()
    fleet = Fleet(config, seed=seed, max_bucket=cap)
    rng = random.Random(f"balance:{pattern}:{seed}")
    names = [f"n{i:03d}" for i in range(1, n + 1)]
    hot_nodes = names[:hot] if pattern == "hot" else []
    cold = [x for x in names if x not in hot_nodes]
    capacity = n * cap
    overfill = max(1, capacity // 100) if overfill is None else overfill
    result: dict[str, Any] = {"n": n, "pattern": pattern, "seed": seed, "cap": cap,
                              "capacity": capacity, "batch": batch, "gap_s": gap,
                              "hot_nodes": hot_nodes, "hot_share": hot_share if hot_nodes else 0}
    try:
        for i, name in enumerate(names):
            await fleet.add(name, [] if i == 0 else [names[0]])
        t0 = loop.time()
        while not fleet.settled():
            if loop.time() - t0 > settle_limit:
                result["error"] = f"membership did not settle within {settle_limit:g} s"
                return result
            await asyncio.sleep(0.5)
        result["settle_s"] = loop.time() - t0

        # Idle cost of the same span, to take out of the fill's traffic.
        fleet.net.reset_traffic()
        idle_start = loop.time()
        await asyncio.sleep(10.0)
        idle_msgs = sum(m for m, _ in fleet.net.traffic().values())
        idle_rate = idle_msgs / (loop.time() - idle_start)

        fleet.net.reset_traffic()
        fleet.calls.clear()
        fill_start = loop.time()
        over_events: list[dict[str, Any]] = []
        full_with_room: list[int] = []  # free slots in the cluster at each such error
        full_nodes_with_room: list[int] = []
        other_errors: Counter[str] = Counter()
        placed = forwarded = 0
        where: Counter[str] = Counter()
        marks: dict[str, Any] = {}
        diagnoses: list[dict[str, Any]] = []
        next_mark = 0
        seq = 0
        batches = stalled = 0

        def room() -> int:
            return capacity - sum(fleet.live().values())

        async def one(entry: str, task_id: str) -> FillResult | BaseException:
            try:
                return await fleet.groups[entry].fill(
                    "jobs", task_id, None, task_type=TaskType.TIME_BOMB,
                    run_after=RUN_AFTER, life_span=LIFE_SPAN)
            except ClusterFullError as exc:
                live = fleet.live()
                free = capacity - sum(live.values())
                full_with_room.append(free)
                full_nodes_with_room.append(sum(v < cap for v in live.values()))
                if free > 0:
                    diagnose(entry, exc, live)
                return exc
            except Exception as exc:
                return exc

        def diagnose(entry: str, exc: ClusterFullError, live: dict[str, int]) -> None:
            """Why a fill was refused with room left: what the entry node
            believed of its peers' free slots, against the truth."""
            members = fleet.members(fleet.groups[entry])
            est = {p: m.estimate("jobs") for p, m in members.items()}
            roomy = [p for p, v in live.items() if v < cap and p != entry]
            diagnoses.append({
                "filled": sum(live.values()) / capacity,
                "free": capacity - sum(live.values()),
                "entry_free": cap - live[entry],
                "peers_with_room": len(roomy),
                "asked": len(exc.rejections),
                "reasons": sorted(Counter(r.split(":")[0][:40]
                                          for r in exc.rejections.values()).items()),
                # After the refusal (the refusers' replies refreshed their figures):
                "roomy_peers_believed_full": sum(est.get(p, 0) <= 0 for p in roomy),
                "full_peers_believed_roomy": sum(1 for p, v in est.items()
                                                 if v > 0 and live.get(p, cap) >= cap),
            })

        def entry() -> str:
            if hot_nodes and rng.random() < hot_share:
                return rng.choice(hot_nodes)
            return rng.choice(names)

        # -- fill to 100% ---------------------------------------------------------
        while (free := room()) > 0 and stalled < stuck_batches:
            want = min(batch, free)
            if next_mark < len(MARKS):  # stop exactly at the next mark
                want = min(want, round(MARKS[next_mark] * capacity) - (capacity - free))
            outs = await asyncio.gather(*(one(entry(), f"t{seq + i}") for i in range(want)))
            seq += want
            batches += 1
            got = 0
            for out in outs:
                if isinstance(out, FillResult):
                    got += 1
                    forwarded += out.forwarded
                    where[out.node_id] += 1
                elif not isinstance(out, ClusterFullError):
                    other_errors[type(out).__name__] += 1
            placed += got
            stalled = 0 if got else stalled + 1
            live = fleet.live()
            over = {k: v - cap for k, v in live.items() if v > cap}
            if over:
                over_events.append({"batch": batches, "over": over, "tasks": sum(over.values())})
            taken = sum(live.values())
            while next_mark < len(MARKS) and taken >= round(MARKS[next_mark] * capacity):
                values = list(live.values())
                marks[f"{MARKS[next_mark]:.0%}"] = {
                    "filled": taken / capacity,
                    "spread_all": spread(values, cap),
                    "spread_cold": spread([live[x] for x in cold], cap),
                    "min": min(values), "max": max(values),
                    "cold_min": min(live[x] for x in cold),
                    "cold_max": max(live[x] for x in cold),
                    "t_s": loop.time() - fill_start,
                }
                next_mark += 1
            await asyncio.sleep(gap)
        fill_end = loop.time()
        live = fleet.live()
        taken = sum(live.values())
        traffic = sum(m for m, _ in fleet.net.traffic().values())
        span = fill_end - fill_start
        extra = traffic - idle_rate * span
        calls = dict(fleet.calls)

        # -- beyond 100%: every fill must be refused, none accepted ----------------
        refused = accepted = 0
        if taken == capacity:
            before = len(full_with_room)
            outs = await asyncio.gather(*(one(entry(), f"x{i}") for i in range(overfill)))
            # These errors were raised with the cluster full: not "with room".
            del full_with_room[before:], full_nodes_with_room[before:]
            refused = sum(isinstance(o, ClusterFullError) for o in outs)
            accepted = sum(isinstance(o, FillResult) for o in outs)
            other_errors.update(type(o).__name__ for o in outs
                                if not isinstance(o, FillResult | ClusterFullError))
            placed += accepted
            live = fleet.live()
            over = {k: v - cap for k, v in live.items() if v > cap}
            if over:
                over_events.append({"batch": "overfill", "over": over,
                                    "tasks": sum(over.values())})

        result.update({
            "idle_msgs_per_s": idle_rate,
            "fill_s": span,
            "batches": batches,
            "filled": taken / capacity,
            "free_left": capacity - taken,
            "stalled_out": stalled >= stuck_batches,
            "placed": placed,
            "forwarded": forwarded,
            # Every accepted fill is where its FillResult says, and nothing else is.
            "tally_ok": all(where.get(k, 0) == v for k, v in live.items()),
            "over_capacity_events": over_events,
            # Tasks over max_bucket, summed over the nodes, at the worst check.
            "over_capacity": max((e["tasks"] for e in over_events), default=0),
            "cluster_full_with_room": len(full_with_room),
            "first_such_error_at_fill": min((d["filled"] for d in diagnoses), default=None),
            "room_at_those_errors": {
                "min": min(full_with_room, default=0), "max": max(full_with_room, default=0),
                "median": statistics.median(full_with_room) if full_with_room else 0,
                "nodes_with_room_median": (statistics.median(full_nodes_with_room)
                                           if full_nodes_with_room else 0)},
            "other_errors": dict(other_errors),
            "cluster_full_with_room_detail": diagnoses,
            "overfill": {"asked": overfill if taken == capacity else 0,
                         "refused": refused, "accepted": accepted},
            "marks": marks,
            "messages": {
                "during_fill": traffic,
                "idle_equivalent": idle_rate * span,
                "per_placement": extra / max(1, placed - accepted),
                "per_forwarded_placement": extra / max(1, forwarded),
                "fill_requests_per_forwarded": calls.get(Kind.FILL, 0) / max(1, forwarded),
                "settle_requests": calls.get(Kind.SETTLE, 0),
                "requests_by_kind": {k.name: v for k, v in sorted(calls.items())},
            },
            "final_live": {"min": min(live.values()), "max": max(live.values())},
        })
        log(f"{pattern} seed {seed}: filled {taken / capacity:.2%} in {span:.1f} s sim, "
            f"{len(full_with_room)} ClusterFullError with room, over-capacity "
            f"{result['over_capacity']}, spreads "
            + ", ".join(f"{k} all {v['spread_all']:.1%} cold {v['spread_cold']:.1%}"
                        for k, v in marks.items())
            + f"; {time.perf_counter() - wall0:.1f} s wall")
        return result
    finally:
        result["simulated_s"] = loop.time()
        await fleet.close()
        result["wall_s"] = time.perf_counter() - wall0


def run(**kw: Any) -> dict[str, Any]:
    """:func:`simulate` on a fresh :class:`~bench.swim.VirtualClockLoop`, quietly."""
    logger = logging.getLogger("gobucket_py")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
            return runner.run(simulate(**kw))
    finally:
        logger.setLevel(level)  # (tests call this: leave logging as it was)


# --------------------------------------------------------------------------- report


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per pattern: median and worst of each figure over the seeds."""
    out: dict[str, Any] = {}
    for pattern in dict.fromkeys(r["pattern"] for r in results):  # labels, in run order
        runs = [r for r in results if r["pattern"] == pattern and "error" not in r]
        if not runs:
            continue
        s: dict[str, Any] = {"runs": len(runs), "seeds": [r["seed"] for r in runs]}
        for key in ("over_capacity", "cluster_full_with_room"):
            vals = [r[key] for r in runs]
            s[key] = {"median": _med(vals), "worst": max(vals), "each": vals}
        s["filled"] = {"median": _med([r["filled"] for r in runs]),
                       "worst": min(r["filled"] for r in runs)}
        s["room_at_errors_max"] = max(r["room_at_those_errors"]["max"] for r in runs)
        firsts = [r["first_such_error_at_fill"] for r in runs
                  if r["first_such_error_at_fill"] is not None]
        s["first_such_error_at_fill"] = min(firsts, default=None)
        s["overfill_asked"] = sum(r["overfill"]["asked"] for r in runs)
        s["overfill_accepted"] = sum(r["overfill"]["accepted"] for r in runs)
        s["other_errors"] = sum(sum(r["other_errors"].values()) for r in runs)
        s["tally_ok"] = all(r["tally_ok"] for r in runs)
        # Of the refusals with room: peers asked, their answers, and full peers
        # the entry node still took for roomy just after (median over refusals).
        detail = [d for r in runs for d in r["cluster_full_with_room_detail"]]
        s["asked_per_refusal"] = _med([d["asked"] for d in detail])
        s["full_peers_believed_roomy"] = _med([d["full_peers_believed_roomy"] for d in detail])
        s["refusal_reasons"] = dict(Counter(reason for d in detail
                                            for reason, count in d["reasons"]
                                            for _ in range(count)))
        for mark in MARKS:
            k = f"{mark:.0%}"
            for which in ("spread_all", "spread_cold"):
                vals = [r["marks"][k][which] for r in runs if k in r["marks"]]
                s[f"{which}@{k}"] = {"median": _med(vals), "worst": max(vals, default=1.0),
                                     "each": vals}
        for key in ("per_placement", "per_forwarded_placement",
                    "fill_requests_per_forwarded"):
            vals = [r["messages"][key] for r in runs]
            s[key] = {"median": _med(vals), "worst": max(vals)}
        s["forwarded_share"] = _med([r["forwarded"] / max(1, r["placed"]) for r in runs])
        s["fill_s"] = _med([r["fill_s"] for r in runs])
        s["wall_s"] = _med([r["wall_s"] for r in runs])
        out[pattern] = s
    return out


def _what(pattern: str, args: argparse.Namespace) -> str:
    how = ("uniform: every fill enters at a random node" if pattern.startswith("uniform") else
           f"hot: {args.hot_share:.0%} of fills enter at one of {args.hot} hot nodes, "
           "the rest at a random node")
    return how + (' (GroupConfig(placement="balanced"))' if pattern.endswith("balanced")
                  else "")


def _setup(args: argparse.Namespace) -> str:
    attempts = (f"GroupConfig(max_attempts={args.max_attempts})" if args.max_attempts
                else "default GroupConfig")
    return (f"N={args.nodes}, max_bucket {args.cap:,} each ({args.nodes * args.cap:,} "
            f"slots), {attempts}, virtual clock, in-memory network; time-bombs in batches "
            f"of {args.batch} concurrent fills every {args.gap:g} simulated s; seeds "
            f"{','.join(map(str, args.seeds))}")


def rows(results: list[dict[str, Any]], args: argparse.Namespace) -> list[Row]:
    """BENCHMARKS.md rows (``python -m bench balance``): worst of the seeds."""
    summ = summary(results)
    n = args.nodes
    errors = [f"{r['pattern']} seed {r['seed']}: {r['error']}" for r in results if "error" in r]
    out: list[Row] = []
    if errors:
        out.append(Row(ISSUE, f"balance N={n}: runs that did not complete", len(errors),
                       "runs", "0", False, note="; ".join(errors)))
    for pattern, s in summ.items():
        over = s["over_capacity"]
        out.append(Row(
            ISSUE, f"balance N={n} ({pattern}): over-capacity accepts (tasks over "
                   "max_bucket, any node, any batch)", over["worst"], "tasks", "0",
            over["worst"] == 0 and s["overfill_accepted"] == 0 and s["tally_ok"],
            note=f"worst of {s['runs']} seeds; {_what(pattern, args)}; {_setup(args)}; "
                 f"past 100%: {s['overfill_accepted']} of {s['overfill_asked']} more "
                 f"fills accepted; every task where its FillResult says: "
                 f"{'yes' if s['tally_ok'] else 'NO'}"))
        full = s["cluster_full_with_room"]
        first = s["first_such_error_at_fill"]
        out.append(Row(
            ISSUE, f"balance N={n} ({pattern}): ClusterFullError while the cluster had room",
            full["worst"], "fills", "0", full["worst"] == 0,
            note=f"worst of {s['runs']} seeds (each {', '.join(map(str, full['each']))})"
                 + ("" if first is None else
                    f"; the first at {first:.2%} full, with up to {s['room_at_errors_max']} "
                    f"free slots left; each asked {s['asked_per_refusal']:g} peers "
                    f"(max_attempts), answers {s['refusal_reasons']}; after it the entry "
                    f"node still took a median {s['full_peers_believed_roomy']:g} full "
                    f"peers for roomy (stale free-slot figures)")
                 + f"; filled to {s['filled']['worst']:.2%} in the end; other errors "
                   f"{s['other_errors']}"))
        for mark in MARKS:
            k = f"{mark:.0%}"
            for which in ["spread_all"] + (["spread_cold"] if pattern.startswith("hot") else []):
                v = s[f"{which}@{k}"]
                whom = "all nodes" if which == "spread_all" else f"the {n - args.hot} non-hot nodes"
                out.append(Row(
                    ISSUE, f"balance N={n} ({pattern}): occupancy spread (max-min)/max_bucket "
                           f"over {whom} at {k} full", v["worst"] * 100, "%", "<= 5%",
                    v["worst"] <= SPREAD_TARGET,
                    note=f"worst of {s['runs']} seeds, median {v['median']:.1%}"))
        m = s["per_placement"]
        out.append(Row(
            ISSUE, f"balance N={n} ({pattern}): messages per task placed, above idle",
            m["median"], "msg", "reported", True,
            note=f"median of {s['runs']} seeds, worst {m['worst']:.2f}; per task placed on a "
                 f"peer {s['per_forwarded_placement']['median']:.2f}; FILL requests per "
                 f"task placed on a peer {s['fill_requests_per_forwarded']['median']:.3f}; "
                 f"{s['forwarded_share']:.0%} of tasks placed on a peer"))
    return out


def table(results: list[dict[str, Any]]) -> str:
    """One line per run."""
    lines = ["| pattern | seed | filled | ClusterFullError with room (first at) "
             "| over-capacity | spread all nodes 50/80/95% | spread non-hot 50/80/95% "
             "| msg/placement | fill s (sim) | wall s |",
             "|" + "---|" * 10]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['pattern']} | {r['seed']} | error: {r['error']} |" + " |" * 7)
            continue
        mk = r["marks"]

        def sp(which: str, mk: dict[str, Any] = mk) -> str:
            return "/".join(f"{mk[k][which]:.1%}" if k in mk else "-"
                            for k in (f"{m:.0%}" for m in MARKS))
        first = r["first_such_error_at_fill"]
        lines.append(
            f"| {r['pattern']} | {r['seed']} | {r['filled']:.2%} "
            f"| {r['cluster_full_with_room']}"
            f"{'' if first is None else f' ({first:.2%})'} | {r['over_capacity']} "
            f"| {sp('spread_all')} | {sp('spread_cold') if r['hot_nodes'] else '-'} "
            f"| {r['messages']['per_placement']:.2f} | {r['fill_s']:.1f} "
            f"| {r['wall_s']:.1f} |")
    return "\n".join(lines)


def _cell(figure: str, median: str, worst: str, target: str, met: bool) -> str:
    return f"| {figure} | {median} | {worst} | {target} | {'yes' if met else '**no**'} |"


def section(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The "Balance at N = 50 (issue 17)" section of BENCHMARKS.md."""
    summ = summary(results)
    lines = [f"## Balance at N = {args.nodes} (issue 17)", "",
             f"Setup: {_setup(args)}. Each pattern fills the cluster to 100% (a batch never "
             "asks for more than the free slots left, so every ClusterFullError before 100% "
             "was raised while the cluster had room), then 1% more fills that must all be "
             "refused. Patterns: " + "; ".join(_what(p, args) for p in summ) + ". Median and "
             f"worst over {len(args.seeds)} seeds.", "",
             "| figure | measured (median) | worst | target | met? |",
             "|---|---|---|---|---|"]
    for pattern, s in summ.items():
        over, full = s["over_capacity"], s["cluster_full_with_room"]
        ok = over["worst"] == 0 and s["overfill_accepted"] == 0 and s["tally_ok"]
        lines.append(_cell(f"{pattern}: over-capacity accepts (tasks)", f"{over['median']:g}",
                           f"{over['worst']:g}", "0", ok))
        first = s["first_such_error_at_fill"]
        lines.append(_cell(
            f"{pattern}: ClusterFullError while the cluster had room",
            f"{full['median']:g}",
            f"{full['worst']:g}" + ("" if first is None else
                                    f" (first at {first:.2%} full, up to "
                                    f"{s['room_at_errors_max']} slots free)"),
            "0", full["worst"] == 0))
        for which in ["spread_all"] + (["spread_cold"] if pattern.startswith("hot") else []):
            whom = "all nodes" if which == "spread_all" else "non-hot nodes"
            for mark in MARKS:
                k = f"{mark:.0%}"
                v = s[f"{which}@{k}"]
                lines.append(_cell(f"{pattern}: occupancy spread, {whom}, at {k} full",
                                   f"{v['median']:.1%}", f"{v['worst']:.1%}", "≤ 5%",
                                   v["worst"] <= SPREAD_TARGET))
        m = s["per_placement"]
        lines.append(_cell(f"{pattern}: messages per task placed, above idle "
                           f"({s['forwarded_share']:.0%} placed on a peer)",
                           f"{m['median']:.2f}", f"{m['worst']:.2f}", "reported", True))
    lines += ["", "Per run:", "", table(results), "",
              "Reproduce: `.venv/bin/python -m bench balance` (every run's figures, with a "
              "diagnosis of each refusal, go to bench/results/balance_raw.json; "
              "`python -m bench.balance --help` for other sizes and rates)."]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.balance",
                                description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--cap", type=int, default=1000, help="max_bucket of each node")
    p.add_argument("--batch", type=int, default=250, help="concurrent fills per batch")
    p.add_argument("--gap", type=float, default=0.1, help="simulated s between batches")
    p.add_argument("--hot", type=int, default=3, help="hot nodes (hot pattern)")
    p.add_argument("--hot-share", type=float, default=0.9,
                   help="share of fills entering at a hot node (hot pattern)")
    p.add_argument("--max-attempts", type=int, default=None,
                   help="GroupConfig.max_attempts (default: GroupConfig's)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",") if x],
                   default=[0, 1, 2])
    p.add_argument("--patterns", type=lambda s: [x for x in s.split(",") if x],
                   default=list(PATTERNS))
    p.add_argument("--placements", type=lambda s: [x for x in s.split(",") if x],
                   default=["local", "balanced"],
                   help="GroupConfig.placement values to run (default: local,balanced)")
    p.add_argument("--json", type=Path, help="write every run's figures there")
    p.add_argument("--markdown", type=Path, help="write the BENCHMARKS.md section there")
    return p


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for placement in args.placements:
        extra: dict[str, Any] = {"max_attempts": args.max_attempts} if args.max_attempts else {}
        if placement != "local":
            extra["placement"] = placement
        config = GroupConfig(**extra) if extra else None
        for pattern in args.patterns:
            for seed in args.seeds:
                label = pattern if placement == "local" else f"{pattern}, {placement}"
                print(f"  {label}, seed {seed}: running", flush=True)
                result = run(n=args.nodes, pattern=pattern, seed=seed, cap=args.cap,
                             batch=args.batch, gap=args.gap, hot=args.hot,
                             hot_share=args.hot_share, config=config)
                result["pattern"] = label
                results.append(result)
    return results


def raw(results: list[dict[str, Any]], keep: int = 20) -> str:
    """Every run's figures as JSON, with the summary; each run keeps only its
    first ``keep`` refusal diagnoses (the summary counts them all)."""
    runs = [{**r, "cluster_full_with_room_detail":
             r.get("cluster_full_with_room_detail", [])[:keep]} for r in results]
    return json.dumps({"summary": summary(results), "runs": runs}, indent=1)


def main(bench_args: argparse.Namespace | None = None) -> None:
    """``python -m bench balance``: the defaults; rows saved for BENCHMARKS.md's
    table, every run's figures in bench/results/balance_raw.json and the
    section in bench/results/balance.md."""
    args = parser().parse_args([])
    results = run_all(args)
    print(table(results))
    save("balance", rows(results, args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "balance_raw.json").write_text(raw(results))
    (RESULTS / "balance.md").write_text(section(results, args))


def cli() -> None:
    args = parser().parse_args()
    results = run_all(args)
    print(table(results))
    if args.json:
        args.json.write_text(raw(results))
    if args.markdown:
        args.markdown.write_text(section(results, args))


if __name__ == "__main__":
    cli()
