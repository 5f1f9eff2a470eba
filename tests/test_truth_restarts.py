"""A holder that restarts (kill -9, then back at once at the same address):
a task is either reported lost or runs, never both.

In-memory cluster (the public :class:`~gobucket_py.testing.MemoryCluster`),
faked loop clock. Each test is a sequence an adversarial review found to
report a task lost and then run it: a crash loop within ``promote_grace``,
a handoff settled against the holder's new incarnation, and a backup holder
that hears of the restart after the origin has reported the task lost. The last
one checks the other side: a restart must not make a fill be refused for
want of backup room.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gobucket_py import (
    BucketConfig,
    DrainOutcome,
    GroupConfig,
    MemberState,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)
from gobucket_py.cluster import forward
from gobucket_py.cluster.backups import Backups
from gobucket_py.cluster.membership import Member
from gobucket_py.cluster.protocol import Kind
from gobucket_py.codec import PACKED_NONE
from gobucket_py.errors import ProtocolError
from gobucket_py.testing import MemoryCluster

from .conftest import Recorder
from .test_one_id import hold_ended

pytestmark = pytest.mark.looptime

BOMB = TaskType.TIME_BOMB


class Watched:
    """Recorders of every incarnation, and the loss reports of n1."""

    def __init__(self) -> None:
        self.recorders: list[Recorder] = []
        self.lost: list[str] = []

    def recorder(self) -> Recorder:
        recorder = Recorder()
        self.recorders.append(recorder)
        return recorder

    def setup(self, group: TaskBucketGroup) -> None:
        if group.node_id == "n1":
            group.on_tasks_lost = lambda peer, bucket, ids: self.lost.extend(ids)

    def runs(self, task_id: str) -> int:
        return sum(r.hooks(task_id).count("execute") for r in self.recorders)

    def cluster(self, nodes: int, *, small: tuple[str, ...] = (), replicas: int = 0,
                no_backups: tuple[str, ...] = (), **config: float) -> MemoryCluster:
        """``nodes`` nodes with a "jobs" bucket each: one slot on ``small``
        ones (their fills overflow once it is taken), 50 elsewhere; with
        ``replicas``, room for 50 backups (none on ``no_backups``)."""

        def buckets(name: str) -> dict[str, TaskBucket]:
            backups = 0 if name in no_backups else 50
            bucket = BucketConfig(life_span=60, run_after=30,
                                  max_bucket=1 if name in small else 50,
                                  **({"max_backups": backups, "replicas": replicas}
                                     if replicas else {}))
            return {"jobs": TaskBucket(bucket, self.recorder(), name="jobs")}

        return MemoryCluster([f"n{i}" for i in range(1, nodes + 1)], buckets,
                             setup=self.setup, config=GroupConfig.local(**config))


async def anchor(cluster: MemoryCluster, *names: str) -> None:
    """Take the one slot of each small node with a task due much later."""
    for name in names:
        await cluster[name].fill("jobs", f"anchor-{name}", task_type=BOMB, run_after=500,
                                 life_span=600)


async def test_a_crash_loop_within_promote_grace_does_not_report_the_live_incarnation() -> None:
    # With replicas a loss report waits promote_grace. The holder restarts
    # twice within it: the first report must not take the tasks of the
    # second (current) incarnation for lost.
    w = Watched()
    async with w.cluster(3, small=("n1", "n3"), replicas=1) as c:
        await c.settle()
        await anchor(c, "n3", "n1")
        for _ in range(2):
            c.crash("n2")
            await c.restart("n2")
            await c.wait_for(lambda: c["n1"]._members.members["n2"].boot == c["n2"].boot_id)
        placed = await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=10, life_span=60)
        assert placed.node_id == "n2"
        await asyncio.sleep(3)  # both reports' promote_grace (1.5 s) is over
        assert "job" not in w.lost
        assert (await c["n1"].get("jobs", "job")) is not None
        await asyncio.sleep(15)  # past its due time
        assert w.runs("job") == 1 and "job" not in w.lost


async def test_a_handoff_is_not_settled_against_the_holders_new_incarnation() -> None:
    # n1 stops and hands "job" to n2, which takes it; the reply is lost and
    # n2 is killed and restarts. Its new incarnation never saw the batch:
    # its "void" says nothing of what the old one took. The task is lost
    # (reported once) -- not kept here, handed off again and run.
    w = Watched()
    async with w.cluster(2, stop_grace=10.0) as c:
        await c.settle()
        await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=20, life_span=60)
        drop = c.drop_replies("n1", "n2")
        stopping = asyncio.ensure_future(c.stop("n1"))
        await c.wait_for(lambda: "job" in c["n2"].buckets["jobs"], 5, "the handoff reached n2")
        c.crash("n2")
        await c.restart("n2")
        drop.heal()
        await stopping
        await asyncio.sleep(30)  # past its due time
        assert w.runs("job") == 0
        assert w.lost == ["job"]  # its one loss report


async def test_a_backup_does_not_take_over_a_task_its_origin_reported_lost() -> None:
    # n3 holds the backup of a task n1 forwarded to n2. n3 is stalled while
    # n2 is killed and restarts; n1 reports the task lost after
    # promote_grace. When n3 resumes and asks to take it over, n1 objects:
    # run now, it would run after its loss report. (n1 keeps no backups, so
    # n3 is the one place for it, whatever the two choices draw.)
    w = Watched()
    async with w.cluster(3, small=("n1", "n3"), replicas=1, no_backups=("n1",)) as c:
        await c.settle()
        await anchor(c, "n3", "n1")
        placed = await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=20, life_span=60)
        assert placed.node_id == "n2"
        assert ("job", "n2") in c["n3"]._backups.records.get("jobs", {})
        c.stall("n3")
        c.crash("n2")
        await c.restart("n2")
        await asyncio.sleep(3)  # n1 saw the restart; promote_grace (1.5 s) is over
        assert w.lost == ["job"]
        assert (await c["n1"].drain("jobs", "job")).outcome is DrainOutcome.LOST
        c.resume("n3")
        await asyncio.sleep(40)  # past its due time
        assert w.runs("job") == 0
        assert (await c["n1"].drain("jobs", "job")).outcome is DrainOutcome.LOST


async def test_a_holder_killed_during_its_graceful_stop_has_its_tasks_reported_lost() -> None:
    # SIGTERM, then SIGKILL before stop_grace is over: no peer had room, so
    # the task was still on n2. Seen LEFT, then restarted: the origin must
    # not take "it left" for "it handed everything off" (it never said so).
    w = Watched()
    async with w.cluster(2, small=("n1",), stop_grace=5.0) as c:
        await c.settle()
        await anchor(c, "n1")
        placed = await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=20, life_span=60)
        assert placed.node_id == "n2"
        n2 = c["n2"]
        stopping = asyncio.ensure_future(n2.stop())
        await c.wait_for(lambda: c.state("n1", "n2") is MemberState.LEFT, 5, "n2 LEFT")
        await asyncio.sleep(1)
        assert "job" in n2.buckets["jobs"]  # no peer had room: still there
        c.crash("n2")
        await c.restart("n2")
        await asyncio.sleep(3)
        await asyncio.gather(stopping, return_exceptions=True)
        assert w.lost == ["job"]
        assert (await c["n1"].drain("jobs", "job")).outcome is DrainOutcome.LOST
        await asyncio.sleep(30)
        assert w.runs("job") == 0


async def test_a_holder_that_stopped_and_said_so_leaves_no_stale_route() -> None:
    # The usual graceful restart: n2 ran its task, stopped, said it was
    # done, and came back. Nothing is reported lost, nothing is looked for.
    w = Watched()
    async with w.cluster(2, small=("n1",), stop_grace=5.0) as c:
        await c.settle()
        await anchor(c, "n1")
        placed = await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=500,
                                    life_span=600)
        assert placed.node_id == "n2"
        await c.stop("n2")  # no peer has room: the task is rescued there, its origin told
        await c.restart("n2")
        await asyncio.sleep(5)
        assert w.lost == [] and c["n1"]._routes.get("jobs", "job") is None


async def test_a_task_handed_off_by_a_holder_that_left_is_found_not_reported_lost() -> None:
    # n2 stops and hands "job" to n3, but its word to the origin (the moved
    # notice) never arrives; n2 then restarts. The origin finds the task on
    # n3: no loss report, and it runs once.
    w = Watched()
    async with w.cluster(3, small=("n1",), stop_grace=5.0) as c:
        await c.settle()
        await anchor(c, "n1")
        placed = None
        while placed is None or placed.node_id != "n2":  # two peers: aim at n2
            if placed is not None:
                await c["n1"].drain("jobs", "job")
            placed = await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=20,
                                        life_span=60)
        cut = c.partition("n2", "n1", one_way=True)  # n2's notices to n1 are lost
        await c.stop("n2")
        assert "job" in c["n3"].buckets["jobs"]
        route = c["n1"]._routes.get("jobs", "job")
        assert route is not None and route[0] == "n2"  # the origin never heard
        cut.heal()
        await c.restart("n2")
        await asyncio.sleep(5)
        assert w.lost == []
        await asyncio.sleep(30)
        assert w.runs("job") == 1 and w.lost == []


async def test_a_backup_refused_by_a_restarted_peer_goes_to_its_new_incarnation() -> None:
    # n1 backs a task up on n2, which has just restarted (n1 has not heard):
    # the batch, meant for the old incarnation, is refused ("restarted"),
    # which is no refusal of the new one: it is asked next, and the fill is
    # accepted -- not NoBackupRoomError in a cluster with room.
    w = Watched()
    async with w.cluster(2, replicas=1) as c:
        await c.settle()
        old = c["n2"].boot_id
        c.crash("n2")
        await c.restart("n2")
        await c.wait_for(lambda: c["n1"]._members.members["n2"].boot == c["n2"].boot_id)
        c["n1"]._members.members["n2"].boot = old  # as if n1 had not heard yet
        placed = await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=10, life_span=60)
        assert not placed.forwarded
        assert c["n1"]._members.members["n2"].boot == c["n2"].boot_id  # heard from its answer
        assert c["n1"]._replicas.holders.bucket("jobs")["job"] == ("n2",)
        assert ("job", "n1") in c["n2"]._backups.records["jobs"]


@pytest.mark.parametrize("clock", ["steady", "stepped back"])
async def test_an_ended_notice_from_before_the_origins_restart_keeps_a_new_route(
        clock: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # n1 forwards "job" to n2, is killed and restarts; "job" ends on n2 and
    # n2's notice is on the wire when the new n1 fills "job" again, onto n2.
    # The notice names a batch of n1's earlier incarnation: the new task's
    # route stays (and n2's crash is reported for it) -- also when n1's wall
    # clock stepped back across the restart, so its batch numbers restart
    # lower. (Found by review.)
    w = Watched()
    async with w.cluster(2, small=("n1",)) as c:
        await c.settle()
        await anchor(c, "n1")
        for i in range(3):  # batches of n1's first incarnation
            await c["n1"].fill("jobs", f"warm-{i}")
        placed = await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=5, life_span=60)
        assert placed.node_id == "n2"
        released = hold_ended(c["n2"])
        c.crash("n1")
        if clock == "stepped back":
            monkeypatch.setattr(forward, "first_batch", lambda: 1_000)
        n1 = await c.restart("n1")
        await c.settle()
        await anchor(c, "n1")
        await asyncio.sleep(6)  # "job" ran on n2; its notice is held on the wire
        assert w.runs("job") == 1 and "job" not in c["n2"].buckets["jobs"]
        placed = await n1.fill("jobs", "job", task_type=BOMB, run_after=30, life_span=60)
        assert placed.node_id == "n2"
        released.set()
        await asyncio.sleep(1)  # the old notice has been applied
        route = n1._routes.get("jobs", "job")
        assert route is not None and route[0] == "n2"
        c.crash("n2")
        await asyncio.sleep(40)
        assert w.lost == ["job"]


async def test_a_takeover_of_an_earlier_task_does_not_answer_for_a_new_one() -> None:
    # n1 fills "job" locally, backed up on a peer; n1 is killed, the backup
    # holder takes "job" over and runs it. n1 restarts and fills "job" again,
    # locally: the holder's record of the takeover is about the earlier
    # incarnation's task, and must not make the new one "promoted" at its
    # gate (it would end HANDED_OFF, run nowhere, and get no loss report).
    # (Found by the nemesis's id-reuse mode, seed 310 with replicas.)
    w = Watched()
    async with w.cluster(3, replicas=1) as c:
        await c.settle()
        await c["n1"].fill("jobs", "job", task_type=BOMB, run_after=8, life_span=60)
        await asyncio.sleep(0.5)  # backed up
        c.crash("n1")
        await asyncio.sleep(10)  # taken over (lost_after 5 s), and ran, on its holder
        assert w.runs("job") == 1
        n1 = await c.restart("n1")
        await c.settle()
        placed = await n1.fill("jobs", "job", task_type=BOMB, run_after=3, life_span=60)
        assert placed.node_id == "n1"
        await asyncio.sleep(5)
        assert w.runs("job") == 2
        assert [r.hooks("job") for r in w.recorders[3:]] == [["execute", "finish"]]


@pytest.mark.parametrize("down", [10.0, 0.2])
async def test_a_claim_on_an_earlier_incarnations_task_does_not_refuse_a_new_ones_word(
        down: float) -> None:
    # Five nodes: n1's tasks are taken over by their holders once n1 is
    # killed (declared dead, or seen back at once in a new boot), each with
    # the agreement of the other three (a claim there). n1's new incarnation
    # fills the ids again; each new task's backup lands on some peer,
    # mostly one that agreed to a takeover. That peer, and the others the
    # gate then leaves word with, must take the word that the new task
    # started: their claims are about the earlier incarnation's task.
    # Refused ("claimed"), the gate found no majority to leave word with and
    # waited for good; the task never ran. (Nemesis seed 310 with ids used
    # again and replicas: the audit drain still answered unknown after
    # every fault healed.)
    w = Watched()
    ids = [f"job{i}" for i in range(8)]
    async with w.cluster(5, replicas=1) as c:
        await c.settle()
        for task_id in ids:
            await c["n1"].fill("jobs", task_id, task_type=BOMB, run_after=12, life_span=60)
        await asyncio.sleep(0.5)  # backed up
        c.crash("n1")
        await asyncio.sleep(down)
        n1 = await c.restart("n1")
        await asyncio.sleep(20)  # taken over, and ran, on their holders
        assert [w.runs(t) for t in ids] == [1] * 8
        claims = [k for name in ("n2", "n3", "n4", "n5")
                  for k in c[name]._backups.claims if k[2] == "n1"]
        assert len(claims) >= 8  # every takeover was agreed to
        await c.settle()
        for task_id in ids:
            placed = await n1.fill("jobs", task_id, task_type=BOMB, run_after=3, life_span=60)
            assert placed.node_id == "n1"
        await asyncio.sleep(5)
        assert [w.runs(t) for t in ids] == [2] * 8
        for task_id in ids:
            assert (await n1.drain("jobs", task_id)).outcome is DrainOutcome.FINISHED


async def test_a_claim_answers_only_for_the_incarnation_it_is_about() -> None:
    # A takeover check names the primary's incarnation of each task; the
    # claim it leaves refuses that incarnation's word only. A check from an
    # earlier version names none: its claim refuses every incarnation's.
    async with words_at_n3() as (backups, n1, n2):
        assert backups.check("n2", "n1", None, [["jobs", "job"]], n2.boot, [n1.boot]) == ["ok"]
        assert backups.note(n1, [["started", "jobs", "job"]]) == ["claimed"]
        again = Member("n1", n1.addr, "new-boot")
        assert backups.note(again, [["started", "jobs", "job"]]) == ["ok"]
        assert backups.check("n2", "n1", None, [["jobs", "old"]], n2.boot) == ["ok"]
        assert backups.note(again, [["started", "jobs", "old"]]) == ["claimed"]
        # An earlier version's check that names the incarnation once, for all:
        assert backups.check("n2", "n1", "old", [["jobs", "one"]], n2.boot) == ["ok"]
        assert backups.note(Member("n1", n1.addr, "old"), [["started", "jobs", "one"]]) == [
            "claimed"]
        assert backups.note(again, [["started", "jobs", "one"]]) == ["ok"]
        for bad in (["b"], "b", [5, 6]):
            with pytest.raises(ProtocolError, match="boots"):
                backups.check("n2", "n1", None, [["jobs", "x"], ["jobs", "y"]], n2.boot, bad)
        assert ("jobs", "x", "n1") not in backups.claims


@pytest.mark.parametrize("about", [
    [], {"tombs": 3}, {"moved": [["jobs", "x", "n1"]]}, {"tombs": [["jobs", "x", "n1", 5]]},
    {"tombs": [["jobs", "t", "n1", "A"]], "stamps": 3},
    {"tombs": [["jobs", "t", "n1", "A"]], "stamps": {"tombs": ["x"]}},
    {"tombs": [["jobs", "t", "n1", "A"]], "stamps": {"tombs": [1.0, 2.0]}}])
async def test_a_bequest_names_the_incarnation_its_words_are_about(about: object) -> None:
    # A leaving node passes on its tombs and moves with the primary's boot
    # each is about: the heir does not apply them to another incarnation's
    # task. A malformed "about" is refused, and nothing is kept.
    w = Watched()
    async with w.cluster(2, replicas=1) as c:
        await c.settle()
        backups = c["n2"]._backups
        word = {"tombs": [["jobs", "t", "n1"]], "claims": [],
                "moved": [["jobs", "m", "n1", "n3 b3"]]}
        with pytest.raises(ProtocolError, match="about"):
            backups.inherit({**word, "about": about})
        assert not backups.tombs and not backups.moved
        backups.inherit({**word, "about": {"tombs": [["jobs", "t", "n1", "A"]],
                                           "moved": [["jobs", "m", "n1", "A"]]}})
        for table, task_id in (("tombs", "t"), ("moved", "m")):
            key = ("jobs", task_id, "n1")
            assert backups.of(table, key, "A") and not backups.of(table, key, "B")
        backups.inherit({"tombs": [["jobs", "u", "n1"]]})  # an earlier version's: any boot
        assert backups.of("tombs", ("jobs", "u", "n1"), "B")
        # With the stamp of the task each is about: that task and earlier ones only.
        backups.inherit({"tombs": [["jobs", "s", "n1"]], "claims": [], "moved": [],
                         "about": {"tombs": [["jobs", "s", "n1", "A"]],
                                   "stamps": {"tombs": [7.0]}}})
        key = ("jobs", "s", "n1")
        assert backups.of("tombs", key, "A", 7.0) and backups.of("tombs", key, "A", 6.0)
        assert not backups.of("tombs", key, "A", 8.0)


@contextlib.asynccontextmanager
async def words_at_n3() -> AsyncIterator[tuple[Backups, Member, Member]]:
    """Three nodes with replicas, settled: n3's backup words, and n1 and n2
    as n3 sees them."""
    async with Watched().cluster(3, replicas=1) as c:
        await c.settle()
        members = c["n3"]._members.members
        yield c["n3"]._backups, members["n1"], members["n2"]


async def test_a_late_word_about_an_earlier_incarnation_does_not_relabel_a_later_ones() -> None:
    # Words about a primary's task are kept by (bucket, id, primary); the
    # boot each is about is a label. A late word about an earlier
    # incarnation under a key that holds a later one's makes the key's
    # words apply to every incarnation (as before labels): never "not about
    # you" for the later one's own word. (Found by review: a late takeover
    # announcement relabelled a move, and a primary back from a stall heard
    # "ok" for a task taken over -- it could run twice; a bequest relabelled
    # a tomb, and a late copy of a started task's backup was kept.)
    async with words_at_n3() as (backups, n1, n2):
        backups.took_over(n2, "n1", [["jobs", "job"]], [], [n1.boot])  # about n1 now
        backups.took_over(n2, "n1", [["jobs", "job"]], [], ["earlier"])  # late
        assert backups.note(n1, [["started", "jobs", "job"]])[0].startswith("promoted:n2")
        assert backups.note(n1, [["started", "jobs", "once"]]) == ["ok"]  # a tomb, about n1
        backups.inherit({"tombs": [["jobs", "once", "n1"]],
                         "about": {"tombs": [["jobs", "once", "n1", "earlier"]]}})
        item = ("jobs", "once", PACKED_NONE, 5.0, 3600.0, "n1", 0, ("n3",))
        assert backups.store([item], n1) == ["dropped"]  # type: ignore[arg-type]


async def test_an_inherited_move_about_another_incarnation_unlabels_the_heirs() -> None:
    # The heir holds a move about n1's earlier incarnation; a leaving node
    # passes on a move of the same key about n1's current one. The heir
    # keeps its own row, but its label goes: n1 now hears "promoted". (Found
    # by review: the label stayed, and n1 heard "ok" for a task taken over.)
    async with words_at_n3() as (backups, n1, n2):
        backups.took_over(n2, "n1", [["jobs", "job"]], [], ["earlier"])
        backups.inherit({"tombs": [], "claims": [], "moved": [["jobs", "job", "n1", "n4 b4"]],
                         "about": {"moved": [["jobs", "job", "n1", n1.boot]]}})
        assert backups.note(n1, [["started", "jobs", "job"]])[0].startswith("promoted:")


async def test_a_bequest_labels_a_key_only_when_all_its_rows_agree() -> None:
    # A leaving node's move (incarnation not known) and its promotion
    # (labelled) of one key go as two moved rows: the heir keeps the first,
    # so the key is passed on unlabelled. (Found by review: it took the
    # promotion's label for the move's word.)
    w = Watched()
    async with w.cluster(3, replicas=1) as c:
        await c.settle()
        leaver, heir = c["n2"]._backups, c["n3"]._backups
        key = ("jobs", "job", "n1")
        leaver.moved[key] = "n4 b4"  # about an incarnation not known
        leaver._about("promoted", key, "B")
        leaver.promoted[key] = 0.0
        sent: list[dict[str, Any]] = []

        async def call(addr: str, kind: Kind, message: dict[str, Any], timeout: float
                       ) -> dict[str, Any]:
            sent.append(message)
            return {"v": 1}

        c["n2"].transport.call = call  # type: ignore[method-assign]
        await leaver.bequeath()
        assert sent and sent[0]["inherit"]["about"]["moved"] == []
        heir.inherit(sent[0]["inherit"])
        assert heir.moved[key] == "n4 b4" and heir.of("moved", key, "A")
