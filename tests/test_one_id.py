"""One id filled from one node is live on at most one node.

A node remembers where it forwarded each id (its route) and which ids it is
placing now. A new fill of such an id does not go just anywhere: it waits
for the placing to end, then asks the node the route names. "duplicate"
there is a DuplicateTaskError; "full" there means the id is not live there
(a bucket refuses a duplicate before it says full), so the fill goes on as
any fill; no answer is PlacementUnknownError, and nothing is placed.

In-memory cluster, faked loop clock; faults: a lost ended notice, a
partition, a slow link, a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from gobucket_py import (
    ClusterFullError,
    DrainOutcome,
    DuplicateTaskError,
    FillResult,
    PeerUnavailableError,
    PlacementUnknownError,
    TaskBucketGroup,
    TaskType,
)
from gobucket_py.cluster.membership import MemberState
from gobucket_py.cluster.protocol import Kind

from .test_cluster import CFG, Cluster, fill_local
from .test_truth import fail_calls, runs

pytestmark = pytest.mark.looptime

BOMB = TaskType.TIME_BOMB


def live(cluster: Cluster, task_id: str) -> list[str]:
    return [name for name in cluster.groups if task_id in cluster.bucket(name)]


async def x_on_n2(cluster: Cluster, n2_size: int = 2) -> TaskBucketGroup:
    """n1 (full, one slot) has forwarded time-bomb ``x`` to n2."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=n2_size)
    await cluster.settle()
    await fill_local(n1, 1)
    assert (await n1.fill("jobs", "x", task_type=BOMB)).node_id == "n2"
    return n1


async def test_a_forwarded_id_is_not_placed_on_a_second_peer(cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    assert (await n1.fill("jobs", "y", task_type=BOMB)).node_id == "n2"  # n2 is full now
    await cluster.add("n3", max_bucket=5)  # room, and more than n2
    await cluster.settle()
    with pytest.raises(DuplicateTaskError, match="n2"):
        await n1.fill("jobs", "x", task_type=BOMB)
    assert live(cluster, "x") == ["n2"]
    await asyncio.sleep(31)
    assert runs(cluster, "x") == 1


async def test_a_forwarded_id_is_not_filled_here_when_room_frees(cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    assert (await n1.drain("jobs", "local-0")).outcome is DrainOutcome.DRAINED  # room here
    for fill in (n1.fill("jobs", "x", task_type=BOMB),
                 n1.fill_future("jobs", "x", task_type=BOMB)):
        with pytest.raises(DuplicateTaskError, match="n2"):
            await fill
    [result] = await n1.fill_many("jobs", {"x": None}, task_type=BOMB)
    assert isinstance(result, DuplicateTaskError)
    assert live(cluster, "x") == ["n2"]
    assert n1.buckets["jobs"].free == 1  # nothing was filled here


async def test_an_id_that_ended_on_its_holder_can_be_filled_again(cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    await asyncio.sleep(31)  # x ran on n2; its ended notice reached n1
    assert runs(cluster, "x") == 1
    placed = await n1.fill("jobs", "x", task_type=BOMB)
    assert live(cluster, "x") == [placed.node_id]


async def test_a_stale_route_to_a_full_holder_is_dropped_and_the_fill_goes_on(
        cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    n2 = cluster.groups["n2"]
    fail_calls(n2, Kind.ENDED, after=False)  # n1 never hears that x ended
    await asyncio.sleep(31)
    assert runs(cluster, "x") == 1 and live(cluster, "x") == []
    await fill_local(n1, 1, prefix="again")  # local-0 ran too: n1 full again
    await fill_local(n2, 2, prefix="n2")  # n2 full: "full" for x means x is not there
    await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    assert n1._routes.get("jobs", "x") is not None  # the stale route
    placed = await n1.fill("jobs", "x", task_type=BOMB)
    assert placed.node_id == "n3" and live(cluster, "x") == ["n3"]
    route = n1._routes.get("jobs", "x")
    assert route is not None and route[0] == "n3"  # drain and get go there now
    assert (await n1.drain("jobs", "x")).node_id == "n3"


async def test_a_forwarded_id_that_ended_goes_back_to_its_holder_if_it_has_room(
        cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    fail_calls(cluster.groups["n2"], Kind.ENDED, after=False)
    await asyncio.sleep(31)
    placed = await n1.fill("jobs", "x", task_type=BOMB)
    assert placed.node_id == "n2" and live(cluster, "x") == ["n2"]


async def test_an_unreachable_holder_gives_unknown_and_nothing_is_placed(
        cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    cut = cluster.net.partition("n1", "n2")
    with pytest.raises(PlacementUnknownError, match="n2") as caught:
        await n1.fill("jobs", "x", task_type=BOMB)
    assert caught.value.node_id == "n2" and caught.value.task_id == "x"
    cut.heal()
    assert live(cluster, "x") == ["n2"]
    await asyncio.sleep(31)
    assert runs(cluster, "x") == 1


async def test_two_fills_of_one_id_in_one_loop_pass_place_it_once(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=5)
    await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    await fill_local(n1, 1)
    answers = await asyncio.gather(
        n1.fill_future("jobs", "x", task_type=BOMB), n1.fill("jobs", "x", task_type=BOMB),
        n1.fill_future("jobs", "x", task_type=BOMB), return_exceptions=True)
    placed = [a for a in answers if isinstance(a, FillResult)]
    assert len(placed) == 1, answers
    assert all(isinstance(a, DuplicateTaskError) for a in answers if a not in placed), answers
    assert live(cluster, "x") == [placed[0].node_id]


async def test_a_fill_of_an_id_in_flight_waits_for_its_placement(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=5)
    await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    await fill_local(n1, 1)
    cluster.net.delay("n1", "n2", 0.3)
    cluster.net.delay("n1", "n3", 0.3)
    first = asyncio.create_task(n1.fill("jobs", "x", task_type=BOMB))
    await asyncio.sleep(0.1)  # on the wire
    with pytest.raises(DuplicateTaskError):
        await n1.fill("jobs", "x", task_type=BOMB)
    assert first.done() and live(cluster, "x") == [first.result().node_id]


async def test_fill_many_with_an_id_twice_places_it_once(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=5)
    await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    await fill_local(n1, 1)
    results = await n1.fill_many("jobs", [("x", None), ("y", None), ("x", None)],
                                 task_type=BOMB)
    assert isinstance(results[0], FillResult) and isinstance(results[1], FillResult)
    assert isinstance(results[2], DuplicateTaskError)
    assert live(cluster, "x") == [results[0].node_id]
    assert live(cluster, "y") == [results[1].node_id]


async def test_a_drained_id_can_be_filled_again(cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    assert (await n1.drain("jobs", "x")).outcome is DrainOutcome.DRAINED
    placed = await n1.fill("jobs", "x", task_type=BOMB)
    assert live(cluster, "x") == [placed.node_id]
    await asyncio.sleep(31)
    assert runs(cluster, "x") == 1


async def test_an_id_lost_with_its_holder_can_be_filled_again(cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    lost: list[tuple[str, str, list[str]]] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    cluster.net.down("n2")  # kill -9
    await asyncio.sleep(CFG.lost_after + 3)
    assert lost == [("n2", "jobs", ["x"])]
    placed = await n1.fill("jobs", "x", task_type=BOMB)
    assert placed.node_id == "n3"


# -- callers that give up, callbacks, routes that no longer hold (found by review) -----------


async def test_a_fill_that_asks_the_holder_can_be_cancelled(cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    cluster.net.delay("n1", "n2", 0.5)
    with pytest.raises(TimeoutError):  # the caller's timeout, not an invented error
        async with asyncio.timeout(0.1):
            await n1.fill("jobs", "x", task_type=BOMB)
    fill = asyncio.create_task(n1.fill("jobs", "x", task_type=BOMB))
    await asyncio.sleep(0.1)
    fill.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fill
    await asyncio.sleep(1)
    assert live(cluster, "x") == ["n2"]


async def test_an_ask_its_caller_gave_up_on_is_still_settled(cluster: Cluster) -> None:
    # x ended on n2 unheard; a new fill of x goes back to n2 (run_after=50),
    # its caller gives up before the answer. The answer still updates the
    # route (the new task's deadline), so x stays held until then.
    n1 = await x_on_n2(cluster)
    fail_calls(cluster.groups["n2"], Kind.ENDED, after=False)
    await asyncio.sleep(31)  # x and local-0 ran; the stale route lasts until t=62
    cluster.net.delay("n1", "n2", 0.3)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await n1.fill("jobs", "x", task_type=BOMB, run_after=50)
    await asyncio.sleep(1)
    assert live(cluster, "x") == ["n2"]
    await asyncio.sleep(31)  # past the old route's deadline, not the new task's
    await fill_local(n1, 1, prefix="z")
    await n1.fill("jobs", "y", task_type=BOMB)  # a forward: routes expire
    assert (await n1.drain("jobs", "z-0")).outcome is DrainOutcome.DRAINED  # room here
    with pytest.raises(DuplicateTaskError, match="n2"):
        await n1.fill("jobs", "x", task_type=BOMB)
    assert live(cluster, "x") == ["n2"]
    assert n1.fill_counts["jobs"][1] == 3  # x, x again, y


async def test_a_balanced_fill_given_up_keeps_its_id_held_until_the_answer(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=100, placement="balanced")
    await cluster.add("n2", max_bucket=1000, placement="balanced")
    await cluster.add("n3", max_bucket=1000, placement="balanced")
    await cluster.settle()
    cluster.net.delay("n1", "n2", 0.1)
    cluster.net.delay("n1", "n3", 0.1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await n1.fill("jobs", "x", task_type=BOMB)  # its offer is still on the wire
    assert n1._overflow.held("jobs", "x")
    with pytest.raises(DuplicateTaskError):
        await n1.fill("jobs", "x", task_type=BOMB)
    await asyncio.sleep(1)
    assert len(live(cluster, "x")) == 1


async def test_the_cluster_full_callback_may_fill_the_id_again(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=1)
    await cluster.settle()
    await fill_local(n1, 1)
    await fill_local(n2, 1, prefix="n2")  # n1 still believes n2 has room
    inner: list[object] = []

    async def failed(peer: str, bucket: str, task_id: str, error: str) -> None:
        if not inner:  # once: the inner fill is refused the same way
            inner.append("asked")
            try:
                inner.append(await n1.fill(bucket, task_id, task_type=BOMB))
            except Exception as exc:
                inner.append(exc)

    n1.on_peer_schedule_failed = failed
    with pytest.raises(ClusterFullError):
        async with asyncio.timeout(30):
            await n1.fill("jobs", "x", task_type=BOMB)
    await asyncio.sleep(1)  # the callback runs in a task of its own
    assert inner[0] == "asked" and isinstance(inner[1], ClusterFullError), inner


async def test_an_id_handed_back_to_its_origin_is_the_local_buckets(cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    assert (await n1.drain("jobs", "local-0")).outcome is DrainOutcome.DRAINED  # room here
    await cluster.groups["n2"].stop()  # hands x to n1, the only peer
    await cluster.settle()
    assert live(cluster, "x") == ["n1"]
    with pytest.raises(DuplicateTaskError):
        await n1.fill("jobs", "x", task_type=BOMB)
    await asyncio.sleep(200)  # x ran here
    assert (await n1.fill("jobs", "x", task_type=BOMB)).node_id == "n1"


async def test_a_route_past_its_deadline_does_not_hold_the_id(cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    fail_calls(cluster.groups["n2"], Kind.ENDED, after=False)
    await asyncio.sleep(200)  # x's life span (60 s) is long over; n1 has room
    assert n1._routes.get("jobs", "x") is not None  # not swept yet
    cluster.net.partition("n1", "n2")
    assert (await n1.fill("jobs", "x", task_type=BOMB)).node_id == "n1"


async def test_a_held_id_whose_data_cannot_travel_is_refused_clearly(cluster: Cluster) -> None:
    n1 = await x_on_n2(cluster)
    with pytest.raises(TypeError, match="placed it on a peer before"):
        await n1.fill("jobs", "x", object(), task_type=BOMB)
    assert live(cluster, "x") == ["n2"]


# -- found by a second review -----------------------------------------------------------


async def test_a_balanced_offer_refused_then_a_local_fill_does_not_race_a_waiting_fill(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=100, placement="balanced")
    n2 = await cluster.add("n2", max_bucket=2000, placement="balanced")
    await cluster.add("n3", max_bucket=1000, placement="balanced")
    await cluster.settle()
    b2 = n2.buckets["jobs"]
    for i in range(2000):  # n2 full; n1 still believes it has 2000 free
        b2.fill_nowait(BOMB, f"s{i}")
    cluster.net.delay("n1", "n2", 0.05)  # the offer is on the wire a while
    first = asyncio.create_task(n1.fill("jobs", "x", task_type=BOMB))
    await asyncio.sleep(0)
    second = asyncio.create_task(n1.fill("jobs", "x", task_type=BOMB))
    answers = await asyncio.gather(first, second, return_exceptions=True)
    await asyncio.sleep(1)
    assert sum(isinstance(a, FillResult) for a in answers) <= 1, answers
    assert len(live(cluster, "x")) <= 1, (live(cluster, "x"), answers)


async def test_a_cluster_full_callback_may_fill_another_id_of_its_batch(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=2)
    await cluster.settle()
    await fill_local(n1, 1)
    await fill_local(n2, 1, prefix="n2")  # n2 has 1 free; n1 believes 2
    inner: list[object] = []

    async def failed(peer: str, bucket: str, task_id: str, error: str) -> None:
        inner.append(task_id)
        try:
            inner.append(await n1.fill(bucket, "y", task_type=BOMB))  # y: same batch, placed
        except Exception as exc:
            inner.append(exc)

    n1.on_peer_schedule_failed = failed
    async with asyncio.timeout(60):  # (it hung: the callback waited for its own batch)
        answers = await asyncio.gather(n1.fill_future("jobs", "y", task_type=BOMB),
                                       n1.fill_future("jobs", "x", task_type=BOMB),
                                       return_exceptions=True)
    assert isinstance(answers[1], ClusterFullError), (answers, inner)


async def test_no_backup_room_from_the_holder_is_not_an_unknown(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1, replicas=1)
    n2 = await cluster.add("n2", max_bucket=5, replicas=1)
    await cluster.settle()
    await fill_local(n1, 1)
    assert (await n1.fill("jobs", "x", task_type=BOMB)).node_id == "n2"  # backup on n1
    await cluster.add("n3", max_bucket=5, replicas=1)
    await cluster.settle()
    fail_calls(n2, Kind.ENDED, after=False)  # n1 never hears x ended
    await asyncio.sleep(31)
    assert live(cluster, "x") == []
    await fill_local(n1, 1, prefix="again")
    fail_calls(n2, Kind.FILL, after=False)  # n2 cannot place backups now
    try:
        placed = await n1.fill("jobs", "x", task_type=BOMB)
    except PlacementUnknownError as exc:
        pytest.fail(f"x is live nowhere (n2 said 'no backup room'), yet: {exc}")
    assert live(cluster, "x") == [placed.node_id]


async def new_x_is_routed_and_its_loss_reported(cluster: Cluster, n1: TaskBucketGroup,
                                                holder: str = "n2") -> None:
    """The new x is live on ``holder`` and n1 routes it there; the holder is
    killed: n1 reports x lost (its one loss report)."""
    assert live(cluster, "x") == [holder]
    route = n1._routes.get("jobs", "x")
    assert route is not None and route[0] == holder
    lost: list[tuple[str, str, list[str]]] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    cluster.net.down(holder)  # kill -9
    await asyncio.sleep(CFG.lost_after + 3)
    assert lost == [(holder, "jobs", ["x"])]


async def test_a_late_ended_notice_of_an_earlier_task_keeps_the_new_ones_route(
        cluster: Cluster) -> None:
    """x ran on n2 and ended; before n2's ended notice went out, n1 filled x
    again and placed it on n2. The notice is about the earlier x: n1 keeps
    the new x's route, so its loss is reported when n2 crashes."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=5)
    await cluster.settle()
    await fill_local(n1, 1)
    assert (await n1.fill("jobs", "x", task_type=TaskType.IMMEDIATE)).node_id == "n2"
    await asyncio.sleep(0.01)  # x ran on n2; its notice waits for the next flush
    assert runs(cluster, "x") == 1
    assert (await n1.fill("jobs", "x", task_type=BOMB)).node_id == "n2"
    await asyncio.sleep(1)  # the notice has been delivered
    await new_x_is_routed_and_its_loss_reported(cluster, n1)


@pytest.mark.parametrize("delivered", [False, True])
async def test_a_requeued_ended_notice_of_an_earlier_task_keeps_the_new_ones_route(
        cluster: Cluster, delivered: bool) -> None:
    """As above, with the notice of the earlier x sent, then queued again as
    undelivered (lost on the way, or applied with its answer lost) while
    n1 placed x on n2 again: it is not sent again. (Found by review.)"""
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=5)
    await cluster.settle()
    await fill_local(n1, 1)
    real = n2.transport.call
    first = [True]

    async def call(addr: str, kind: Kind, message: dict[str, Any], timeout: float) -> Any:
        if kind is Kind.ENDED and first:  # the first notice times out
            first.clear()
            if delivered:
                await real(addr, kind, message, timeout)  # applied; its answer is lost
            await asyncio.sleep(timeout)
            raise PeerUnavailableError("ENDED timed out")
        return await real(addr, kind, message, timeout)

    n2.transport.call = call  # type: ignore[method-assign]
    assert (await n1.fill("jobs", "x", task_type=TaskType.IMMEDIATE)).node_id == "n2"
    await asyncio.sleep(0.1)  # x ran on n2; its notice is on its way (to be queued again)
    assert runs(cluster, "x") == 1
    assert (await n1.fill("jobs", "x", task_type=BOMB)).node_id == "n2"  # a new x
    await asyncio.sleep(1.5)  # the first notice's attempt is over; the queue was sent
    await new_x_is_routed_and_its_loss_reported(cluster, n1)


@pytest.mark.parametrize("lands", ["after the new route", "before the fill's reply"])
async def test_an_ended_notice_in_flight_about_an_earlier_task_keeps_the_new_ones_route(
        cluster: Cluster, lands: str) -> None:
    """As above, with the notice of the earlier x already on the wire when
    n2 takes the new x, and reaching n1 after n1 sent the new forward:
    once n1 has routed the new x there, or while the fill's reply is still
    on its way (the earlier x's route had expired: the notice overtakes the
    verdict). The notice names the batch that brought the earlier x, so n1
    knows it is about that one."""
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=5)
    await cluster.settle()
    await fill_local(n1, 1)
    released = asyncio.Event()
    notice_in = asyncio.Event()
    real_n2, real_n1 = n2.transport.call, n1.transport.call

    async def n2_call(addr: str, kind: Kind, message: dict[str, Any], timeout: float) -> Any:
        if kind is Kind.ENDED and not released.is_set():  # on the wire, slow
            await released.wait()
            try:
                return await real_n2(addr, kind, message, timeout)
            finally:
                notice_in.set()
        return await real_n2(addr, kind, message, timeout)

    async def n1_call(addr: str, kind: Kind, message: dict[str, Any], timeout: float) -> Any:
        reply = await real_n1(addr, kind, message, timeout)
        if kind is Kind.FILL and lands == "before the fill's reply" and ended_sent:
            released.set()  # n2 has taken the new x: the old notice lands first
            await notice_in.wait()
        return reply

    ended_sent: list[bool] = []
    n2.transport.call = n2_call  # type: ignore[method-assign]
    n1.transport.call = n1_call  # type: ignore[method-assign]
    assert (await n1.fill("jobs", "x", task_type=TaskType.IMMEDIATE,
                          life_span=0.5)).node_id == "n2"
    await asyncio.sleep(0.1)  # x ran on n2; its notice is on the wire
    assert runs(cluster, "x") == 1
    if lands == "before the fill's reply":
        await asyncio.sleep(2)  # the route expired: the fill places x anew
        await n1.fill("jobs", "y")  # (routes are swept as one is added)
        assert n1._routes.get("jobs", "x") is None
    ended_sent.append(True)
    assert (await n1.fill("jobs", "x", task_type=BOMB)).node_id == "n2"  # a new x
    released.set()
    await notice_in.wait()
    await asyncio.sleep(0.5)
    await new_x_is_routed_and_its_loss_reported(cluster, n1)


def hold_ended(group: TaskBucketGroup) -> asyncio.Event:
    """``group``'s ENDED notices wait on the wire until the event is set (a
    minute at most: a failed test does not hang its teardown)."""
    released = asyncio.Event()
    real = group.transport.call

    async def call(addr: str, kind: Kind, message: dict[str, Any], timeout: float) -> Any:
        if kind is Kind.ENDED and not released.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), 60)
        return await real(addr, kind, message, timeout)

    group.transport.call = call  # type: ignore[method-assign]
    return released


async def test_an_ended_notice_in_flight_about_a_handed_off_task_keeps_the_new_ones_route(
        cluster: Cluster) -> None:
    """x went n1 -> n2; n2 stopped and handed it to n3, where it ran; n3's
    notice (naming no batch of n1's: x came by handoff) is on the wire when
    n1 fills x again, onto n3, its route. The notice is about the earlier x.
    (Found by review.)"""
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=5)
    await cluster.settle()
    await fill_local(n1, 1)
    assert (await n1.fill("jobs", "x", task_type=BOMB, run_after=10)).node_id == "n2"
    n3 = await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    await n2.stop()
    del cluster.groups["n2"]
    await asyncio.sleep(1)
    assert live(cluster, "x") == ["n3"]
    route = n1._routes.get("jobs", "x")
    assert route is not None and route[0] == "n3"
    released = hold_ended(n3)
    await asyncio.sleep(10)  # x ran on n3; its notice is held on the wire
    assert runs(cluster, "x") == 1 and live(cluster, "x") == []
    assert (await n1.fill("jobs", "x", task_type=BOMB)).node_id == "n3"  # a new x
    released.set()
    await asyncio.sleep(0.5)
    await new_x_is_routed_and_its_loss_reported(cluster, n1, "n3")


async def x_ended_on_n1_then_again_on_n2(cluster: Cluster, run_after: float
                                         ) -> TaskBucketGroup:
    """Immediate ``x`` ran and ended on n1 (n1's record: FINISHED); then n2
    filled time-bomb ``x`` again, due in ``run_after`` s (pending on n2).
    Returns n1."""
    n1 = await cluster.add("n1", max_bucket=5)
    n2 = await cluster.add("n2", max_bucket=5)
    await cluster.settle()
    assert (await n1.fill("jobs", "x")).node_id == "n1"
    await asyncio.sleep(0.1)
    assert runs(cluster, "x") == 1
    assert (await n2.fill("jobs", "x", task_type=BOMB, run_after=run_after)).node_id == "n2"
    return n1


@pytest.mark.parametrize("kind", ["drain", "get"])
async def test_a_lookup_through_a_node_where_the_id_ended_finds_a_newer_task(
        cluster: Cluster, kind: str) -> None:
    """x ran and ended on n1; then n2 filled x (a new task, pending on n2).
    A drain or get through n1 must reach the new x, not answer from n1's
    record of the earlier one (a drain would then stop nothing, and x run
    after the caller heard FINISHED)."""
    n1 = await x_ended_on_n1_then_again_on_n2(cluster, run_after=10)
    if kind == "drain":
        result = await n1.drain("jobs", "x")
        assert (result.outcome, result.node_id) == (DrainOutcome.DRAINED, "n2")
        await asyncio.sleep(15)
        assert runs(cluster, "x") == 1
    else:
        info = await n1.get("jobs", "x")
        assert info is not None and info.node_id == "n2" and not info.state.terminal


@pytest.mark.parametrize("kind", ["drain", "get"])
async def test_a_record_here_is_no_answer_while_a_peer_that_may_hold_a_newer_task_is_silent(
        cluster: Cluster, kind: str) -> None:
    """x ran and ended on n1; then n2 filled x again (pending on n2), and a
    cut leaves n2 silent to n1. A drain or get through n1 cannot tell
    whether a newer x lives on n2: it raises PeerUnavailableError (naming
    n1's record), not FINISHED -- which would let the new x run after the
    caller heard it had finished. Once the cut heals, the drain stops the
    new x on n2; x ran once. Without the new x, n1's record answers again
    once every peer can be asked."""
    n1 = await x_ended_on_n1_then_again_on_n2(cluster, run_after=30)
    assert (await n1.fill("jobs", "y")).node_id == "n1"
    await asyncio.sleep(0.1)
    assert runs(cluster, "y") == 1
    cut = cluster.net.partition(["n1"], ["n2"])
    await asyncio.sleep(3)  # n1 sees n2 suspect or dead (not lost: lost_after is longer)
    assert n1._members.members["n2"].state is not MemberState.ALIVE
    for task_id in ("x", "y"):
        # (the record named, and n2 the peer that could not say)
        with pytest.raises(PeerUnavailableError,
                           match=r"ended .FINISHED on n1.*n2|n2.*ended .FINISHED on n1"):
            await (n1.drain("jobs", task_id) if kind == "drain" else n1.get("jobs", task_id))
    cut.heal()
    await asyncio.sleep(5)
    if kind == "drain":
        result = await n1.drain("jobs", "x")
        assert (result.outcome, result.node_id) == (DrainOutcome.DRAINED, "n2")
        assert (await n1.drain("jobs", "y")).outcome is DrainOutcome.FINISHED
    else:
        info = await n1.get("jobs", "x")
        assert info is not None and info.node_id == "n2" and not info.state.terminal
        info = await n1.get("jobs", "y")
        assert info is not None and info.node_id == "n1" and info.state.value == "finished"
    await asyncio.sleep(40)
    assert runs(cluster, "x") == (1 if kind == "drain" else 2)


@pytest.mark.parametrize("kind", ["drain", "get"])
async def test_the_route_holders_record_is_no_answer_while_a_peer_is_silent(
        cluster: Cluster, kind: str) -> None:
    """n1 forwarded x to a peer, where it ran; its ended notice is held, so
    n1 keeps its route. The other peer filled x again (pending there), and
    a cut leaves it silent to n1. Through n1, the route's holder answers
    how x ended there (a record): that is no answer while the other peer
    cannot say -- unknown, not FINISHED. Once the cut heals, the drain
    stops the new x."""
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=5)
    n3 = await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    await fill_local(n1, 1)
    released = [hold_ended(n2), hold_ended(n3)]
    sent = (await n1.fill("jobs", "x")).node_id
    await asyncio.sleep(0.1)
    assert runs(cluster, "x") == 1
    other = n3 if sent == "n2" else n2
    assert (await other.fill("jobs", "x", task_type=BOMB, run_after=30)).node_id == other.node_id
    cut = cluster.net.partition(["n1"], [other.node_id])
    await asyncio.sleep(3)
    assert n1._routes.get("jobs", "x") is not None  # its notice is held
    with pytest.raises(PeerUnavailableError, match=f"FINISHED on {sent}"):
        await (n1.drain("jobs", "x") if kind == "drain" else n1.get("jobs", "x"))
    cut.heal()
    for event in released:
        event.set()
    await asyncio.sleep(5)
    if kind == "drain":
        result = await n1.drain("jobs", "x")
        assert (result.outcome, result.node_id) == (DrainOutcome.DRAINED, other.node_id)
        await asyncio.sleep(40)
        assert runs(cluster, "x") == 1
    else:
        info = await n1.get("jobs", "x")
        assert info is not None and info.node_id == other.node_id
        assert not info.state.terminal


async def test_a_retried_drain_answers_drained_over_a_record_here_of_an_earlier_task(
        cluster: Cluster) -> None:
    """x ran and ended on n1 (n1's record: FINISHED); n2 filled x again. A
    drain through n1 stops the new x on n2 but its reply is lost: unknown.
    Retried, n2 answers from its record of that drain (DRAINED), and that
    is the answer -- not n1's FINISHED, which would tell the caller the job
    ran when the drain had stopped it."""
    n1 = await x_ended_on_n1_then_again_on_n2(cluster, run_after=30)
    switch = fail_calls(n1, Kind.DRAIN, after=True)  # applied on n2; the reply is lost
    with pytest.raises(PeerUnavailableError):
        await n1.drain("jobs", "x")
    assert live(cluster, "x") == []
    switch.clear()
    result = await n1.drain("jobs", "x")
    assert (result.outcome, result.node_id) == (DrainOutcome.DRAINED, "n2")
    await asyncio.sleep(40)
    assert runs(cluster, "x") == 1


async def test_a_peers_record_of_an_earlier_drain_is_no_answer_while_another_peer_is_silent(
        cluster: Cluster) -> None:
    """x was filled on n2 and drained there (n2 keeps the record: DRAINED);
    then n3 filled x again (pending on n3), and a cut leaves n3 silent to
    n1. A drain through n1 hears DRAINED from n2 -- a record of the earlier
    x, no live task stopped -- and nothing from n3: it raises
    PeerUnavailableError, not DRAINED (the new x would then run after the
    caller heard it was drained). Once the cut heals, the drain stops the
    new x on n3; x never ran."""
    n1 = await cluster.add("n1", max_bucket=5)
    n2 = await cluster.add("n2", max_bucket=5)
    n3 = await cluster.add("n3", max_bucket=5)
    await cluster.settle()
    assert (await n2.fill("jobs", "x", task_type=BOMB, run_after=30)).node_id == "n2"
    assert (await n2.drain("jobs", "x")).outcome is DrainOutcome.DRAINED
    assert (await n3.fill("jobs", "x", task_type=BOMB, run_after=30)).node_id == "n3"
    cut = cluster.net.partition(["n1"], ["n3"])
    await asyncio.sleep(3)  # n1 sees n3 suspect or dead (not lost: lost_after is longer)
    with pytest.raises(PeerUnavailableError, match="n3"):
        await n1.drain("jobs", "x")
    assert live(cluster, "x") == ["n3"]
    cut.heal()
    await asyncio.sleep(5)
    result = await n1.drain("jobs", "x")
    assert (result.outcome, result.node_id) == (DrainOutcome.DRAINED, "n3")
    await asyncio.sleep(40)
    assert runs(cluster, "x") == 0 and live(cluster, "x") == []


# -- a replicated task whose start gate waits past its deadline ------------------------------


async def gated_x(cluster: Cluster) -> tuple[TaskBucketGroup, str, Any]:
    """n1 forwarded replicated time-bomb ``x`` (due in 1 s, deadline in 3 s) to
    a peer H, then got room of its own back; then a partition leaves n1 and
    H on one half of four nodes: H sees no majority, so x's start gate
    waits (a backup across the cut may be taking it over), past x's
    deadline. Returns n1, H and the cut."""
    n1 = await cluster.add("n1", max_bucket=1, replicas=1, lost_after=30)
    for name in ("n2", "n3", "n4"):
        await cluster.add(name, max_bucket=5, replicas=1, lost_after=30)
    await cluster.settle()
    await fill_local(n1, 1)
    holder = (await n1.fill("jobs", "x", task_type=BOMB, run_after=1, life_span=3)).node_id
    assert holder != "n1"
    assert (await n1.drain("jobs", "local-0")).outcome is DrainOutcome.DRAINED  # room here
    others = [name for name in ("n2", "n3", "n4") if name != holder]
    cut = cluster.net.partition(["n1", holder], others)
    await asyncio.sleep(5.5)  # past x's deadline, and its route's at n1 (deadline + 1 s)
    assert live(cluster, "x") == [holder]  # its gate still waits
    return n1, holder, cut


async def healed_x_ends_unreported(cluster: Cluster, n1: TaskBucketGroup, holder: str,
                                   cut: Any, lost: list[Any]) -> None:
    """Once the cut heals, x's gate ends it out of time: it never ran, one
    outcome (EXHAUSTED) on its holder, no loss report, and its ended notice
    drops n1's route."""
    cut.heal()
    await asyncio.sleep(5)
    assert live(cluster, "x") == [] and runs(cluster, "x") == 0
    assert cluster.recorders[holder].hooks("x") == ["exhausted"]
    assert n1._routes.get("jobs", "x") is None and lost == []


async def test_a_fill_again_while_the_gate_waits_past_the_deadline_goes_to_the_holder(
        cluster: Cluster) -> None:
    """x stays pending on H, gated, past its deadline: H keeps telling n1 so,
    and n1 keeps its route. A fill of x again through n1 asks H first, which
    answers duplicate -- it is not filled here (room) beside the gated x.
    Once the cut heals, the gate ends x (out of time): one outcome, no loss."""
    n1, holder, cut = await gated_x(cluster)
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    with pytest.raises(DuplicateTaskError, match=holder):
        await n1.fill("jobs", "x", task_type=BOMB, run_after=1, life_span=3)
    assert live(cluster, "x") == [holder]
    await healed_x_ends_unreported(cluster, n1, holder, cut, lost)
    assert (await n1.fill("jobs", "x", task_type=BOMB)).node_id == "n1"  # free again


async def x_forwarded(cluster: Cluster) -> tuple[TaskBucketGroup, str]:
    """Three nodes with replicas; n1 forwarded time-bomb ``x`` (due in 1 s,
    deadline in 3 s) to a peer, then got room of its own back. Returns n1
    and x's holder."""
    n1 = await cluster.add("n1", max_bucket=1, replicas=1, lost_after=30)
    for name in ("n2", "n3"):
        await cluster.add(name, max_bucket=5, replicas=1, lost_after=30)
    await cluster.settle()
    await fill_local(n1, 1)
    holder = (await n1.fill("jobs", "x", task_type=BOMB, run_after=1, life_span=3)).node_id
    assert (await n1.drain("jobs", "local-0")).outcome is DrainOutcome.DRAINED  # room here
    return n1, holder


async def test_a_fill_again_while_the_gated_holder_is_cut_off_is_placement_unknown(
        cluster: Cluster) -> None:
    """x's holder H stalls before x is due: its gate waits (it sees no
    majority), and no word of it reaches n1, which holds H dead (not
    presumed lost): its route to x outlives x's deadline. Nothing forwarded
    from n1 since re-armed that route; a fill of x again through n1 (room)
    must still take it as held -- H cannot be asked: PlacementUnknownError,
    not a second x here."""
    n1, holder = await x_forwarded(cluster)
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    cluster.net.stall(holder)
    await asyncio.sleep(5.5)  # past x's deadline and its route's expiry
    assert live(cluster, "x") == [holder]
    with pytest.raises(PlacementUnknownError, match=holder):
        await n1.fill("jobs", "x", task_type=BOMB, run_after=1, life_span=3)
    assert live(cluster, "x") == [holder]
    cluster.net.resume(holder)
    await asyncio.sleep(5)
    assert live(cluster, "x") == [] and runs(cluster, "x") == 0
    assert cluster.recorders[holder].hooks("x") == ["exhausted"] and lost == []


async def test_a_fill_again_as_the_gated_holder_comes_back_asks_it_first(
        cluster: Cluster) -> None:
    """As above, but x is filled again the moment n1 sees H alive again --
    before H's word that x is still there (held while it was cut off) can
    come. n1 must not take x's route as expired then: it asks H, and x is
    never live on two nodes."""
    n1, holder = await x_forwarded(cluster)
    cluster.net.stall(holder)
    await asyncio.sleep(5.5)  # past x's deadline and its route's expiry
    cluster.net.resume(holder)
    while n1._members.members[holder].state is not MemberState.ALIVE:
        await asyncio.sleep(0.01)
    assert live(cluster, "x") == [holder]
    with contextlib.suppress(DuplicateTaskError):
        await n1.fill("jobs", "x", task_type=BOMB, run_after=1, life_span=3)
    assert live(cluster, "x") == [holder]  # (a new x, or the gated one)
    await asyncio.sleep(5)
    assert cluster.recorders[holder].hooks("x")[:1] == ["exhausted"]


async def test_a_drain_of_the_gated_task_answered_unknown_keeps_its_route(
        cluster: Cluster) -> None:
    """A drain of gated x through n1 asks H, which cannot drop x's backup
    (nor leave word with a majority): unknown. H forgot x's
    origin for that drain (its answer would tell n1); unknown, x is n1's
    again: H keeps telling n1 that x is still there, so a fill of x again
    through n1 (room) still asks H first -- not a second x beside the
    gated one -- and x's end (once the cut heals) is told to n1."""
    n1, holder, cut = await gated_x(cluster)
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    # Its backup's holder cannot be told (it is n1 here, so the call fails).
    notes = fail_calls(cluster.groups[holder], Kind.BACKUP_NOTE, after=False)
    with pytest.raises(PeerUnavailableError, match="could not find out"):
        await n1.drain("jobs", "x")
    await asyncio.sleep(1)  # (H gives up on it after n1 did)
    notes.clear()
    assert live(cluster, "x") == [holder]
    await asyncio.sleep(5)  # the route lapses unless H's words keep it
    with pytest.raises(DuplicateTaskError, match=holder):
        await n1.fill("jobs", "x", task_type=BOMB, run_after=1, life_span=3)
    assert live(cluster, "x") == [holder]
    await healed_x_ends_unreported(cluster, n1, holder, cut, lost)
