"""A holder that restarts while the primary waits for its answer.

Its new boot cannot answer for the old one, which may have taken the task
over: it is asked as gone, and only word left with a majority settles the
task -- unless the old boot died before any takeover was possible. Found by
the nemesis (seed 849 with ``replicas=1`` and ``promote_after=0``: a new boot
answered "ok" for the old one's backup, and the task ran twice; and seeds
892 (``replicas=1``), 485 and 768 (``replicas=2``), where the first fix left
drains "unknown" for holders that restarted seconds after the task came).

In-memory cluster, faked loop clock; ``notes.tell`` is replaced to script the
answers, as in ``test_replicas``.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from gobucket_py import TaskBucketGroup, TaskType

from .test_cluster import Cluster
from .test_replicas import backups_of, crash, runs, three

pytestmark = pytest.mark.looptime

BOMB = TaskType.TIME_BOMB

Told = list[tuple[str, str, str | None]]


def script(group: TaskBucketGroup, told: Told, answer: dict[tuple[str, str | None], str]
           ) -> None:
    """Answer each note from ``answer`` by (node, boot), else "gone"."""

    async def tell(node: str, op: str, bucket: str, task_id: str, boot: str | None = None,
                   stamp: float | None = None, deadline: float | None = None) -> str:
        told.append((node, op, boot))
        return answer.get((node, boot), answer.get((node, "*"), "gone"))

    group._replicas.notes.tell = tell  # type: ignore[method-assign]


def promote_delay(group: TaskBucketGroup) -> float:
    cfg = group.config
    return cfg.lost_after if cfg.promote_after is None else cfg.promote_after


async def test_a_holder_whose_new_boot_came_before_a_takeover_was_possible_is_settled(
        cluster: Cluster) -> None:
    """The holder restarted (it is asked as gone) and no other node takes
    the word: still, if this node met the holder's new boot before any
    holder could have taken the task over (a takeover waits
    ``promote_after`` after the holder last heard from this node, which was
    when it took the backup), the old boot died with its backup and took
    nothing over: the drop is settled, and nothing stays "unknown"."""
    n1, _, _ = await three(cluster)
    after = promote_delay(n1)
    assert after > 1
    for task_id, met, settled in (("early", after - 0.5, True), ("late", after + 0.5, False)):
        await n1.fill("jobs", task_id, task_type=BOMB, run_after=100, life_span=200)
        task = n1.buckets["jobs"].get(task_id)
        assert task is not None
        [holder] = backups_of(cluster, task_id)
        n1._members.members[holder].met_at = task._filled + met
        told: Told = []
        script(n1, told, {})  # nobody answers but "gone"
        gone = f"{holder} (gone)"
        await n1._replicas._drop(("jobs", task_id), [gone], "drop", task._filled,
                                 task._filled + 200)
        assert n1._replicas.uncertain.get(("jobs", task_id), []) == ([] if settled
                                                                      else [gone]), task_id


async def test_a_gate_asks_a_holder_that_restarted_while_it_waited_as_gone(
        cluster: Cluster) -> None:
    """The gate waits for a silent holder; meanwhile the holder restarts.
    The next round must ask it as gone: its new boot (asked by the name it
    had) answers "ok" for a backup it never held, and the task ran although
    the old boot may have taken it over (nemesis seed 849, replicas=1)."""
    n1, _, _ = await three(cluster)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=100, life_span=200)
    task = n1.buckets["jobs"].get("job")
    assert task is not None
    [holder] = backups_of(cluster, "job")
    member = n1._members.members[holder]
    old = member.boot
    told: Told = []
    # The old boot is silent, the other node does not answer either: no
    # word is left, the gate waits. A new boot answers "ok" to anything.
    script(n1, told, {(holder, "new-boot"): "ok"})
    gate = asyncio.ensure_future(n1._replicas._gate(task, None))
    await asyncio.sleep(0.01)
    assert (holder, "started", old) in told and not gate.done()
    assert n1._replicas.uncertain[("jobs", "job")] == [holder]
    # It restarts once a takeover was possible (it was cut off long
    # enough), and this node learns it.
    await asyncio.sleep(promote_delay(n1))
    member.boot = "new-boot"
    member.met_at = asyncio.get_running_loop().time()
    n1._replicas.holder_gone(holder)
    await asyncio.sleep(5 * n1.config.probe_interval)
    assert (holder, "started", "new-boot") not in told
    assert not gate.done()  # still waiting: nobody can say whether it moved
    assert n1._replicas.uncertain[("jobs", "job")] == [f"{holder} (gone)"]
    gate.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gate


async def test_a_takeover_waits_promote_after_in_the_primarys_latest_death(
        cluster: Cluster) -> None:
    """The primary is declared dead, comes back, and is declared dead again
    shortly before the first death's ``promote_after`` is up: the timer of
    the first death must not take its task over then (it would come sooner
    than ``promote_after`` after the holder last heard from the primary,
    which the primary counts on); the latest death's timer does."""
    n1, _, _ = await three(cluster)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=100, life_span=200)
    [holder] = backups_of(cluster, "job")
    h = cluster.groups[holder]
    after = promote_delay(h)
    cut = cluster.net.stall("n1")
    while h._members.members["n1"].state.value != "dead":
        await asyncio.sleep(0.05)
    first = asyncio.get_running_loop().time()
    await asyncio.sleep(after / 2)
    cut.heal()
    while h._members.members["n1"].state.value != "alive":
        await asyncio.sleep(0.05)
    cut = cluster.net.stall("n1")
    while h._members.members["n1"].state.value != "dead":
        await asyncio.sleep(0.05)
    second = asyncio.get_running_loop().time()
    assert second < first + after - 0.5
    await asyncio.sleep(first + after + 0.2 - second)
    assert "job" not in h.buckets["jobs"]  # the first death's timer: not yet
    await asyncio.sleep(second + after + 1 - asyncio.get_running_loop().time())
    assert "job" in h.buckets["jobs"]  # the latest death's: taken over
    cut.heal()


async def test_a_holder_that_restarted_early_lets_the_gate_run_the_task(
        cluster: Cluster) -> None:
    """The gate waits for a silent holder and no other node answers; the
    holder is killed and comes back (a real restart: this node meets its
    new boot through membership) within ``promote_after`` of the fill. Its
    old boot died before it could take the task over, so the task runs,
    once, instead of waiting at its gate for good."""
    n1, _, _ = await three(cluster)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=1, life_span=60)
    task = n1.buckets["jobs"].get("job")
    assert task is not None
    [holder] = backups_of(cluster, "job")
    told: Told = []
    script(n1, told, {})  # nobody answers
    await asyncio.sleep(1.5)
    assert task.state.value == "pending" and n1._replicas.uncertain[("jobs", "job")] == [holder]
    await crash(cluster, holder)
    await cluster.add(holder, max_bucket=50, replicas=1)
    await asyncio.sleep(1)
    member = n1._members.members[holder]
    now = asyncio.get_running_loop().time()
    assert task._filled < member.met_at <= now  # met through membership
    assert member.met_at < task._filled + promote_delay(n1)
    assert (holder, "started", member.boot) not in told  # the new boot is not asked
    assert ("jobs", "job") not in n1._replicas.uncertain
    assert cluster.fired().count("job") == 1


async def test_a_holder_left_by_an_earlier_task_of_the_id_is_judged_by_that_ones_stamp(
        cluster: Cluster) -> None:
    """A drain of task A leaves its holder silent; the holder restarts late
    for A (after a takeover of A was possible). Task B of the same id is
    stamped later, and the restart is early for B -- but the holder left
    in uncertain held A's backup, whose old boot may have taken A over:
    B's drop must not settle it (a holder of B's alone is judged by B's)."""
    n1, _, _ = await three(cluster)
    after = promote_delay(n1)
    await n1.fill("jobs", "job", task_type=BOMB, run_after=100, life_span=200)
    task = n1.buckets["jobs"].get("job")
    assert task is not None
    [holder] = backups_of(cluster, "job")
    s1 = task._filled
    told: Told = []
    script(n1, told, {})  # nobody answers
    replicas = n1._replicas
    await replicas._drop(("jobs", "job"), [holder], "drop", s1, s1 + 200)
    assert replicas.uncertain[("jobs", "job")] == [holder]
    member = n1._members.members[holder]
    member.boot, member.met_at = "new-boot", s1 + after + 0.5  # late for A
    replicas.holder_gone(holder)
    gone = f"{holder} (gone)"
    s2 = s1 + after  # B: the restart is early for it
    # B's own holder (the other node) restarted early for B, too: it held
    # only B's backup, so it settles; A's does not.
    [other] = {"n2", "n3"} - {holder}
    peer = n1._members.members[other]
    peer.boot, peer.met_at = "new-boot-2", s2 + 1
    await replicas._drop(("jobs", "job"), [gone, f"{other} (gone)"], "drop", s2, s2 + 200)
    assert replicas.uncertain[("jobs", "job")] == [gone]
    assert replicas.uncertain_since[("jobs", "job")] == {holder: s1}


async def test_a_late_message_from_the_primarys_old_boot_does_not_hand_its_tasks_over(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """n1's old boot sent messages to the holders just before it was killed;
    they arrive (a slow link) after its new boot was heard and had filled
    tasks of its own, backed up on those holders. Read as a restart back to
    the old boot, they would tell the holders the new boot is gone, and the
    holders would take its live tasks over (only the primary's start gate
    would then keep each from running twice)."""
    caplog.set_level(logging.INFO, logger="gobucket_py")
    n1, _, _ = await three(cluster, replicas=2)
    slow = [cluster.net.delay("n1", peer, 3.0) for peer in ("n2", "n3")]
    await asyncio.sleep(0.5)  # its probes and acks are on the slow links now
    await crash(cluster, "n1")
    new = await cluster.add("n1", max_bucket=50, replicas=2)
    for fault in slow:
        fault.heal()  # the new boot's messages go fast; the old ones are still on their way
    await cluster.settle()
    for peer in ("n2", "n3"):
        assert cluster.groups[peer]._members.members["n1"].boot == new.boot_id
    ids = [f"job-{i}" for i in range(4)]
    for task_id in ids:
        placed = await new.fill("jobs", task_id, task_type=BOMB, run_after=10, life_span=20)
        assert placed.node_id == "n1"
        assert sorted(backups_of(cluster, task_id)) == ["n2", "n3"]
    await asyncio.sleep(15)  # the old messages arrived (at 3.0-3.5 s); the tasks are due
    for peer in ("n2", "n3"):
        assert cluster.groups[peer]._members.members["n1"].boot == new.boot_id
    assert [runs(cluster, task_id) for task_id in ids] == [1, 1, 1, 1]
    # Run by their primary, not taken over (the primary's gate kept them
    # from running twice, but a holder had taken them from a live node).
    ran_on_n1 = [t for h, t, _ in cluster.recorders["n1"].calls if h == "execute"]
    assert sorted(ran_on_n1) == ids
    restarts = [r.getMessage() for r in caplog.records
                if "event=peer_restarted" in r.getMessage() and "peer=n1 " in r.getMessage()]
    assert len(restarts) == 2, restarts  # once at n2, once at n3: no flip back and forth
    assert not [r for r in caplog.records if "event=tasks_promoted" in r.getMessage()]
    stale = [r.getMessage() for r in caplog.records if "event=stale_boot" in r.getMessage()]
    assert stale and all(f"boot={n1.boot_id} current_boot={new.boot_id}" in m for m in stale)


async def test_a_forward_reply_read_after_the_peers_new_boot_keeps_its_verdict(
        cluster: Cluster) -> None:
    """n2 took a forwarded task, answered, and was killed; its reply, on a
    slow link, reaches n1 after n2's new boot was heard there. The reply is
    the old boot's own verdict: the fill says where the task went (not
    "unknown"), and, the old boot being gone, the task is reported lost
    once -- without the old boot's header taking n1's record back."""
    n1 = await cluster.add("n1", max_bucket=1)
    await cluster.add("n2", max_bucket=50)
    await cluster.settle()
    await n1.fill("jobs", "local", task_type=BOMB)  # n1's one slot: the next fill overflows
    lost: list[tuple[str, str, list[str]]] = []
    n1.on_tasks_lost = lambda node, bucket, ids: lost.append((node, bucket, list(ids)))
    slow = cluster.net.delay("n2", "n1", 0.3)  # n2's reply reaches n1 0.3 s late
    filling = asyncio.ensure_future(
        n1.fill("jobs", "job", task_type=BOMB, run_after=5, life_span=10))
    await asyncio.sleep(0.1)  # taken by n2, its reply on the way
    assert "job" in cluster.bucket("n2")
    await crash(cluster, "n2")
    slow.heal()
    new = await cluster.add("n2", max_bucket=50)  # it joins through n1: heard at once
    assert n1._members.members["n2"].boot == new.boot_id and not filling.done()
    placed = await filling
    assert placed.forwarded and placed.node_id == "n2"
    assert n1._members.members["n2"].boot == new.boot_id  # not taken back
    await asyncio.sleep(1)
    assert lost == [("n2", "jobs", ["job"])]
    await asyncio.sleep(10)
    assert runs(cluster, "job") == 0 and lost == [("n2", "jobs", ["job"])]
