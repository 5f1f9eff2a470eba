"""The lifespan deadline of each running task, armed only if it is needed.

``asyncio.timeout_at`` around every ``on_execute`` costs a timeout object, a
loop timer armed and a loop timer cancelled -- about as much as the rest of
a task's start, for the common task that does its work in its first step
(or none: a no-op). Here a task that starts is only listed; once per loop
turn, after the first steps of the tasks started in it, the tasks still
running get their timer. So a task that ends in its first step never has
one, and one that goes on is bounded from the end of its first step on,
at its exact deadline (the same as ``asyncio.timeout_at``: a step does not
stop to look at the clock).

When a deadline passes the runner is cancelled, and :meth:`Deadlines.stop`
tells it so (and takes the cancel back, as ``asyncio.timeout`` does), so
the bucket can tell a task that ran out of time from a drained one.
"""

from __future__ import annotations

import asyncio

from .task import Task, TaskState

__all__ = ["Deadlines"]

_RUNNING = TaskState.RUNNING


class Deadlines:
    """The deadline timers of one bucket's running tasks."""

    __slots__ = ("_loop", "_starting", "_timers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Started this loop turn; armed after it if still running.
        self._starting: list[Task] = []
        #: Running task -> its deadline timer; None once it fired (the
        #: runner was cancelled for it).
        self._timers: dict[Task, asyncio.TimerHandle | None] = {}

    def __len__(self) -> int:
        """Timers armed (or fired and not yet seen by their runner)."""
        return len(self._timers)

    def start(self, task: Task) -> None:
        """``task`` starts running (its runner is the current task)."""
        starting = self._starting
        if not starting:
            self._loop.call_soon(self._arm)
        starting.append(task)

    def _arm(self) -> None:
        starting, self._starting = self._starting, []
        timers, call_at, expire = self._timers, self._loop.call_at, self._expire
        for task in starting:
            if task.state is _RUNNING and task not in timers:
                timers[task] = call_at(task._deadline, expire, task)

    def _expire(self, task: Task) -> None:
        runner = task._runner
        if task.state is _RUNNING and self._timers.get(task) is not None and runner is not None:
            self._timers[task] = None
            runner.cancel()

    def stop(self, task: Task) -> bool:
        """``task``'s ``on_execute`` returned or raised (call it from its
        runner, at once): disarm its timer. True if the deadline had passed
        and cancelled the runner; that cancel is then taken back
        (``uncancel``), so ``cancelling()`` counts only the others."""
        if task not in self._timers:
            return False  # ended in its first step (or not armed yet)
        timer = self._timers.pop(task)
        if timer is not None:
            timer.cancel()
            return False
        runner = task._runner
        assert runner is not None
        runner.uncancel()
        return True
