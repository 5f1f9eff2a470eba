"""One scheduler for all pending time-bombs of a bucket.

A million pending tasks must not each hold a sleeping coroutine (~1.5 kB) or a
``call_later`` handle (~460 B). Tasks are kept in slots of ``resolution``
seconds (``dict[tick, list[Task]]``) with a heap of the ticks in use, and only
one loop timer is armed, at the exact ``run_at`` of the earliest task. A task
costs one list slot (8 bytes) here.

Removal is lazy: a drained, rescued or rescheduled task leaves a stale entry
that is skipped when its slot comes due, and the wheel is compacted when stale
entries outnumber live ones, so churn cannot grow memory without bound.

Cold entries: a slot may hold a task's *id* instead of its :class:`Task` --
a pending time-bomb that nobody but the bucket referred to, which the bucket
keeps packed until it is due (see ``TaskBucket._freeze``), so that a million
pending tasks are not a million objects for every full pass of Python's
garbage collector. :meth:`cool` makes them, and turns a slot of ids only
into one str of them (which the collector does not track); the wheel turns
an id back into a task (``thaw``) when its slot comes due.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from .task import Task, TaskState

__all__ = ["TimerWheel"]

_getrefcount = sys.getrefcount
#: A slot: the entries due in one tick, Tasks or the ids of cold tasks; once
#: it holds ids only (see cool()), one str of them joined by _SEP (or, if an
#: id holds _SEP, a tuple).
Slot = list[Task | str] | tuple[str, ...] | str

#: Joins the ids of a cold slot. A str is no object the garbage collector
#: tracks. A tuple of ids is, until a collection untracks it, and making one
#: from a slot's list (freed) leaves the collector's allocation count as it
#: was: tens of thousands piled up in the youngest generation between two
#: collections, and the one that untracked them held the loop for 5 ms.
_SEP = "\x00"


def _packed(ids: Sequence[Task | str]) -> str | tuple[str, ...]:
    """A slot of ids only, as one str (a tuple if an id holds the separator)."""
    joined = _SEP.join(ids)  # type: ignore[arg-type]  # (ids only)
    if joined.count(_SEP) == len(ids) - 1:
        return joined
    return tuple(ids)  # type: ignore[arg-type]


def _entries(slot: Slot) -> list[Task | str] | tuple[str, ...]:
    """A slot's entries (a packed one's ids)."""
    return slot.split(_SEP) if type(slot) is str else slot  # type: ignore[return-value]


_PENDING = TaskState.PENDING
#: Slots are kept in this many dicts, by tick: one dict of every pending tick
#: (~700,000 for 800,000 tasks spread over an hour) is rebuilt whole when its
#: churn fills it, stalling the loop for tens of milliseconds; a shard's
#: rebuild is a few hundredths of a millisecond.
SLOT_SHARDS = 256
_MASK = SLOT_SHARDS - 1
#: A task due within this much of now fires now: re-arming a timer for a
#: microsecond's difference is pointless (and a clock that cannot step by
#: less, like a test's fake one, would spin on it).
_EARLY = 1e-6
#: How far ahead a timer is re-armed when the loop ran it before the time
#: asked for. uvloop's clock counts whole milliseconds and rounds a timer's
#: delay to them: one asked for 0.4 ms ahead runs at once, finds nothing due
#: yet (the clock has not moved), and re-armed the same way would spin until
#: the next millisecond -- a core kept busy while tasks are pending. asyncio
#: never runs a timer early, so this never applies there.
_EARLY_WAKE_FLOOR = 0.001


def _freeze_at(slot: list[Task | str], i: int, tick: int, res: float,
               freeze: Callable[[Task], bool]) -> bool | None:
    """Make ``slot[i]`` cold if it is a Task due at ``tick`` that nobody but
    the bucket refers to: True if it went cold, None if it is cold already,
    False if it stays a Task (someone holds it, or it is stale)."""
    entry = slot[i]
    if isinstance(entry, str):
        return None
    # References to a task nobody else holds: this slot, the bucket's dict,
    # `entry` and getrefcount's argument.
    if (entry.state is _PENDING and entry._runner is None and _getrefcount(entry) <= 4
            and math.floor(entry._run_at / res) == tick and freeze(entry)):
        slot[i] = entry.id
        return True
    return False


class TimerWheel:
    """Fires ``fire(task)`` once, at or just after each task's ``_run_at``.

    Not thread-safe: use from the loop's thread only. ``fire`` must not block.
    """

    __slots__ = ("_aging", "_entries", "_fire", "_handle", "_handle_when", "_live", "_loop",
                 "_peek", "_res", "_slots", "_sweeping", "_thaw", "_ticks", "_warm", "_young",
                 "_young_at")

    #: Stale entries tolerated before a compaction (besides ``> live``).
    COMPACT_MIN = 4096
    #: Tasks started per timer callback. A burst of 20,000 due at once is
    #: started in slices, each slice's first steps running before the next
    #: slice is started: the first task starts within a slice's time of its
    #: due time, not after the whole burst's tasks are created.
    SLICE = 256

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fire: Callable[[Task], None],
        resolution: float = 0.001,
        *,
        peek: Callable[[str], Task | float | None] | None = None,
        thaw: Callable[[str], Task] | None = None,
    ) -> None:
        self._loop = loop
        self._fire = fire
        self._res = resolution
        # For cold entries (ids): the bucket's live Task by id, or the run_at
        # of its cold task, or None; and the Task a cold task becomes again.
        self._peek = peek
        self._thaw = thaw
        # Task entries added since the last cool_young(): tick, index pairs.
        self._young = array("q")
        self._young_at = 0  # the next pair cool_young() looks at
        # Ticks with a Task entry cool_young() could not freeze: this cooling
        # period, the last one, and the one before, being swept now (cool()).
        self._warm: set[int] = set()
        self._aging: set[int] = set()
        self._sweeping: set[int] = set()
        # The slot of each tick in use, in the shard ``tick & _MASK``.
        self._slots: list[dict[int, Slot]] = [{} for _ in range(SLOT_SHARDS)]
        self._ticks: list[int] = []  # heap of the ticks in _slots
        self._handle: asyncio.Handle | None = None
        self._handle_when = math.inf
        self._entries = 0  # list entries, stale ones included
        self._live = 0  # tasks scheduled and not yet fired or discarded

    def __len__(self) -> int:
        """Number of tasks waiting to fire."""
        return self._live

    @property
    def resolution(self) -> float:
        """Seconds per slot."""
        return self._res

    def slots(self) -> Iterator[tuple[int, Slot]]:
        """Every ``(tick, slot)`` in use, in no order."""
        for shard in self._slots:
            yield from shard.items()

    def _tick(self, when: float) -> int:
        return math.floor(when / self._res)

    def add(self, task: Task) -> None:
        """Schedule a new task at ``task._run_at``."""
        self._live += 1
        self._insert(task)

    def add_cold(self, run_at: float, task_ids: list[str]) -> None:
        """Schedule new cold tasks (see ``TaskBucket.fill_cold``), all due at
        ``run_at``: their ids go into its slot as they are, no Task made."""
        self._live += len(task_ids)
        tick = self._tick(run_at)
        shard = self._slots[tick & _MASK]
        was = shard.get(tick)
        self._put_back(tick, cast("list[Task | str]", task_ids))
        if type(was) is not list:  # new, or ids only: one str of ids again
            shard[tick] = _packed(shard[tick])
        if run_at < self._handle_when:
            self._arm(run_at)

    def moved(self, task: Task, old_run_at: float) -> None:
        """``task._run_at`` changed from ``old_run_at``; schedule it again.

        The entry at the old tick goes stale (counted in ``_entries`` but not
        in ``_live``), so repeated reschedules compact like discards do."""
        if self._tick(old_run_at) != self._tick(task._run_at):
            self._insert(task)
            if self._entries - self._live > max(self.COMPACT_MIN, self._live):
                self._compact()
        elif task._run_at < self._handle_when:
            self._arm(task._run_at)

    def discard(self, task: Task) -> None:
        """A scheduled task will not fire (drained or rescued); its entry goes stale."""
        self._live -= 1
        # (inline, not a shared helper: this is on every drain's path)
        if self._entries - self._live > max(self.COMPACT_MIN, self._live):
            self._compact()

    def discard_many(self, count: int) -> None:
        """:meth:`discard` for ``count`` tasks at once (one compaction check)."""
        self._live -= count
        if self._entries - self._live > max(self.COMPACT_MIN, self._live):
            self._compact()

    def close(self) -> None:
        """Cancel the loop timer and forget every entry."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._handle_when = math.inf
        for shard in self._slots:
            shard.clear()
        self._ticks.clear()
        del self._young[:]
        self._young_at = 0
        self._warm.clear()
        self._aging.clear()
        self._sweeping.clear()
        self._entries = self._live = 0

    def _insert(self, task: Task) -> None:
        tick = self._tick(task._run_at)
        shard = self._slots[tick & _MASK]
        slot = shard.get(tick)
        if slot is None:
            shard[tick] = slot = [task]
            heapq.heappush(self._ticks, tick)
        elif type(slot) is list:
            slot.append(task)
        else:
            shard[tick] = slot = [*_entries(slot), task]
        if self._thaw is not None:  # (a wheel without cold entries keeps no young list)
            young = self._young
            young.append(tick)
            young.append(len(slot) - 1)
        self._entries += 1
        if task._run_at < self._handle_when:
            self._arm(task._run_at)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle_when = when
        self._handle = self._loop.call_at(when, self._on_timer)

    def _warmed(self, task_id: str, tick: int) -> Task | None:
        """The task a cold entry at ``tick`` stands for, thawed; None if the
        entry is stale (drained since, or a newer task with that id)."""
        assert self._peek is not None and self._thaw is not None
        value = self._peek(task_id)
        if type(value) is float:
            return self._thaw(task_id) if self._tick(value) == tick else None
        return value if isinstance(value, Task) else None  # (thawed meanwhile by a get)

    def warming(self) -> bool:
        """Whether Task entries wait for :meth:`cool`."""
        return bool(self._warm or self._aging or self._sweeping)

    def cool_young(self, freeze: Callable[[Task], bool], after: float, budget: int) -> bool:
        """Try to make cold the Task entries added since the last call (call
        it at the end of each loop pass in which tasks were added: most
        fillers drop the Task at once), about ``budget`` of them a call:
        True while some are left (call again at once). What cannot be
        frozen yet -- someone holds it -- waits for :meth:`cool`; what is
        due by loop time ``after`` stays."""
        young = self._young
        start = self._young_at
        end = min(len(young), start + 2 * budget)
        if start >= end:
            return False
        horizon = self._tick(after)
        slots = self._slots
        res = self._res
        warm = self._warm
        cooled: set[int] = set()
        for k in range(start, end, 2):
            tick = young[k]
            slot = slots[tick & _MASK].get(tick)
            if tick <= horizon or type(slot) is not list:
                continue
            i = young[k + 1]
            if i >= len(slot):
                continue
            done = _freeze_at(slot, i, tick, res, freeze)
            if done:
                cooled.add(tick)
            elif done is not None:
                warm.add(tick)
        if end < len(young):
            self._young_at = end
        else:
            del young[:]
            self._young_at = 0
        for tick in cooled - warm:
            shard = slots[tick & _MASK]
            slot = shard[tick]
            if type(slot) is list and all(type(entry) is str for entry in slot):
                shard[tick] = _packed(slot)
        return end < len(young)

    def cool(self, freeze: Callable[[Task], bool], after: float, budget: int) -> bool:
        """One step of the sweep that makes cold entries: Task entries whose
        task nobody but the bucket refers to, due after loop time ``after``,
        become the task's id, as ``freeze(task)`` makes the bucket hold the
        task packed (if it returns True). A task someone else holds (the
        caller of ``fill`` kept it, a coroutine has it) stays as it is, so
        every Task object anyone has stays the live one.

        Call it once per cooling period, and again at once while it returns
        True (a step looks at about ``budget`` entries, so a sweep never
        holds the loop for long). A sweep covers the slots given entries two
        periods ago, so a task is at least a period old when it is looked
        at: its filler has had the time to drop it or keep it."""
        if not self._sweeping:
            self._sweeping, self._aging, self._warm = self._aging, self._warm, set()
        sweeping = self._sweeping
        horizon = self._tick(after)
        slots = self._slots
        res = self._res
        while sweeping and budget > 0:
            tick = sweeping.pop()
            slot = slots[tick & _MASK].get(tick)
            if tick <= horizon or type(slot) is not list:
                continue  # due soon, fired, or cold already
            budget -= len(slot)
            warm = False
            for i in range(len(slot)):
                if _freeze_at(slot, i, tick, res, freeze) is False:
                    warm = True
            if not warm:
                slots[tick & _MASK][tick] = _packed(slot)
        return bool(sweeping)

    def _on_timer(self) -> None:
        asked = self._handle_when
        self._handle = None
        self._handle_when = math.inf
        now = self._loop.time()
        current = self._tick(now + _EARLY)  # a slot due by float rounding is due
        slots, ticks, fire = self._slots, self._ticks, self._fire
        res, floor, due = self._res, math.floor, now + _EARLY
        carry: list[Task | str] = []
        budget = self.SLICE
        sliced = False
        while ticks and ticks[0] <= current and budget:
            tick = heapq.heappop(ticks)
            entries = _entries(slots[tick & _MASK].pop(tick))
            self._entries -= len(entries)
            for i, entry in enumerate(entries):
                if not budget:  # a burst: the rest fires in the next loop turn
                    if type(entries) is list:
                        # The slot's own list (popped above): drop what fired
                        # in place, not copy the rest once per slice.
                        del entries[:i]
                        self._put_back(tick, entries)
                    else:
                        self._put_back(tick, entries[i:])
                    sliced = True
                    break
                task = self._warmed(entry, tick) if isinstance(entry, str) else entry
                # Still pending, not started, and still due in this tick (not
                # drained or rescheduled since): inline, as it runs per task.
                if (task is None or task.state is not _PENDING or task._runner is not None
                        or floor(task._run_at / res) != tick):
                    continue
                if task._run_at <= due:
                    self._live -= 1
                    budget -= 1
                    fire(task)  # sets task._runner, so a duplicate entry is skipped
                else:
                    carry.append(task)  # later within the current tick
        # (checked before the carry goes back: those are not due yet)
        sliced = sliced or bool(not budget and ticks and ticks[0] <= current)
        if carry:
            self._put_back(current, carry)
        if sliced:
            # Let the tasks started so far take their first step before the
            # next slice is started: call_soon runs it after them (their steps
            # were queued first), on asyncio's loop and on uvloop alike --
            # uvloop may run a timer due "now" within the same turn.
            self._handle_when = now
            self._handle = self._loop.call_soon(self._on_timer)
        elif ticks:
            # Arm at the exact earliest time of the first slot: no early wake-up
            # and no lateness beyond the loop's own. Stale entries (rescheduled
            # tasks) may carry other times, hence the clamp to the slot's start.
            first = ticks[0]
            slot = slots[first & _MASK][first]
            if type(slot) is not list or any(type(e) is str for e in slot):
                when = first * self._res  # cold ones: their slot's start
            else:
                when = max(first * self._res,
                           min(t._run_at for t in slot))  # type: ignore[union-attr]
            if now + _EARLY < asked and when < now + _EARLY_WAKE_FLOOR:
                when = now + _EARLY_WAKE_FLOOR  # run early (uvloop): no spin
            self._arm(when)

    def _put_back(self, tick: int, entries: Slot) -> None:
        shard = self._slots[tick & _MASK]
        slot = shard.get(tick)
        if slot is None:
            shard[tick] = entries
            heapq.heappush(self._ticks, tick)
        elif type(slot) is list:
            slot.extend(entries)
        else:
            shard[tick] = [*_entries(slot), *entries]
        self._entries += len(entries)

    def _compact(self) -> None:
        if not self._live:  # everything went (a mass drain): nothing to keep
            for shard in self._slots:
                shard.clear()
            self._ticks.clear()
            self._entries = 0
            return
        seen: set[int | str] = set()  # id() of each task kept, or the id of a cold one
        slots: list[dict[int, Slot]] = [{} for _ in range(SLOT_SHARDS)]
        kept: list[int] = []  # the ticks kept
        res = self._res
        floor = math.floor
        peek = self._peek
        for tick, slot in self.slots():
            keep: list[Task | str] = []
            for entry in _entries(slot):
                if isinstance(entry, str):
                    assert peek is not None
                    value = peek(entry)
                    if type(value) is float:
                        if floor(value / res) == tick and entry not in seen:
                            seen.add(entry)
                            keep.append(entry)
                        continue
                    if not isinstance(value, Task):
                        continue
                    task = value  # thawed by a get: kept as the task
                else:
                    task = entry
                # Still pending, not started, still due in this tick (inline:
                # this runs over every entry).
                if (task.state is _PENDING and task._runner is None
                        and floor(task._run_at / res) == tick and id(task) not in seen):
                    seen.add(id(task))
                    keep.append(task)
            if keep:
                slots[tick & _MASK][tick] = keep
                kept.append(tick)
        self._slots = slots
        for ticks in (self._warm, self._aging, self._sweeping):
            ticks.intersection_update(kept)
        heapq.heapify(kept)
        self._ticks = kept
        self._entries = self._live = len(seen)
