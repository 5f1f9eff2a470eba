"""The simulator's parts: traffic counters and the loss fault of MemoryNetwork,
the virtual clock of bench/swim.py, and a small swarm's crash and join
(correctness only: timings belong to ``python -m bench.swim``)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from bench.swim import Swarm, VirtualClockLoop
from gobucket_py import MemoryNetwork, PeerUnavailableError
from gobucket_py.cluster.membership import MemberState
from gobucket_py.cluster.protocol import Kind, encode

pytestmark = pytest.mark.looptime

REQUEST = {"v": 1, "hello": "x" * 10}
REPLY = {"v": 1, "ok": True}


async def echo(kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
    return REPLY


async def two(net: MemoryNetwork) -> Any:
    a, b = net.transport("a"), net.transport("b")
    await a.start(echo)
    await b.start(echo)
    return a


async def test_traffic_counts_requests_for_the_caller_and_replies_for_the_replier() -> None:
    net = MemoryNetwork()
    a = await two(net)
    for _ in range(3):
        assert await a.call("b", Kind.PING, REQUEST, 1.0) == REPLY
    assert net.traffic() == {"a": (3, 3 * len(encode(REQUEST))),
                             "b": (3, 3 * len(encode(REPLY)))}
    net.reset_traffic()
    assert net.traffic() == {"a": (0, 0), "b": (0, 0)}
    with pytest.raises(PeerUnavailableError):
        await a.call("nowhere", Kind.PING, REQUEST, 1.0)  # refused at once: nothing sent
    assert net.traffic()["a"] == (0, 0)


async def test_loss_one_times_calls_out_and_loss_zero_changes_nothing() -> None:
    net = MemoryNetwork()
    a = await two(net)
    nothing = net.loss(0.0)
    assert await a.call("b", Kind.PING, REQUEST, 1.0) == REPLY
    nothing.heal()
    lossy = net.loss(1.0, random.Random(1))
    assert lossy.kind == "loss" and net.faults == [lossy]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PeerUnavailableError) as caught:
        await a.call("b", Kind.PING, REQUEST, 1.0)
    assert caught.value.maybe_delivered
    assert loop.time() - started == pytest.approx(1.0)
    assert net.traffic()["a"] == (2, 2 * len(encode(REQUEST)))  # sent, then lost
    assert net.traffic()["b"] == (1, len(encode(REPLY)))  # the lost request was never applied
    net.heal()
    assert await a.call("b", Kind.PING, REQUEST, 1.0) == REPLY
    with pytest.raises(ValueError):
        net.loss(1.5)


def test_virtual_clock_keeps_timeouts_and_takes_no_wall_time() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        marks = [loop.time()]
        await asyncio.sleep(100)
        marks.append(loop.time())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(50), 7)
        marks.append(loop.time())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3):
                await asyncio.Event().wait()
        marks.append(loop.time())
        return marks

    wall = time.perf_counter()
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        marks = runner.run(main())
    assert marks == pytest.approx([0, 100, 107, 110])
    assert time.perf_counter() - wall < 2


async def test_a_small_swarm_detects_a_crash_and_learns_a_joiner() -> None:
    swarm = Swarm(seed=1)
    names = [f"n{i}" for i in range(1, 9)]
    try:
        for i, name in enumerate(names):
            await swarm.add(name, [] if i == 0 else [names[0]])
        for _ in range(60):
            if swarm.alive_views()[0] == len(names):
                break
            await asyncio.sleep(0.5)
        assert swarm.alive_views() == (8, 8)

        crashed = swarm.watching("n8")
        swarm.crash("n8")
        survivors = names[:-1]
        for _ in range(120):
            if set(crashed.get(MemberState.DEAD, {})) == set(survivors):
                break
            await asyncio.sleep(0.5)
        assert set(crashed.get(MemberState.DEAD, {})) == set(survivors)

        joined = swarm.watching("j1")
        await swarm.add("j1", ["n3"])
        for _ in range(120):
            if set(joined.get(MemberState.ALIVE, {})) >= set(survivors):
                break
            await asyncio.sleep(0.5)
        assert set(joined.get(MemberState.ALIVE, {})) == set(survivors)
        for _ in range(60):
            if swarm.alive_views()[0] == len(swarm.groups):
                break
            await asyncio.sleep(0.5)
        assert swarm.alive_views() == (8, 8)  # the joiner sees everyone too
    finally:
        await swarm.close()


@pytest.mark.parametrize("pattern", ["uniform", "hot"])
def test_filling_a_small_cluster_to_the_brim_never_overfills_a_bucket(pattern: str) -> None:
    # bench/balance.py at N=10: the cluster is filled to 100% through random
    # (or mostly hot) nodes, then 1% more. No bucket ever holds more than
    # max_bucket, every task is where its FillResult says, and the fills past
    # 100% are all refused, and none was refused while the cluster had room
    # (a peer's "full" answer does not end the search: see Overflow.place).
    from bench.balance import run

    for seed in range(3):
        r = run(n=10, pattern=pattern, seed=seed, cap=100, batch=50, hot=2,
                log=lambda _: None)
        assert r["cluster_full_with_room"] == 0, r["cluster_full_with_room_detail"]
    assert "error" not in r, r.get("error")
    assert r["over_capacity"] == 0 and r["over_capacity_events"] == []
    assert r["filled"] == 1.0 and r["tally_ok"]
    assert r["overfill"] == {"asked": 10, "refused": 10, "accepted": 0}
    assert r["other_errors"] == {}


class _Timed(list):  # type: ignore[type-arg]
    """``MemoryNetwork.calls`` that also notes the loop time of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def append(self, call: Any) -> None:
        super().append(call)
        self.at.append(asyncio.get_running_loop().time())


async def test_the_shared_probe_schedule_probes_every_member_about_once_a_tick() -> None:
    # A node that dies is probed within about one probe_interval: the nodes
    # rotate through one shared order, so each tick probes every member once,
    # instead of each node walking its own shuffled round (where a member can
    # go unprobed for several intervals when the random rounds cluster).
    swarm = Swarm(seed=3)
    names = [f"n{i}" for i in range(10)]
    interval = swarm.config.probe_interval
    try:
        for i, name in enumerate(names):
            await swarm.add(name, [] if i == 0 else [names[0]])
        for _ in range(60):
            if swarm.alive_views() == (10, 10):
                break
            await asyncio.sleep(0.5)
        assert swarm.alive_views() == (10, 10)
        await asyncio.sleep(10)  # past the join's own probes and syncs
        timed = swarm.net.calls = _Timed()
        swarm.net._record_calls = True
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(60)
        pings: dict[str, list[float]] = {name: [] for name in names}
        for (_src, dst, kind), at in zip(timed, timed.at, strict=True):
            if kind is Kind.PING:
                pings[dst].append(at)
        ticks = 60 / interval
        for name, times in pings.items():
            # One probe per tick each (and a few full-state syncs, which
            # are pings too), give or take the window's edges.
            assert ticks - 2 <= len(times) <= ticks * 1.1, (name, len(times))
            gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
            # Ticks start together everywhere; probes leave within a tenth
            # of an interval of the tick's start.
            assert max(gaps) <= 1.1 * interval + 1e-6, (name, max(gaps))
    finally:
        await swarm.close()
