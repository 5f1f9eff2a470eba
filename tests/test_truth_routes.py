"""The origin's routes stay true: every forwarded task can be found and its
loss reported, whatever happens to the fill's caller or to the task.

In-memory cluster (the public :class:`~gobucket_py.testing.MemoryCluster`),
faked loop clock. Each test takes a route the origin keeps for a forwarded
task and tries to make it go missing -- a caller cancelled mid-forward, a
task rescheduled on its holder past its first deadline, a stale ENDED notice
for an id used again -- then crashes the holder: the task must be reported
lost (and drains answer LOST), never silently forgotten.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from gobucket_py import (
    BucketConfig,
    DrainOutcome,
    TaskBucket,
    TaskBucketGroup,
    TaskState,
    TaskType,
)
from gobucket_py.cluster.ended import EndedNotices, GateKeepalive, _expand, _runs
from gobucket_py.cluster.items import encode_item
from gobucket_py.errors import ProtocolError
from gobucket_py.testing import MemoryCluster

from .conftest import Recorder

pytestmark = pytest.mark.looptime

BOMB, NOW = TaskType.TIME_BOMB, TaskType.IMMEDIATE

Lost = list[tuple[str, str, list[str]]]


class Two:
    """n1 (one slot, taken) overflows to n2; loss reports of n1 are kept."""

    def __init__(self) -> None:
        self.lost: Lost = []
        self.recorders: dict[str, list[Recorder]] = {}

        def buckets(name: str) -> dict[str, TaskBucket]:
            recorder = Recorder()
            self.recorders.setdefault(name, []).append(recorder)
            config = BucketConfig(life_span=60, run_after=30,
                                  max_bucket=1 if name == "n1" else 50)
            return {"jobs": TaskBucket(config, recorder, name="jobs")}

        def setup(group: TaskBucketGroup) -> None:
            if group.node_id == "n1":
                group.on_tasks_lost = lambda peer, bucket, ids: self.lost.append(
                    (peer, bucket, list(ids)))

        self.cluster = MemoryCluster(["n1", "n2"], buckets, setup=setup)

    @property
    def n1(self) -> TaskBucketGroup:
        return self.cluster["n1"]

    def runs(self, task_id: str) -> int:
        return sum(r.hooks(task_id).count("execute")
                   for rs in self.recorders.values() for r in rs)

    def lost_ids(self) -> list[str]:
        return [i for _, _, ids in self.lost for i in ids]

    async def crash_holder(self) -> None:
        """kill -9 n2 and start a new incarnation; wait for n1 to notice."""
        self.cluster.crash("n2")
        await self.cluster.restart("n2")
        await asyncio.sleep(5)


@pytest.fixture
async def two() -> AsyncIterator[Two]:
    t = Two()
    async with t.cluster:
        await t.cluster.settle()
        await t.n1.fill("jobs", "anchor", task_type=BOMB, run_after=500, life_span=600)
        yield t


Fill = Callable[[TaskBucketGroup], object]


async def _fill(group: TaskBucketGroup) -> None:
    await group.fill("jobs", "job", task_type=BOMB, run_after=10, life_span=60)


async def _fill_many(group: TaskBucketGroup) -> None:
    await group.fill_many("jobs", {"job": None}, task_type=BOMB, run_after=10, life_span=60)


@pytest.mark.parametrize("fill", [_fill, _fill_many], ids=["fill", "fill_many"])
async def test_a_caller_cancelled_mid_forward_leaves_the_route_kept(
        two: Two, fill: Callable[[TaskBucketGroup], object]) -> None:
    # A web handler's budget runs out while the forward is on the wire: the
    # peer takes the task all the same, so the origin must know where it is.
    slow = two.cluster.delay("n1", "n2", 0.5)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await fill(two.n1)  # type: ignore[misc]
    slow.heal()
    await asyncio.sleep(2)  # the forward was answered: the origin kept its route
    assert "job" in two.cluster["n2"].buckets["jobs"]
    assert two.n1._routes.get("jobs", "job") is not None
    await two.crash_holder()
    assert "job" in two.lost_ids()
    assert (await two.n1.drain("jobs", "job")).outcome is DrainOutcome.LOST


@pytest.mark.parametrize("fill", [_fill, _fill_many], ids=["fill", "fill_many"])
async def test_a_caller_cancelled_mid_forward_never_gets_a_false_not_found(
        two: Two, fill: Callable[[TaskBucketGroup], object]) -> None:
    # The forward is slower than the forward and settle timeouts: the origin
    # cannot tell whether the peer took the task (it did, late). Its drain
    # must settle that, not answer NOT_FOUND and then let the task run.
    slow = two.cluster.delay("n1", "n2", 3.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await fill(two.n1)  # type: ignore[misc]
    await asyncio.sleep(1.8)  # forward and settle timed out; the batch is still travelling
    slow.heal()
    assert two.n1._routes.unsettled.get(("jobs", "job")) is not None
    result = await two.n1.drain("jobs", "job")
    await asyncio.sleep(20)
    if result.outcome is DrainOutcome.NOT_FOUND:
        assert two.runs("job") == 0
    else:
        assert result.outcome is DrainOutcome.DRAINED and two.runs("job") == 0


async def test_a_group_stopped_mid_fill_many_answers_every_task(two: Two) -> None:
    two.cluster.stall("n2")  # the forward gets no answer
    placing = asyncio.ensure_future(two.n1.fill_many(
        "jobs", {f"t{i}": None for i in range(3)}, task_type=BOMB))
    await asyncio.sleep(0.01)
    await two.n1.stop()
    results = await placing
    assert len(results) == 3
    assert all(isinstance(r, Exception) for r in results), results


async def test_a_task_rescheduled_on_its_holder_keeps_its_route(two: Two) -> None:
    placed = await two.n1.fill("jobs", "job", task_type=BOMB, run_after=8, life_span=10)
    assert placed.forwarded and placed.node_id == "n2"
    # The holder's user pushes the watchdog 100 s further (its lifespan too).
    assert await two.cluster["n2"].buckets["jobs"].reschedule("job", 100)
    await asyncio.sleep(15)  # past the first deadline: the task is still pending
    await two.n1.fill("jobs", "other", task_type=BOMB, run_after=500, life_span=600)
    assert two.n1._routes.get("jobs", "job") is not None
    await two.crash_holder()
    assert "job" in two.lost_ids()
    assert (await two.n1.drain("jobs", "job")).outcome is DrainOutcome.LOST


async def test_an_ended_notice_for_a_past_task_does_not_hide_a_new_one(two: Two) -> None:
    placed = await two.n1.fill("jobs", "order-42", task_type=NOW)
    assert placed.node_id == "n2"
    await asyncio.sleep(0.01)  # it ran and ended on n2
    info = await two.n1.get("jobs", "order-42")  # before n2's ENDED notice: route forgotten
    assert info is not None and info.state is TaskState.FINISHED
    await asyncio.sleep(1)  # the notice lands with no route
    # The same id is filled again (the first task ended) and goes to n2.
    again = await two.n1.fill("jobs", "order-42", task_type=BOMB, run_after=100,
                              life_span=200)
    assert again.node_id == "n2"
    assert two.n1._routes.get("jobs", "order-42") is not None
    await two.crash_holder()
    assert "order-42" in two.lost_ids()
    assert (await two.n1.drain("jobs", "order-42")).outcome is DrainOutcome.LOST


async def test_a_gate_keepalive_tells_from_before_the_deadline_until_cancelled() -> None:
    """A gated task's origin hears "still here" from ``keep`` seconds before
    its deadline (its route there lapses a second after it), then every
    ``period``, each word asking for ``keep`` seconds more; nothing once
    the gate answered (cancelled)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    words: list[tuple[float, float]] = []

    class Notices:
        def still_pending(self, task: object, keep: float, origin: object) -> None:
            assert origin == ("n1", 7)
            words.append((round(loop.time() - start, 3), keep))

    def keepalive(left: float) -> GateKeepalive:
        return GateKeepalive(Notices(), SimpleNamespace(seconds_left=left),  # type: ignore[arg-type]
                             ("n1", 7), 0.5, 0.8)

    first = keepalive(3.0)
    await asyncio.sleep(3.3)
    first.cancel()
    await asyncio.sleep(5)
    assert words == [(2.2, 0.8), (2.7, 0.8), (3.2, 0.8)]
    late = keepalive(-4.0)  # past its deadline already: at once
    await asyncio.sleep(0.01)
    late.cancel()
    assert words[3:] == [(8.3, 0.8)]


async def test_a_gate_that_answers_at_once_sends_no_keepalive_word() -> None:
    """With less than ``keep`` seconds left when the gate starts, the first
    word waits for the deadline (short of half a second; of half the time
    left, for a shorter window): a gate that answers before sends none.
    Once the gate waits with no bound (:meth:`GateKeepalive.waits`), the
    first word goes at once, and the next every ``period``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    words: list[float] = []

    class Notices:
        def still_pending(self, task: object, keep: float, origin: object) -> None:
            words.append(round(loop.time() - start, 3))

    task = SimpleNamespace(seconds_left=0.6)
    quick = GateKeepalive(Notices(), task, ("n1", 7), 0.5, 0.8)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)  # its backups answered: it runs
    quick.cancel()
    await asyncio.sleep(2)
    assert words == []
    slow = GateKeepalive(Notices(), task, ("n1", 7), 0.5, 0.8)  # type: ignore[arg-type]
    await asyncio.sleep(0.35)
    slow.cancel()
    assert words == [2.35]  # at 0.3 s: half of the 0.6 s left
    words.clear()
    start = loop.time()
    task = SimpleNamespace(seconds_left=5.0)
    waits = GateKeepalive(Notices(), task, ("n1", 7), 0.5, 0.8)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    waits.waits()  # no majority, 5 s left: the first word as planned
    await asyncio.sleep(0.1)
    assert words == []
    task.seconds_left = 0.5
    waits.waits()  # 0.5 s left (< keep): at once
    waits.waits()  # (once)
    await asyncio.sleep(0.6)
    waits.cancel()
    assert words == [0.2, 0.7]


async def test_an_undelivered_keepalive_word_is_sent_again_as_long_kept() -> None:
    """A "still here" word for a gated task past its deadline that could not
    be delivered is queued again with the seconds it asked for (not as a
    reschedule: those would be none, and the origin's route would lapse),
    and with the batch that brought the task; a word of a task that ended
    meanwhile is not."""
    notices = EndedNotices(SimpleNamespace())  # type: ignore[arg-type]
    task = SimpleNamespace(bucket="jobs", id="x", seconds_left=-2.0, state=TaskState.PENDING)
    done = SimpleNamespace(bucket="jobs", id="y", seconds_left=-2.0, state=TaskState.PENDING)
    notices.still_pending(task, 4.0, ("n1", 7))  # type: ignore[arg-type]
    notices.still_pending(done, 4.0, ("n1", 8))  # type: ignore[arg-type]
    assert notices._timer is not None
    notices._timer.cancel()
    parts = notices._take("n1")
    assert parts["extended"] == [["jobs", "x", 4.0], ["jobs", "y", 4.0]]
    assert parts["extended_batches"] == [7, 8]
    done.state = TaskState.EXHAUSTED
    notices._requeue("n1", parts)  # not delivered
    notices._timer.cancel()
    again = notices._take("n1")
    assert again["extended"] == [["jobs", "x", 4.0]] and again["extended_batches"] == [7]


async def test_a_task_being_drained_by_its_origin_still_has_it_for_still_here_words() -> None:
    """A drain from a task's origin forgets the task's origin here (the
    answer tells it how the task ended). A start gate that begins meanwhile
    still gets its keepalive, and a reschedule meanwhile still its word:
    the drain may answer unknown (a backup holder that cannot be told),
    and the task then waits there past its deadline. Once the drain has
    answered, they are gone (no notice of its end either)."""
    notices = EndedNotices(SimpleNamespace(  # type: ignore[arg-type]
        config=SimpleNamespace(probe_interval=0.5, request_timeout=1.0)))
    task = SimpleNamespace(bucket="jobs", id="x", seconds_left=0.2, state=TaskState.PENDING)
    notices.origins["jobs"] = {"x": ("n1", 7)}
    forgotten = notices.forget("jobs", "x", "n1")
    assert forgotten is not None and notices.origin_of("jobs", "x") is None
    keepalive = notices.keep_routed(task)  # type: ignore[arg-type]
    assert keepalive is not None and keepalive._origin == ("n1", 7)
    keepalive.cancel()
    notices.rescheduled(task)  # type: ignore[arg-type]
    assert notices._extended["n1"][("jobs", "x")][2] == 7
    notices.unforget("jobs", "x", task, forgotten)  # unknown: the origin's again
    assert notices.origin_of("jobs", "x") == "n1" and not notices._draining
    again = notices.forget("jobs", "x", "n1")
    notices.drain_answered("jobs", "x", again)  # a definite answer
    assert notices.keep_routed(task) is None and not notices._draining  # type: ignore[arg-type]
    assert notices._timer is not None
    notices._timer.cancel()


@pytest.mark.parametrize("extended", [
    {}, [["jobs", "t"]], [["jobs", "t", "5"]], [["jobs", "t", float("nan")]],
    [[1, "t", 5]], [["jobs", "t", True]]])
def test_a_malformed_reschedule_notice_is_refused(extended: object) -> None:
    with pytest.raises(ProtocolError, match="reschedule"):
        EndedNotices.check({"ended": {}, "moved": [], "extended": extended})
    ok = EndedNotices.check({"ended": {}, "moved": [], "extended": [["jobs", "t", 5.5]]})
    assert ok[3] == [["jobs", "t", 5.5, -1]]  # (an earlier version's: no batch)


@pytest.mark.parametrize("batches", [{}, [3], [1, 2, 3], [-1, 2], [1.0, 2], [True, 2], "12"])
def test_the_batches_of_reschedules_are_checked(batches: object) -> None:
    """The batches that brought the tasks of "extended" words go in a field
    of their own (a node of an earlier version checks each word is three
    long), one per word."""
    extended = [["jobs", "a", 5.5], ["jobs", "b", 2]]
    with pytest.raises(ProtocolError, match="extended_batches"):
        EndedNotices.check({"ended": {}, "moved": [], "extended": extended,
                            "extended_batches": batches})
    ok = EndedNotices.check({"ended": {}, "moved": [], "extended": extended,
                             "extended_batches": [4, 0]})
    assert ok[3] == [["jobs", "a", 5.5, 4], ["jobs", "b", 2, 0]]


@pytest.mark.parametrize("batches", [
    [], None, {"jobs": [1]}, {"jobs": [1, 1]}, {"jobs": [1, 3]}, {"jobs": [1, 2, 5, 0]},
    {"jobs": [1, "2"]}, {"jobs": [-1, 2]}, {"jobs": [1, True]}, {"jobs": 3}, {}])
def test_a_malformed_batches_field_of_an_ended_notice_is_refused(batches: object) -> None:
    with pytest.raises(ProtocolError, match="batch"):
        EndedNotices.check({"ended": {"jobs": ["a", "b"]}, "moved": [], "batches": batches})
    ok = EndedNotices.check({"ended": {"jobs": ["a", "b", "c"]}, "moved": [],
                             "batches": {"jobs": [7, 2, 0, 1]}})
    assert ok[0] == [("jobs", ["a", "b", "c"], [7, 2, 0, 1])] and ok[5] is True
    plain = EndedNotices.check({"ended": {"jobs": ["a", "b"]}, "moved": []})
    assert plain[0] == [("jobs", ["a", "b"], [-1, 2])] and plain[5] is False


def test_ended_batch_numbers_travel_as_runs() -> None:
    batches = [5, 5, 5, 9, 0, 0, 5]
    assert _runs(batches) == [5, 3, 9, 1, 0, 2, 5, 1] and _expand(_runs(batches)) == batches
    assert _runs([]) == [] and _expand([]) == []


async def test_a_fill_many_cut_short_by_stop_answers_every_task_it_was_given() -> None:
    def buckets(name: str) -> dict[str, TaskBucket]:
        config = BucketConfig(life_span=60, run_after=30,
                              max_bucket=1 if name == "n1" else 10_000)
        return {"jobs": TaskBucket(config, Recorder(), name="jobs")}

    async with MemoryCluster(["n1", "n2"], buckets) as cluster:
        await cluster.settle()
        n1 = cluster["n1"]
        await n1.fill("jobs", "anchor", task_type=BOMB)
        cluster.stall("n2")  # no verdict comes back
        ids = (f"t{i}" for i in range(3000))  # read lazily: a batch is sent as it fills
        placing = asyncio.ensure_future(n1.fill_many("jobs", ((i, None) for i in ids),
                                                     task_type=BOMB))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not placing.done()
        for task in list(n1._background):  # what stop() does once its grace is over
            task.cancel()
        results = await placing
        assert len(results) == 3000  # one answer per task, read or not
        kinds = {type(r).__name__ for r in results}
        assert kinds == {"PlacementUnknownError", "BucketClosedError"}, kinds
        cluster.resume("n2")


@pytest.mark.parametrize("fill", [_fill, _fill_many], ids=["fill", "fill_many"])
async def test_a_forward_taken_by_a_restarted_holder_is_not_reported_lost(
        two: Two, fill: Callable[[TaskBucketGroup], object]) -> None:
    # kill -9 and a fast restart at the same address: the origin still knows
    # the old incarnation when it forwards. Whatever takes the task, the
    # origin must not report lost a task that then runs.
    old = two.cluster["n2"].boot_id
    two.cluster.crash("n2")
    await two.cluster.restart("n2")
    # As if the new n2's hello had not reached n1 yet (in the chaos run it
    # had not): n1 still means the old incarnation at that address.
    two.n1._members.members["n2"].boot = old
    await fill(two.n1)  # type: ignore[misc]
    # The new n2 refused the batch meant for the old one; n1 learnt of the
    # restart from that answer and placed the task again, on the new n2.
    assert two.n1._members.members["n2"].boot == two.cluster["n2"].boot_id
    await asyncio.sleep(20)  # past run_after
    assert two.runs("job") == 1
    assert "job" not in two.lost_ids()
    assert two.n1._routes.get("jobs", "job") is None  # ended, route closed


async def test_a_batch_goes_to_the_incarnation_it_was_queued_for(two: Two) -> None:
    # The origin hears of the restart between queueing a forward and sending
    # it: the batch still names the incarnation its route will be kept under
    # (the old one), so the new one refuses it rather than take a task whose
    # route says "the old n2" (whose loss would then be reported).
    old = two.cluster["n2"].boot_id
    two.cluster.crash("n2")
    await two.cluster.restart("n2")
    member = two.n1._members.members["n2"]
    new, member.boot = member.boot, old  # not heard of yet
    forwarder = two.n1._forwarder
    assert forwarder is not None
    item = encode_item("jobs", "job", None, BOMB, 10, 60, two.n1.codec)
    verdict = forwarder.send(member, item)
    member.boot = new  # heard of now, before the pump sends the batch
    assert await verdict == "restarted"
    assert "job" not in two.cluster["n2"].buckets["jobs"]
    assert await forwarder.send(member, item) == "ok"  # meant for the new one: taken


def test_a_large_ended_notice_is_cut_into_messages_in_the_order_its_fields_apply() -> None:
    """An ENDED notice too large for one request (thousands of forwarded
    tasks ended while the origin was out of reach) goes as several, each
    within ``max_body`` and valid, holding every entry once, in the order
    the origin applies one message's fields (ended, via, moved, promoted,
    extended)."""
    from gobucket_py.cluster.ended import _split
    from gobucket_py.cluster.protocol import encode

    ids = [f"task-{i:05}" for i in range(3_000)]
    batches = [i // 700 for i in range(3_000)]
    task = SimpleNamespace(state=TaskState.PENDING)
    parts: dict[str, Any] = {
        "ended": {"jobs": ids[:2_000], "other": ids[2_000:]},
        "batches": {"jobs": _runs(batches[:2_000]), "other": _runs(batches[2_000:])},
        "via": [["jobs", f"v{i}", "n3", "boot3"] for i in range(300)],
        "moved": [["jobs", f"m{i}", "n4", "boot4"] for i in range(300)],
        "promoted": [["jobs", f"p{i}", "n5"] for i in range(300)],
        "extended": [["jobs", f"e{i}", 5.5] for i in range(300)],
        "extended_batches": list(range(300)),
        "_extended": [(("jobs", f"e{i}"), (task, 1.0, i)) for i in range(300)]}
    assert _split(parts, 4 * 1024 * 1024) == [parts]  # (fits: as it is)
    pieces = _split(parts, 16 * 1024)
    assert len(pieces) > 10
    order = []
    for piece in pieces:
        message = {"v": 1, "from": ["n2", "boot"], **{k: v for k, v in piece.items()
                                                      if k != "_extended"}}
        assert len(encode(message)) <= 16 * 1024
        EndedNotices.check(message)  # valid, runs and all
        order += [name for name in ("ended", "via", "moved", "promoted", "extended")
                  if piece.get(name)]
    assert order == sorted(order, key=["ended", "via", "moved", "promoted",
                                       "extended"].index)  # each field's run, in turn
    for name in ("via", "moved", "promoted", "extended", "extended_batches", "_extended"):
        assert [e for p in pieces for e in p.get(name, [])] == parts[name], name
    for bucket in ("jobs", "other"):
        assert [i for p in pieces for i in p["ended"].get(bucket, [])] == parts["ended"][bucket]
        assert [b for p in pieces for b in _expand(p["batches"].get(bucket, []))] == \
            _expand(parts["batches"][bucket])
    # Few entries, long ids, only live-on words: cut too.
    long = {"ended": {}, "batches": {}, "moved": [],
            "extended": [["jobs", "x" * 2_000 + str(i), 5.5] for i in range(100)],
            "extended_batches": list(range(100)),
            "_extended": [(("jobs", str(i)), (task, 1.0, i)) for i in range(100)]}
    pieces = _split(long, 64 * 1024)
    assert len(pieces) > 3 and all(len(encode({k: v for k, v in p.items() if k != "_extended"}))
                                   <= 64 * 1024 for p in pieces)


async def test_ended_notices_too_large_for_one_request_still_reach_the_origin(
        cluster: Any) -> None:
    """``max_body`` 8 KiB: 3,000 tasks forwarded by n1 end on n2 at once;
    their ends reach n1 in several messages (one refused with a 400 before,
    and sent again and again), and n1 forgets every route."""
    cluster.net.max_body = 8 * 1024
    n1 = await cluster.add("n1", max_bucket=1, max_body=8 * 1024)
    await cluster.add("n2", max_bucket=5_000, max_body=8 * 1024)
    await cluster.settle()
    await n1.fill("jobs", "anchor", task_type=BOMB, run_after=500, life_span=600)
    ids = [f"task-{i:05}" for i in range(3_000)]
    results = await n1.fill_many("jobs", [(i, None) for i in ids], task_type=BOMB,
                                 run_after=1, life_span=60)
    assert all(not isinstance(r, Exception) and r.node_id == "n2" for r in results)
    assert all(n1._routes.get("jobs", i) is not None for i in ids[:10])
    await asyncio.sleep(5)
    assert len(cluster.fired()) == 3_000
    assert not [i for i in ids if n1._routes.get("jobs", i) is not None]


def test_slices_keep_each_request_within_its_bytes_and_items() -> None:
    """``protocol.slices``: runs of [bucket, id] pairs whose message fits a
    quarter of ``max_body`` and at most ``SLICE_ITEMS`` entries (a body's
    lists are limited), every pair in exactly one run, in order."""
    from gobucket_py.cluster.protocol import SLICE_ITEMS, slices

    short = [("jobs", str(i)) for i in range(25_000)]
    cuts = slices(short, 64 * 1024 * 1024)
    assert [c.stop - c.start for c in cuts] == [SLICE_ITEMS, SLICE_ITEMS, 5_000]
    long = [("jobs", "é" * 500 + str(i)) for i in range(100)]
    cuts = slices(long, 16 * 1024)
    assert all(sum(len(b.encode()) + len(t.encode()) for b, t in long[c]) <= 4 * 1024
               or c.stop - c.start == 1 for c in cuts)
    assert [p for c in cuts for p in long[c]] == long
    assert slices([], 1024) == [slice(0, 0)]
