"""A task handed off on a graceful stop keeps a true route at its origin.

n1 forwards a task to n2; n2 stops and hands it to n3. n1's route follows
the task to n3 (n2 says where it went). When the task then ends on n3, n1
must hear of it from n3 -- or a later crash of n3 would report a task that
already ran as lost: one outcome *and* a loss report. And n3's word may
overtake n2's: a task due at once after the move ends before n2's notice of
the move arrives. Likewise along a chain of handoffs (n2 -> n3 -> n4) or a
backup's takeover: each word about a holder the origin's route does not
point at yet is kept until the earlier move's word arrives.

In-memory cluster (the public :class:`~gobucket_py.testing.MemoryCluster`),
faked loop clock, except the last tests, which check the wire form.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gobucket_py import BucketConfig, GroupConfig, TaskBucket, TaskBucketGroup, TaskType
from gobucket_py.cluster.ended import EndedNotices
from gobucket_py.cluster.forward import HANDOFF
from gobucket_py.cluster.items import PACKED_NONE
from gobucket_py.cluster.protocol import Kind
from gobucket_py.cluster.routes import Routes
from gobucket_py.errors import PlacementUnknownError, ProtocolError
from gobucket_py.testing import MemoryCluster

from .conftest import Recorder

BOMB = TaskType.TIME_BOMB


class Three:
    """n1 (one slot) overflows; n2 and n3 (and n4...) have room; n1's loss
    reports kept."""

    def __init__(self, replicas: int = 0, nodes: int = 3) -> None:
        self.lost: list[str] = []
        self.recorders: list[Recorder] = []

        def buckets(name: str) -> dict[str, TaskBucket]:
            recorder = Recorder()
            self.recorders.append(recorder)
            # (n1 keeps no backups: those of the others go to the others)
            extra = ({"replicas": replicas, "max_backups": 0 if name == "n1" else 50}
                     if replicas else {})
            config = BucketConfig(life_span=60, run_after=30,
                                  max_bucket=1 if name == "n1" else 50, **extra)
            return {"jobs": TaskBucket(config, recorder, name="jobs")}

        def setup(group: TaskBucketGroup) -> None:
            if group.node_id == "n1":
                group.on_tasks_lost = lambda peer, bucket, ids: self.lost.extend(ids)

        self.cluster = MemoryCluster([f"n{i}" for i in range(1, nodes + 1)], buckets, setup=setup,
                                     config=GroupConfig.local(stop_grace=5.0))

    def runs(self, task_id: str) -> int:
        return sum(r.hooks(task_id).count("execute") for r in self.recorders)

    async def on_n2(self, run_after: float) -> None:
        """Forward "job" from n1 to n2, with room on n3 by then."""
        c = self.cluster
        await c.settle()
        await c["n1"].fill("jobs", "anchor", task_type=BOMB, run_after=500, life_span=600)
        # The others full for the moment, so the job goes to n2.
        others = [name for name in c.groups if name not in ("n1", "n2")]
        for name in others:
            for i in range(50):
                c[name].buckets["jobs"].fill_nowait(BOMB, f"hold-{i}", run_after=500,
                                                    life_span=600)
        await c.wait_for(lambda: all(c["n1"]._members.members[name].free.get("jobs") == 0
                                     for name in others))
        placed = await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=run_after,
                                    life_span=60)
        assert placed.node_id == "n2"
        for i in range(50):
            c["n3"].buckets["jobs"].drain_nowait(f"hold-{i}")
        await c.wait_for(lambda: c["n2"]._members.members["n3"].free.get("jobs") == 50)

    async def handed_from_n2_to_n3(self, run_after: float) -> None:
        """Forward "job" from n1 to n2, then stop n2: it goes to n3."""
        await self.on_n2(run_after)
        await self.cluster.stop("n2")
        assert "job" in self.cluster["n3"].buckets["jobs"]


@pytest.mark.looptime
async def test_a_handed_off_task_that_ran_is_not_reported_lost_when_its_holder_crashes(
) -> None:
    three = Three()
    async with three.cluster as c:
        await three.handed_from_n2_to_n3(run_after=5)
        route = c["n1"]._routes.get("jobs", "job")
        assert route is not None and route[0] == "n3"  # n2 said where it went
        await asyncio.sleep(10)  # it runs on n3, which tells n1
        assert three.runs("job") == 1
        assert c["n1"]._routes.get("jobs", "job") is None
        c.crash("n3")
        await asyncio.sleep(20)  # n1 finds n3 dead and reports what it held
        assert "job" not in three.lost
        assert three.runs("job") == 1


@pytest.mark.looptime
async def test_a_handed_off_task_still_pending_is_reported_lost_when_its_holder_crashes(
) -> None:
    # The other side: the notice is sent only for tasks that ended.
    three = Three()
    async with three.cluster as c:
        await three.handed_from_n2_to_n3(run_after=40)
        c.crash("n3")
        await asyncio.sleep(20)
        assert three.lost == ["job"]
        assert three.runs("job") == 0


@pytest.mark.looptime
async def test_the_end_of_a_handed_off_task_may_overtake_the_word_of_its_move() -> None:
    # n2's notice of the move is held up until after the task ran on n3 and
    # n3 said so: n1 must still drop the route (which points at n2 then).
    three = Three()
    async with three.cluster as c:
        await three.on_n2(run_after=1)
        late = c.delay("n2", "n1", 3.0)
        await c.stop("n2")  # the job went to n3 and ran there (due 1 s after its fill)
        await asyncio.sleep(0.5)  # n3's notice is in
        assert three.recorders[2].hooks("job").count("execute") == 1
        route = c["n1"]._routes.get("jobs", "job")
        assert route is None or route[0] == "n2"
        late.heal()
        await asyncio.sleep(5)  # n2's notice of the move is in too
        assert c["n1"]._routes.get("jobs", "job") is None
        c.crash("n3")
        await asyncio.sleep(20)
        assert "job" not in three.lost


@pytest.mark.looptime
async def test_a_handed_off_task_taken_over_by_its_backup_is_not_reported_lost() -> None:
    # replicas=1: n3 backs the task up (on n4) naming n1, its origin,
    # not n2, which handed it over and is gone: when n3 crashes, the backup
    # takes over and tells n1, whose route follows -- one run, no loss report.
    three = Three(replicas=1, nodes=4)
    async with three.cluster as c:
        await three.handed_from_n2_to_n3(run_after=20)
        assert c["n3"]._replicas.holders.bucket("jobs")["job"] == ("n4",)
        c.crash("n3")
        await asyncio.sleep(30)  # found dead, taken over, and due
        assert three.runs("job") == 1
        assert "job" not in three.lost


@pytest.mark.looptime
@pytest.mark.parametrize("down", [0.0, 0.2, 1.0])
async def test_a_takeover_told_before_the_forward_is_settled_is_followed(down: float) -> None:
    # n1's forward of "job" to n2 gets no reply (n2 took it, backed up on n3
    # or n4); n2 is killed -9 and restarted: its backup takes the job over at
    # once and tells n1 before n1 gives the forward up (the route is then
    # added, unsettled). Dropped, that word left the route at n2's dead boot:
    # reported lost, while the backup ran the job (an outcome and a loss
    # report, with down 0 and 0.2 s).
    three = Three(replicas=1, nodes=4)
    async with three.cluster as c:
        await c.settle()
        await c["n1"].fill("jobs", "anchor", task_type=BOMB, run_after=500, life_span=600)
        for name in ("n3", "n4"):
            for i in range(50):
                c[name].buckets["jobs"].fill_nowait(BOMB, f"hold-{i}", run_after=500,
                                                    life_span=600)
        await c.wait_for(lambda: all(c["n1"]._members.members[n].free.get("jobs") == 0
                                     for n in ("n3", "n4")))
        lossy = c.drop_replies("n1", "n2")
        fill = asyncio.create_task(c["n1"].fill("jobs", "job", task_type=BOMB, run_after=20,
                                                life_span=60))
        await c.wait_for(lambda: "job" in c["n2"].buckets["jobs"])
        c.crash("n2")
        await asyncio.sleep(down)
        await c.restart("n2")
        lossy.heal()
        with pytest.raises(PlacementUnknownError):
            await fill
        await asyncio.sleep(40)
        assert three.runs("job") == 1  # on its backup's node
        assert "job" not in three.lost


def test_a_takeover_at_the_origin_drops_the_route_its_forward_adds_later() -> None:
    # This node took "job" over as its backup (its primary n2, boot b2,
    # restarted) while its own forward of "job" to n2 was being settled: the
    # route that forward adds (unsettled) goes at once (nemesis seed 74,
    # lost_replies, replicas=2: it was reported lost while the task ran here).
    routes = Routes()
    routes.keep_early("jobs", "job", ("n2", "b2", "", ""), None, 0.0)
    routes.keep_early("jobs", "other", ("n2", "b2", "", ""), None, 0.0)
    routes.add("jobs", "n2", "b2", 1.0, 60.0, ["job"])
    routes.unsure("jobs", "job", ("b1", 4, 0), False, ("n2", "b2"))
    assert routes.get("jobs", "job") is None and ("jobs", "job") not in routes.unsettled
    routes.add("jobs", "n2", "b2new", 1.0, 60.0, ["other"])  # another boot's: not that task
    assert routes.get("jobs", "other") == ("n2", "b2new", 62.0, 0)


def test_a_word_before_the_route_is_kept_a_while_only() -> None:
    routes = Routes()
    routes.move("jobs", "job", "n2", "n4", "b4", early=0.0)  # a takeover from n2
    routes.add("jobs", "n2", "b2", 10.0, 60.0, ["job"])
    assert routes.get("jobs", "job") == ("n4", "b4", 71.0, 0)
    routes.move("jobs", "old", "n2", "n4", "b4", early=0.0)
    routes.add("jobs", "n2", "b2", 31.0, 60.0, ["old"])  # past EARLY_KEEP: not this forward's
    assert routes.get("jobs", "old") == ("n2", "b2", 92.0, 0)
    routes.move("jobs", "none", "n2", "n4", "b4")  # not early: dropped
    routes.add("jobs", "n2", "b2", 1.0, 60.0, ["none"])
    assert routes.get("jobs", "none") == ("n2", "b2", 62.0, 0)


async def chain(three: Three, run_after: float, late: tuple[float, float] = (0.0, 0.0)
                ) -> None:
    """"job" goes n1 -> n2, then n2 stops (-> n3), then n3 stops (-> n4);
    ``late``: how late n2's and n3's words of their moves reach n1."""
    c = three.cluster
    await three.on_n2(run_after)  # n3 has room, n4 not yet
    for node, delay in zip(("n2", "n3"), late, strict=True):
        if delay:
            c.delay(node, "n1", delay)
    await c.stop("n2")
    for i in range(50):
        c["n4"].buckets["jobs"].drain_nowait(f"hold-{i}")
    await c.wait_for(lambda: c["n3"]._members.members["n4"].free.get("jobs") == 50)
    await c.stop("n3")


@pytest.mark.looptime
@pytest.mark.parametrize("late", [0.0, 2.0, 5.0])
async def test_moves_told_out_of_order_still_lead_the_route_to_the_holder(late: float) -> None:
    # n2's word of its move (to n3) reaches n1 after n3's (to n4): n3's is
    # kept until n2's comes, so the route ends at n4 -- not at n3, which left.
    three = Three(nodes=4)
    async with three.cluster as c:
        await chain(three, run_after=40, late=(late, 0.0))
        assert "job" in c["n4"].buckets["jobs"]
        await asyncio.sleep(6)
        route = c["n1"]._routes.get("jobs", "job")
        assert route is not None and route[0] == "n4"
        c.crash("n4")
        await asyncio.sleep(25)
        assert three.runs("job") == 0
        assert three.lost == ["job"]


@pytest.mark.looptime
async def test_an_end_told_before_both_moves_drops_the_route() -> None:
    # The job ran on n4 before n1 heard of either move: n4's notice (handed
    # by n3) is kept until the moves lead the route to n3, then drops it.
    three = Three(nodes=4)
    async with three.cluster as c:
        await chain(three, run_after=3, late=(3.0, 4.0))
        await asyncio.sleep(8)
        assert three.recorders[3].hooks("job") == ["execute", "finish"]  # on n4
        assert three.runs("job") == 1
        assert c["n1"]._routes.get("jobs", "job") is None
        c.crash("n4")
        await asyncio.sleep(20)
        assert "job" not in three.lost


@pytest.mark.looptime
@pytest.mark.parametrize("late", [8.0, 12.0])
async def test_a_takeover_told_before_the_handoff_is_followed(late: float) -> None:
    # replicas=1: n3 got the job from n2 and is backed up on n4; n3 crashes
    # and n4 takes over, all before n2's word of the move reaches n1. n4's
    # word is kept until then: the route ends at n4 (one run, no loss).
    three = Three(replicas=1, nodes=4)
    async with three.cluster as c:
        await three.on_n2(run_after=20)
        c.delay("n2", "n1", late)
        await c.stop("n2")
        assert c["n3"]._replicas.holders.bucket("jobs")["job"] == ("n4",)
        c.crash("n3")
        await asyncio.sleep(40)
        assert three.runs("job") == 1
        assert "job" not in three.lost


def test_notices_that_overtake_a_move_are_applied_with_it() -> None:
    routes = Routes()
    routes.add("jobs", "n2", "b2", 0.0, 60.0, ["a", "b", "c"])
    assert routes.move("jobs", "a", "n3", "n4", "b4", from_boot="b3") is None  # kept
    assert routes.move("jobs", "a", "n2", "n3", "b3") == ("n4", "b4", 61.0, 0)
    routes.ended("jobs", "b", "n4", 1.0, via=("n3", "b3"))  # kept
    assert routes.move("jobs", "b", "n3", "n4", "b4") is None  # kept too
    assert routes.move("jobs", "b", "n2", "n3", "b3") is None  # then it ended at n4
    assert routes.get("jobs", "b") is None
    # kept for another incarnation of n3: not applied
    assert routes.move("jobs", "c", "n3", "n4", "b4", from_boot="b0") is None
    assert routes.move("jobs", "c", "n2", "n3", "b3") == ("n3", "b3", 61.0, 0)
    # a new task of the id: what was kept is of the earlier one
    routes.add("jobs", "n2", "b2", 0.0, 60.0, ["c"])
    assert routes.move("jobs", "c", "n2", "n3", "b3") == ("n3", "b3", 61.0, 0)


def test_a_kept_move_keeps_its_unsettled_handoff() -> None:
    # n3's handoff to n4 could not be settled, and its word overtook n2's:
    # applied, the route is still to be settled before n4's "not here" counts.
    routes = Routes()
    routes.add("jobs", "n2", "b2", 0.0, 60.0, ["job"])
    assert routes.move("jobs", "job", "n3", "n4", "b4", ("b3", 7, 0), from_boot="b3") is None
    assert routes.move("jobs", "job", "n2", "n3", "b3", from_boot="b2") == ("n4", "b4", 61.0, 0)
    assert routes.unsettled[("jobs", "job")] == (("b3", 7, 0), True)


def test_a_late_end_of_an_earlier_task_is_not_applied_to_a_reused_id() -> None:
    # The old "job" went n2 (b2) -> n3 and ended there; n3's word is late.
    # A new "job" goes to n2's next incarnation (b2x), which hands it to n3
    # too: the old end (handed by b2) must not drop the new task's route.
    routes = Routes()
    routes.add("jobs", "n2", "b2", 0.0, 60.0, ["job"])
    routes.move("jobs", "job", "n2", "n3", "b3", from_boot="b2")
    routes.add("jobs", "n2", "b2x", 10.0, 60.0, ["job"])
    routes.ended("jobs", "job", "n3", 11.0, via=("n2", "b2"))
    assert routes.get("jobs", "job") == ("n2", "b2x", 71.0, 0)
    assert routes.move("jobs", "job", "n2", "n3", "b3", from_boot="b2x") == ("n3", "b3", 71.0, 0)
    # and a move told by another incarnation than the route's is kept, not applied
    assert routes.move("jobs", "job", "n3", "n4", "b4", from_boot="b3old") is None
    assert routes.get("jobs", "job") == ("n3", "b3", 71.0, 0)


def test_an_end_after_a_handoff_drops_a_route_to_either_holder() -> None:
    routes = Routes()
    routes.add("jobs", "n2", "b2", 0.0, 60.0, ["a", "b", "c", "d"])
    routes.ended("jobs", "a", "n3", 1.0, via=("n2", "b2"))  # overtook n2's word of the move
    assert routes.get("jobs", "a") is None
    assert not routes.move("jobs", "a", "n2", "n3", "b3")  # nothing left to move
    routes.move("jobs", "b", "n2", "n3", "b3")
    routes.ended("jobs", "b", "n3", 2.0, via=("n2", "b2"))
    assert routes.get("jobs", "b") is None
    routes.ended("jobs", "c", "n3", 3.0, via=("n4", "b4"))  # a node it never went to
    assert routes.get("jobs", "c") == ("n2", "b2", 61.0, 0)
    # handed off by an earlier incarnation of n2: not this task (its id reused)
    routes.ended("jobs", "d", "n3", 3.0, via=("n2", "b0"))
    assert routes.get("jobs", "d") == ("n2", "b2", 61.0, 0)


def test_a_handoff_told_before_the_forwards_verdict_moves_the_route_once_it_is_added(
) -> None:
    # n2 took "job", then stopped and handed it to n3; its word of the move
    # came before n1 had settled the forward itself (its reply was lost: the
    # route is added when the batch is settled). Dropped, the route would
    # point at n2, gone for good, and a crash of n3 would leave the task with
    # no loss report (nemesis seed 1100, replicas=2).
    routes = Routes()
    moved: list[tuple[str, tuple[str, str, float, int]]] = []
    routes.moved_early = lambda bucket, task_id, route: moved.append((task_id, route))
    assert routes.move("jobs", "job", "n2", "n3", "b3", from_boot="b2", early=0.0) is None
    routes.ended("jobs", "done", "n3", 1.0, via=("n2", "b2"))  # handed off, then ended
    # A takeover's word (not from a stopping node: it may take the id again)
    # with no route is about an earlier task: not kept.
    assert routes.move("jobs", "other", "n2", "n4", "b4", from_boot="b2") is None
    # A handoff by another boot of n2 is about another task.
    routes.move("jobs", "new", "n2", "n3", "b3", from_boot="b2old", early=0.0)
    routes.add("jobs", "n2", "b2", 0.0, 60.0, ["job", "done", "other", "new"])
    assert routes.get("jobs", "job") == ("n3", "b3", 61.0, 0)
    assert moved == [("job", ("n3", "b3", 61.0, 0))]
    assert routes.get("jobs", "done") is None
    assert routes.get("jobs", "other") == ("n2", "b2", 61.0, 0)
    assert routes.get("jobs", "new") == ("n2", "b2", 61.0, 0)


def test_a_forward_left_unsettled_is_settled_by_its_holders_early_word() -> None:
    # As above, and n1 could not settle its forward either (n2 had exited):
    # n2's word of the handoff proves it took the task, so what is left to
    # settle is n2's handoff to n3 (its slot), not n1's forward to n2.
    routes = Routes()
    moved: list[str] = []
    routes.moved_early = lambda bucket, task_id, route: moved.append(task_id)
    routes.move("jobs", "job", "n2", "n3", "b3", ("b2", 9, 0), from_boot="b2", early=0.0)
    routes.add("jobs", "n2", "b2", 0.0, 60.0, ["job", "plain"])
    routes.unsure("jobs", "job", ("b1", 4, 0), False, ("n2", "b2"))
    routes.unsure("jobs", "plain", ("b1", 4, 1), False, ("n2", "b2"))
    assert routes.get("jobs", "job") == ("n3", "b3", 61.0, 0) and moved == ["job"]
    assert routes.unsettled[("jobs", "job")] == (("b2", 9, 0), True)
    assert routes.unsettled[("jobs", "plain")] == (("b1", 4, 1), False)


@pytest.mark.looptime
async def test_a_task_that_ends_while_its_big_handoff_batch_is_taken_is_told_to_its_origin(
) -> None:
    # n3 takes a batch of 1,024 handed-off tasks slice by slice, yielding
    # between slices; immediate ones run in those yields. Each slice's
    # origins are recorded as it is taken, so every end is told to n1.
    recorders: list[Recorder] = []

    def buckets(name: str) -> dict[str, TaskBucket]:
        recorders.append(Recorder())
        return {"jobs": TaskBucket(BucketConfig(life_span=60, max_bucket=2048), recorders[-1],
                                   name="jobs")}

    async with MemoryCluster(3, buckets, config=GroupConfig.local()) as c:
        await c.settle()
        n2, n3 = c["n2"], c["n3"]
        assert n2._forwarder is not None
        ids = [f"t{i}" for i in range(1024)]
        for task_id in ids:
            n2._forwarder.origins[("jobs", task_id)] = "n1"
        # n1's routes, as n2's notices of the moves leave them
        c["n1"]._routes.add("jobs", "n3", n3.boot_id, 0.0, 60.0, list(ids))
        items = [("jobs", task_id, 0, PACKED_NONE, 0.0, 60.0) for task_id in ids]
        verdicts = await n2._forwarder.send_many(n2._members.members["n3"], items,
                                                 mode=HANDOFF)
        assert verdicts == ["ok"] * len(ids)
        await asyncio.sleep(1)
        assert sum(recorders[2].hooks(t).count("finish") for t in ids) == len(ids)
        assert not n3._ended.via and not n3._ended.origins.get("jobs")
        assert not any(c["n1"]._routes.get("jobs", t) for t in ids)


@pytest.mark.looptime
async def test_a_late_end_notice_does_not_drop_the_route_of_a_task_reusing_its_id() -> None:
    # "job" goes n1 -> n2 -> n3 (n2 stops) and runs there; n3's notice of its
    # end is late. Meanwhile n2 restarts, and "job" is filled again and goes
    # to the new n2. The late notice (handed by the *old* n2) must not drop
    # the new task's route: when the new n2 crashes, the new job is lost.
    three = Three(nodes=3)
    async with three.cluster as c:
        await three.on_n2(run_after=3)
        # n3's notices (only those: n1's fill asks n3 first, and a slow n3
        # would make that fill PlacementUnknownError) leave 3 s late.
        late = [1]
        notify = c["n3"].transport.call

        async def call(addr: str, kind: Kind, message: dict[str, Any], timeout: float
                       ) -> dict[str, Any]:
            if kind is Kind.ENDED and late:
                await asyncio.sleep(3.0)
            return await notify(addr, kind, message, timeout)

        c["n3"].transport.call = call  # type: ignore[method-assign]
        await c.stop("n2")
        await asyncio.sleep(3.5)  # ran on n3
        assert three.runs("job") == 1
        b3 = c["n3"].buckets["jobs"]
        for i in range(50 - len(b3)):
            b3.fill_nowait(BOMB, f"fill-{i}", run_after=500, life_span=600)
        await c.restart("n2")
        await c.wait_for(lambda: c["n1"]._members.members["n2"].boot == c["n2"].boot_id
                         and c["n1"]._members.members["n2"].free.get("jobs") == 50
                         and c["n1"]._members.members["n3"].free.get("jobs") == 0)
        assert c["n1"]._routes.get("jobs", "job") is not None  # the notice is not in
        placed = await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=30, life_span=60)
        assert placed.node_id == "n2"  # n3 (full) said it does not hold it
        await asyncio.sleep(5)  # the late notice is in
        late.clear()
        c.crash("n2")
        await asyncio.sleep(20)
        assert three.runs("job") == 1
        assert three.lost == ["job"]  # the new one, reported once


@pytest.mark.parametrize("via", [["jobs", "a"], [["jobs", "a", "n2", 3]], "x",
                                 [["jobs", "a", "n2"]]])
def test_a_malformed_via_notice_is_refused(via: object) -> None:
    with pytest.raises(ProtocolError, match="via"):
        EndedNotices.check({"ended": {}, "moved": [], "via": via})


@pytest.mark.looptime
async def test_a_takeover_followed_on_to_a_holder_already_gone_reports_the_task() -> None:
    # n1 kept n3's word that "x" moved on to n4 (it overtook the takeover's);
    # n4 has restarted since. When n3's word that it took "x" over from n2
    # comes, the route follows on to the old n4: the task is reported lost.
    three = Three(nodes=4)
    async with three.cluster as c:
        await c.settle()
        n1, old_n4 = c["n1"], c["n4"].boot_id
        c.crash("n4")
        await c.restart("n4")
        await c.wait_for(lambda: n1._members.members["n4"].boot == c["n4"].boot_id)
        n1._routes.add("jobs", "n2", c["n2"].boot_id, asyncio.get_running_loop().time(),
                       60.0, ["x"])
        n3 = c["n3"].boot_id
        assert n1._routes.move("jobs", "x", "n3", "n4", old_n4, from_boot=n3) is None
        n1._ended.apply("n3", n3, ([], [], [["jobs", "x", "n2"]], [], [], True))
        await asyncio.sleep(0.1)  # (the callback runs in a task of its own)
        assert three.lost == ["x"]
