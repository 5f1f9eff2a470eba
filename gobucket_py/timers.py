"""One scheduler for all pending time-bombs of a bucket.

A million pending tasks must not each hold a sleeping coroutine (~1.5 kB) or a
``call_later`` handle (~460 B). Tasks are kept in slots of ``resolution``
seconds (``dict[tick, list[Task]]``) with a heap of the ticks in use, and only
one loop timer is armed, at the exact ``run_at`` of the earliest task. A task
costs one list slot (8 bytes) here.

Removal is lazy: a drained, rescued or rescheduled task leaves a stale entry
that is skipped when its slot comes due, and the wheel is compacted when stale
entries outnumber live ones, so churn cannot grow memory without bound.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable

from .task import Task, TaskState

__all__ = ["TimerWheel"]

_PENDING = TaskState.PENDING
#: A task due within this much of now fires now: re-arming a timer for a
#: microsecond's difference is pointless (and a clock that cannot step by
#: less, like a test's fake one, would spin on it).
_EARLY = 1e-6


class TimerWheel:
    """Fires ``fire(task)`` once, at or just after each task's ``_run_at``.

    Not thread-safe: use from the loop's thread only. ``fire`` must not block.
    """

    __slots__ = ("_entries", "_fire", "_handle", "_handle_when", "_live", "_loop", "_res",
                 "_slots", "_ticks")

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
    ) -> None:
        self._loop = loop
        self._fire = fire
        self._res = resolution
        self._slots: dict[int, list[Task]] = {}
        self._ticks: list[int] = []  # heap of the keys of _slots
        self._handle: asyncio.Handle | None = None
        self._handle_when = math.inf
        self._entries = 0  # list entries, stale ones included
        self._live = 0  # tasks scheduled and not yet fired or discarded

    def __len__(self) -> int:
        """Number of tasks waiting to fire."""
        return self._live

    def _tick(self, when: float) -> int:
        return math.floor(when / self._res)

    def add(self, task: Task) -> None:
        """Schedule a new task at ``task._run_at``."""
        self._live += 1
        self._insert(task)

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
        self._slots.clear()
        self._ticks.clear()
        self._entries = self._live = 0

    def _insert(self, task: Task) -> None:
        tick = self._tick(task._run_at)
        slot = self._slots.get(tick)
        if slot is None:
            self._slots[tick] = [task]
            heapq.heappush(self._ticks, tick)
        else:
            slot.append(task)
        self._entries += 1
        if task._run_at < self._handle_when:
            self._arm(task._run_at)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle_when = when
        self._handle = self._loop.call_at(when, self._on_timer)

    def _valid(self, task: Task, tick: int) -> bool:
        return (task.state is _PENDING and task._runner is None
                and self._tick(task._run_at) == tick)

    def _on_timer(self) -> None:
        self._handle = None
        self._handle_when = math.inf
        now = self._loop.time()
        current = self._tick(now + _EARLY)  # a slot due by float rounding is due
        slots, ticks, fire = self._slots, self._ticks, self._fire
        carry: list[Task] = []
        budget = self.SLICE
        sliced = False
        while ticks and ticks[0] <= current and budget:
            tick = heapq.heappop(ticks)
            entries = slots.pop(tick)
            self._entries -= len(entries)
            for i, task in enumerate(entries):
                if not budget:  # a burst: the rest fires in the next loop turn
                    self._put_back(tick, entries[i:])
                    sliced = True
                    break
                if not self._valid(task, tick):
                    continue
                if task._run_at <= now + _EARLY:
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
            self._arm(max(first * self._res, min(t._run_at for t in slots[first])))

    def _put_back(self, tick: int, entries: list[Task]) -> None:
        slot = self._slots.get(tick)
        if slot is None:
            self._slots[tick] = entries
            heapq.heappush(self._ticks, tick)
        else:
            slot.extend(entries)
        self._entries += len(entries)

    def _compact(self) -> None:
        if not self._live:  # everything went (a mass drain): nothing to keep
            self._slots.clear()
            self._ticks.clear()
            self._entries = 0
            return
        seen: set[int] = set()
        slots: dict[int, list[Task]] = {}
        res = self._res
        floor = math.floor
        for tick, entries in self._slots.items():
            keep = []
            for task in entries:  # (_valid, inlined: this runs over every entry)
                if (task.state is _PENDING and task._runner is None
                        and floor(task._run_at / res) == tick and id(task) not in seen):
                    seen.add(id(task))
                    keep.append(task)
            if keep:
                slots[tick] = keep
        self._slots = slots
        self._ticks = list(slots)
        heapq.heapify(self._ticks)
        self._entries = self._live = len(seen)
