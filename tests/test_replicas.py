"""Replicas: a crashed node's pending time-bombs still run, once.

In-memory cluster, faked loop clock. ``replicas=1`` unless a test says
otherwise; a crash is ``MemoryNetwork.crash`` plus abandoning the group (its
timers and runners are cancelled, as the process would be gone).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from gobucket_py import (
    BucketConfig,
    DrainOutcome,
    GroupConfig,
    NoBackupRoomError,
    PeerUnavailableError,
    TaskBucket,
    TaskBucketGroup,
    TaskState,
    TaskType,
)
from gobucket_py.cluster.backups import TOMB_KEEP
from gobucket_py.codec import PACKED_NONE
from gobucket_py.errors import ProtocolError

from .conftest import Recorder
from .test_cluster import Cluster

pytestmark = pytest.mark.looptime

BOMB = TaskType.TIME_BOMB



async def three(cluster: Cluster, **cfg: Any) -> list[TaskBucketGroup]:
    groups = [await cluster.add(f"n{i}", max_bucket=50, replicas=cfg.pop("replicas", 1),
                                **cfg) for i in (1, 2, 3)]
    await cluster.settle()
    return groups


async def forwarding(cluster: Cluster) -> TaskBucketGroup:
    """n1 with one slot, taken: its fills go to n2 or n3 (n1 is their origin)."""
    n1 = await cluster.add("n1", max_bucket=1, replicas=1)
    await cluster.add("n2", max_bucket=50, replicas=1)
    await cluster.add("n3", max_bucket=50, replicas=1)
    await cluster.settle()
    await n1.fill("jobs", "local", task_type=BOMB, run_after=30, life_span=60)
    return n1


async def crash(cluster: Cluster, name: str) -> None:
    """kill -9: the address refuses, the node's timers and runners are gone."""
    cluster.net.crash(name)
    group = cluster.groups.pop(name)
    cluster.recorders[f"{name} (crashed {id(group)})"] = cluster.recorders.pop(name)
    await group._members.stop()
    for bucket in group.buckets.values():
        for task in list(bucket):
            if task._runner is not None:
                task._runner.cancel()
        if bucket._wheel is not None:
            bucket._wheel.close()


def runs(cluster: Cluster, task_id: str) -> int:
    return cluster.fired().count(task_id)


def backups_of(cluster: Cluster, task_id: str) -> list[str]:
    return [name for name, g in cluster.groups.items()
            if any(key[0] == task_id for key in g._backups.records.get("jobs", {}))]


async def test_a_time_bomb_is_backed_up_on_another_node(cluster: Cluster) -> None:
    n1, _, _ = await three(cluster)
    placed = await n1.fill("jobs", "job", task_type=BOMB, run_after=10, life_span=20)
    assert placed.node_id == "n1"
    assert len(backups_of(cluster, "job")) == 1
    assert backups_of(cluster, "job")[0] != "n1"
    await asyncio.sleep(11)
    assert runs(cluster, "job") == 1
    assert backups_of(cluster, "job") == []  # dropped when it started


async def test_drain_drops_the_backup_before_answering(cluster: Cluster) -> None:
    n1, _, _ = await three(cluster)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=10, life_span=20)
    assert (await n1.drain("jobs", "job")).outcome is DrainOutcome.DRAINED
    assert backups_of(cluster, "job") == []
    await crash(cluster, "n1")  # nothing may bring a drained task back
    await asyncio.sleep(30)
    assert runs(cluster, "job") == 0


async def test_crash_before_due_the_backup_runs_it_once_at_its_due_time(
        cluster: Cluster) -> None:
    n1, n2, n3 = await three(cluster)
    lost: list[Any] = []
    for g in (n2, n3):
        g.on_tasks_lost = lambda *args: lost.append(args)
    # Filled through n2, placed on n1 (n2 and n3 are full for the moment).
    placed = await n1.fill("jobs", "job", task_type=BOMB, run_after=10, life_span=20)
    holder = backups_of(cluster, "job")[0]
    await asyncio.sleep(2)
    await crash(cluster, "n1")
    await cluster.add("n1", max_bucket=50, replicas=1)  # back at once: a new boot id
    await asyncio.sleep(2)
    task = cluster.bucket(holder).get("job")
    assert task is not None and task.state is TaskState.PENDING
    assert task.recovered == 0.0  # taken over before it was due
    assert 5 < task.seconds_to_run < 7  # its original due time
    await asyncio.sleep(10)
    assert runs(cluster, "job") == 1
    assert placed.node_id == "n1" and lost == []


async def test_reschedule_moves_the_backup_too(cluster: Cluster) -> None:
    n1, _, _ = await three(cluster)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=10, life_span=15)
    holder = backups_of(cluster, "job")[0]
    assert await n1.buckets["jobs"].reschedule("job", 30)  # a watchdog pushed it back
    await asyncio.sleep(1)
    due, deadline = (cluster.groups[holder]._backups.records["jobs"][("job", "n1")][4:6])
    now = asyncio.get_running_loop().time()
    assert 28 < due - now < 30 and 33 < deadline - now < 35
    await crash(cluster, "n1")
    await cluster.add("n1", max_bucket=50, replicas=1)  # a new boot id: taken over
    await asyncio.sleep(15)  # past the original due time: it must not run yet
    assert runs(cluster, "job") == 0
    task = cluster.bucket(holder).get("job")
    assert task is not None and 13 < task.seconds_to_run < 15
    await asyncio.sleep(15)
    assert runs(cluster, "job") == 1


async def test_crash_past_due_it_fires_at_once_and_says_how_late(cluster: Cluster) -> None:
    n1, _, _ = await three(cluster, lost_after=3)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=1, life_span=30)
    holder = backups_of(cluster, "job")[0]
    n1.buckets["jobs"].set_gate(_never)  # n1 hangs before it can start it...
    await asyncio.sleep(0.5)
    await crash(cluster, "n1")  # ...and dies; nobody restarts it
    await asyncio.sleep(8)  # dead (~0.5 s), then taken over and fired at once
    assert runs(cluster, "job") == 1
    late = next(t for h, t, _ in cluster.recorders[holder].calls if h == "execute" and t)
    assert late == "job"


async def _never(task: Any) -> bool:
    await asyncio.Event().wait()
    return False


async def test_forwarded_task_is_backed_up_and_its_route_follows_the_promotion(
        cluster: Cluster) -> None:
    n1 = await forwarding(cluster)
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    placed = await n1.fill("jobs", "job", task_type=BOMB, run_after=10, life_span=20)
    holder = placed.node_id
    backup = backups_of(cluster, "job")
    assert backup and holder not in backup
    await crash(cluster, holder)
    await cluster.add(holder, max_bucket=50, replicas=1)
    await asyncio.sleep(3)
    info = await n1.get("jobs", "job")
    assert info is not None and info.node_id == backup[0] and info.state is TaskState.PENDING
    assert lost == []
    assert (await n1.drain("jobs", "job")).outcome is DrainOutcome.DRAINED
    await asyncio.sleep(20)
    assert runs(cluster, "job") == 0


async def test_a_task_that_started_is_reported_lost_not_run_again(cluster: Cluster) -> None:
    n1 = await forwarding(cluster)
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    placed = await n1.fill("jobs", "slow", task_type=BOMB, run_after=1, life_span=30)
    cluster.recorders[placed.node_id].work["slow"] = 20.0
    await asyncio.sleep(2)  # it runs on its holder
    assert runs(cluster, "slow") == 1
    await crash(cluster, placed.node_id)
    await cluster.add(placed.node_id, max_bucket=50, replicas=1)
    await asyncio.sleep(5)
    assert runs(cluster, "slow") == 1  # not run again by a backup
    assert lost == [(placed.node_id, "jobs", ["slow"])]


async def test_without_peers_a_replicated_fill_is_refused_and_not_kept(
        cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=5, replicas=1, seeds=[])
    with pytest.raises(NoBackupRoomError):
        await n1.fill("jobs", "job", task_type=BOMB)
    assert "job" not in n1.buckets["jobs"]
    await n1.fill("jobs", "now")  # immediate tasks start at once: not backed up
    await asyncio.sleep(1)
    assert runs(cluster, "now") == 1


async def test_a_minority_primary_waits_and_the_majority_takes_over_once(
        cluster: Cluster) -> None:
    n1, _, _ = await three(cluster, lost_after=3)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=2, life_span=60)
    holder = backups_of(cluster, "job")[0]
    cut = cluster.net.partition(["n1"], ["n2", "n3"])
    await asyncio.sleep(10)  # n1 alone: it may not start it; n2+n3 take it over
    assert runs(cluster, "job") == 1
    assert [t for h, t, _ in cluster.recorders[holder].calls if h == "execute"] == ["job"]
    cut.heal()
    await asyncio.sleep(5)
    assert runs(cluster, "job") == 1  # n1 learns it moved and does not run it
    assert "job" not in n1.buckets["jobs"]


async def test_drain_while_its_holder_is_gone_is_unknown_until_backups_answer(
        cluster: Cluster) -> None:
    n1 = await forwarding(cluster)
    placed = await n1.fill("jobs", "job", task_type=BOMB, run_after=20, life_span=40)
    await crash(cluster, placed.node_id)
    await cluster.add(placed.node_id, max_bucket=50, replicas=1)
    answers = []
    for _ in range(30):
        try:
            answers.append((await n1.drain("jobs", "job")).outcome)
            break
        except PeerUnavailableError:
            answers.append(None)
            await asyncio.sleep(0.2)
    assert answers[-1] is DrainOutcome.DRAINED
    assert DrainOutcome.NOT_FOUND not in answers
    await asyncio.sleep(30)
    assert runs(cluster, "job") == 0


async def test_two_nodes_die_at_once_exactly_the_tasks_with_no_copy_left_are_lost(
        cluster: Cluster) -> None:
    """Five nodes, replicas=1; n4 and n5 crash together. The three survivors are a
    majority: every task with a copy on a survivor runs once; exactly those whose
    holder and backup both died are reported lost, once each, by their origins."""
    for name in ("n1", "n2", "n3"):  # small: most of their fills overflow to n4 and n5
        await cluster.add(name, max_bucket=10, replicas=1, lost_after=3)
    for name in ("n4", "n5"):
        await cluster.add(name, max_bucket=100, replicas=1, lost_after=3)
    await cluster.settle()
    lost: list[str] = []
    placed: dict[str, str] = {}
    for origin in ("n1", "n2", "n3"):
        group = cluster.groups[origin]
        group.on_tasks_lost = lambda _peer, _bucket, ids: lost.extend(ids)
        for i in range(40):
            task_id = f"{origin}-{i}"
            placed[task_id] = (await group.fill("jobs", task_id, task_type=BOMB, run_after=20,
                                                life_span=60)).node_id
    dead = {"n4", "n5"}
    copies = {t: {holder, *backups_of(cluster, t)} for t, holder in placed.items()}
    assert all(len(c) == 2 for c in copies.values())  # one holder, one backup each
    gone = {t for t, c in copies.items() if c <= dead}
    saved = {t for t, holder in placed.items() if holder in dead and t not in gone}
    assert gone and saved, (len(gone), len(saved))
    await crash(cluster, "n4")
    await crash(cluster, "n5")
    await asyncio.sleep(40)  # past lost_after, promote_grace and every due time
    fired = cluster.fired()
    assert sorted(lost) == sorted(gone)  # each reported once, nothing else
    assert {t for t in placed if fired.count(t) == 1} == set(placed) - gone
    assert not any(fired.count(t) > 1 for t in placed)


async def test_drain_after_a_backup_holder_died_is_certain_at_once(cluster: Cluster) -> None:
    """The task is backed up again on the third node; its dead former holder
    cannot answer the drop, but the new holder took the word (a majority with the
    primary): DRAINED on the first try, and it never runs."""
    n1, _, _ = await three(cluster)
    placed = [f"t{i}" for i in range(10)]
    for task_id in placed:
        await n1.fill("jobs", task_id, task_type=BOMB, run_after=20, life_span=40)
    on3 = [t for t in placed if backups_of(cluster, t) == ["n3"]]
    assert on3
    stall = cluster.net.stall("n3")
    await asyncio.sleep(5)  # dead to both others, backed up again on n2
    assert backups_of(cluster, on3[0]) == ["n2", "n3"]
    assert (await n1.drain("jobs", on3[0])).outcome is DrainOutcome.DRAINED
    stall.heal()
    await asyncio.sleep(30)
    assert runs(cluster, on3[0]) == 0


@pytest.mark.parametrize("side", ["both", "holder asks", "primary tells"])
async def test_a_holder_back_from_a_stall_drops_the_backups_no_longer_needed(
        cluster: Cluster, side: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drops sent while a backup holder was silent reach others as tombs, not the
    holder: once it is back, the backups no longer needed go at once, not at their
    deadline (they would hold backup room: the cause of a refused fill in the docker
    kill test). Either side repairs it alone: the holder, if it saw the primary
    silent, asks it which backups it still needs; the primary, once it sees the
    holder again, tells it the drops it missed (a paused holder saw nothing).
    Backups of tasks still pending stay, and none of it runs anything."""
    from gobucket_py.cluster.backups import Backups
    from gobucket_py.cluster.replicas import Replicas
    if side == "primary tells":
        monkeypatch.setattr(Backups, "primary_back", lambda self, member: None)
    elif side == "holder asks":
        monkeypatch.setattr(Replicas, "holder_back", lambda self, node: None)
    n1, _, _ = await three(cluster)
    placed = [f"t{i}" for i in range(12)]
    for task_id in placed:
        await n1.fill("jobs", task_id, task_type=BOMB, run_after=20, life_span=600)
    on3 = [t for t in placed if backups_of(cluster, t) == ["n3"]]
    assert len(on3) >= 2, on3
    stall = cluster.net.stall("n3")
    await asyncio.sleep(5)  # dead to both others; n1 backs its tasks up again on n2
    drained, pending = on3[0], on3[1:]
    assert (await n1.drain("jobs", drained)).outcome is DrainOutcome.DRAINED
    n3 = cluster.groups["n3"]
    assert (drained, "n1") in n3._backups.records["jobs"]  # it could not be told
    stall.heal()
    await asyncio.sleep(3)  # alive again to n3: it asks n1
    assert (drained, "n1") not in n3._backups.records["jobs"]
    assert all((t, "n1") in n3._backups.records["jobs"] for t in pending)
    await asyncio.sleep(30)
    fired = cluster.fired()
    assert drained not in fired
    assert all(fired.count(t) == 1 for t in pending)
    assert all(backups_of(cluster, t) == [] for t in placed)


async def test_a_handoff_with_no_room_for_backups_is_kept_with_fewer(
        cluster: Cluster) -> None:
    """n3 is dead and n2 leaves: n1 cannot back up what n2 hands it, and keeps
    it anyway (rather than n2 rescuing it). Alone with a dead peer, n1 has no
    majority: the task waits for n3 to come back, then runs."""
    _, n2, _ = await three(cluster)
    await n2.fill("jobs", "job", task_type=BOMB, run_after=20, life_span=60)
    await crash(cluster, "n3")
    await asyncio.sleep(5)  # n3 dead to both
    await n2.stop()
    task = cluster.bucket("n1").get("job")
    assert task is not None and task.state is TaskState.PENDING
    await asyncio.sleep(20)
    assert runs(cluster, "job") == 0  # fenced: n1 alone may be the minority side
    await cluster.add("n3", max_bucket=50, replicas=1)
    await asyncio.sleep(5)
    assert runs(cluster, "job") == 1
    assert [h for h, t, _ in cluster.recorders["n2"].calls if t == "job"] == []


async def test_a_refused_fill_leaves_no_backup_that_could_run_it_after_a_crash(
        cluster: Cluster) -> None:
    """n1's backup batch reaches n2 late (after the forward timeout and the
    settling: a "maybe" holder) and n3 keeps no backups. n2 may hold the backup,
    which would run the task after a crash of n1, so the fill must not be
    refused: it is accepted, and after n1 crashes at once it runs once on n2.
    (Refusing it was the bug: a refused task then ran.) Probes tolerate the
    delay, so nobody is suspected."""
    net = cluster.net
    groups = {}
    slow_link = {"replicas": 1, "probe_interval": 1.0, "probe_timeout": 1.9,
                 "forward_timeout": 0.5, "settle_timeout": 1.0}
    for name, max_backups in (("n1", None), ("n2", None), ("n3", 0)):
        bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=50,
                                         max_backups=max_backups),
                            cluster.recorders.setdefault(name, Recorder()), name="jobs")
        group = TaskBucketGroup({"jobs": bucket}, ["n1"], node_id=name,
                                transport=net.transport(name),
                                config=GroupConfig.local(**slow_link), rng=random.Random(name))
        await group.start()
        cluster.groups[name] = groups[name] = group
    await cluster.settle(3)
    slow = net.delay("n1", "n2", 1.0)
    try:
        placed = await groups["n1"].fill("jobs", "job", task_type=BOMB, run_after=10,
                                         life_span=30)
    except NoBackupRoomError:
        placed = None
    await crash(cluster, "n1")  # at once: nothing n1 meant to send later gets out
    slow.heal()
    assert placed is not None and placed.node_id == "n1"
    assert backups_of(cluster, "job") == ["n2"]
    await cluster.add("n1", max_bucket=50, **slow_link)  # a new boot id: n2 takes over
    await asyncio.sleep(20)
    assert runs(cluster, "job") == 1


async def test_a_backup_holder_that_stops_gracefully_has_its_backups_placed_again(
        cluster: Cluster) -> None:
    """The backup holder of n1's task leaves (SIGTERM): n1 backs the task up
    on another node at once, so a crash of n1 right after still loses nothing:
    the new backup runs it, once, at its due time."""
    n1 = await cluster.add("n1", max_bucket=50, replicas=1)
    for name in ("n2", "n3", "n4"):
        await cluster.add(name, max_bucket=50, replicas=1)
    await cluster.settle()
    lost: list[Any] = []
    n1.on_tasks_lost = lambda *args: lost.append(args)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=10, life_span=30)
    [first] = backups_of(cluster, "job")
    await cluster.groups[first].stop()  # graceful: it says it leaves
    await asyncio.sleep(1)
    again = [n for n in backups_of(cluster, "job") if n != first]  # first is stopped
    assert len(again) == 1 and again[0] != "n1", again
    await crash(cluster, "n1")
    await cluster.add("n1", max_bucket=50, replicas=1)  # back at once: a new boot id
    await asyncio.sleep(15)
    assert runs(cluster, "job") == 1
    assert [t for h, t, _ in cluster.recorders[again[0]].calls if h == "execute"] == ["job"]


async def test_a_holder_that_stays_dead_is_taken_over_once_it_is_declared_dead(
        cluster: Cluster) -> None:
    """With ``promote_after=0``: once the death is declared, not after ``lost_after``."""
    n1, _, _ = await three(cluster, lost_after=30, promote_after=0)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=60, life_span=120)
    holder = backups_of(cluster, "job")[0]
    await crash(cluster, "n1")  # and it never comes back
    await asyncio.sleep(3)  # the local preset declares it dead in about 0.5 s
    task = cluster.bucket(holder).get("job")
    assert task is not None and task.state is TaskState.PENDING
    assert 55 < task.seconds_to_run < 58  # its original due time
    await asyncio.sleep(60)
    assert runs(cluster, "job") == 1


async def test_a_primary_cut_off_past_its_deadline_reports_no_second_outcome(
        cluster: Cluster) -> None:
    """Its gate cannot finish before the task's deadline (its holder took
    the task over meanwhile): it waits for the word instead of calling the
    task EXHAUSTED, and ends it as handed off when the holder answers."""
    n1, _, _ = await three(cluster, promote_after=0)
    ended: list[tuple[str, str]] = []
    for name, group in cluster.groups.items():
        def watch(task: Any, node: str = name) -> None:
            ended.append((node, task.state.value))
        group.buckets["jobs"].on_outcome = watch
    await n1.fill("jobs", "job", task_type=BOMB, run_after=1, life_span=3)
    cut = cluster.net.partition(["n1"], ["n2", "n3"])
    await asyncio.sleep(6)  # past the deadline on both sides
    assert runs(cluster, "job") == 1  # the holder ran it
    assert "job" in n1.buckets["jobs"]  # n1 still waits for word
    cut.heal()
    await asyncio.sleep(3)
    assert runs(cluster, "job") == 1
    assert [state for _, state in ended if state != "handed_off"] == ["finished"]
    assert "job" not in n1.buckets["jobs"]


async def test_a_node_that_agreed_to_a_takeover_refuses_the_primarys_word(
        cluster: Cluster) -> None:
    """Whichever comes first on a third node wins: a takeover check it said
    yes to, or the primary's word that the task started."""
    n1, _, _ = await three(cluster)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=30, life_span=60)
    holder = backups_of(cluster, "job")[0]
    third = ({"n2", "n3"} - {holder}).pop()
    backups = cluster.groups[third]._backups
    assert backups.check(holder, "n1", None, [["jobs", "job"]]) == ["ok"]
    sender = cluster.groups[third]._members.members["n1"]
    assert backups.note(sender, [["tomb", "jobs", "job"]]) == ["claimed"]
    # A second holder with a higher id is told to yield; the tomb is not kept.
    assert backups.check("n9", "n1", None, [["jobs", "job"]]) == ["claimed"]
    assert ("jobs", "job", "n1") not in backups.tombs
    # Once the holder says it took the task over, the primary learns where.
    backups.took_over(cluster.groups[third]._members.members[holder], "n1",
                      [["jobs", "job"]], [])
    answer = backups.note(sender, [["started", "jobs", "job"]])[0]
    assert answer.startswith(f"promoted:{holder} ")


async def test_a_takeover_check_is_refused_while_the_primary_is_seen_alive(
        cluster: Cluster) -> None:
    n1, _, n3 = await three(cluster)
    boot = n1.boot_id
    assert n3._backups.check("n2", "n1", boot, [["jobs", "x"]]) == ["alive"]
    assert n3._backups.check("n2", "n1", "another-boot", [["jobs", "x"]]) == ["ok"]


async def test_a_primary_that_stops_cut_off_leaves_its_tasks_to_the_backups(
        cluster: Cluster) -> None:
    """On the minority side it cannot learn whether a backup took a task
    over: it neither runs nor rescues it (no second outcome)."""
    n1, _, _ = await three(cluster, promote_after=0)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=2, life_span=60)
    cluster.net.partition(["n1"], ["n2", "n3"])
    await asyncio.sleep(1.5)
    await n1.stop()
    assert cluster.recorders["n1"].hooks("job") == []  # neither run nor rescued
    assert [e["task_id"] for e in n1.events.since() if e["kind"] == "handoff_unknown"] == ["job"]
    await asyncio.sleep(5)
    assert runs(cluster, "job") == 1  # the majority side took it over


async def test_promote_after_delays_the_takeover_of_a_dead_holder(cluster: Cluster) -> None:
    n1, _, _ = await three(cluster, lost_after=30, promote_after=6)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=60, life_span=120)
    holder = backups_of(cluster, "job")[0]
    await crash(cluster, "n1")
    await asyncio.sleep(4)  # dead, but not yet for promote_after
    assert "job" not in cluster.bucket(holder)
    await asyncio.sleep(4)
    task = cluster.bucket(holder).get("job")
    assert task is not None and task.state is TaskState.PENDING


async def test_a_task_left_to_the_backups_on_stop_keeps_them(cluster: Cluster) -> None:
    """Not yet due when its cut-off holder stops: its backups are not told to
    drop it, and take it over once the holder has been dead long enough."""
    n1, _, _ = await three(cluster, promote_after=3)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=20, life_span=60)
    holder = backups_of(cluster, "job")[0]
    cluster.net.partition(["n1"], ["n2", "n3"])
    await asyncio.sleep(1)
    await n1.stop()
    assert [e["task_id"] for e in n1.events.since() if e["kind"] == "handoff_unknown"] == ["job"]
    await asyncio.sleep(5)  # dead, then promote_after
    task = cluster.bucket(holder).get("job")
    assert task is not None and task.state is TaskState.PENDING
    await asyncio.sleep(20)
    assert runs(cluster, "job") == 1


async def test_fill_many_backs_up_slice_by_slice_and_refuses_only_what_found_no_room(
        cluster: Cluster) -> None:
    """3,000 time-bombs in one fill_many (several slices, each backed up while
    the next is filled); n2 keeps at most 2,500 backups, so exactly 500 are
    refused -- taken back here, with no backup left anywhere -- and every
    accepted one has its backup on n2."""
    net = cluster.net
    for name, max_backups in (("n1", None), ("n2", 2_500)):
        bucket = TaskBucket(BucketConfig(life_span=600, run_after=300, max_bucket=3_000,
                                         max_backups=max_backups),
                            cluster.recorders.setdefault(name, Recorder()), name="jobs")
        group = TaskBucketGroup({"jobs": bucket}, ["n1"], node_id=name,
                                transport=net.transport(name),
                                config=GroupConfig.local(replicas=1), rng=random.Random(name))
        await group.start()
        cluster.groups[name] = group
    await cluster.settle()
    n1, n2 = cluster.groups["n1"], cluster.groups["n2"]
    ids = [f"t{i}" for i in range(3_000)]
    results = await n1.fill_many("jobs", [(i, {"n": i}) for i in ids], task_type=BOMB)
    accepted = [r.task_id for r in results if not isinstance(r, Exception)]
    refused = [i for i, r in zip(ids, results, strict=True) if isinstance(r, NoBackupRoomError)]
    assert len(accepted) == 2_500 and len(refused) == 500
    assert accepted + refused == ids  # the first 2,500 in order got the room
    held = n2._backups.records["jobs"]
    assert sorted(task_id for task_id, _ in held) == sorted(accepted)
    assert all(n1._replicas.holders[("jobs", i)] == ("n2",) for i in accepted)
    assert not any(i in n1.buckets["jobs"] or ("jobs", i) in n1._replicas.holders
                   for i in refused)
    assert n1.fill_counts["jobs"][0] == 2_500
    assert n2._backups.records["jobs"][("t7", "n1")][3] is not None  # the payload travelled
    assert (await n1.drain("jobs", "t7")).outcome is DrainOutcome.DRAINED
    assert ("t7", "n1") not in held


GOOD_BACKUP: list[Any] = ["jobs", "t", b"\xc0", 10.0, 20.0, "n1", 0, ["n2"]]


def _columns(item: list[Any], size: int = 2) -> list[Any]:
    """``cols`` of ``size`` backups that are all ``item`` but for their ids."""
    return [[f"t{i}" for i in range(size)] if index == 1 else [value] * size
            for index, value in enumerate(item)]


@pytest.mark.parametrize("index, value, message", [
    (0, 7, "bucket and id must be strings"),
    (1, "", "bucket and id must be strings"),
    (2, "text", "data must be msgpack bytes"),
    (3, -1.0, "run_after must be a number >= 0"),
    (3, True, "run_after must be a number >= 0"),
    (4, float("nan"), "life_span must be a number >= 0"),
    (4, float("inf"), "life_span must be a number >= 0"),
    (5, None, "origin must be a string"),
    (6, 2, "rank 0 or 1"),
    (6, False, "rank 0 or 1"),
    (7, [], "holders must be a list of 1 or 2"),
    (7, ["a", "b", "c"], "holders must be a list of 1 or 2"),
    (7, ["a", 3], "holders must be a list of 1 or 2"),
    (7, "n2", "holders must be a list of 1 or 2"),
])
def test_a_malformed_backup_batch_is_refused_with_its_fault(index: int, value: Any,
                                                            message: str) -> None:
    from gobucket_py.cluster.columns import read_columns
    from gobucket_py.errors import ProtocolError

    item = list(GOOD_BACKUP)
    item[index] = value
    if index != 1:  # (ids differ)
        with pytest.raises(ProtocolError, match=message):
            read_columns(_columns(item))  # the fault in every backup of the batch
    mixed = _columns(GOOD_BACKUP, 3)
    mixed[index][1] = value  # in one backup only, among good ones
    with pytest.raises(ProtocolError, match=message):
        read_columns(mixed)


@pytest.mark.parametrize("cols, message", [
    ("cols", "8 lists"),
    (_columns(GOOD_BACKUP)[:7], "8 lists"),
    ([[], [], [], [], [], [], [], []], "at least one task"),
    ([*_columns(GOOD_BACKUP, 3)[:3], [1.0, 2.0], *_columns(GOOD_BACKUP, 3)[4:]],
     "run_after holds 2 values for 3 tasks"),
    ([["jobs"], ["t"], *_columns(GOOD_BACKUP)[2:]], "data holds 2 values for 1 tasks"),
])
def test_a_misshapen_backup_batch_is_refused(cols: Any, message: str) -> None:
    from gobucket_py.cluster.columns import read_columns
    from gobucket_py.errors import ProtocolError

    with pytest.raises(ProtocolError, match=message):
        read_columns(cols)


def test_backup_columns_travel_shared_values_once_and_read_back_the_same() -> None:
    from gobucket_py.cluster.columns import pack_columns, read_columns
    from gobucket_py.cluster.protocol import decode, encode

    holders = ("n2",)
    items = [("jobs", f"t{i}", 1, b"\xc0" if i else b"\x01", 10.0 + i, 20.0, "n1", 0, holders)
             for i in range(3)]
    cols = pack_columns(items)
    assert cols[0] == ("jobs",) and cols[5] == ("n1",) and cols[7] == (holders,)
    assert len(cols[2]) == 3  # the data differ: per task
    batch = read_columns(decode(encode({"v": 1, "cols": cols}), 1 << 20)["cols"])
    assert len(batch) == 3
    assert list(batch) == [(b, i, p, r, s, o, k, list(h)) for b, i, _, p, r, s, o, k, h in items]
    ints = _columns([*GOOD_BACKUP[:3], 10, 20, "n1", 1, ["n2", "n3"]])  # ints: made floats
    rows = list(read_columns(ints))
    assert rows[0] == ("jobs", "t0", b"\xc0", 10.0, 20.0, "n1", 1, ["n2", "n3"])
    assert type(rows[0][3]) is float and type(rows[1][4]) is float


def test_a_column_built_batch_is_the_same_items_sliced_joined_and_packed() -> None:
    """The primary's column-built batch (the common case) reads, slices and
    packs as the equivalent list of item tuples does: the forwarder cuts it
    into batches and may join a remainder with another entry's items. The
    stamps travel beside the columns, once when they are all the same."""
    from gobucket_py.cluster.columns import Columns, pack_columns, pack_stamps, read_columns
    from gobucket_py.cluster.protocol import decode, encode

    holders = ("n2",)
    cols = Columns("jobs", "n1", holders, [f"t{i}" for i in range(5)], [b"\xc0"] * 5,
                   [float(i) for i in range(5)], [10.0 + i for i in range(5)], [7.5] * 5)
    items = [("jobs", f"t{i}", 1, b"\xc0", float(i), 10.0 + i, "n1", 0, holders, 7.5)
             for i in range(5)]
    assert len(cols) == 5 and list(cols) == items and cols[3] == items[3]
    assert list(cols[1:3]) == items[1:3] and isinstance(cols[1:3], Columns)
    assert pack_columns(cols) == pack_columns(items)
    assert pack_stamps(cols) == pack_stamps(items) == [7.5]  # one for all
    assert pack_columns(cols[:2])[2] == (b"\xc0",)  # shared data travels once
    other = Columns("jobs", "n1", holders, ["u"], [b"\x01"], [0.0], [1.0], [9.0])
    joined = [*cols[3:], *other]  # what the forwarder sends for two entries
    body = encode({"v": 1, "cols": pack_columns(joined), "stamps": pack_stamps(joined)})
    message = decode(body, 1 << 20)
    batch = read_columns(message["cols"], message["stamps"])
    rows = list(batch)
    assert [r[1] for r in rows] == ["t3", "t4", "u"] and rows[2][2] == b"\x01"
    assert batch.stamps == [7.5, 7.5, 9.0]
    assert read_columns(message["cols"]).stamps is None  # from a node of an earlier version
    assert read_columns(message["cols"], [3]).stamps == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("stamps", [5.0, [1.0, 2.0], ["x"], [float("nan")], [True], [10**400]])
def test_malformed_backup_stamps_are_refused(stamps: object) -> None:
    from gobucket_py.cluster.columns import pack_columns, read_columns
    from gobucket_py.cluster.protocol import decode, encode
    from gobucket_py.errors import ProtocolError

    items = [("jobs", f"t{i}", 1, b"\xc0", 1.0, 2.0, "n1", 0, ("n2",), 1.0) for i in range(3)]
    cols = decode(encode({"v": 1, "cols": pack_columns(items)}), 1 << 20)["cols"]
    with pytest.raises(ProtocolError, match="stamps"):
        read_columns(cols, stamps)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 6, 8, 12])
async def test_a_fill_cancelled_while_its_backup_fails_is_taken_back(cluster: Cluster,
                                                                     steps: int) -> None:
    """Its caller, cancelled, cannot take it back: the task must not stay
    accepted with no backup and nobody to retry (each ``steps`` cancels it
    at another point: waiting for the backup, woken with the refusal,
    taking it back)."""
    n1 = await cluster.add("n1", max_bucket=10, replicas=1)
    await cluster.add("n2", max_bucket=10, replicas=1)
    await cluster.settle()
    cluster.net.down("n2")  # the backup is refused: it is certainly not there
    filling = asyncio.create_task(n1.fill("jobs", "x", task_type=BOMB))
    for _ in range(steps):
        await asyncio.sleep(0)
    filling.cancel()
    with pytest.raises((asyncio.CancelledError, NoBackupRoomError)):
        await filling
    await asyncio.sleep(5)
    assert "x" not in cluster.bucket("n1")
    await asyncio.sleep(60)
    assert runs(cluster, "x") == 0


async def test_taking_back_a_task_never_takes_a_later_one_of_the_same_id(
        cluster: Cluster) -> None:
    """A take-back names the task it is about: when that one has left (here
    drained) and the id was filled again, the new task stays."""
    n1, _, _ = await three(cluster)
    first = (await n1.fill("jobs", "y", task_type=BOMB)).task
    assert first is not None
    assert (await n1.drain("jobs", "y")).outcome is DrainOutcome.DRAINED
    again = await n1.fill("jobs", "y", task_type=BOMB)
    assert not await n1._replicas.withdraw(cluster.bucket("n1"), first)
    assert cluster.bucket("n1").get("y") is again.task
    assert backups_of(cluster, "y")  # its backup was not dropped either


async def test_a_cancelled_fill_whose_backup_was_made_stays_accepted(cluster: Cluster) -> None:
    n1 = await cluster.add("n1", max_bucket=20, replicas=1)
    n2 = await cluster.add("n2", max_bucket=20, replicas=1)
    await cluster.settle()
    for steps in range(1, 12):
        filling = asyncio.create_task(n1.fill("jobs", f"ok{steps}", task_type=BOMB))
        for _ in range(steps):
            await asyncio.sleep(0)
        filling.cancel()
        await asyncio.gather(filling, return_exceptions=True)
    await asyncio.sleep(1)
    for steps in range(1, 12):
        assert f"ok{steps}" in cluster.bucket("n1")
        assert (f"ok{steps}", "n1") in n2._backups.records["jobs"]
    await asyncio.sleep(40)
    assert all(runs(cluster, f"ok{s}") == 1 for s in range(1, 12))


async def test_an_id_filled_again_on_the_same_node_gets_its_backups_each_time(
        cluster: Cluster) -> None:
    """Each holder told that a task started or was drained keeps that word
    (a tomb) and refuses a late copy of that task's backup. A task of the
    same id filled again on the same node is another task (a later stamp):
    its backup is taken, also where such word is kept, and it runs --
    each of six runs in turn, and four fills drained at once."""
    n1, _, _ = await three(cluster)
    for run in range(1, 7):
        await n1.fill("jobs", "job", task_type=BOMB, run_after=1, life_span=3)
        assert len(backups_of(cluster, "job")) == 1
        await asyncio.sleep(2)
        assert runs(cluster, "job") == run
    assert {name for name, g in cluster.groups.items()
            if ("jobs", "job", "n1") in g._backups.tombs} == {"n2", "n3"}
    for _ in range(4):
        await asyncio.sleep(0.01)  # (a later fill time: the stamp tells the tasks apart)
        await n1.fill("jobs", "job", task_type=BOMB, run_after=5, life_span=8)
        assert len(backups_of(cluster, "job")) == 1
        assert (await n1.drain("jobs", "job")).outcome is DrainOutcome.DRAINED
    await asyncio.sleep(10)
    assert runs(cluster, "job") == 6 and not backups_of(cluster, "job")


async def test_word_passed_on_by_leaving_holders_keeps_its_stamps(cluster: Cluster) -> None:
    """Holders that stop gracefully pass their word (tombs) on, with the
    stamp of the task each is about: the heir still refuses a late copy of
    an earlier task's backup, and takes the backup of the id filled again
    on the same node (it used to refuse it for ``TOMB_KEEP``: "no room")."""
    n1, n2, n3 = await three(cluster)
    for run in range(1, 4):
        await n1.fill("jobs", "job", task_type=BOMB, run_after=1, life_span=3)
        await asyncio.sleep(2)
        assert runs(cluster, "job") == run
    assert all(("jobs", "job", "n1") in g._backups.tombs for g in (n2, n3))
    n4 = await cluster.add("n4", max_bucket=50, replicas=1)
    await cluster.settle()
    ended = max(g._backups.stamps["tombs"][("jobs", "job", "n1")] for g in (n2, n3))
    await n2.stop()
    await n3.stop()
    await asyncio.sleep(1)
    b = n4._backups
    assert b._boot("tombs", ("jobs", "job", "n1")) == n1.boot_id
    assert b.stamps["tombs"][("jobs", "job", "n1")] == ended
    sender = n4._members.members["n1"]
    late = ("jobs", "job", PACKED_NONE, 30.0, 60.0, "n1", 0, ("n4",))
    assert b.store([late], sender, [ended]) == ["dropped"]  # a late copy: refused
    await n1.fill("jobs", "job", task_type=BOMB, run_after=1, life_span=3)
    assert backups_of(cluster, "job") == ["n4"]
    await asyncio.sleep(2)
    assert runs(cluster, "job") == 4


@pytest.mark.parametrize("end", ["drained", "started"])
async def test_word_for_a_silent_holder_outlives_its_stale_backup(cluster: Cluster,
                                                                   end: str) -> None:
    """A task with a long life ends (drained, or started) while its holder
    is cut off: the word left with the other node for that holder is kept
    until a minute past the task's deadline, not only ``TOMB_KEEP``. The
    primary restarts (forgetting which holder missed the word), and the
    holder comes back 700 s later, its stale backup still there: its
    takeover check still finds the word, and the task is not run again (it
    was: a drained task ran, a started one ran twice)."""
    n1, _, _ = await three(cluster)
    run_after = 1 if end == "started" else 1500
    filled = asyncio.get_running_loop().time()
    await n1.fill("jobs", "job", task_type=BOMB, run_after=run_after, life_span=2000)
    [holder] = backups_of(cluster, "job")
    other = cluster.groups["n3" if holder == "n2" else "n2"]
    cut = cluster.net.stall(holder)
    await asyncio.sleep(8)  # dead to the others
    if end == "drained":
        assert (await n1.drain("jobs", "job")).outcome is DrainOutcome.DRAINED
    else:
        await asyncio.sleep(run_after)
    assert ("jobs", "job", "n1") in other._backups.tombs
    assert other._backups.tomb_until[("jobs", "job", "n1")] == pytest.approx(
        filled + 2000 + TOMB_KEEP, abs=1)
    await crash(cluster, "n1")
    n1 = await cluster.add("n1", max_bucket=50, replicas=1)
    await asyncio.sleep(700)
    # Another task's word at that node: older words are pruned then.
    await n1.fill("jobs", "later", task_type=BOMB, run_after=100, life_span=200)
    assert backups_of(cluster, "later") == [other.node_id]
    assert (await n1.drain("jobs", "later")).outcome is DrainOutcome.DRAINED
    assert ("jobs", "job", "n1") in other._backups.tombs
    assert ("job", "n1") in cluster.groups[holder]._backups.records["jobs"]  # stale
    cut.heal()
    await asyncio.sleep(10)  # back: it asks, and learns not to take it over
    h = cluster.groups[holder]
    assert "job" not in h.buckets["jobs"] and ("job", "n1") not in h._backups.records["jobs"]
    assert not backups_of(cluster, "job")  # no copy is left anywhere to run it
    assert not any("job" in g.buckets["jobs"] for g in cluster.groups.values())
    assert runs(cluster, "job") == (1 if end == "started" else 0)


async def test_word_for_a_silent_holder_is_kept_by_the_holder_that_took_the_drop_too(
        cluster: Cluster) -> None:
    """replicas=2 on four nodes, one holder cut off: the drain's word goes to
    the fourth node, and the holder that took the drop is told again, so
    both keep it until ``TOMB_KEEP`` past the deadline (the two of them and
    the primary are the majority a takeover check meets). A drain with every
    holder answering leaves word kept ``TOMB_KEEP`` only (the table stays
    small)."""
    n1 = await cluster.add("n1", max_bucket=50, replicas=2)
    for name in ("n2", "n3", "n4"):
        await cluster.add(name, max_bucket=50, replicas=2)
    await cluster.settle()
    filled = asyncio.get_running_loop().time()
    for task_id in ("job", "calm"):
        await n1.fill("jobs", task_id, task_type=BOMB, run_after=1500, life_span=2000)
    assert (await n1.drain("jobs", "calm")).outcome is DrainOutcome.DRAINED
    assert all(not g._backups.tomb_until for g in cluster.groups.values())
    silent, settled = backups_of(cluster, "job")
    [fourth] = {"n2", "n3", "n4"} - {silent, settled}
    cut = cluster.net.stall(silent)
    await asyncio.sleep(8)  # dead to the others
    assert (await n1.drain("jobs", "job")).outcome is DrainOutcome.DRAINED
    for name in (settled, fourth):
        until = cluster.groups[name]._backups.tomb_until
        assert until == {("jobs", "job", "n1"): pytest.approx(filled + 2000 + TOMB_KEEP,
                                                              abs=1)}, name
    cut.heal()


async def test_word_outlives_a_deadline_a_reschedule_moved_sooner(cluster: Cluster) -> None:
    """A reschedule moves the task's deadline sooner while its holder is cut
    off, so that holder keeps the later one: the word left for it when the
    task starts is kept past that later deadline, and after the primary
    restarts the holder's stale backup is not run a second time."""
    n1, _, _ = await three(cluster)
    filled = asyncio.get_running_loop().time()
    await n1.fill("jobs", "job", task_type=BOMB, run_after=7000, life_span=7200)
    [holder] = backups_of(cluster, "job")
    other = cluster.groups["n3" if holder == "n2" else "n2"]
    cut = cluster.net.stall(holder)
    await asyncio.sleep(8)  # dead to the others
    assert await n1.buckets["jobs"].reschedule("job", 10)  # deadline: 200 s later
    await asyncio.sleep(12)
    assert runs(cluster, "job") == 1
    assert other._backups.tomb_until == {
        ("jobs", "job", "n1"): pytest.approx(filled + 7200 + TOMB_KEEP, abs=1)}
    await crash(cluster, "n1")
    n1 = await cluster.add("n1", max_bucket=50, replicas=1)
    await asyncio.sleep(900)
    await n1.fill("jobs", "later", task_type=BOMB, run_after=100, life_span=200)
    assert (await n1.drain("jobs", "later")).outcome is DrainOutcome.DRAINED  # (prunes)
    assert ("job", "n1") in cluster.groups[holder]._backups.records["jobs"]  # stale
    cut.heal()
    await asyncio.sleep(10)  # back: it asks, and learns not to take it over
    h = cluster.groups[holder]
    assert "job" not in h.buckets["jobs"] and ("job", "n1") not in h._backups.records["jobs"]
    assert runs(cluster, "job") == 1


async def test_two_backups_the_holder_with_the_lower_id_takes_it_over_once(
        cluster: Cluster) -> None:
    """replicas=2, the primary crashes: both holders ask the other nodes,
    and the one with the lower node id takes the task over; it runs once."""
    n1, _, _ = await three(cluster, replicas=2)
    for i in range(6):
        await n1.fill("jobs", f"t{i}", task_type=BOMB, run_after=30, life_span=60)
    assert all(sorted(backups_of(cluster, f"t{i}")) == ["n2", "n3"] for i in range(6))
    await crash(cluster, "n1")
    await asyncio.sleep(60)
    assert sorted(cluster.fired()) == [f"t{i}" for i in range(6)]
    assert {t for h, t, _ in cluster.recorders["n2"].calls if h == "execute"} == {
        f"t{i}" for i in range(6)}


async def test_two_backups_the_rank_1_copy_runs_when_the_rank_0_holder_has_none(
        cluster: Cluster) -> None:
    """replicas=2: the rank-0 holder restarts, and its new incarnation has no
    room for the backup placed again, so only the rank-1 holder has a copy
    when the primary crashes. It takes the task over (it used to leave it to
    the rank-0 holder, alive again: the task ran nowhere and no loss was
    reported)."""
    n1, _, _ = await three(cluster, replicas=2)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=60, life_span=120)
    ranked = n1._replicas.holders[("jobs", "job")]
    assert len(ranked) == 2
    await crash(cluster, ranked[0])
    again = await cluster.add(ranked[0], max_bucket=50, replicas=2)
    object.__setattr__(again.buckets["jobs"].config, "max_backups", 0)  # no room
    await asyncio.sleep(10)
    assert backups_of(cluster, "job") == [ranked[1]]
    await crash(cluster, "n1")
    await asyncio.sleep(100)
    assert runs(cluster, "job") == 1


async def test_a_takeover_of_more_tasks_than_one_request_carries_is_asked_in_slices(
        cluster: Cluster) -> None:
    """``max_body`` 8 KiB, and 1,500 backups of a primary that crashes: the
    takeover check (and the word of what was taken over) would be one
    request of about 70 KB, refused by every peer, so no task was taken over
    and none ran. Asked in slices, every task runs once; a holder back from
    a stall compares its backups with the primary in slices too."""
    cluster.net.max_body = 8 * 1024
    for name in ("n1", "n2", "n3"):
        await cluster.add(name, max_bucket=2_000, replicas=1, max_body=8 * 1024)
    await cluster.settle()
    n1 = cluster.groups["n1"]
    ids = [f"task-{i:05}" for i in range(1_500)]
    results = await n1.fill_many("jobs", [(i, None) for i in ids], task_type=BOMB,
                                 run_after=30, life_span=60)
    assert not [r for r in results if isinstance(r, Exception)]
    on = {name: [i for i in ids if backups_of(cluster, i) == [name]] for name in ("n2", "n3")}
    stalled = max(on, key=lambda name: len(on[name]))
    assert len(on[stalled]) > 600, {k: len(v) for k, v in on.items()}
    cut = cluster.net.stall(stalled)
    await asyncio.sleep(8)  # dead to the others: its tasks are backed up again
    drained = on[stalled][:400]
    for task_id in drained:
        assert (await n1.drain("jobs", task_id)).outcome is DrainOutcome.DRAINED
    cut.heal()
    await asyncio.sleep(3)  # back: it asks n1 which of its backups are still needed
    held = cluster.groups[stalled]._backups.records["jobs"]
    assert not any((task_id, "n1") in held for task_id in drained)
    await crash(cluster, "n1")
    await asyncio.sleep(60)
    fired = cluster.fired()
    assert sorted(fired) == sorted(set(ids) - set(drained))


async def test_a_late_copy_of_an_earlier_tasks_backup_or_note_changes_nothing(
        cluster: Cluster) -> None:
    """A holder keeps word of the latest task of the id that started: a
    backup stamped no later than that is refused (a late copy); one stamped
    later is kept, and a late note about the earlier task leaves it be. A
    backup or note with no stamp (from a node of an earlier version) is
    taken as about any task of that incarnation, as before stamps."""
    _, n2, _ = await three(cluster)
    b = n2._backups
    sender = n2._members.members["n1"]

    def item(task_id: str) -> tuple[object, ...]:
        return ("jobs", task_id, PACKED_NONE, 30.0, 60.0, "n1", 0, ("n2",))

    assert b.note(sender, [["started", "jobs", "job"]], [5.0]) == ["ok"]
    assert b.store([item("job")] * 2, sender, [4.0, 5.0]) == ["dropped", "dropped"]
    assert b.store([item("job")], sender) == ["dropped"]  # no stamp: about any
    assert b.store([item("job")], sender, [6.0]) == ["ok"]  # filled again since
    assert b.note(sender, [["drop", "jobs", "job"]], [5.5]) == ["ok"]  # late, of an earlier
    assert b.records["jobs"][("job", "n1")][6] == 6.0  # kept
    assert b.store([item("job")], sender, [5.5]) == ["dropped"]  # a late copy, after it
    assert b.records["jobs"][("job", "n1")][6] == 6.0
    b._tomb(("jobs", "old", "n1"), sender.boot, 6.0)
    assert b.check("n3", "n1", None, [["jobs", "old"]] * 3, "x", [sender.boot] * 3,
                   [6.0, 5.0, None]) == ["tomb"] * 3  # that task, an earlier one, or any
    assert b.check("n3", "n1", None, [["jobs", "old"]], "x", ["another-boot"], [7.0]) == ["tomb"]
    assert b.check("n3", "n1", None, [["jobs", "old"]], "x", [sender.boot], [7.0]) == ["ok"]
    assert b.note(sender, [["drop", "jobs", "job"]], [6.0]) == ["ok"]  # its own: it goes
    assert ("job", "n1") not in b.records.get("jobs", {})
    for bad in ([1.0, 2.0], ["x"], [float("inf")], 3.0):
        with pytest.raises(ProtocolError, match="stamps"):
            b.note(sender, [["drop", "jobs", "x"]], bad)
        with pytest.raises(ProtocolError, match="stamps"):
            b.check("n3", "n1", None, [["jobs", "x"]], "x", None, bad)
        with pytest.raises(ProtocolError, match="stamps"):
            n2._replicas.handle(n2._members.members["n3"], {
                "v": 1, "promoted": [["jobs", "x"]], "primary": "n1", "stamps": bad})
    assert all(("jobs", "x", "n1") not in table for table in (b.tombs, b.claims, b.moved))


async def test_a_takeover_of_an_earlier_task_answers_only_for_that_task(
        cluster: Cluster) -> None:
    """Word that a backup holder took task s of an id over (kept here, or
    by a node told of it) answers the primary "promoted" about s and earlier
    tasks of the id -- not about one it filled after (that one would end
    HANDED_OFF at its gate and run nowhere); nor is it an objection to
    taking that new one over."""
    _, n2, _ = await three(cluster)
    b, sender = n2._backups, n2._members.members["n1"]
    boot = sender.boot
    for task_id in ("job", "checked"):
        b._about("promoted", ("jobs", task_id, "n1"), boot, 5.0)
        b.promoted[("jobs", task_id, "n1")] = 0.0
    b.took_over(n2._members.members["n3"], "n1", [["jobs", "moved"]], [], [boot], [5.0])
    assert b.check("n3", "n1", None, [["jobs", "checked"]], "x", [boot], [5.0]) == ["promoted"]
    assert b.check("n3", "n1", None, [["jobs", "checked"]], "x", [boot], [7.0]) == ["ok"]
    for task_id in ("job", "moved"):
        assert b.note(sender, [["started", "jobs", task_id]], [5.0])[0].startswith("promoted:")
        assert b.note(sender, [["started", "jobs", task_id]], [6.0]) == ["ok"]  # a new task


async def test_an_id_filled_again_at_the_same_instant_is_refused_saying_why(
        cluster: Cluster) -> None:
    """A task filled again in the same clock tick as the earlier one's
    drain has the same stamp: the holders that were told of the drain
    refuse its backup (it could be a late copy). The fill says why, not
    "no room", and changes nothing; a tick later the id is filled again."""
    n1, _, _ = await three(cluster)
    refused = None
    for _ in range(3):  # until both peers hold word of a drain at this instant
        try:
            await n1.fill("jobs", "job", task_type=BOMB, run_after=5, life_span=8)
        except NoBackupRoomError as exc:
            refused = exc
            break
        await n1.drain("jobs", "job")
    assert refused is not None
    assert "earlier task of this id from this node started or was drained" in str(refused)
    assert "job" not in n1.buckets["jobs"] and not backups_of(cluster, "job")
    assert not n1._replicas.ended_there  # the reason was taken with the error
    await asyncio.sleep(0.01)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=1, life_span=3)
    await asyncio.sleep(2)
    assert runs(cluster, "job") == 1


async def test_a_retried_drop_names_the_task_it_is_about_once_it_is_gone(
        cluster: Cluster) -> None:
    """A drain whose drop left a holder silent is retried by the next
    drain, also once the task is gone here: the retry names that task's
    stamp, so it does not cover a newer task of the id the holder may
    hold by then (it would drop that one's backup). Word left for it
    if it is still silent names that task's deadline."""
    n1, _, _ = await three(cluster)
    replicas = n1._replicas
    told: list[tuple[str, str, float | None, float | None]] = []
    answer = "ok"

    async def tell(node: str, op: str, bucket: str, task_id: str, boot: str | None = None,
                   stamp: float | None = None, deadline: float | None = None) -> str:
        told.append((node, op, stamp, deadline))
        return answer if op == "drop" else "ok"

    replicas.notes.tell = tell  # type: ignore[method-assign]
    replicas.uncertain[("jobs", "job")] = ["n2"]
    replicas.uncertain_stamps[("jobs", "job")] = (5.0, 905.0)
    assert await replicas.release("jobs", "job") == (None, True)
    assert told == [("n2", "drop", 5.0, None)]
    assert ("jobs", "job") not in replicas.uncertain_stamps  # settled
    told.clear()
    answer = "gone"
    replicas.uncertain[("jobs", "job")] = ["n2"]
    replicas.uncertain_stamps[("jobs", "job")] = (5.0, 905.0)
    assert await replicas.release("jobs", "job") == (None, True)
    assert told == [("n2", "drop", 5.0, None), ("n3", "tomb", 5.0, 905.0)]


async def test_a_holder_asked_by_a_lower_id_while_it_confirms_does_not_take_over(
        cluster: Cluster) -> None:
    """Two holders of a task whose views differ: the higher-id one asks only
    the nodes it sees alive (not the lower-id one), the lower-id one asks it
    while it confirms. The lower id goes on (it ignores the answer
    ``backup:<higher>``), so the higher one concedes: it does not take the
    task over even if its own round passes (it would run twice). A higher
    id asking changes nothing."""
    _, _, n3 = await three(cluster)
    b = n3._backups
    backup = ("n1", "old-boot", "n1", PACKED_NONE, 0.0, 1e9, 1.0)
    b._confirming.add(("jobs", "job"))
    assert b.check("n9", "n1", None, [["jobs", "job"]]) == ["backup:n3"]
    assert not b._conceded
    assert b.check("n2", "n1", None, [["jobs", "job"]]) == ["backup:n3"]
    assert b._conceded == {("jobs", "job")}
    assert b._take_over("n1", [("jobs", "job", backup)]) == []  # type: ignore[list-item]
    assert "job" not in n3.buckets["jobs"]
    b._conceded.clear()
    assert b._take_over("n1", [("jobs", "job", backup)]) == [  # type: ignore[list-item]
        ["jobs", "job"]]


@pytest.mark.parametrize("again", ["ok", "gone"])
async def test_a_settled_holder_counts_as_word_only_if_it_took_it_again(
        cluster: Cluster, again: str) -> None:
    """A drop that one holder takes and another misses: the word for the
    silent one is kept past the task's deadline, so the holder that took the
    drop is told again, and counts toward the majority only if it takes
    that (else it keeps the word only ``TOMB_KEEP``): the drop stays
    uncertain."""
    n1, _, _ = await three(cluster)
    replicas = n1._replicas
    told: list[tuple[str, str, float | None]] = []

    async def tell(node: str, op: str, bucket: str, task_id: str, boot: str | None = None,
                   stamp: float | None = None, deadline: float | None = None) -> str:
        told.append((node, op, deadline))
        if op == "drop":
            return "ok" if node == "n2" else "gone"
        return again

    replicas.notes.tell = tell  # type: ignore[method-assign]
    await replicas._drop(("jobs", "job"), ["n2", "n3"], "drop", 5.0, 905.0)
    assert told == [("n2", "drop", None), ("n3", "drop", None), ("n2", "tomb", 905.0)]
    assert replicas.uncertain.get(("jobs", "job"), []) == ([] if again == "ok" else ["n3"])


async def test_word_about_a_task_outlives_an_earlier_ones_unsettled_drop(
        cluster: Cluster) -> None:
    """An earlier task of the id left a holder silent (its drop unsettled,
    with its deadline): word about the next task of the id, which covers
    the earlier one too, is kept past the later of the two deadlines."""
    n1, _, _ = await three(cluster)
    task = (await n1.fill("jobs", "job", task_type=BOMB, run_after=10, life_span=20)).task
    assert task is not None
    assert n1._replicas.deadline(task) == task._deadline
    n1._replicas.uncertain_stamps[("jobs", "job")] = (task._filled - 1, task._deadline + 5000)
    assert n1._replicas.deadline(task) == task._deadline + 5000


async def test_notes_only_for_an_earlier_incarnation_send_nothing(cluster: Cluster) -> None:
    """Notes addressed to an incarnation of the holder that is gone are
    answered ``gone`` without a request (an empty one was sent, and retried
    while the holder did not answer)."""
    n1, _, _ = await three(cluster)
    sent: list[Any] = []
    real = n1.transport.call

    async def call(addr: str, kind: Any, message: dict[str, Any], timeout: float) -> Any:
        if "notes" in message:
            sent.append(message)
        return await real(addr, kind, message, timeout)

    n1.transport.call = call  # type: ignore[method-assign]
    answers = await asyncio.gather(*(n1._replicas.notes.tell("n2", "drop", "jobs", f"t{i}",
                                                            "an-earlier-boot")
                                     for i in range(3)))
    assert answers == ["gone"] * 3 and not sent
    assert await n1._replicas.notes.tell("n2", "drop", "jobs", "t9") == "ok"
    assert len(sent) == 1 and sent[0]["notes"] == [["drop", "jobs", "t9"]]


async def test_word_that_an_earlier_task_was_taken_over_does_not_end_the_next_one(
        cluster: Cluster) -> None:
    """A holder's answer that it took over an earlier task of the id (to a
    retried drop, say) is about that task: the next task of the id filled
    here runs and drains here (its gate ended it HANDED_OFF, run nowhere,
    no loss report: nemesis seed 125, replicas=2, ids used again). An
    answer about the task itself still ends it here."""
    n1, _, _ = await three(cluster)
    replicas = n1._replicas
    replicas.taken[("jobs", "job")] = ("n3", "some-boot", 0.5)  # about an earlier task
    await asyncio.sleep(1)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=1, life_span=3)
    await asyncio.sleep(2)
    assert runs(cluster, "job") == 1 and ("jobs", "job") not in replicas.taken
    replicas.taken[("jobs", "again")] = ("n3", "some-boot", 0.5)
    await n1.fill("jobs", "again", task_type=BOMB, run_after=5, life_span=8)
    assert (await n1.drain("jobs", "again")).node_id == "n1"
    task = (await n1.fill("jobs", "taken", task_type=BOMB, run_after=1, life_span=3)).task
    assert task is not None
    replicas.taken[("jobs", "taken")] = ("n3", cluster.groups["n3"].boot_id, task._filled)
    await asyncio.sleep(2)
    assert runs(cluster, "taken") == 0 and task.state is TaskState.HANDED_OFF


async def test_word_passed_on_that_an_earlier_task_moved_does_not_end_the_next_one(
        cluster: Cluster) -> None:
    """A primary that holds word (passed on by a leaving holder, say) that
    a backup took over its own earlier task of the id: the next task of the
    id still runs here."""
    n1, _, _ = await three(cluster)
    asker = n1._members.members["n3"]
    n1._backups.took_over(asker, "n1", [["jobs", "job"]], [], [n1.boot_id], [0.5])
    assert ("jobs", "job", "n1") in n1._backups.moved
    await asyncio.sleep(1)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=1, life_span=3)
    await asyncio.sleep(2)
    assert runs(cluster, "job") == 1


async def test_a_holder_that_holds_word_of_a_takeover_does_not_take_the_task_over_too(
        cluster: Cluster) -> None:
    """replicas=2: the other holder took the task over (and drained it),
    then left, passing that word on; this holder, asking only the nodes
    still there, would find no objection. Its own word stops it, as it
    would stop another holder's check (nemesis seed 621, replicas=2, ids
    used again, promote_after=0: the drained task ran). Word about an
    earlier task of the id does not."""
    _, _, n3 = await three(cluster)
    b = n3._backups
    asker = n3._members.members["n1"]
    b.took_over(asker, "n9", [["jobs", "job"]], [], ["boot9"], [1.0])

    def backup(stamp: float) -> Any:
        return ("n9", "boot9", "n9", PACKED_NONE, 0.0, 1e9, stamp)

    assert b._take_over("n9", [("jobs", "job", backup(1.0))]) == []
    assert "job" not in n3.buckets["jobs"]
    assert b._take_over("n9", [("jobs", "job", backup(2.0))]) == [["jobs", "job"]]
    # Its own takeover of that task, then the primary restarted (boot10)
    # and filled the id again: that new task is taken over as well.
    n3.buckets["jobs"].drain_many_nowait(["job"])
    assert ("jobs", "job", "n9") in b.promoted
    again = ("n9", "boot10", "n9", PACKED_NONE, 0.0, 1e9, 0.5)
    assert b._take_over("n9", [("jobs", "job", again)]) == [["jobs", "job"]]
    n3.buckets["jobs"].drain_many_nowait(["job"])
    # (Its words are about two incarnations now: they answer for every task.)
    assert b._take_over("n9", [("jobs", "job", backup(1.5))]) == []


async def test_backups_of_a_primary_that_left_are_refused_and_dropped_on_its_restart() -> None:
    """A copy a primary sent before its graceful stop, read after it left,
    is refused; one stored before that is dropped when the primary starts
    again (nemesis seed 592, lost_replies, replicas=2: kept, it named a
    holder "not alive", and drains answered "unknown" until its deadline)."""
    from gobucket_py import BucketConfig, TaskBucket, TaskBucketGroup
    from gobucket_py.cluster.member import Member, MemberState
    from gobucket_py.cluster.memory import MemoryNetwork

    bucket = TaskBucket(BucketConfig(life_span=60, replicas=1), Recorder(), name="jobs")
    group = TaskBucketGroup({"jobs": bucket}, [], node_id="n1",
                            transport=MemoryNetwork().transport("n1"))
    await group.start()
    try:
        backups = group._backups

        def copy(task_id: str) -> tuple[Any, ...]:
            return ("jobs", task_id, PACKED_NONE, 30.0, 60.0, "n3", None, None)

        old = Member("n2", "n2", "b0", state=MemberState.LEFT)
        assert backups.store([copy("late")], old) == ["dropped"]  # type: ignore[arg-type]
        old.state = MemberState.ALIVE  # (stored before it left)
        assert backups.store([copy("kept")], old) == ["ok"]  # type: ignore[arg-type]
        new = Member("n2", "n2", "b1")  # started again: this node's record of it
        group._members.members["n2"] = new
        assert backups.store([copy("new")], new) == ["ok"]  # type: ignore[arg-type]
        assert backups.at_risk("jobs", "kept")
        backups.primary_replaced(new)
        assert not backups.at_risk("jobs", "kept")
        assert ("new", "n2") in backups.records["jobs"] and len(backups.records["jobs"]) == 1
    finally:
        await group.stop()
