"""The cluster never lies: drain, get and fill stay true under faults.

In-memory cluster, faked loop clock. Each test injects one fault -- a lost
reply, a holder that answers with an error, a stalled holder, a crash, a
graceful stop with tasks in flight -- and checks that every answer is either
true or an honest "unknown" (PeerUnavailableError / PlacementUnknownError),
and that no task runs twice or after a DRAINED.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gobucket_py import (
    DrainOutcome,
    PeerUnavailableError,
    PlacementUnknownError,
    TaskBucketGroup,
    TaskState,
    TaskType,
)
from gobucket_py.cluster.protocol import Kind

from .test_cluster import CFG, Cluster, fill_local, spread

pytestmark = pytest.mark.looptime

BOMB = TaskType.TIME_BOMB



def runs(cluster: Cluster, task_id: str) -> int:
    return cluster.fired().count(task_id)


def fail_calls(group: TaskBucketGroup, kind: Kind, *, after: bool,
               error: Exception | None = None) -> list[int]:
    """Make ``group``'s calls of ``kind`` fail: ``after`` the peer applied
    them (the reply is lost) or before (never sent). Returns a switch list:
    empty it to stop failing."""
    real = group.transport.call
    switch = [1]

    async def call(addr: str, k: Kind, message: dict[str, Any], timeout: float
                   ) -> dict[str, Any]:
        if k is kind and switch:
            if after:
                await real(addr, k, message, timeout)
            raise error or PeerUnavailableError(f"reply of {k.name} lost")
        return await real(addr, k, message, timeout)

    group.transport.call = call  # type: ignore[method-assign]
    return switch


# -- forwards that cannot duplicate ---------------------------------------------------------


async def test_lost_reply_to_a_forward_is_settled_not_placed_twice(cluster: Cluster) -> None:
    n1 = await spread(cluster)
    fail_calls(n1, Kind.FILL, after=True)  # applied on the peer; the reply never comes
    placed = await n1.fill("jobs", "job")
    assert placed.forwarded
    holders = [n for n in ("n2", "n3") if cluster.bucket(n).stats()["filled"]]
    assert holders == [placed.node_id]  # settled with the first peer: one copy
    await asyncio.sleep(1)
    assert runs(cluster, "job") == 1


async def test_forward_that_never_arrived_is_voided_then_placed(cluster: Cluster) -> None:
    n1 = await spread(cluster)
    switch = fail_calls(n1, Kind.FILL, after=False)  # lost on the way (maybe_delivered)
    real_fill_count = [0]
    original = n1.transport.call

    async def once(addr: str, k: Kind, message: dict[str, Any], timeout: float
                   ) -> dict[str, Any]:
        if k is Kind.FILL:
            real_fill_count[0] += 1
            if real_fill_count[0] > 1:
                switch.clear()  # the retry elsewhere gets through
        return await original(addr, k, message, timeout)

    n1.transport.call = once  # type: ignore[method-assign]
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    assert placed.forwarded and "job" in cluster.bucket(placed.node_id)
    first = next(n for n in ("n2", "n3") if n != placed.node_id)
    assert cluster.bucket(first).stats()["filled"] == 0
    # The voided batch turning up late is refused: no second copy, ever.
    ledger = cluster.groups[first]._batches
    assert len(ledger) == 1


async def test_a_batch_delivered_twice_is_filled_once(cluster: Cluster) -> None:
    n1 = await spread(cluster)
    sent: list[dict[str, Any]] = []
    real = n1.transport.call

    async def record(addr: str, k: Kind, message: dict[str, Any], timeout: float
                     ) -> dict[str, Any]:
        if k is Kind.FILL:
            sent.append((addr, dict(message)))  # type: ignore[arg-type]
        return await real(addr, k, message, timeout)

    n1.transport.call = record  # type: ignore[method-assign]
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    addr, message = sent[0]  # type: ignore[misc]
    again = await real(addr, Kind.FILL, message, 1.0)  # a duplicate on the wire
    assert again["results"] == ["ok"]  # answered as the first time...
    assert cluster.bucket(placed.node_id).stats()["filled"] == 1  # ...not filled again


async def test_unsettled_forward_is_placement_unknown_and_drain_is_unknown(
        cluster: Cluster) -> None:
    n1 = await spread(cluster)
    fail_calls(n1, Kind.FILL, after=True)
    fail_calls(n1, Kind.SETTLE, after=False)  # the peer cannot be asked in time
    with pytest.raises(PlacementUnknownError) as caught:
        await n1.fill("jobs", "job", task_type=BOMB)
    holder = caught.value.node_id
    assert "job" in cluster.bucket(holder)  # it was applied; nothing else has it
    assert sum("job" in cluster.bucket(n) for n in ("n2", "n3")) == 1
    result = await n1.drain("jobs", "job")  # the route was kept: drain finds it
    assert result.outcome is DrainOutcome.DRAINED and result.node_id == holder
    await asyncio.sleep(40)
    assert runs(cluster, "job") == 0


def hold_fills(group: TaskBucketGroup) -> tuple[list[tuple[str, dict[str, Any]]], list[int]]:
    """Make ``group``'s next FILL vanish into a buffer (kept, to deliver
    later with :func:`deliver`) and its SETTLEs fail until the returned
    switch is emptied."""
    real = group.transport.call
    held: list[tuple[str, dict[str, Any]]] = []
    switch = [1]

    async def call(addr: str, k: Kind, message: dict[str, Any], timeout: float
                   ) -> dict[str, Any]:
        if k is Kind.FILL and not held:
            held.append((addr, message))
            raise PeerUnavailableError("the FILL is stuck in a buffer")
        if k is Kind.SETTLE and switch:
            raise PeerUnavailableError("cannot reach the peer to settle")
        return await real(addr, k, message, timeout)

    group.transport.call = call  # type: ignore[method-assign]
    group.deliver = real  # type: ignore[attr-defined]
    return held, switch


async def deliver(group: TaskBucketGroup, held: tuple[str, dict[str, Any]]) -> Any:
    """Deliver a FILL that :func:`hold_fills` held back."""
    addr, message = held
    return await group.deliver(addr, Kind.FILL, message, 1.0)  # type: ignore[attr-defined]


async def test_drain_of_an_unsettled_fill_voids_it_so_it_never_runs_later(
        cluster: Cluster) -> None:
    n1 = await spread(cluster)
    held, settle_fails = hold_fills(n1)
    with pytest.raises(PlacementUnknownError) as caught:
        await n1.fill("jobs", "job", task_type=BOMB)
    settle_fails.clear()
    # The peer has not seen the batch yet: the drain settles it first (void),
    # so its "not here" is certain.
    assert (await n1.drain("jobs", "job")).outcome is DrainOutcome.NOT_FOUND
    late = await deliver(n1, held[0])
    assert late["results"] == ["void"]  # the batch turns up: refused for good
    assert "job" not in cluster.bucket(caught.value.node_id)
    await asyncio.sleep(40)
    assert runs(cluster, "job") == 0


def third(caught: pytest.ExceptionInfo[PlacementUnknownError]) -> str:
    """The peer of spread()'s n1 that is not the holder named by ``caught``."""
    return next(n for n in ("n2", "n3") if n != caught.value.node_id)


@pytest.mark.parametrize("op", ["drain", "get"])
async def test_a_third_node_is_unknown_while_the_origin_cannot_settle_its_forward(
        cluster: Cluster, op: str) -> None:
    # The holder has not seen the batch (yet): its "not here" proves nothing,
    # and the origin, which cannot settle the forward, must not add its own.
    await unknown_until_the_held_forward_settles(cluster, await spread(cluster), op, ran=0)


async def unknown_until_the_held_forward_settles(cluster: Cluster, n1: TaskBucketGroup,
                                                 op: str, ran: int) -> None:
    """n1 (full) forwards time-bomb "job", its batch held on the wire, and
    cannot settle it: a third node's drain or get is unknown. The batch
    turns up (taken) and n1 can settle: asked again, the third node finds
    the job (a drain stops it: "job" has run ``ran`` times, all before)."""
    held, settle_fails = hold_fills(n1)
    with pytest.raises(PlacementUnknownError) as caught:
        await n1.fill("jobs", "job", task_type=BOMB)
    asker = cluster.groups[third(caught)]
    with pytest.raises(PeerUnavailableError, match="not settled"):
        await (asker.drain if op == "drain" else asker.get)("jobs", "job")
    late = await deliver(n1, held[0])  # the batch turns up: taken
    assert late["results"] == ["ok"]
    settle_fails.clear()
    if op == "drain":  # asked again, the third node finds it and drains it
        result = await asker.drain("jobs", "job")
        assert (result.outcome, result.node_id) == (DrainOutcome.DRAINED,
                                                    caught.value.node_id)
        await asyncio.sleep(40)
        assert runs(cluster, "job") == ran
    else:
        info = await asker.get("jobs", "job")
        assert info is not None and info.state is TaskState.PENDING


@pytest.mark.parametrize("op", ["drain", "get"])
async def test_a_third_node_gets_a_certain_answer_once_the_origin_settles(
        cluster: Cluster, op: str) -> None:
    n1 = await spread(cluster)
    held, settle_fails = hold_fills(n1)
    with pytest.raises(PlacementUnknownError) as caught:
        await n1.fill("jobs", "job", task_type=BOMB)
    settle_fails.clear()
    asker = cluster.groups[third(caught)]
    # Asked by a peer, the origin settles its forward first (void: the batch
    # has not arrived), so "not here" is certain...
    if op == "drain":
        assert (await asker.drain("jobs", "job")).outcome is DrainOutcome.NOT_FOUND
    else:
        assert await asker.get("jobs", "job") is None
    assert n1._routes.get("jobs", "job") is None
    late = await deliver(n1, held[0])
    assert late["results"] == ["void"]  # ...and the late batch is refused for good
    await asyncio.sleep(40)
    assert runs(cluster, "job") == 0


@pytest.mark.parametrize("op", ["drain", "get"])
async def test_a_record_at_the_origin_does_not_hide_its_unsettled_forward_of_the_id(
        cluster: Cluster, op: str) -> None:
    """An earlier "job" ran and ended on the origin n1 (its record:
    FINISHED); n1, full, forwarded "job" again, and cannot settle that
    forward. Asked by a third node, n1 must not answer from its record
    alone: the new job may be on its way to its holder, whose "not here"
    proves nothing yet. Unknown until n1 can settle; then the new job is
    found (and a drain stops it)."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=50)
    await cluster.add("n3", max_bucket=50)
    await cluster.settle()
    assert (await n1.fill("jobs", "job")).node_id == "n1"
    await asyncio.sleep(0.1)
    assert runs(cluster, "job") == 1
    await fill_local(n1, 1)
    await unknown_until_the_held_forward_settles(cluster, n1, op, ran=1)  # the first one


async def test_a_third_node_is_relayed_the_holders_answer_when_the_batch_had_arrived(
        cluster: Cluster) -> None:
    n1 = await spread(cluster)
    held, settle_fails = hold_fills(n1)
    with pytest.raises(PlacementUnknownError) as caught:
        await n1.fill("jobs", "job", task_type=BOMB)
    holder = caught.value.node_id
    asker = cluster.groups[third(caught)]
    answered = asyncio.Event()
    asker_call, origin_call = asker.transport.call, n1.transport.call

    async def ask(addr: str, k: Kind, message: dict[str, Any], timeout: float
                  ) -> dict[str, Any]:
        reply = await asker_call(addr, k, message, timeout)
        if k is Kind.DRAIN and addr == holder:
            assert reply["outcome"] == "not_found"  # the batch has not arrived
            answered.set()
        return reply

    async def settle(addr: str, k: Kind, message: dict[str, Any], timeout: float
                     ) -> dict[str, Any]:
        if k is Kind.SETTLE and held:
            # The holder said "not here" to the third node; only now does
            # the batch arrive, before the origin settles it.
            await answered.wait()
            await deliver(n1, held.pop())
            settle_fails.clear()
        return await origin_call(addr, k, message, timeout)

    asker.transport.call = ask  # type: ignore[method-assign]
    n1.transport.call = settle  # type: ignore[method-assign]
    result = await asker.drain("jobs", "job")
    assert not held  # delivered during the drain
    assert result.outcome is DrainOutcome.DRAINED and result.node_id == holder
    await asyncio.sleep(40)
    assert runs(cluster, "job") == 0


async def test_a_third_node_hears_lost_from_the_origin_of_a_lost_task(
        cluster: Cluster) -> None:
    n1 = await spread(cluster)
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    asker = next(n for n in ("n2", "n3") if n != placed.node_id)
    cluster.net.hang(placed.node_id)
    await asyncio.sleep(CFG.lost_after + 3)  # presumed lost: reported by n1
    assert (await n1.drain("jobs", "job")).outcome is DrainOutcome.LOST
    result = await cluster.groups[asker].drain("jobs", "job")
    assert result.outcome is DrainOutcome.LOST and result.node_id == placed.node_id
    info = await cluster.groups[asker].get("jobs", "job")
    assert info is not None and info.state is TaskState.LOST


async def test_unsettled_handoff_is_settled_by_the_origin_and_reported_lost(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=50)
    await cluster.settle()
    await fill_local(n1, 1)
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    assert placed.node_id == "n2"
    await cluster.add("n3", max_bucket=50)
    await cluster.settle()
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    held, _ = hold_fills(n2)  # n2's handoff to n3 cannot be settled
    await n2.stop()
    assert [e for e in n2.events.since() if e["kind"] == "handoff_unknown"]
    del cluster.groups["n2"]
    await asyncio.sleep(1)  # n1 settles the handoff with n3 on n2's behalf: void
    assert lost == [("n3", "jobs", ["job"])]
    assert (await n1.drain("jobs", "job")).outcome is DrainOutcome.LOST
    addr, message = held[0]  # n2 has exited; its batch turns up late
    late = await n1.transport.call(addr, Kind.FILL, message, 1.0)
    assert late["results"] == ["void"]
    await asyncio.sleep(40)
    assert runs(cluster, "job") == 0
    assert n1.lost_counts["jobs"] == 1


# -- drain and get: unknown is not NOT_FOUND -------------------------------------------------


@pytest.mark.parametrize("status", [401, 500])
async def test_holder_answering_with_an_error_is_unknown_and_route_kept(
        cluster: Cluster, status: int) -> None:
    from gobucket_py.cluster.transport import raise_for_status

    n1 = await spread(cluster)
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    holder = cluster.groups[placed.node_id]
    serve = holder.transport._handler
    assert serve is not None

    async def erring(kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
        if kind in (Kind.DRAIN, Kind.GET):
            raise_for_status(holder.address, status, "clock step / internal error")
        return await serve(kind, message)

    holder.transport._handler = erring
    with pytest.raises(PeerUnavailableError, match="try again"):
        await n1.drain("jobs", "job")
    with pytest.raises(PeerUnavailableError):
        await n1.get("jobs", "job")
    holder.transport._handler = serve
    result = await n1.drain("jobs", "job")  # the route was kept
    assert result.outcome is DrainOutcome.DRAINED and result.node_id == placed.node_id
    await asyncio.sleep(40)
    assert runs(cluster, "job") == 0


async def test_dead_holder_with_the_same_boot_is_unknown_until_it_returns(
        cluster: Cluster) -> None:
    n1 = await spread(cluster)
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    cluster.net.hang(placed.node_id)  # SIGSTOP, docker pause, a partition
    await cluster.settle(2)  # well past detection: it is DEAD to the others
    assert {p.node_id: p.state for p in n1.peers}[placed.node_id].value == "dead"
    for asker in ("n1", "n2", "n3"):
        if asker == placed.node_id:
            continue
        with pytest.raises(PeerUnavailableError):
            await cluster.groups[asker].drain("jobs", "job")
    cluster.net.up(placed.node_id)  # it resumes with the same boot id
    await cluster.settle(1)
    result = await n1.drain("jobs", "job")
    assert result.outcome is DrainOutcome.DRAINED
    await asyncio.sleep(40)
    assert runs(cluster, "job") == 0


async def test_presumed_lost_reports_only_live_tasks_once(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=50)
    await cluster.settle()
    await fill_local(n1, 1)
    lost: list[tuple[str, str, list[str]]] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    await n1.fill("jobs", "quick")  # immediate: runs and ends on n2
    await n1.fill("jobs", "drained", task_type=BOMB)
    await n1.fill("jobs", "pending", task_type=BOMB)
    await n1.drain("jobs", "drained")
    await cluster.settle(1)  # n2's ended notices reach n1
    cluster.net.hang("n2")
    await asyncio.sleep(CFG.lost_after + 3)
    assert lost == [("n2", "jobs", ["pending"])]  # not the ended ones, and once
    assert n1.lost_counts["jobs"] == 1
    assert (await n1.drain("jobs", "pending")).outcome is DrainOutcome.LOST
    info = await n1.get("jobs", "pending")
    assert info is not None and info.state is TaskState.LOST
    assert any(e["kind"] == "tasks_lost" for e in n1.events.since(0))


async def test_graceful_restart_is_not_a_loss_and_drains_follow_the_handoff(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    n2 = await cluster.add("n2", max_bucket=50)
    await cluster.add("n3", max_bucket=50)
    await cluster.settle()
    await fill_local(n1, 1)
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    on_n2 = []
    for i in range(30):
        placed = await n1.fill("jobs", f"t{i}", task_type=BOMB)
        if placed.node_id == "n2":
            on_n2.append(placed.task_id)
    assert on_n2
    # Drains sent while n2 is leaving: it still serves and follows its handoffs.
    stopping = asyncio.create_task(n2.stop())
    await asyncio.sleep(0)
    first = await n1.drain("jobs", on_n2[0])
    await stopping
    second = await n1.drain("jobs", on_n2[1])
    assert first.outcome is DrainOutcome.DRAINED and second.outcome is DrainOutcome.DRAINED
    del cluster.groups["n2"]
    await cluster.add("n2", max_bucket=50)  # same id, new boot id
    await cluster.settle(1)
    assert lost == []  # a graceful handoff is never a loss
    for task_id in on_n2[2:]:
        info = await n1.get("jobs", task_id)
        assert info is not None and info.node_id == "n3" and info.state is TaskState.PENDING
    await asyncio.sleep(40)
    assert not set(cluster.fired()) & set(on_n2[:2])
    assert all(cluster.fired().count(t) <= 1 for t in on_n2)


async def test_retried_drain_after_a_lost_reply_answers_drained(cluster: Cluster) -> None:
    n1 = await spread(cluster)
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    switch = fail_calls(n1, Kind.DRAIN, after=True)  # applied; the reply is lost
    with pytest.raises(PeerUnavailableError):
        await n1.drain("jobs", "job")
    switch.clear()
    result = await n1.drain("jobs", "job")
    assert result.outcome is DrainOutcome.DRAINED and result.node_id == placed.node_id


# -- stop with forwards in flight --------------------------------------------------------------


async def test_stop_while_forwards_are_in_flight_strands_no_caller(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=1000)
    await cluster.settle()
    await fill_local(n1, 1)
    cluster.net.hang("n2")  # the forwards will get no answer
    many = asyncio.create_task(n1.fill_many("jobs", [(f"m{i}", None) for i in range(20)],
                                            task_type=BOMB))
    one = asyncio.create_task(n1.fill("jobs", "single", task_type=BOMB))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await n1.stop()
    config = n1.config
    assert loop.time() - t0 <= config.stop_grace + config.forward_timeout + \
        config.settle_timeout + config.request_timeout + 0.1
    results = await asyncio.wait_for(many, 0.1)  # returned, not stranded
    assert len(results) == 20
    assert all(isinstance(r, PlacementUnknownError) for r in results)
    with pytest.raises(PlacementUnknownError):
        await asyncio.wait_for(one, 0.1)  # an answer, not a bare CancelledError


async def test_presumed_lost_holder_that_returns_is_asked_again(cluster: Cluster) -> None:
    """"Presumed lost" is a presumption: a holder that comes back with the
    same boot id still holds its tasks, so drains ask it again."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=50)
    await cluster.settle()
    await fill_local(n1, 1)
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    await n1.fill("jobs", "pending", task_type=BOMB)
    cluster.net.hang("n2")
    await asyncio.sleep(CFG.lost_after + 3)
    assert lost == [("n2", "jobs", ["pending"])]
    assert (await n1.drain("jobs", "pending")).outcome is DrainOutcome.LOST
    cluster.net.up("n2")
    await cluster.settle(1)
    assert any(e["kind"] == "tasks_returned" for e in n1.events.since(0))
    result = await n1.drain("jobs", "pending")
    assert result.outcome is DrainOutcome.DRAINED and result.node_id == "n2"
    await asyncio.sleep(40)
    assert runs(cluster, "pending") == 0


async def test_drain_between_taking_and_handing_off_waits_for_the_move(
        cluster: Cluster) -> None:
    """A drain served right after stop() took a task out of its bucket (before
    the handoff coroutine ran) must see the move, not answer NOT_FOUND."""
    n1 = await cluster.add("n1", max_bucket=10)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    await n1.fill("jobs", "T", task_type=BOMB, run_after=0.5)
    bucket = n1.buckets["jobs"]
    real_take = bucket.take_pending
    answers: list[asyncio.Task[Any]] = []

    def take_pending(task_id: str) -> Any:
        task = real_take(task_id)
        answers.append(asyncio.get_running_loop().create_task(
            n1._lookup.drain_here("jobs", task_id)))
        return task

    bucket.take_pending = take_pending  # type: ignore[method-assign]
    await n1.stop()
    outcome, node, record = answers[0].result()
    assert outcome is DrainOutcome.DRAINED and node == "n2" and not record  # stopped there
    await asyncio.sleep(2)
    assert runs(cluster, "T") == 0


async def test_tasks_on_a_dead_holder_are_reported_even_past_their_deadline(
        cluster: Cluster) -> None:
    """Routes to a silent holder outlive their tasks' deadlines until the
    holder is presumed lost, so short-lived tasks are reported too."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=10)
    await cluster.settle()
    await fill_local(n1, 1)
    lost: list[tuple[str, str, list[str]]] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    ids = [f"T{i}" for i in range(3)]
    for task_id in ids:
        await n1.fill("jobs", task_id, task_type=BOMB, run_after=1, life_span=2)
    cluster.net.down("n2")  # crashes and stays dead
    await cluster.add("n3", max_bucket=10)
    await asyncio.sleep(4)  # deadlines (+1 s) pass before lost_after
    await n1.fill("jobs", "sweeper", task_type=BOMB)  # a later forward sweeps routes
    await asyncio.sleep(CFG.lost_after)
    assert [(peer, sorted(task_ids)) for peer, _, task_ids in lost] == [("n2", ids)]
    for task_id in ids:
        assert (await n1.drain("jobs", task_id)).outcome is DrainOutcome.LOST


async def test_get_of_a_live_task_keeps_its_route(cluster: Cluster) -> None:
    """Asking about a task must not make its origin forget where it is: the
    route is what lets a later crash be reported as a loss."""
    n1 = await spread(cluster)
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    placed = await n1.fill("jobs", "job", task_type=BOMB)
    info = await n1.get("jobs", "job")
    assert info is not None and info.state is TaskState.PENDING
    assert n1._routes.get("jobs", "job") is not None
    cluster.net.down(placed.node_id)
    await asyncio.sleep(CFG.lost_after + 3)
    assert lost == [(placed.node_id, "jobs", ["job"])]


async def test_a_left_node_restarted_behind_a_cut_link_is_unknown_not_gone(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=10)
    await cluster.add("n2", max_bucket=10)
    n3 = await cluster.add("n3", max_bucket=10)
    await cluster.settle()
    await n1.stop()  # it leaves, exits...
    del cluster.groups["n1"]
    # ...and its address refuses: nothing is there, a certain "not here".
    assert (await n3.drain("jobs", "nothing")).outcome is DrainOutcome.NOT_FOUND
    # A new incarnation at the same address, whose replies to n3 are cut.
    cluster.net.partition(["n1"], ["n3"], one_way=True)
    n1 = await cluster.add("n1", max_bucket=10, seeds=["n2"])
    await n1.fill("jobs", "job", task_type=BOMB)
    # n3 still has the old n1 as LEFT; a timeout from its address is no proof.
    with pytest.raises(PeerUnavailableError):
        await n3.drain("jobs", "job")
    cluster.net.heal()
    await cluster.settle()
    assert (await n3.drain("jobs", "job")).outcome is DrainOutcome.DRAINED
    await asyncio.sleep(40)
    assert runs(cluster, "job") == 0


async def test_void_from_a_restarted_holder_does_not_settle_the_old_batch() -> None:
    """A FILL batch whose reply is lost when its holder is killed, settled
    with the holder's *new* incarnation (restarted at the same address
    before this node heard of it): the new one never saw the batch and
    answers void, yet the old one may have taken (and run) it. That is not
    "not taken": the tasks must not be placed anywhere else (the kill -9
    chaos test with replicas saw them run twice, or refused as duplicates
    of their own promoted backups)."""
    from gobucket_py.cluster.forward import Forwarder, Unsettled
    from gobucket_py.cluster.membership import Member
    from gobucket_py.config import GroupConfig

    class Net:
        def __init__(self) -> None:
            self.kinds: list[Kind] = []

        async def call(self, addr: str, kind: Kind, message: dict[str, Any],
                       timeout: float) -> dict[str, Any]:
            self.kinds.append(kind)
            if kind is Kind.FILL:  # applied by the old incarnation, which then died
                raise PeerUnavailableError("peer n2 failed on FILL: ServerDisconnectedError")
            assert kind is Kind.SETTLE  # answered by the new one: it never saw the batch
            return {"v": 1, "void": True, "from": ["n2", "newboot", "n2", 0, False, {}]}

    class Members:
        boot = "n1boot"

        def header(self) -> list[Any]:
            return ["n1", "n1boot", "n1", 0, False, {}]

        def heard(self, raw: object) -> None:
            return None

    net = Net()
    forwarder = Forwarder(net, Members(), GroupConfig.local())  # type: ignore[arg-type]
    member = Member("n2", "n2", "oldboot")  # not yet heard of the restart
    item = ("jobs", "job", 1, b"", 1.0, 5.0)
    with pytest.raises(Unsettled):
        await forwarder.send(member, item)
    assert net.kinds[:2] == [Kind.FILL, Kind.SETTLE]


async def test_a_forward_whose_reply_cannot_be_read_is_settled_not_placed_again(
        cluster: Cluster) -> None:
    """A peer applied a FILL batch and answered 200 with a body this node
    cannot read (another protocol version, a corrupt or oversized body): it
    may have taken the tasks, so they must not go elsewhere as though it had
    refused them (they would be live on two nodes, or ClusterFullError
    would be said of a task that is live)."""
    n1 = await spread(cluster)
    for name in ("n2", "n3"):
        transport = cluster.groups[name].transport
        real = transport._handler  # type: ignore[attr-defined]

        async def garbled(kind: Kind, message: dict[str, Any], real: Any = real
                          ) -> dict[str, Any]:
            reply: dict[str, Any] = await real(kind, message)
            return {**reply, "v": 99} if kind is Kind.FILL else reply

        transport._handler = garbled  # type: ignore[attr-defined]
    placed = await n1.fill("jobs", "job", task_type=BOMB, run_after=5, life_span=10)
    # Settled by asking the peer (its SETTLE reply is readable): one copy.
    holders = [n for n in ("n2", "n3") if "job" in cluster.bucket(n)]
    assert holders == [placed.node_id]
    await asyncio.sleep(6)
    assert runs(cluster, "job") == 1
