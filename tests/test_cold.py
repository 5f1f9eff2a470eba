"""Cold pending time-bombs (TaskBucket._freeze): a pending time-bomb that
nobody but the bucket refers to is kept as bytes and its id in a str of ids,
neither of which the garbage collector tracks, and made a Task again when it
is due or asked for. Nothing a user can see changes: every check here is one
a held Task would pass too. Time is faked with looptime."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gobucket_py import BucketConfig, DrainOutcome, Task, TaskBucket, TaskState, TaskType
from gobucket_py.bucket import COOL_EVERY

from .conftest import Recorder

pytestmark = pytest.mark.looptime

BOMB, IMM = TaskType.TIME_BOMB, TaskType.IMMEDIATE


class Seen(Recorder):
    """Also keeps what on_execute and on_panic were given."""

    def __init__(self) -> None:
        super().__init__()
        self.given: list[tuple[str, object, float, float]] = []

    async def on_execute(self, task: Task) -> None:
        self.given.append((task.id, task.data, task._run_at, task.seconds_left))
        await super().on_execute(task)


def make(rec: Recorder, **cfg: float) -> TaskBucket:
    params: dict[str, float] = {"life_span": 100, "run_after": 50, "max_bucket": 1000}
    params.update(cfg)
    return TaskBucket(BucketConfig(**params), rec, name="b")  # type: ignore[arg-type]


def cold(bucket: TaskBucket) -> set[str]:
    found = {task_id for shard in bucket._cold for task_id in shard}
    assert len(found) == bucket._cold_n
    return found


async def cooled(bucket: TaskBucket) -> None:
    """Past the sweep of what was filled until now (one to two periods)."""
    await asyncio.sleep(WAIT)


WAIT = 2 * COOL_EVERY + 0.01


async def test_an_unheld_pending_time_bomb_goes_cold_and_runs_as_it_would_have() -> None:
    rec = Seen()
    b = make(rec)
    t0 = asyncio.get_running_loop().time()
    b.fill_nowait(BOMB, "a", {"order": 42}, run_after=30, life_span=40)
    b.fill_nowait(BOMB, "b")
    await cooled(b)
    assert cold(b) == {"a", "b"}
    gc.collect()
    # No longer an object for every GC pass: bytes in a dict of bytes, an id
    # in a str of ids, neither tracked (the data is the caller's object, as
    # it was: a dict of plain values is not tracked either).
    assert not any(gc.is_tracked(shard) for shard in b._cold)
    assert not gc.is_tracked(b._cold_data["a"])
    assert b._wheel is not None
    assert all(type(s) is str and not gc.is_tracked(s) for _, s in b._wheel.slots())
    assert "a" not in b._tasks
    assert len(b) == 2 and "a" in b and b.free == 998
    assert b.stats()["pending"] == 2
    async with asyncio.timeout(1000):
        await b.join()
    assert rec.hooks("a") == ["execute", "finish"] and rec.hooks("b") == ["execute", "finish"]
    task_id, data, run_at, left = rec.given[0]
    assert (task_id, data, run_at) == ("a", {"order": 42}, t0 + 30)
    assert left == pytest.approx(10)  # the lifespan counts from the fill, as before
    assert rec.at("execute", "a") == t0 + 30 and rec.at("execute", "b") == t0 + 50
    assert b.stats()["finished"] == 2 and len(b) == 0


async def test_a_task_someone_holds_stays_the_live_object() -> None:
    rec = Recorder()
    b = make(rec)
    held = b.fill_nowait(BOMB, "held")
    b.fill_nowait(BOMB, "dropped")
    await cooled(b)
    assert cold(b) == {"dropped"}
    assert b._tasks["held"] is held and "held" not in b._cold
    assert b.drain_nowait("held") is DrainOutcome.DRAINED
    assert held.state is TaskState.DRAINED  # the object the caller kept says so


async def test_asking_for_a_cold_task_gives_one_live_task_from_then_on() -> None:
    rec = Recorder()
    b = make(rec)
    b.fill_nowait(BOMB, "a", "payload")
    await cooled(b)
    got = b.get("a")
    assert got is not None and got.state is TaskState.PENDING and got.data == "payload"
    assert b.get("a") is got and [t.id for t in b] == ["a"] and next(iter(b)) is got
    await cooled(b)
    assert cold(b) == set()  # it has a holder now: never frozen again under it
    async with asyncio.timeout(1000):
        await b.join()
    assert got.state is TaskState.FINISHED and rec.hooks("a") == ["execute", "finish"]


async def test_drains_of_cold_tasks_stop_them_for_good() -> None:
    rec = Recorder()
    b = make(rec)
    for i in range(6):
        b.fill_nowait(BOMB, f"t{i}")
    await cooled(b)
    assert len(cold(b)) == 6
    assert b.drain_nowait("t0") is DrainOutcome.DRAINED
    assert b.drain_many_nowait(["t1", "t2", "nope", "t1"]) == [
        DrainOutcome.DRAINED, DrainOutcome.DRAINED, DrainOutcome.NOT_FOUND,
        DrainOutcome.DRAINED]  # a retried drain answers as the first did
    assert (await b.drain("t3")).outcome is DrainOutcome.DRAINED
    # Refilled under a drained id: a new task, at its own time.
    b.fill_nowait(BOMB, "t0", run_after=70, life_span=90)
    async with asyncio.timeout(1000):
        await b.join()
    assert rec.hooks("t1") == rec.hooks("t2") == rec.hooks("t3") == []
    assert rec.hooks("t0") == ["execute", "finish"] and rec.hooks("t4") == ["execute", "finish"]
    stats = b.stats()
    assert stats["drained"] == 4 and stats["finished"] == 3 and stats["pending"] == 0
    assert b.ended("t1") is TaskState.DRAINED


async def test_watched_drains_of_cold_tasks_tell_the_watchers() -> None:
    rec = Recorder()
    b = make(rec)
    told: list[tuple[str, TaskState]] = []
    b.on_outcome = lambda task: told.append((task.id, task.state))
    b.fill_nowait(BOMB, "a")
    b.fill_nowait(BOMB, "b")
    await cooled(b)
    assert cold(b) == {"a", "b"}
    assert b.drain_many_nowait(["a", "b"]) == [DrainOutcome.DRAINED] * 2
    assert told == [("a", TaskState.DRAINED), ("b", TaskState.DRAINED)]


async def test_reschedule_take_pending_and_restore_of_cold_tasks() -> None:
    rec = Recorder()
    b = make(rec)
    t0 = asyncio.get_running_loop().time()
    b.fill_nowait(BOMB, "moved")
    b.fill_nowait(BOMB, "taken")
    await cooled(b)
    assert cold(b) == {"moved", "taken"}
    assert await b.reschedule("moved", 80)  # from now (t0 + ~1): lifespan moves too
    taken = b.take_pending("taken")
    assert taken is not None and taken.state is TaskState.HANDED_OFF and "taken" not in b
    b.restore(taken)
    async with asyncio.timeout(1000):
        await b.join()
    assert rec.at("execute", "moved") == pytest.approx(t0 + WAIT + 80)
    assert rec.at("execute", "taken") == t0 + 50
    assert rec.hooks("moved") == rec.hooks("taken") == ["execute", "finish"]


async def test_rescue_and_close_hand_cold_tasks_to_on_panic() -> None:
    rec = Recorder()
    b = make(rec)
    for i in range(3):
        b.fill_nowait(BOMB, f"p{i}")
    await cooled(b)
    assert len(cold(b)) == 3
    assert await b.rescue() == 3
    assert [rec.hooks(f"p{i}") for i in range(3)] == [["panic"]] * 3
    assert len(b) == 0 and b.stats()["pending"] == 0
    b.fill_nowait(BOMB, "late")
    await cooled(b)
    await b.close()
    assert rec.hooks("late") == ["panic"]
    await asyncio.sleep(100)
    assert rec.hooks("late") == ["panic"]  # and it never fires after


async def test_tasks_due_soon_stay_warm_and_a_burst_of_cold_ones_fires_in_slices() -> None:
    rec = Recorder()
    b = make(rec, max_bucket=5000)
    b.fill_nowait(BOMB, "soon", run_after=1.5, life_span=10)
    for i in range(2000):
        b.fill_nowait(BOMB, f"burst{i}")  # all due at the same instant
    await cooled(b)
    assert "soon" not in cold(b) and len(cold(b)) == 2000
    async with asyncio.timeout(1000):
        await b.join()
    assert all(rec.hooks(f"burst{i}") == ["execute", "finish"] for i in range(2000))
    assert b.stats()["finished"] == 2001


async def test_immediate_tasks_and_hooks_in_flight_are_never_frozen() -> None:
    rec = Recorder(work={"imm": 500})
    b = make(rec)
    b.fill_nowait(IMM, "imm")
    await asyncio.sleep(0)
    await cooled(b)
    assert cold(b) == set()  # running, and not a time-bomb
    assert b.drain_nowait("imm") is DrainOutcome.CANCELLED


async def test_a_dropped_task_is_cold_by_the_end_of_its_fill_pass_a_held_one_later() -> None:
    rec = Recorder()
    b = make(rec)
    b.fill_nowait(BOMB, "dropped")
    held = b.fill_nowait(BOMB, "held")
    await asyncio.sleep(0)  # the end of the fill's loop pass
    assert cold(b) == {"dropped"}
    del held  # dropped later: the sweep a period or two on takes it
    await cooled(b)
    assert cold(b) == {"dropped", "held"}


async def test_the_young_sweep_takes_a_big_fill_in_steps() -> None:
    from gobucket_py.bucket import COOL_STEP

    rec = Recorder()
    b = make(rec, max_bucket=10 * COOL_STEP)
    for i in range(5 * COOL_STEP):
        b.fill_nowait(BOMB, f"t{i}")
    await asyncio.sleep(0)
    assert len(cold(b)) == COOL_STEP  # one step per loop pass: the loop is never held long
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(cold(b)) == 5 * COOL_STEP and len(b) == 5 * COOL_STEP
    async with asyncio.timeout(1000):
        await b.join()
    assert b.stats()["finished"] == 5 * COOL_STEP


async def test_cold_slots_are_strs_of_ids_and_ids_holding_the_separator_still_fire() -> None:
    """A slot of cold ids is one str (untracked, and making it allocates no
    tracked object); a slot whose ids hold the separator stays a tuple. Both
    fire every task once, with its data, and take new entries."""
    rec = Seen()
    b = make(rec)
    odd = ["x\x00y", "\x00", "z\x00"]
    for task_id in ["p", "q", *odd]:
        b.fill_nowait(BOMB, task_id, task_id)  # same loop time: one slot
    b.fill_nowait(BOMB, "r", "r", run_after=60)
    b.fill_nowait(BOMB, "s", "s", run_after=60)
    await cooled(b)
    assert cold(b) == {"p", "q", "r", "s", *odd}
    assert b._wheel is not None
    kinds = sorted(type(slot).__name__ for _, slot in b._wheel.slots())
    assert kinds == ["str", "tuple"], kinds
    assert not any(gc.is_tracked(slot) for _, slot in b._wheel.slots() if type(slot) is str)
    b.fill_nowait(BOMB, "t", "t", run_after=60 - WAIT)  # joins the cold "r", "s" slot
    assert sorted(type(slot).__name__ for _, slot in b._wheel.slots()) == ["list", "tuple"]
    async with asyncio.timeout(1000):
        await b.join()
    ran = sorted(task_id for task_id, *_ in rec.given)
    assert ran == sorted(["p", "q", "r", "s", "t", *odd])
    assert all(data == task_id for task_id, data, *_ in rec.given)
    assert all(rec.hooks(t) == ["execute", "finish"] for t in ran)


# -- fill_cold: a forwarded batch straight into cold storage --------------------------


async def test_fill_cold_takes_a_batch_cold_at_once_and_it_runs_as_filled_tasks_do() -> None:
    """The cluster layer's ``fill_cold`` makes no Task: each id goes into the
    cold dicts and the wheel as a fill's would at the end of its pass, and
    each runs once, at its time, with its own data and lifespan."""
    rec = Seen()
    b = make(rec)
    t0 = asyncio.get_running_loop().time()
    ids = [f"c{i}" for i in range(5)]
    data = [{"i": 0}, None, "two", None, [4]]
    assert b.fills_cold(30.0)
    assert b.fill_cold(ids, data, 30.0, 40.0) == 5
    assert b._tasks == {} and cold(b) == set(ids)
    assert len(b) == 5 and b.free == 995 and all(i in b for i in ids)
    assert b.stats()["filled"] == 5 and b.stats()["pending"] == 5
    assert b._wheel is not None
    assert [type(s) for _, s in b._wheel.slots()] == [str]
    assert b.get("c2") is not None and b.get("c2").data == "two"  # type: ignore[union-attr]
    async with asyncio.timeout(1000):
        await b.join()
    assert sorted(rec.given) == sorted(
        (i, d, t0 + 30, pytest.approx(10)) for i, d in zip(ids, data, strict=True))
    assert all(rec.hooks(i) == ["execute", "finish"] for i in ids)
    assert b.stats()["finished"] == 5


async def test_fill_cold_stops_where_a_task_must_be_refused_and_takes_nothing_after() -> None:
    """It stops at a duplicate (live, cold, or earlier in the batch) or when
    the bucket is full, and returns that index: the caller gets that task's
    refusal the usual way and goes on from the next."""
    rec = Recorder()
    b = make(rec, max_bucket=8)
    held = b.fill_nowait(BOMB, "live")
    b.fill_nowait(BOMB, "frozen")
    await cooled(b)
    assert cold(b) == {"frozen"} and b._tasks == {"live": held}
    none = [None] * 4
    assert b.fill_cold(["a", "live", "b"], none, 30.0, 40.0) == 1
    assert b.fill_cold(["a", "b", "frozen"], none, 30.0, 40.0, start=1) == 2
    assert b.fill_cold(["c", "c"], none, 30.0, 40.0) == 1
    assert cold(b) == {"frozen", "a", "b", "c"} and len(b) == 5
    assert b.fill_cold(["d", "e", "f", "g"], none, 30.0, 40.0) == 3  # room for three
    assert len(b) == 8 and "f" in b and "g" not in b
    assert b.fill_cold(["g"], none, 30.0, 40.0) == 0
    assert b.stats()["filled"] == 8
    async with asyncio.timeout(1000):
        await b.join()
    assert sorted(t for h, t, _ in rec.calls if h == "execute") == sorted(
        ["live", "frozen", "a", "b", "c", "d", "e", "f"])


async def test_fill_cold_leaves_tasks_due_soon_and_a_closing_bucket_alone() -> None:
    rec = Recorder()
    b = make(rec)
    assert not b.fills_cold(1.5) and not b.fills_cold(2.0)
    assert b.fill_cold(["soon"], [None], 2.0, 10.0) == 0 and len(b) == 0
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0)
    assert not b.fills_cold(30.0)
    assert b.fill_cold(["late"], [None], 30.0, 40.0) == 0 and "late" not in b
    await closing


async def test_drains_gets_and_reschedules_of_cold_filled_tasks() -> None:
    """Whatever can be done to a task filled and then frozen can be done to
    one filled cold: drained (it never runs), got (one live Task from then
    on), rescheduled; and a slot they share with later fills stays whole."""
    rec = Recorder()
    b = make(rec)
    t0 = asyncio.get_running_loop().time()
    assert b.fill_cold(["d1", "d2", "g", "r"], ["x"] * 4, 30.0, 40.0) == 4
    assert b.fill_cold(["same"], [None], 30.0, 40.0) == 1  # joins the packed slot
    b.fill_nowait(BOMB, "task", run_after=30, life_span=40)  # and a Task joins it too
    assert b.drain_nowait("d1") is DrainOutcome.DRAINED
    assert (await b.drain("d2")).outcome is DrainOutcome.DRAINED
    got = b.get("g")
    assert got is not None and got.data == "x" and b.get("g") is got
    assert await b.reschedule("r", 60)
    async with asyncio.timeout(1000):
        await b.join()
    assert rec.hooks("d1") == rec.hooks("d2") == []
    assert [rec.hooks(i) for i in ("g", "r", "same", "task")] == [["execute", "finish"]] * 4
    assert rec.at("execute", "g") == t0 + 30 and rec.at("execute", "r") == t0 + 60
    assert got.state is TaskState.FINISHED


async def test_many_cold_filled_tasks_drained_compact_the_wheel_and_the_rest_fire_once() -> None:
    from gobucket_py.timers import TimerWheel

    rec = Recorder()
    b = make(rec, max_bucket=20_000)
    ids = [f"t{i}" for i in range(10_000)]
    for start in range(0, 10_000, 500):  # a batch per ms: a slot each
        assert b.fill_cold(ids[start:start + 500], [None] * 500, 30.0, 40.0) == 500
        await asyncio.sleep(0.001)
    assert b.drain_many_nowait(ids[:9_000]) == [DrainOutcome.DRAINED] * 9_000
    assert b._wheel is not None and len(b._wheel) == 1000
    assert b._wheel._entries <= 1000 + TimerWheel.COMPACT_MIN  # compacted
    async with asyncio.timeout(1000):
        await b.join()
    ran = [t for h, t, _ in rec.calls if h == "execute"]
    assert sorted(ran) == sorted(ids[9_000:])


async def test_fill_cold_leaves_a_bad_id_to_fill_validated_which_names_the_fault() -> None:
    rec = Recorder()
    b = make(rec)
    ids: list = ["ok", "", 7, "after"]  # type: ignore[type-arg]
    assert b.fill_cold(ids, [None] * 4, 30.0, 40.0) == 1
    assert b.fill_cold(ids, [None] * 4, 30.0, 40.0, start=2) == 2
    with pytest.raises(TypeError, match="task_id must be a non-empty str"):
        b.fill_validated(BOMB, ids[2], None, 30.0, 40.0)
    assert b.fill_cold(ids, [None] * 4, 30.0, 40.0, start=3) == 4
    assert cold(b) == {"ok", "after"} and len(b) == 2


async def test_fits_is_free_or_live_here_whether_held_or_cold() -> None:
    """``fits(id)`` (one call on the path of every fill) says what
    ``free > 0 or id in bucket`` says: room, or the id live here (held or
    cold), and no room once closing."""
    b = make(Recorder(), max_bucket=2)

    def agrees(*ids: str) -> list[bool]:
        answers = [b.fits(i) for i in ids]
        assert answers == [b.free > 0 or i in b for i in ids]
        return answers

    assert agrees("a", "b") == [True, True]
    b.fill_nowait(BOMB, "a")
    held = b.fill_nowait(BOMB, "b")
    await cooled(b)
    assert cold(b) == {"a"}  # "b" is held
    assert agrees("a", "b", "c") == [True, True, False]
    b.drain_nowait("a")
    assert agrees("a", "b", "c") == [True, True, True]
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0)
    assert agrees("b", "c") == [held.id in b, False]
    await closing
