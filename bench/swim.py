"""Membership at scale: N groups on the in-memory network, on a virtual clock.

``python -m bench.swim [--sizes 10,100,1000] [--warm-from N | --warm | --cold]
[--json PATH]`` (also run by ``python -m bench swim``, which saves its rows for
BENCHMARKS.md).

Every node is a real :class:`~gobucket_py.TaskBucketGroup` (one bucket,
default :class:`~gobucket_py.GroupConfig`) on one
:class:`~gobucket_py.MemoryNetwork`, all in one process. The event loop runs
on a virtual clock (:class:`VirtualClockLoop`): when nothing is ready to run,
time jumps to the next timer, so a simulated minute costs only the CPU its
messages take. The network has no latency: timings are those of the
protocol's timers and timeouts.

**How the cluster forms.**

- *Cold* (sizes below ``--warm-from``, default 1,000): every node starts at
  once with the first node as its seed, and the run waits until every node
  sees N-1 peers alive. This is the real mass join, and its cost is the
  catch: a joining node syncs with its seed and then *probes every node it
  learns of* before taking it for a member (``Membership._learn``), so each
  joining node sends O(N) probes and a mass join O(N^2) in all -- about a
  million at N=1,000, which here would take hours of wall time. The idle
  window then starts 0.5 s after the join, so it still carries the join's
  tail: the piggyback backlog of one "alive" per node and each node's first
  full-state sync (its sync loop began with a near-empty table).
- *Warm* (sizes from ``--warm-from`` up; ``--warm`` for every size,
  ``--cold`` for none): the cluster is measured from its post-join state,
  built without the join's traffic (:meth:`Swarm.add_warm`): every node
  starts with its membership stopped, then *hears* every other node through
  the real ``Membership.heard(peer.header())`` -- the record a first
  message from that peer creates, exactly --, is marked joined, has its
  queue of piggyback updates emptied (the join news taken as disseminated),
  the first node as its (reached) seed, and its membership started again
  with the full table. No simulated time passes while it is built. So at
  N=1,000 every figure below is that of a cluster that has already formed;
  what a one-time mass cold join costs is not measured, only the cold join
  of one more node (**join** below: about N messages from the joiner).
  Full-state syncs: a sync loop started with N nodes first waits at least
  half its interval (333 s at N=1,000), so none falls in the idle window;
  their cost is measured on one real exchange and added, amortized over
  the interval (see :func:`measure_sync`).

For each size N, once every node sees N-1 peers alive:

- **idle cost**: messages and bytes each node sends per simulated second over
  an idle window (``--idle``, 120 s), median and max over nodes (bytes are the
  msgpack bodies; what a real transport adds is not counted), plus the
  full-state sync's amortized bytes after a warm start;
- **false suspicions**: with ``net.loss(0.01)`` (each message lost with
  probability 1%) for ``--loss-window`` (60 s), the nodes marked SUSPECT and
  DEAD by some peer although none failed (then the loss is healed and the
  cluster let converge again);
- **detection**: one node crashes (``net.crash`` and its group abandoned, as
  ``MemoryCluster.crash`` does: calls to it are refused at once); for every
  survivor, the time until it marks it DEAD: p50/p99/max;
- **join**: a new node starts with one seed (the normal cold path, at any
  N); the time until each node has it ALIVE: p50/p99/max, and what the
  joiner sent by then. It probes every node it learns of, so on this
  zero-latency network every node hears it directly, at once;
- **leave**: a node stops gracefully (``group.stop()``); the time until each
  node has it LEFT: p50/p99/max. The leaver tells every member directly, so
  here too the time is that of one message.

State changes are seen by chaining each node's ``Membership.on_change`` (the
group's own callback is kept and called first), so every time is exact on the
virtual clock. Each size runs in its own subprocess with a wall-clock budget
(``--budget``, 600 s): a size whose cost, extrapolated from the smaller sizes
measured in the same run, would exceed it is skipped and says so (``--force``
runs it anyway, still bounded by the budget); a run whose windows would not
fit shortens them, down to a minimum. At N=1,000 (warm) a run takes about
2-3 minutes of wall time on 2 cores: about 40 s to build the warm cluster
(a million ``heard`` calls) and about 0.4 s of wall per simulated second.
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
from gobucket_py.cluster.gossip import sync_interval
from gobucket_py.cluster.membership import SYNC_INTERVAL, Member, Membership, MemberState

from .common import Row, percentile, save

#: The issue this group reports under in BENCHMARKS.md.
ISSUE = "#17"
DEFAULT_SIZES = (10, 100, 1000)
#: Exit code of a child that gave up on its budget.
OVER_BUDGET = 3
#: Sizes from this one up start warm (pre-joined): see the module docstring.
WARM_FROM = 1000


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

    def _group(self, name: str, seeds: list[str]) -> TaskBucketGroup:
        config = BucketConfig(life_span=60, max_bucket=self.max_bucket)
        bucket = TaskBucket(config, Noop(), name="jobs")
        return TaskBucketGroup({"jobs": bucket}, seeds, node_id=name,
                               transport=self.net.transport(name), config=self.config,
                               rng=random.Random(f"{self.seed}:{name}"))

    async def add(self, name: str, seeds: list[str]) -> TaskBucketGroup:
        """Start a node ``name`` seeded with ``seeds`` and record its view."""
        group = self._group(name, seeds)
        await group.start()
        self._chain(name, group)
        self.groups[name] = group
        return group

    async def add_warm(self, names: list[str], seed: str,
                       tick: Callable[[], None] = lambda: None) -> None:
        """Start ``names`` as a cluster that has already formed through
        ``seed`` (a "warm" start): each node's table holds every other node
        ALIVE, as after a cold join, without the join's traffic.

        Every group starts with no seed (its start contacts nobody), and its
        membership is stopped at once. Then each node *hears* every other
        node: the real :meth:`Membership.heard` with that peer's real
        :meth:`Membership.header`, which creates the :class:`Member` record
        (state, incarnation, capacity, ``heard_at``, its place in the probe
        round, ``on_change``) exactly as a first message from it would. Then
        a real ``merge_checked([], full=True)`` marks the node joined, its
        queue of piggyback updates (one "alive" per peer just heard) is
        emptied -- that news is taken as disseminated, as it is in a cluster
        that has been up for a while --, its seed list is set to ``seed``
        (reached, so not on the join list), and its membership is started
        again: probe, rejoin and sync loops run from a full table, so the
        sync loop waits its steady-state interval for N nodes. No virtual
        time passes during all this (nothing sleeps): the probe loops then
        start within one ``probe_interval`` as in a cold start.
        """
        groups: list[tuple[str, TaskBucketGroup, Membership]] = []
        for i, name in enumerate(names):
            group = self._group(name, [])
            await group.start()
            membership = group._membership
            assert membership is not None
            await membership.stop()  # started again below, with the table full
            self.groups[name] = group
            groups.append((name, group, membership))
            if i % 50 == 49:
                tick()
        order = random.Random(f"{self.seed}:warm")
        for i, (name, group, membership) in enumerate(groups):
            peers = [m for _, _, m in groups if m is not membership]
            order.shuffle(peers)  # the order a node heard of the others
            for peer in peers:
                membership.heard(peer.header())
            membership.merge_checked([], full=True)
            membership.broadcasts.clear()
            if name != seed:
                group.seeds = [seed]
                membership.seeds = [seed]
            if i % 50 == 49:
                tick()
        for name, group, membership in groups:
            await membership.start()
            self._chain(name, group)

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
        # Where the rate that projects the run's wall time is measured from
        # (see mark()): the start, unless a one-time build is set aside.
        self.mark_wall = 0.0
        self.mark_sim = self.sim0
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

    def mark(self) -> None:
        """Project the run's wall time from the rate after now: what came
        before (a warm start's build, which takes no simulated time) is a
        one-time cost, not a rate."""
        self.mark_wall, self.mark_sim = self.wall(), self.now()

    def now(self) -> float:
        return self.loop.time()

    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    def check(self) -> None:
        wall, sim = self.wall(), self.now() - self.sim0
        if wall > self.budget:
            raise OverBudget(f"over the {self.budget:g} s wall budget in phase {self.phase} "
                             f"at {sim:.1f} simulated s")
        run_wall, run_sim = wall - self.mark_wall, self.now() - self.mark_sim
        if run_sim >= 2.0 and run_wall > 10.0:
            projected = self.mark_wall + run_wall / run_sim * (
                self.planned - (self.mark_sim - self.sim0))
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


async def measure_sync(swarm: Swarm, names: list[str],
                       warm_since: float | None) -> dict[str, Any]:
    """The full-state sync's cost, amortized over its interval.

    One real exchange (``Membership.ping(..., sync=True)``, what the sync
    loop does) between a node and a random alive peer gives the bytes of a
    request and its reply. Each node starts one every
    :func:`~gobucket_py.cluster.gossip.sync_interval` s on average and
    answers as many, so a node sends ``(request + reply) / interval`` bytes
    per s for it. A sync loop waits ``interval x U(0.5, 1.5)`` before its
    first sync: after a warm start (loops started with the full table) no
    sync can fall in a window that ends before ``0.5 x interval``, so the
    amortized figure is added to the window's (``in_window`` False); after a
    cold start (``warm_since`` None) each node's loop began with a
    near-empty table and synced 10-30 s after it joined, inside the idle
    window: nothing is added.
    """
    name = names[len(names) // 2]
    membership = swarm.groups[name]._membership
    assert membership is not None
    peer = membership.rng.choice(membership.alive())
    before = swarm.net.traffic()
    await membership.ping(peer.addr, membership.config.request_timeout, sync=True)
    after = swarm.net.traffic()
    request = after[name][1] - before[name][1]
    reply = after[peer.addr][1] - before[peer.addr][1]
    interval = sync_interval(SYNC_INTERVAL, len(membership.members) + 1)
    loop = asyncio.get_running_loop()
    return {"request_bytes": request, "reply_bytes": reply, "entries": len(membership.gossip()),
            "interval_s": interval, "bytes_per_node_s": (request + reply) / interval,
            "msgs_per_node_s": 2 / interval,
            # a cold start's loops synced in the window; a warm start's cannot have
            "in_window": warm_since is None or loop.time() - warm_since > 0.5 * interval}


def progress(text: str) -> None:
    print(f"    {text}", file=sys.stderr, flush=True)


async def simulate(n: int, *, idle: float = 120.0, loss_rate: float = 0.01,
                   loss_window: float = 60.0, limit: float = 120.0, seed: int = 0,
                   budget: float = 600.0, config: GroupConfig | None = None,
                   log: Callable[[str], None] = progress, warm: bool = False,
                   close: bool = True, result: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Run every phase for ``n`` nodes; return the figures (times in simulated s).

    ``warm``: start from a pre-joined cluster (:meth:`Swarm.add_warm`)
    instead of a cold mass join through one seed. ``close``: end every node
    at the end (a child process about to exit skips it); ``wall_s`` does
    not include it.

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
                                        "suspicion_timeout", "rejoin_interval")},
        "start": "warm" if warm else "cold"})
    names = [f"n{i:04d}" for i in range(1, n + 1)]
    try:
        # -- start and converge ---------------------------------------------------
        if warm:
            clock.phase = "warm start"
            await swarm.add_warm(names, names[0], tick=clock.check)
            result["build_wall_s"] = clock.wall()
            clock.mark()
            warm_since: float | None = clock.now()
            log(f"N={n}: warm start (every node has heard every other) in "
                f"{clock.wall():.1f} s wall")
        else:
            warm_since = None
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
            "msgs_per_node_s": {"median": percentile(msgs, 50), "max": max(msgs),
                                "mean": sum(msgs) / n},
            "bytes_per_node_s": {"median": percentile(sent, 50), "max": max(sent),
                                 "mean": sum(sent) / n},
            "suspect_or_dead_events": len(swarm.bad) - bad_before,
        }
        sync = result["sync"] = await measure_sync(swarm, names, warm_since)
        result["idle"]["steady_bytes_per_node_s"] = percentile(sent, 50) + (
            0.0 if sync["in_window"] else sync["bytes_per_node_s"])
        if clock.shrunk:
            result["shrunk"] = clock.shrunk
            log(f"N={n}: {clock.shrunk}")
        log(f"N={n}: idle {percentile(msgs, 50):,.1f} msg/node/s, "
            f"{percentile(sent, 50):,.0f} B/node/s (full-state sync "
            f"{sync['bytes_per_node_s']:,.0f} B/node/s amortized, "
            f"{'in the window' if sync['in_window'] else 'added'}); "
            f"{clock.wall():.1f} s wall")

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
        cost = swarm.net.traffic().get(joiner, (0, 0))
        # The cold path's one-time cost: the joiner probes every node it learns of.
        result["join"] = {**spread(times), "observers": len(observers), "all": ok,
                          "joiner_msgs": cost[0], "joiner_bytes": cost[1]}
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
    result["wall_s"] = clock.wall()
    if close:
        clock.phase = "close"
        await swarm.close()
    return result


def run_size(n: int, **kw: Any) -> dict[str, Any]:
    """:func:`simulate` on a fresh :class:`VirtualClockLoop`, quietly; a run
    over its budget is returned with ``skipped`` saying why (its nodes are
    left to the loop's shutdown)."""
    logger = logging.getLogger("gobucket_py")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    result: dict[str, Any] = {"n": n}
    try:
        with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
            try:
                runner.run(simulate(n, result=result, **kw))
            except OverBudget as exc:
                result["skipped"] = str(exc)
    finally:
        logger.setLevel(level)
    return result


async def _child(n: int, out: Path | None, **kw: Any) -> None:
    """One size in a child process: write the result and exit at once
    (over budget, without shutting thousands of nodes down)."""
    result: dict[str, Any] = {"n": n}
    try:
        await simulate(n, result=result, close=False, **kw)
    except OverBudget as exc:
        result["skipped"] = str(exc)
    if out is not None:
        with open(out, "w") as f:  # noqa: ASYNC230 (the loop is about to end)
            f.write(json.dumps(result, indent=1))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(OVER_BUDGET if "skipped" in result else 0)


# --------------------------------------------------------------------------- many sizes


def project(done: list[dict[str, Any]], n: int, warm: bool = False) -> float | None:
    """Wall seconds a run of ``n`` nodes should take, extrapolated from the
    measured sizes: wall ~ N x (bytes a node sends per s), the exponent of
    bytes per node fitted on the two largest sizes measured (a cold start,
    whose mass join dominates). A warm run: its simulated phases at the
    last size's wall per simulated s times N (the cost per node and
    simulated s is flat in N after a join), plus the last warm build's wall
    times N^2 if one was measured (else the build, N^2 ``heard`` calls, is
    only bounded as it runs, by :meth:`Clock.check`)."""
    ok = [r for r in done if "idle" in r]
    if not ok:
        return None
    last = ok[-1]
    if warm:
        scale = n / last["n"]
        run = last["wall_per_sim_s"] * scale * last.get("simulated_s", 100.0)
        return float(run + last.get("build_wall_s", 0.0) * scale ** 2)
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
               "--loss", str(args.loss), "--seed", str(args.seed), "--budget", str(args.budget),
               "--warm-from", str(args.warm_from)]
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
        guess = project(results, n, warm=n >= args.warm_from)
        if guess is not None and guess > args.budget and not args.force:
            why = (f"projected ~{guess:,.0f} s wall from the sizes measured (budget "
                   f"{args.budget:g} s; --force or --budget to run it)")
            print(f"  N={n}: skipped: {why}", flush=True)
            results.append({"n": n, "skipped": why})
            continue
        print(f"  N={n}: running, {'warm' if n >= args.warm_from else 'cold'} start "
              f"(budget {args.budget:g} s wall)", flush=True)
        r = run_child(n, args) if args.subprocess else run_size(
            n, idle=args.idle, loss_rate=args.loss, loss_window=args.loss_window,
            seed=args.seed, budget=args.budget, warm=n >= args.warm_from)
        if "skipped" in r:
            print(f"  N={n}: skipped: {r['skipped']}", flush=True)
        results.append(r)
    return results


def fmt_spread(s: dict[str, Any] | None) -> str:
    if not s or not s.get("count"):
        return "-"
    text = f"{s['p50']:.2f}/{s['p99']:.2f}/{s['max']:.2f}"
    return text if s.get("all", True) else text + f" ({s['count']}/{s['observers']})"


def steady_bytes(r: dict[str, Any]) -> float:
    """Idle bytes per node per s, median, with the full-state sync's share
    when the window could not hold one (a warm start; see measure_sync)."""
    i = r["idle"]
    return float(i.get("steady_bytes_per_node_s", i["bytes_per_node_s"]["median"]))


def table(results: list[dict[str, Any]]) -> str:
    head = ("| N | start | converge s | windows idle/loss s | msg/node/s med (max) "
            "| B/node/s med (max) [+sync] | loss 1%: suspected / dead nodes "
            "| crash -> DEAD s p50/p99/max | join -> ALIVE s p50/p99/max "
            "| leave -> LEFT s p50/p99/max | wall s |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        if "skipped" in r or "idle" not in r:
            why = r.get("skipped") or r.get("error", "?")
            wall = r.get("wall_s", 0.0)
            lines.append(f"| {r['n']} | {r.get('start', '-')} | skipped: {why} |" + " |" * 8
                         + f" {wall:.0f} |")
            continue
        i, loss, sync = r["idle"], r.get("loss", {}), r.get("sync", {})
        added = "" if sync.get("in_window", True) else f" [+{sync['bytes_per_node_s']:,.0f}]"
        lines.append(
            f"| {r['n']} | {r.get('start', 'cold')} | {r['converge_s']:.1f} "
            f"| {i['window_s']:.3g}/{loss['window_s']:.3g} "
            f"| {i['msgs_per_node_s']['median']:,.1f} ({i['msgs_per_node_s']['max']:,.1f}) "
            f"| {i['bytes_per_node_s']['median']:,.0f} ({i['bytes_per_node_s']['max']:,.0f})"
            f"{added} "
            f"| {loss.get('nodes_suspected', '-')} / {loss.get('nodes_dead', '-')} "
            f"| {fmt_spread(r.get('detection'))} | {fmt_spread(r.get('join'))} "
            f"| {fmt_spread(r.get('leave'))} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def start_note(r: dict[str, Any]) -> str:
    """How the cluster of a result was formed, for BENCHMARKS.md."""
    if r.get("start") != "warm":
        return "cold start: every node joined through one seed at once"
    return (f"warm start: measured from a pre-joined cluster (each node's table filled "
            f"with Membership.heard(peer.header()) for every peer, {r['build_wall_s']:.0f} s "
            f"wall), because a cold mass join costs O(N) probes per joining node (it probes "
            f"every node it learns of), O(N^2) in all: hours of wall time here at N={r['n']}")


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
        i, loss, sync = r["idle"], r["loss"], r["sync"]
        wall = f"{r['wall_s']:.0f} s wall for {r['simulated_s']:.0f} simulated s; {how}"
        if r.get("shrunk"):
            wall += f"; {r['shrunk']}"
        out.append(Row(ISSUE, f"idle messages sent per node per second, N={n}",
                       i["msgs_per_node_s"]["median"], "msg/s", "<= 4 at any N",
                       i["msgs_per_node_s"]["max"] <= 4.0,
                       note=f"median over nodes; max {i['msgs_per_node_s']['max']:,.2f} "
                            f"(the target is checked on the max); "
                            f"{i['window_s']:.3g} s window; {start_note(r)}; {wall}"))
        exchange = (f"full-state sync {sync['request_bytes'] + sync['reply_bytes']:,} B "
                    f"per exchange ({sync['entries']} entries) every {sync['interval_s']:.0f} s "
                    f"per node = {sync['bytes_per_node_s']:,.0f} B/s amortized")
        if sync["in_window"]:
            bytes_note = (f"window median, max {i['bytes_per_node_s']['max']:,.0f}; {exchange}; "
                          "cold start: the window, from 0.5 s after the mass join, holds each "
                          "node's first full-state sync and the join's piggyback backlog")
        else:
            bytes_note = (f"window median {i['bytes_per_node_s']['median']:,.0f} (max "
                          f"{i['bytes_per_node_s']['max']:,.0f}) + {exchange} (the window "
                          f"holds none: a sync loop started with the full table first waits "
                          f">= {0.5 * sync['interval_s']:.0f} s)")
        value = steady_bytes(r)
        out.append(Row(ISSUE, f"idle bytes sent per node per second, N={n}", value, "B/s",
                       "<= 2 KB at N=1000" if n == 1000 else "reported",
                       value <= 2048 if n == 1000 else True,
                       note=f"{bytes_note}; msgpack bodies only"))
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
            note = (f"p50 {s['p50']:.2f} s, max {s['max']:.2f} s; "
                    f"{s['count']}/{s['observers']} nodes")
            if key == "join" and "joiner_msgs" in s:
                note += (f"; one cold joiner through one seed: it sent {s['joiner_msgs']:,} "
                         f"messages ({s['joiner_bytes']:,} B) by then, a sync with the seed "
                         f"and a probe of every node it learned of (O(N) per joining node), "
                         f"so each node hears it directly: one message, no latency here")
            elif key == "leave":
                note += ("; the leaver tells every member directly: one message, no latency "
                         "here")
            out.append(Row(ISSUE, f"dissemination: every node sees {what}, p99, N={n}",
                           s["p99"], "s", "every node, p99 <= 3 s",
                           bool(s["all"]) and s["p99"] <= 3.0, note=note))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.swim", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x],
                   default=list(DEFAULT_SIZES), help="node counts, comma-separated "
                   f"(default {','.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--json", type=Path, help="write the results there")
    p.add_argument("--idle", type=float, default=120.0, help="idle window, simulated s")
    p.add_argument("--loss", type=float, default=0.01, help="message loss rate")
    p.add_argument("--loss-window", type=float, default=60.0, help="simulated s under loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=600.0,
                   help="wall seconds allowed per size (default 600)")
    p.add_argument("--force", action="store_true",
                   help="run sizes projected to exceed the budget")
    p.add_argument("--no-subprocess", dest="subprocess", action="store_false",
                   help="run every size in this process (no kill at the budget)")
    p.add_argument("--warm-from", type=int, default=WARM_FROM, metavar="N",
                   help="sizes from N up start from a pre-joined cluster instead of a cold "
                        f"mass join through one seed (default {WARM_FROM})")
    p.add_argument("--warm", dest="warm_from", action="store_const", const=0,
                   help="every size starts warm (pre-joined)")
    p.add_argument("--cold", dest="warm_from", action="store_const", const=sys.maxsize,
                   help="every size starts with a cold mass join (hours at N=1000)")
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
                              budget=args.budget, warm=args.one >= args.warm_from))
    results = run_sizes(args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    cli()
