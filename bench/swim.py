"""Membership at scale: N groups on the in-memory network, on a virtual clock.

``python -m bench.swim [--sizes 10,100,1000] [--json PATH]`` (also run by
``python -m bench swim``, which saves its rows for BENCHMARKS.md).

Every node is a real :class:`~gobucket_py.TaskBucketGroup` (one bucket,
default :class:`~gobucket_py.GroupConfig`) on one
:class:`~gobucket_py.MemoryNetwork`, all in one process, seeded with the
first node. The event loop runs on a virtual clock (:class:`VirtualClockLoop`):
when nothing is ready to run, time jumps to the next timer, so a simulated
minute costs only the CPU its messages take. The network has no latency:
timings are those of the protocol's timers and timeouts. For each size N,
once every node sees N-1 peers alive:

- **idle cost**: messages and bytes each node sends per simulated second over
  an idle window (``--idle``, 30 s), median and max over nodes (bytes are the
  msgpack bodies; what a real transport adds is not counted);
- **false suspicions**: with ``net.loss(0.01)`` (each message lost with
  probability 1%) for ``--loss-window`` (60 s), the nodes marked SUSPECT and
  DEAD by some peer although none failed (then the loss is healed and the
  cluster let converge again);
- **detection**: one node crashes (``net.crash`` and its group abandoned, as
  ``MemoryCluster.crash`` does); for every survivor, the time until it marks
  it DEAD: p50/p99/max;
- **join**: a new node starts with one seed; the time until each node has it
  ALIVE: p50/p99/max;
- **leave**: a node stops gracefully (``group.stop()``); the time until each
  node has it LEFT: p50/p99/max.

State changes are seen by chaining each node's ``Membership.on_change`` (the
group's own callback is kept and called first), so every time is exact on the
virtual clock. Each size runs in its own subprocess with a wall-clock budget
(``--budget``, 600 s): a size whose cost, extrapolated from the smaller sizes
measured in the same run, would exceed it is skipped and says so (``--force``
runs it anyway, still bounded by the budget).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gobucket_py import (
    BucketConfig,
    Executor,
    GroupConfig,
    MemoryNetwork,
    Task,
    TaskBucket,
    TaskBucketGroup,
)
from gobucket_py.cluster.membership import Member, MemberState

from .common import Row, percentile, save

#: The issue this group reports under in BENCHMARKS.md.
ISSUE = "#17"
DEFAULT_SIZES = (10, 100, 1000)
#: Exit code of a child that gave up on its budget.
OVER_BUDGET = 3


# --------------------------------------------------------------------------- virtual clock


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer when it would sleep.

    ``time()`` is virtual, starting at 0. Whenever the loop has nothing ready
    and would wait for its next timer, it polls I/O without blocking and, if
    none is ready, advances the clock by exactly that wait instead. So
    ``asyncio.sleep``, ``call_later``, ``asyncio.timeout`` and ``wait_for``
    all keep their meaning, and simulated seconds cost no wall time. Real I/O
    (``call_soon_threadsafe``, sockets) still works, but waiting for it does
    not move the clock; a loop with neither timers nor I/O for
    ``idle_wall`` real seconds raises ``RuntimeError`` (a deadlock).
    """

    def __init__(self, idle_wall: float = 30.0) -> None:
        super().__init__()
        self._virtual_now = 0.0
        real_select = self._selector.select

        def select(timeout: float | None = None) -> list[Any]:
            ready = real_select(0)
            if ready or timeout == 0:
                return ready
            if timeout is None:  # nothing scheduled: only I/O can wake us
                ready = real_select(idle_wall)
                if not ready:
                    raise RuntimeError(f"virtual clock: no timer and no I/O for {idle_wall:g} s")
                return ready
            self._virtual_now += timeout
            return ready

        self._selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return self._virtual_now


# --------------------------------------------------------------------------- the swarm


class Noop(Executor):
    """Nothing is filled in this benchmark; an executor is still required."""

    async def on_execute(self, task: Task) -> None:
        return None


Watch = dict[MemberState, dict[str, float]]


class Swarm:
    """Groups on one MemoryNetwork, with their membership changes recorded.

    ``bad`` lists every SUSPECT or DEAD change seen by any node as
    ``(time, observer, peer, state)``; for a node in ``watch``, the loop time
    at which each observer first saw it in each state.
    """

    def __init__(self, config: GroupConfig | None = None, *, seed: int = 0,
                 max_bucket: int = 100) -> None:
        self.net = MemoryNetwork(record_calls=False)
        self.config = config or GroupConfig()
        self.seed = seed
        self.max_bucket = max_bucket
        self.groups: dict[str, TaskBucketGroup] = {}
        self.bad: list[tuple[float, str, str, MemberState]] = []
        self.watch: dict[str, Watch] = {}
        self._burials: set[asyncio.Task[None]] = set()

    async def add(self, name: str, seeds: list[str]) -> TaskBucketGroup:
        """Start a node ``name`` seeded with ``seeds`` and record its view."""
        config = BucketConfig(life_span=60, max_bucket=self.max_bucket)
        bucket = TaskBucket(config, Noop(), name="jobs")
        group = TaskBucketGroup({"jobs": bucket}, seeds, node_id=name,
                                transport=self.net.transport(name), config=self.config,
                                rng=random.Random(f"{self.seed}:{name}"))
        await group.start()
        self._chain(name, group)
        self.groups[name] = group
        return group

    def _chain(self, name: str, group: TaskBucketGroup) -> None:
        membership = group._membership
        assert membership is not None
        before = membership.on_change
        loop = asyncio.get_running_loop()
        bad, watch = self.bad, self.watch

        def changed(member: Member, old: MemberState | None) -> None:
            if before is not None:
                before(member, old)
            state = member.state
            if state is MemberState.SUSPECT or state is MemberState.DEAD:
                bad.append((loop.time(), name, member.node_id, state))
            seen = watch.get(member.node_id)
            if seen is not None:
                seen.setdefault(state, {}).setdefault(name, loop.time())

        membership.on_change = changed

    def watching(self, node: str) -> Watch:
        """Start recording when each node sees ``node`` change state."""
        return self.watch.setdefault(node, {})

    def crash(self, name: str) -> None:
        """kill -9 ``name``: its address refuses at once, its group is
        abandoned and shut down in the background (nothing reaches a peer)."""
        group = self.groups.pop(name)
        self.net.crash(name)
        burial = asyncio.get_running_loop().create_task(group.stop())
        self._burials.add(burial)
        burial.add_done_callback(self._burials.discard)

    async def leave(self, name: str) -> None:
        """Stop ``name`` gracefully (it tells its peers it leaves)."""
        group = self.groups.pop(name)
        await group.stop()

    def alive_views(self) -> tuple[int, int]:
        """(nodes that see every other running node ALIVE, running nodes)."""
        running = set(self.groups)
        full = 0
        for name, group in self.groups.items():
            membership = group._membership
            if membership is None:
                continue
            members = membership.members
            if all((m := members.get(other)) is not None and m.state is MemberState.ALIVE
                   for other in running if other != name):
                full += 1
        return full, len(running)

    async def close(self) -> None:
        """End every node as a crash does, and wait for their groups."""
        for name in list(self.groups):
            self.crash(name)
        if self._burials:
            await asyncio.wait(list(self._burials), timeout=60)


# --------------------------------------------------------------------------- one size


class OverBudget(Exception):
    """The run would not finish within its wall-clock budget."""


class Clock:
    """Virtual and wall time of one run, and its budget."""

    def __init__(self, budget: float, planned: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.budget = budget
        self.planned = planned  # simulated seconds the whole run should take
        self.wall0 = time.perf_counter()
        self.sim0 = self.loop.time()
        self.phase = "start"
        #: Why the windows were shortened (empty if they were not).
        self.shrunk = ""

    #: Simulated seconds kept for the phases after the windows (crash, join, leave).
    RESERVE = 8.0
    MIN_IDLE = 2.0
    MIN_LOSS = 5.0

    def fit(self, rate: float, idle: float, loss: float) -> tuple[float, float]:
        """The idle and loss windows (simulated s) that fit what is left of
        the budget at ``rate`` wall s per simulated s: as asked if they fit,
        else shortened (idle to a third of what fits), down to a minimum;
        :class:`OverBudget` if even that does not fit."""
        left = self.budget - self.wall()
        fits = left / max(rate, 1e-9) - self.RESERVE
        if idle + loss <= fits:
            self.planned = self.now() - self.sim0 + idle + loss + self.RESERVE
            return idle, loss
        if fits < self.MIN_IDLE + self.MIN_LOSS:
            raise OverBudget(f"{rate:.1f} s wall per simulated s: even {self.MIN_IDLE + 1:g} s "
                             f"idle and {self.MIN_LOSS:g} s of loss would not fit the "
                             f"{self.budget:g} s budget")
        new_idle = max(self.MIN_IDLE, min(idle, fits / 3))
        new_loss = max(self.MIN_LOSS, min(loss, fits - new_idle))
        self.shrunk = (f"windows shortened to fit the {self.budget:g} s wall budget at "
                       f"{rate:.1f} s wall per simulated s: idle {idle + 1:.0f} -> "
                       f"{new_idle + 1:.1f} s, loss {loss:.0f} -> {new_loss:.1f} s")
        self.planned = self.now() - self.sim0 + new_idle + new_loss + self.RESERVE
        return new_idle, new_loss

    def now(self) -> float:
        return self.loop.time()

    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    def check(self) -> None:
        wall, sim = self.wall(), self.now() - self.sim0
        if wall > self.budget:
            raise OverBudget(f"over the {self.budget:g} s wall budget in phase {self.phase} "
                             f"at {sim:.1f} simulated s")
        if sim >= 2.0 and wall > 10.0:
            projected = wall / sim * self.planned
            if projected > 2.0 * self.budget:
                raise OverBudget(f"projected {projected:,.0f} s wall for ~{self.planned:g} "
                                 f"simulated s ({wall / sim:.1f} s wall per simulated s in "
                                 f"phase {self.phase}) > budget {self.budget:g} s")

    async def until(self, done: Callable[[], bool], limit: float, step: float = 0.1) -> bool:
        """Advance virtual time in ``step`` s until ``done()`` or ``limit`` s passed."""
        end = self.now() + limit
        while not done():
            if self.now() >= end:
                return False
            await asyncio.sleep(step)
            self.check()
        return True

    async def advance(self, seconds: float, step: float = 0.5) -> None:
        end = self.now() + seconds
        while self.now() < end - 1e-9:
            await asyncio.sleep(min(step, end - self.now()))
            self.check()


def spread(times: list[float]) -> dict[str, float]:
    """p50/p99/max of a list of durations (nan when empty)."""
    if not times:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan, "count": 0}
    return {"p50": percentile(times, 50), "p99": percentile(times, 99), "max": max(times),
            "count": len(times)}


def seen_after(seen: dict[str, float], observers: list[str], t0: float) -> list[float]:
    return [seen[o] - t0 for o in observers if o in seen]


def progress(text: str) -> None:
    print(f"    {text}", file=sys.stderr, flush=True)


async def simulate(n: int, *, idle: float = 30.0, loss_rate: float = 0.01,
                   loss_window: float = 60.0, limit: float = 120.0, seed: int = 0,
                   budget: float = 600.0, config: GroupConfig | None = None,
                   log: Callable[[str], None] = progress,
                   result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every phase for ``n`` nodes; return the figures (times in simulated s).

    The figures go into ``result`` as each phase ends (a run that raises
    :class:`OverBudget` leaves what it measured there, without cleaning up).
    """
    config = config or GroupConfig()
    clock = Clock(budget, planned=idle + loss_window + Clock.RESERVE)
    swarm = Swarm(config, seed=seed)
    rng = random.Random(seed)
    result = {} if result is None else result
    result.update({"n": n, "config": {
        k: getattr(config, k) for k in ("probe_interval", "probe_timeout", "indirect_probes",
                                        "suspicion_timeout", "rejoin_interval")}})
    names = [f"n{i:04d}" for i in range(1, n + 1)]
    try:
        # -- start and converge ---------------------------------------------------
        for i, name in enumerate(names):
            await swarm.add(name, [] if i == 0 else [names[0]])
            if i % 50 == 49:
                clock.check()
        t0 = clock.now()
        clock.phase = "converge"
        ok = await clock.until(lambda: swarm.alive_views()[0] == n, limit, step=0.5)
        result["converge_s"] = clock.now() - t0 if ok else None
        log(f"N={n}: converged={ok} at {clock.now() - t0:.1f} s sim, "
            f"{clock.wall():.1f} s wall")
        if not ok:
            result["error"] = f"no convergence within {limit:g} simulated s"
            return result

        # -- idle cost ------------------------------------------------------------
        clock.phase = "idle"
        swarm.net.reset_traffic()
        bad_before = len(swarm.bad)
        # One simulated second tells what one costs: shrink the windows to fit the budget.
        wall, sim = clock.wall(), clock.now()
        await clock.advance(1.0)
        rate = (clock.wall() - wall) / (clock.now() - sim)
        idle, loss_window = clock.fit(rate, idle - 1.0, loss_window)
        idle += 1.0
        result["wall_per_sim_s"] = rate
        await clock.advance(idle - 1.0)
        traffic = swarm.net.traffic()
        msgs = [traffic[a][0] / idle for a in names]
        sent = [traffic[a][1] / idle for a in names]
        result["idle"] = {
            "window_s": idle,
            "msgs_per_node_s": {"median": percentile(msgs, 50), "max": max(msgs)},
            "bytes_per_node_s": {"median": percentile(sent, 50), "max": max(sent)},
            "suspect_or_dead_events": len(swarm.bad) - bad_before,
        }
        if clock.shrunk:
            result["shrunk"] = clock.shrunk
            log(f"N={n}: {clock.shrunk}")
        log(f"N={n}: idle {percentile(msgs, 50):,.1f} msg/node/s, "
            f"{percentile(sent, 50):,.0f} B/node/s; {clock.wall():.1f} s wall")

        # -- false suspicions under loss -------------------------------------------
        clock.phase = "loss"
        bad_before = len(swarm.bad)
        lossy = swarm.net.loss(loss_rate, random.Random(seed + 1))
        await clock.advance(loss_window)
        lossy.heal()
        events = swarm.bad[bad_before:]
        suspected = {peer for _, _, peer, s in events if s is MemberState.SUSPECT}
        dead = {peer for _, _, peer, s in events if s is MemberState.DEAD}
        t0 = clock.now()
        clock.phase = "reconverge"
        ok = await clock.until(lambda: swarm.alive_views()[0] == n, limit, step=0.5)
        result["loss"] = {
            "rate": loss_rate, "window_s": loss_window,
            "nodes_suspected": len(suspected), "nodes_dead": len(dead),
            "suspect_events": sum(1 for e in events if e[3] is MemberState.SUSPECT),
            "dead_events": sum(1 for e in events if e[3] is MemberState.DEAD),
            "reconverge_s": clock.now() - t0 if ok else None,
        }
        log(f"N={n}: loss {loss_rate:g}: {len(suspected)} suspected, {len(dead)} dead; "
            f"{clock.wall():.1f} s wall")
        if not ok:
            result["error"] = f"no convergence within {limit:g} s after the loss healed"
            return result

        # -- crash detection ---------------------------------------------------------
        clock.phase = "crash"
        victim = names[-1]
        seen = swarm.watching(victim)
        observers = [g for g in swarm.groups if g != victim]
        t0 = clock.now()
        swarm.crash(victim)
        ok = await clock.until(
            lambda: len(seen.get(MemberState.DEAD, {})) >= len(observers), limit, step=0.05)
        times = seen_after(seen.get(MemberState.DEAD, {}), observers, t0)
        result["detection"] = {**spread(times), "observers": len(observers), "all": ok}
        log(f"N={n}: crash seen DEAD by {len(times)}/{len(observers)}; "
            f"{clock.wall():.1f} s wall")

        # -- join dissemination -------------------------------------------------------
        clock.phase = "join"
        joiner = "j0001"
        seen = swarm.watching(joiner)
        observers = list(swarm.groups)
        t0 = clock.now()
        await swarm.add(joiner, [rng.choice(observers)])
        ok = await clock.until(
            lambda: len(seen.get(MemberState.ALIVE, {})) >= len(observers), limit, step=0.05)
        times = seen_after(seen.get(MemberState.ALIVE, {}), observers, t0)
        result["join"] = {**spread(times), "observers": len(observers), "all": ok}
        log(f"N={n}: joiner seen ALIVE by {len(times)}/{len(observers)}; "
            f"{clock.wall():.1f} s wall")

        # -- leave dissemination ------------------------------------------------------
        clock.phase = "leave"
        leaver = names[1] if n > 2 else joiner
        seen = swarm.watching(leaver)
        observers = [g for g in swarm.groups if g != leaver]
        t0 = clock.now()
        await swarm.leave(leaver)
        stop_took = clock.now() - t0
        ok = await clock.until(
            lambda: len(seen.get(MemberState.LEFT, {})) >= len(observers), limit, step=0.05)
        times = seen_after(seen.get(MemberState.LEFT, {}), observers, t0)
        result["leave"] = {**spread(times), "observers": len(observers), "all": ok,
                           "stop_s": stop_took}
        log(f"N={n}: leaver seen LEFT by {len(times)}/{len(observers)}; "
            f"{clock.wall():.1f} s wall")
        result["simulated_s"] = clock.now() - clock.sim0
    except OverBudget:
        result["wall_s"] = clock.wall()
        raise
    clock.phase = "close"
    await swarm.close()
    result["wall_s"] = clock.wall()
    return result


def run_size(n: int, **kw: Any) -> dict[str, Any]:
    """:func:`simulate` on a fresh :class:`VirtualClockLoop`, quietly; a run
    over its budget is returned with ``skipped`` saying why (its nodes are
    left to the loop's shutdown)."""
    logging.getLogger("gobucket_py").setLevel(logging.CRITICAL)
    result: dict[str, Any] = {"n": n}
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        try:
            runner.run(simulate(n, result=result, **kw))
        except OverBudget as exc:
            result["skipped"] = str(exc)
    return result


async def _child(n: int, out: Path | None, **kw: Any) -> None:
    """One size in a child process: write the result and exit at once
    (over budget, without shutting thousands of nodes down)."""
    result: dict[str, Any] = {"n": n}
    try:
        await simulate(n, result=result, **kw)
    except OverBudget as exc:
        result["skipped"] = str(exc)
    if out is not None:
        with open(out, "w") as f:  # noqa: ASYNC230 (the loop is about to end)
            f.write(json.dumps(result, indent=1))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(OVER_BUDGET if "skipped" in result else 0)


# --------------------------------------------------------------------------- many sizes


def project(done: list[dict[str, Any]], n: int) -> float | None:
    """Wall seconds a run of ``n`` nodes should take, extrapolated from the
    measured sizes: wall ~ N x (bytes a node sends per s), the exponent of
    bytes per node fitted on the two largest sizes measured."""
    ok = [r for r in done if "idle" in r]
    if not ok:
        return None
    last = ok[-1]
    k = 1.0
    if len(ok) >= 2:
        prev = ok[-2]
        b1, b2 = (r["idle"]["bytes_per_node_s"]["median"] for r in (prev, last))
        if b1 > 0 and b2 > 0 and last["n"] != prev["n"]:
            k = max(0.0, math.log(b2 / b1) / math.log(last["n"] / prev["n"]))
    return float(last["wall_s"] * (n / last["n"]) ** (1 + k))


def run_child(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one size in a subprocess, killed past its budget."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one.json"
        cmd = [sys.executable, "-m", "bench.swim", "--one", str(n), "--json", str(out),
               "--idle", str(args.idle), "--loss-window", str(args.loss_window),
               "--loss", str(args.loss), "--seed", str(args.seed), "--budget", str(args.budget)]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent,
                                  timeout=args.budget + 60, stdout=subprocess.PIPE, text=True)
        except subprocess.TimeoutExpired:
            return {"n": n, "skipped": f"killed after {args.budget + 60:g} s wall (budget "
                                       f"{args.budget:g} s)",
                    "wall_s": time.perf_counter() - started}
        if out.exists():
            return dict(json.loads(out.read_text()))
        return {"n": n, "skipped": f"child exited {proc.returncode} without a result",
                "wall_s": time.perf_counter() - started}


def run_sizes(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for n in args.sizes:
        guess = project(results, n)
        if guess is not None and guess > args.budget and not args.force:
            why = (f"projected ~{guess:,.0f} s wall from the sizes measured (budget "
                   f"{args.budget:g} s; --force or --budget to run it)")
            print(f"  N={n}: skipped: {why}", flush=True)
            results.append({"n": n, "skipped": why})
            continue
        print(f"  N={n}: running (budget {args.budget:g} s wall)", flush=True)
        r = run_child(n, args) if args.subprocess else run_size(
            n, idle=args.idle, loss_rate=args.loss, loss_window=args.loss_window,
            seed=args.seed, budget=args.budget)
        if "skipped" in r:
            print(f"  N={n}: skipped: {r['skipped']}", flush=True)
        results.append(r)
    return results


def fmt_spread(s: dict[str, Any] | None) -> str:
    if not s or not s.get("count"):
        return "-"
    text = f"{s['p50']:.2f}/{s['p99']:.2f}/{s['max']:.2f}"
    return text if s.get("all", True) else text + f" ({s['count']}/{s['observers']})"


def table(results: list[dict[str, Any]]) -> str:
    head = ("| N | converge s | windows idle/loss s | msg/node/s med (max) "
            "| B/node/s med (max) | loss 1%: suspected / dead nodes "
            "| crash -> DEAD s p50/p99/max | join -> ALIVE s p50/p99/max "
            "| leave -> LEFT s p50/p99/max | wall s |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        if "skipped" in r or "idle" not in r:
            why = r.get("skipped") or r.get("error", "?")
            wall = r.get("wall_s", 0.0)
            lines.append(f"| {r['n']} | skipped: {why} |" + " |" * 8 + f" {wall:.0f} |")
            continue
        i, loss = r["idle"], r.get("loss", {})
        lines.append(
            f"| {r['n']} | {r['converge_s']:.1f} | {i['window_s']:.3g}/{loss['window_s']:.3g} "
            f"| {i['msgs_per_node_s']['median']:,.1f} ({i['msgs_per_node_s']['max']:,.1f}) "
            f"| {i['bytes_per_node_s']['median']:,.0f} ({i['bytes_per_node_s']['max']:,.0f}) "
            f"| {loss.get('nodes_suspected', '-')} / {loss.get('nodes_dead', '-')} "
            f"| {fmt_spread(r.get('detection'))} | {fmt_spread(r.get('join'))} "
            f"| {fmt_spread(r.get('leave'))} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def rows(results: list[dict[str, Any]]) -> list[Row]:
    """BENCHMARKS.md rows (``python -m bench swim``)."""
    out: list[Row] = []
    how = "virtual clock, in-memory network (no latency), default GroupConfig"
    for r in results:
        n = r["n"]
        if "idle" not in r:
            out.append(Row(ISSUE, f"membership simulation, N={n}", math.nan, "", "runs",
                           False, note=f"skipped: {r.get('skipped') or r.get('error')}"))
            continue
        i, loss = r["idle"], r["loss"]
        wall = f"{r['wall_s']:.0f} s wall for {r['simulated_s']:.0f} simulated s; {how}"
        if r.get("shrunk"):
            wall += f"; {r['shrunk']}"
        out.append(Row(ISSUE, f"idle messages sent per node per second, N={n}",
                       i["msgs_per_node_s"]["median"], "msg/s", "<= 4 at any N",
                       i["msgs_per_node_s"]["max"] <= 4.0,
                       note=f"median over nodes; max {i['msgs_per_node_s']['max']:,.1f}; "
                            f"{i['window_s']:.3g} s window; {wall}"))
        out.append(Row(ISSUE, f"idle bytes sent per node per second, N={n}",
                       i["bytes_per_node_s"]["median"], "B/s",
                       "<= 2 KB at N=1000" if n == 1000 else "reported",
                       i["bytes_per_node_s"]["median"] <= 2048 if n == 1000 else True,
                       note=f"median over nodes; max {i['bytes_per_node_s']['max']:,.0f}; "
                            "msgpack bodies only"))
        d = r["detection"]
        out.append(Row(ISSUE, f"crash detection, time until every survivor marks it DEAD, "
                              f"p99, N={n}", d["p99"], "s", "every survivor, p99 <= 6 s",
                       bool(d["all"]) and d["p99"] <= 6.0,
                       note=f"p50 {d['p50']:.2f} s, max {d['max']:.2f} s; "
                            f"{d['count']}/{d['observers']} survivors"))
        out.append(Row(ISSUE, f"false suspicions with 1% message loss ({loss['window_s']:.3g} s),"
                              f" N={n}", loss["nodes_dead"], "nodes dead", "0 dead",
                       loss["nodes_dead"] == 0,
                       note=f"{loss['nodes_suspected']} node(s) suspected "
                            f"({loss['suspect_events']} suspicions, {loss['dead_events']} "
                            f"deaths by some observer)"))
        for key, what in (("join", "a joiner ALIVE"), ("leave", "a leaver LEFT")):
            s = r[key]
            out.append(Row(ISSUE, f"dissemination: every node sees {what}, p99, N={n}",
                           s["p99"], "s", "every node, p99 <= 3 s",
                           bool(s["all"]) and s["p99"] <= 3.0,
                           note=f"p50 {s['p50']:.2f} s, max {s['max']:.2f} s; "
                                f"{s['count']}/{s['observers']} nodes"))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.swim", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x],
                   default=list(DEFAULT_SIZES), help="node counts, comma-separated "
                   f"(default {','.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--json", type=Path, help="write the results there")
    p.add_argument("--idle", type=float, default=30.0, help="idle window, simulated s")
    p.add_argument("--loss", type=float, default=0.01, help="message loss rate")
    p.add_argument("--loss-window", type=float, default=60.0, help="simulated s under loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=600.0,
                   help="wall seconds allowed per size (default 600)")
    p.add_argument("--force", action="store_true",
                   help="run sizes projected to exceed the budget")
    p.add_argument("--no-subprocess", dest="subprocess", action="store_false",
                   help="run every size in this process (no kill at the budget)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size
    return p


def main(bench_args: argparse.Namespace | None = None) -> None:
    """``python -m bench swim``: default sizes, rows saved for BENCHMARKS.md."""
    args = parser().parse_args([])
    results = run_sizes(args)
    print(table(results))
    save("swim", rows(results))
    with contextlib.suppress(OSError):
        from .common import RESULTS
        (RESULTS / "swim_raw.json").write_text(json.dumps(results, indent=1))


def cli() -> None:
    args = parser().parse_args()
    if args.one is not None:
        logging.getLogger("gobucket_py").setLevel(logging.CRITICAL)
        with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
            runner.run(_child(args.one, args.json, idle=args.idle, loss_rate=args.loss,
                              loss_window=args.loss_window, seed=args.seed,
                              budget=args.budget))
    results = run_sizes(args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    cli()
