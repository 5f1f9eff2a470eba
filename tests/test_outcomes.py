"""Outcome records: a drain (or ``ended``) after a task ended says how it ended,
for ``outcome_retention`` seconds and at most ``max_outcomes`` records.
Time is faked with looptime: no sleeps."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gobucket_py import BucketConfig, DrainOutcome, TaskBucket, TaskState, TaskType

from .conftest import Recorder

pytestmark = pytest.mark.looptime

IMM, BOMB = TaskType.IMMEDIATE, TaskType.TIME_BOMB
D = DrainOutcome


def make(rec: Recorder, **cfg: float) -> TaskBucket:
    params: dict[str, float] = {"life_span": 10, "run_after": 2, "max_bucket": 100,
                                "outcome_retention": 60}
    params.update(cfg)
    return TaskBucket(BucketConfig(**params), rec, name="b")  # type: ignore[arg-type]


async def settle(bucket: TaskBucket) -> None:
    async with asyncio.timeout(1000):
        await bucket.join()


async def test_every_outcome_is_answered_after_the_task_left() -> None:
    rec = Recorder({"fin": 0, "err": ValueError("x"), "exh": 100, "can": 5})
    b = make(rec, life_span=20, run_after=10)
    for tid in ("fin", "err", "can"):
        await b.fill(IMM, tid)
    await b.fill(IMM, "exh", life_span=3)
    await b.fill(BOMB, "drn")
    await b.fill(BOMB, "res")
    await b.fill(BOMB, "hand")
    await asyncio.sleep(1)
    assert b.drain_nowait("can") is D.CANCELLED and b.drain_nowait("drn") is D.DRAINED
    taken = b.take_pending("hand")
    assert taken is not None
    b.handed_off(taken)
    await asyncio.sleep(5)
    assert await b.rescue() == 1  # "res"
    assert len(b) == 0
    expect = {"fin": (TaskState.FINISHED, D.FINISHED), "err": (TaskState.FAILED, D.FAILED),
              "exh": (TaskState.EXHAUSTED, D.EXHAUSTED), "can": (TaskState.CANCELLED, D.CANCELLED),
              "drn": (TaskState.DRAINED, D.DRAINED), "res": (TaskState.RESCUED, D.RESCUED),
              # the bucket does not follow handoffs: the cluster layer does
              "hand": (TaskState.HANDED_OFF, D.NOT_FOUND)}
    counts_before = b.stats()
    for tid, (state, answer) in expect.items():
        assert b.ended(tid) is state, tid
        res = await b.drain(tid)
        assert res.outcome is answer, tid
        assert bool(res) is (answer in (D.DRAINED, D.CANCELLED))
        assert b.drain_nowait(tid) is answer  # and again: retries are idempotent
    after = b.stats()
    assert after == counts_before  # answering from records counts nothing
    assert after["outcome_records"] == len(expect)
    assert b.ended("never") is None and b.drain_nowait("never") is D.NOT_FOUND


async def test_retried_drain_answers_drained_and_notifies_once() -> None:
    b = make(Recorder())
    seen: list[str] = []
    b.on_outcome = lambda t: seen.append(t.id)
    await b.fill(BOMB, "x")
    assert (await b.drain("x")).outcome is D.DRAINED
    assert (await b.drain("x")).outcome is D.DRAINED  # the first reply was lost
    assert seen == ["x"] and b.stats()["drained"] == 1


async def test_rescued_task_in_on_panic_answers_rescued() -> None:
    b = make(Recorder(hook_sleep=5), life_span=50, run_after=20)
    await b.fill(BOMB, "p")
    rescue = asyncio.ensure_future(b.rescue())
    await asyncio.sleep(1)
    assert b.get("p") is not None and b.ended("p") is None  # live: in on_panic
    assert b.drain_nowait("p") is D.RESCUED
    await rescue
    assert b.ended("p") is TaskState.RESCUED


async def test_records_are_kept_between_half_and_full_retention() -> None:
    b = make(Recorder(), outcome_retention=10)
    loop = asyncio.get_running_loop()
    await b.fill(BOMB, "a")
    b.drain_nowait("a")  # the rotation timer is armed now, for 5 s
    t_a = loop.time()
    await asyncio.sleep(4.9)
    await b.fill(BOMB, "late")
    b.drain_nowait("late")  # just before the rotation
    t_late = loop.time()
    await asyncio.sleep(t_late + 4.95 - loop.time())
    # Both kept at least retention/2 ("late" ended just before the rotation) ...
    assert b.ended("a") is TaskState.DRAINED and b.ended("late") is TaskState.DRAINED
    await asyncio.sleep(t_a + 10.1 - loop.time())
    # ... and at most retention (both were in the generation started at t_a).
    assert b.ended("a") is None and b.drain_nowait("a") is D.NOT_FOUND
    assert b.ended("late") is None and t_late + 5 <= t_a + 10.1
    assert b.stats()["outcome_records"] == 0
    assert b._records_timer is None  # no timer armed while there are no records


async def test_max_outcomes_bounds_the_records_and_keeps_the_newest() -> None:
    b = make(Recorder(), max_outcomes=10)
    for i in range(1000):
        await b.fill(BOMB, f"t{i}")
        b.drain_nowait(f"t{i}")
        assert b.stats()["outcome_records"] <= 10
    assert all(b.ended(f"t{i}") is TaskState.DRAINED for i in range(995, 1000))
    assert b.ended("t0") is None


async def test_a_forgotten_generation_is_freed_a_little_at_a_time() -> None:
    # Half a million records freed at once held the loop ~10 ms: a rotation
    # hands the old generation to a free that takes a few shards a pass.
    b = make(Recorder(), max_outcomes=4000, max_bucket=5000)
    for i in range(5000):  # two rotations: the second forgets the first
        b.fill_nowait(BOMB, f"t{i}")
    assert b.drain_many_nowait([f"t{i}" for i in range(5000)]) == [D.DRAINED] * 5000
    assert b.stats()["outcome_records"] <= 4000
    dying = len(b._records_dying)
    assert dying > 8  # not freed in the rotation itself
    await asyncio.sleep(0)
    assert 0 < len(b._records_dying) < dying
    for _ in range(dying):
        await asyncio.sleep(0)
    assert b._records_dying == []
    assert b.ended("t4999") is TaskState.DRAINED and b.ended("t0") is None


@pytest.mark.parametrize("cfg", [{"outcome_retention": 0}, {"max_outcomes": 0}])
async def test_records_can_be_disabled(cfg: dict[str, float]) -> None:
    b = make(Recorder(), **cfg)
    await b.fill(IMM, "f")
    await settle(b)
    assert b.ended("f") is None and b.drain_nowait("f") is D.NOT_FOUND
    assert b.stats()["outcome_records"] == 0 and b._records_timer is None


async def test_refilled_id_live_task_wins_and_its_outcome_replaces_the_old() -> None:
    rec = Recorder(hook_sleep=2)
    b = make(rec, outcome_retention=10)
    await b.fill(IMM, "x")
    await settle(b)
    assert b.ended("x") is TaskState.FINISHED
    await b.fill(BOMB, "x")  # the same id again
    assert b.ended("x") is None  # live: not answered with the old record
    assert b.drain_nowait("x") is D.DRAINED  # the live task is drained, not "FINISHED"
    assert b.ended("x") is TaskState.DRAINED
    # Across a rotation: the old record in the old generation, the new one current.
    await asyncio.sleep(5)
    await b.fill(IMM, "x")
    await asyncio.sleep(0.5)  # in on_finish
    assert b.drain_nowait("x") is D.FINISHED and b.ended("x") is None
    await settle(b)
    assert b.ended("x") is TaskState.FINISHED


async def test_restored_handoff_is_live_again_then_recorded() -> None:
    b = make(Recorder())
    await b.fill(BOMB, "h")
    task = b.take_pending("h")
    assert task is not None and b.ended("h") is TaskState.HANDED_OFF
    assert b.drain_nowait("h") is D.NOT_FOUND
    b.restore(task)  # no peer took it
    assert b.ended("h") is None
    assert b.drain_nowait("h") is D.DRAINED and b.ended("h") is TaskState.DRAINED


async def test_records_survive_close() -> None:
    b = make(Recorder())
    await b.fill(BOMB, "p")
    await b.close()
    assert b.drain_nowait("p") is D.RESCUED



async def test_records_are_nothing_the_garbage_collector_visits() -> None:
    """A million records must not make every full collector pass walk a
    million entries (a lateness spike at scale): a record is a str, and a
    dict of strs is left out of later passes once one has seen it. Its
    answer is still the TaskState."""
    b = make(Recorder(), max_bucket=2_001)
    for i in range(2_000):
        await b.fill(BOMB, f"t{i}")
    assert b.drain_many_nowait([f"t{i}" for i in range(2_000)]) == [D.DRAINED] * 2_000
    await b.fill(IMM, "done")
    await settle(b)
    gc.collect()
    assert b._records is not None
    assert not any(gc.is_tracked(shard) for shard in b._records)
    assert b.ended("t7") is TaskState.DRAINED and b.ended("done") is TaskState.FINISHED
    assert b.drain_nowait("t7") is D.DRAINED
