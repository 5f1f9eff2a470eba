"""TaskBucket: a bounded map of tasks and their lifecycle on one event loop.

Admission is atomic: ``fill`` does its checks and its insert with no ``await``
in between, so concurrent fills can never overshoot ``max_bucket`` or accept a
duplicate id (GoBucket bug 1). Pending time-bombs live in one
:class:`~gobucket_py.timers.TimerWheel`; an asyncio task is only created when a
task runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

from .config import BucketConfig, check_delay, check_times
from .errors import BucketClosedError, BucketFullError, DuplicateTaskError
from .executor import Executor, Handler, as_executor, overrides
from .observe.histogram import Histogram
from .task import DrainOutcome, DrainResult, Task, TaskState, TaskType
from .timers import TimerWheel

__all__ = ["TaskBucket"]

log = logging.getLogger("gobucket_py")

_PENDING = TaskState.PENDING
_RUNNING = TaskState.RUNNING
_IMMEDIATE = TaskType.IMMEDIATE

#: Counter names reported by :meth:`TaskBucket.stats`.
STAT_NAMES = ("filled", "started", "rejected_full", "rejected_duplicate", "finished", "failed",
              "exhausted", "drained", "cancelled", "rescued", "handed_off", "hook_errors",
              "hook_timeouts")


class TaskBucket:
    """A bounded bucket of immediate and time-bomb tasks, keyed by string id.

    Example::

        async def remind(task: Task) -> None:
            print("no confirmation for", task.id)

        async with TaskBucket(BucketConfig(life_span=60, run_after=30), remind) as bucket:
            await bucket.fill(TaskType.TIME_BOMB, "order-42", {"user": 7})
            ...                                  # the confirmation arrives:
            await bucket.drain("order-42")       # -> DrainOutcome.DRAINED, never runs

    A bucket binds to the running event loop on first use and must be used
    from that loop only.
    """

    def __init__(
        self,
        config: BucketConfig,
        executor: Executor | Handler,
        *,
        name: str = "default",
    ) -> None:
        if not isinstance(config, BucketConfig):
            raise TypeError(f"config must be a BucketConfig, got {type(config).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.config = config
        self.name = name
        self.executor = as_executor(executor)
        self._execute = self.executor.on_execute
        # Hooks left at the base class's no-op are not called at all.
        ex = self.executor
        self._on_finish = ex.on_finish if overrides(ex, "on_finish") else None
        self._on_error = ex.on_execute_error if overrides(ex, "on_execute_error") else None
        self._on_exhausted = ex.on_task_exhausted if overrides(ex, "on_task_exhausted") else None
        self._on_panic = ex.on_panic if overrides(ex, "on_panic") else None
        self._tasks: dict[str, Task] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wheel: TimerWheel | None = None
        self._closing = False
        self._closed = False
        self._max = config.max_bucket
        self._counts = dict.fromkeys(STAT_NAMES, 0)
        self._idle: asyncio.Future[None] | None = None  # set by join()
        #: Called with each task as it reaches a terminal state (used by the
        #: cluster layer and metrics). Must not block.
        self.on_outcome: Callable[[Task], None] | None = None
        #: How late time-bombs fire (seconds after their due time).
        self.lateness = Histogram()
        #: Node id in log lines; set by :class:`~gobucket_py.TaskBucketGroup`.
        self.node = "-"

    # -- introspection -------------------------------------------------------

    def __len__(self) -> int:
        """Live tasks: pending, running, or in their terminal hook."""
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    def __repr__(self) -> str:
        return f"<TaskBucket {self.name!r} {len(self)}/{self._max}>"

    @property
    def free(self) -> int:
        """Free slots: ``max_bucket - len(bucket)``; 0 once closing."""
        return 0 if self._closing else self._max - len(self._tasks)

    @property
    def closed(self) -> bool:
        """True once ``close()`` has started."""
        return self._closing

    def get(self, task_id: str) -> Task | None:
        """The live task with that id, or None."""
        return self._tasks.get(task_id)

    def stats(self) -> dict[str, int]:
        """Counters since creation: fills, rejections, one per terminal
        outcome, hook errors and hook timeouts, plus ``live`` and ``pending``."""
        out = dict(self._counts)
        out["live"] = len(self._tasks)
        out["pending"] = len(self._wheel) if self._wheel is not None else 0
        return out

    def loop_time(self) -> float:
        """The bucket's loop clock (monotonic; faked by looptime in tests)."""
        loop = self._loop
        if loop is None:
            loop = asyncio.get_running_loop()
        return loop.time()

    # -- fill ----------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wheel = TimerWheel(loop, self._fire)
        return loop

    async def fill(
        self,
        task_type: TaskType,
        task_id: str,
        data: Any = None,
        *,
        run_after: float | None = None,
        life_span: float | None = None,
    ) -> Task:
        """Accept a task, or raise.

        ``run_after`` and ``life_span`` override the config for this task
        (``run_after`` only for time-bombs). Raises :class:`BucketFullError`,
        :class:`DuplicateTaskError`, :class:`BucketClosedError`, or
        ``ValueError``/``TypeError`` for bad arguments; a refused fill changes
        nothing.
        """
        return self.fill_nowait(task_type, task_id, data, run_after=run_after,
                                life_span=life_span)

    def fill_nowait(
        self,
        task_type: TaskType,
        task_id: str,
        data: Any = None,
        *,
        run_after: float | None = None,
        life_span: float | None = None,
    ) -> Task:
        """``fill`` without the coroutine: for callers already on the loop."""
        return self._fill(task_type, task_id, data, run_after, life_span, False)

    def fill_validated(self, task_type: TaskType, task_id: str, data: Any, run_after: float,
                       life_span: float) -> Task:
        """``fill_nowait`` for times already validated as by ``check_times``
        (``0 <= run_after < life_span``, finite), e.g. by the cluster layer
        for tasks arriving from a peer: they are not checked again."""
        return self._fill(task_type, task_id, data, run_after, life_span, True)

    def _fill(self, task_type: TaskType, task_id: str, data: Any, run_after: float | None,
              life_span: float | None, checked: bool) -> Task:
        loop = self._loop or self._bind()
        if self._closing:
            raise BucketClosedError(f"bucket {self.name!r} is closed")
        if type(task_id) is not str or not task_id:
            raise TypeError(f"task_id must be a non-empty str, got {task_id!r}")
        tasks = self._tasks
        if task_id in tasks:
            self._counts["rejected_duplicate"] += 1
            raise DuplicateTaskError(f"task {task_id!r} is already live in bucket {self.name!r}")
        if len(tasks) >= self._max:
            self._counts["rejected_full"] += 1
            raise BucketFullError(
                f"bucket {self.name!r} is full ({self._max} live tasks)")
        cfg = self.config
        ls = cfg.life_span
        now = loop.time()
        if task_type is _IMMEDIATE:
            if run_after:
                raise ValueError("run_after applies to TaskType.TIME_BOMB tasks only")
            if life_span is not None:
                ls = life_span if checked else check_times(life_span, 0.0)[0]
            task = Task(self, task_id, data, task_type, now, now + ls)
            tasks[task_id] = task
            self._counts["filled"] += 1
            task._runner = loop.create_task(self._run(task))
            return task
        if task_type is not TaskType.TIME_BOMB:
            raise TypeError(f"task_type must be a TaskType, got {task_type!r}")
        ra = cfg.run_after
        if checked and run_after is not None and life_span is not None:
            ls, ra = life_span, run_after
        elif run_after is not None or life_span is not None:
            ls, ra = check_times(ls if life_span is None else life_span,
                                 ra if run_after is None else run_after)
        task = Task(self, task_id, data, task_type, now + ra, now + ls)
        tasks[task_id] = task
        self._counts["filled"] += 1
        assert self._wheel is not None
        self._wheel.add(task)
        return task

    def _fire(self, task: Task) -> None:
        loop = self._loop
        assert loop is not None
        self.lateness.observe(loop.time() - task._run_at)
        task._runner = loop.create_task(self._run(task))

    # -- the lifecycle ---------------------------------------------------------

    async def _run(self, task: Task) -> None:
        # Cancelled before this line runs => the body never runs (drain won).
        if task.state is not _PENDING:
            return
        task.state = _RUNNING
        self._counts["started"] += 1
        timeout = asyncio.timeout_at(task._deadline)
        try:
            async with timeout:
                await self._execute(task)
        except asyncio.CancelledError:
            # drain() or rescue() set the state before cancelling us.
            if task.state is _RUNNING:
                raise  # cancelled from outside (loop shutdown): not ours to swallow
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self._after_stop(task)
            return
        except Exception as exc:
            if task.state is not _RUNNING:
                await self._after_stop(task)
            elif timeout.expired():
                task.state = TaskState.EXHAUSTED
                await self._end(task, "exhausted", self._on_exhausted)
            else:
                task.state = TaskState.FAILED
                await self._end(task, "failed", self._on_error, exc)
            return
        if task.state is not _RUNNING:
            await self._after_stop(task)  # on_execute swallowed a drain/rescue cancel
            return
        task.state = TaskState.FINISHED
        await self._end(task, "finished", self._on_finish)

    async def _after_stop(self, task: Task) -> None:
        if task.state is TaskState.RESCUED:
            await self._end(task, "rescued", self._on_panic)

    async def _end(
        self,
        task: Task,
        outcome: str,
        hook: Callable[..., Awaitable[None]] | None,
        *args: Any,
    ) -> None:
        """Count the outcome, run its hook (bounded), then free the slot."""
        self._counts[outcome] += 1
        if outcome != "finished":
            log.info("task %s event=%s node=%s bucket=%s task_id=%s", outcome, outcome,
                     self.node, self.name, task.id)
        try:
            if self.on_outcome is not None:
                self.on_outcome(task)
            if hook is not None:
                await self._call_hook(hook, task, *args)
        finally:
            self._release(task)

    async def _call_hook(
        self, hook: Callable[..., Awaitable[None]], task: Task, *args: Any
    ) -> None:
        name = getattr(hook, "__name__", "hook")
        timeout = asyncio.timeout(self.config.hook_timeout)
        try:
            async with timeout:
                await hook(task, *args)
        except Exception as exc:
            if timeout.expired():
                self._counts["hook_timeouts"] += 1
                log.error("hook timed out event=hook_timeout node=%s bucket=%s task_id=%s "
                          "hook=%s timeout=%.3gs", self.node, self.name, task.id, name,
                          self.config.hook_timeout)
            else:
                self._counts["hook_errors"] += 1
                log.error("hook raised event=hook_error node=%s bucket=%s task_id=%s hook=%s "
                          "error=%r", self.node, self.name, task.id, name, exc, exc_info=exc)

    def _release(self, task: Task) -> None:
        if self._tasks.get(task.id) is task:
            self._remove(task.id)

    def _remove(self, task_id: str) -> None:
        del self._tasks[task_id]
        if not self._tasks and self._idle is not None:
            if not self._idle.done():
                self._idle.set_result(None)
            self._idle = None

    async def join(self) -> None:
        """Wait until the bucket holds no live task (every task has reached
        its outcome and its terminal hook has returned)."""
        if not self._tasks:
            return
        if self._idle is None:
            self._idle = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._idle)

    # -- drain / reschedule / take -------------------------------------------

    async def drain(self, task_id: str) -> DrainResult:
        """Cancel a task. No hook runs (GoBucket parity); the slot is freed at once.

        DRAINED: it had not started and never will. CANCELLED: ``on_execute``
        was running and has been cancelled. NOT_FOUND: unknown, or already
        finished (or in its terminal hook).
        """
        return DrainResult(self.drain_nowait(task_id), task_id)

    def drain_nowait(self, task_id: str) -> DrainOutcome:
        """``drain`` without the coroutine; returns the outcome only."""
        task = self._tasks.get(task_id)
        if task is None:
            return DrainOutcome.NOT_FOUND
        state = task.state
        if state is _PENDING:
            task.state = TaskState.DRAINED
            self._remove(task_id)
            self._counts["drained"] += 1
            if task._runner is not None:
                task._runner.cancel()  # not started yet: its body will never run
            elif self._wheel is not None:
                self._wheel.discard(task)
            self._notify(task)
            return DrainOutcome.DRAINED
        if state is _RUNNING:
            task.state = TaskState.CANCELLED
            self._remove(task_id)
            self._counts["cancelled"] += 1
            assert task._runner is not None
            task._runner.cancel()
            self._notify(task)
            return DrainOutcome.CANCELLED
        return DrainOutcome.NOT_FOUND

    def _notify(self, task: Task) -> None:
        log.info("task %s event=%s node=%s bucket=%s task_id=%s", task.state.value,
                 task.state.value, self.node, self.name, task.id)
        if self.on_outcome is not None:
            try:
                self.on_outcome(task)
            except Exception:
                log.exception("on_outcome callback failed")

    async def reschedule(self, task_id: str, run_after: float) -> bool:
        """Move a pending time-bomb to fire ``run_after`` seconds from now.

        The lifespan moves by the same amount (a watchdog: "push my backup job
        30 s further"). Returns False if the task is not a pending time-bomb.
        """
        task = self._tasks.get(task_id)
        if (task is None or task.state is not _PENDING or task._runner is not None
                or task.type is not TaskType.TIME_BOMB):
            return False
        delay = check_delay("run_after", run_after)
        now = self.loop_time()
        remaining_life = task._deadline - task._run_at
        old = task._run_at
        task._run_at = now + delay
        task._deadline = task._run_at + remaining_life
        assert self._wheel is not None
        self._wheel.moved(task, old)
        return True

    def take_pending(self, task_id: str) -> Task | None:
        """Remove a pending task without running it and return it, for a
        handoff to another node. Its state becomes HANDED_OFF; call
        :meth:`handed_off` once a peer has it, or :meth:`restore` if none took it."""
        task = self._tasks.get(task_id)
        if task is None or task.state is not _PENDING:
            return None
        task.state = TaskState.HANDED_OFF
        self._remove(task_id)
        if task._runner is not None:
            task._runner.cancel()
        elif self._wheel is not None:
            self._wheel.discard(task)
        return task

    def handed_off(self, task: Task) -> None:
        """Record that a task taken by :meth:`take_pending` now lives on a
        peer: count it and report the outcome (``on_outcome``, the log)."""
        self._counts["handed_off"] += 1
        self._notify(task)

    def restore(self, task: Task) -> None:
        """Put back a task taken by :meth:`take_pending` (its handoff failed),
        with its original times. It runs here, or is rescued on close."""
        if task._owner is not self or task.state is not TaskState.HANDED_OFF:
            raise ValueError(f"task {task.id!r} was not taken from bucket {self.name!r}")
        if task.id in self._tasks:
            raise DuplicateTaskError(f"task {task.id!r} is already live in bucket {self.name!r}")
        loop = self._loop or self._bind()
        task.state = _PENDING
        task._runner = None
        self._tasks[task.id] = task
        if task.type is _IMMEDIATE:
            task._runner = loop.create_task(self._run(task))
        else:
            assert self._wheel is not None
            self._wheel.add(task)

    # -- rescue / close --------------------------------------------------------

    async def rescue(self) -> int:
        """Cancel every live task (pending or running) and await ``on_panic``
        for each. Returns how many. Tasks already in their terminal hook keep
        their outcome and are not counted. Never deadlocks: each ``on_panic``
        is bounded by ``hook_timeout``."""
        direct: list[Task] = []
        runners: list[asyncio.Task[None]] = []
        for task in list(self._tasks.values()):
            if task.state is _PENDING:
                task.state = TaskState.RESCUED
                if task._runner is not None:
                    task._runner.cancel()
                elif self._wheel is not None:
                    self._wheel.discard(task)
                direct.append(task)
            elif task.state is _RUNNING:
                task.state = TaskState.RESCUED
                assert task._runner is not None
                task._runner.cancel()
                runners.append(task._runner)
        waits: list[Awaitable[Any]] = [self._end(t, "rescued", self._on_panic) for t in direct]
        if runners:
            waits.append(asyncio.wait(runners))
        if waits:
            await asyncio.gather(*waits)
        return len(direct) + len(runners)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, wait up to ``grace`` seconds for running tasks,
        then rescue the rest (``on_panic``). Idempotent."""
        if self._closed:
            return
        self._closing = True
        # Started or about to start (immediate, or fired): give them the grace.
        running = [t._runner for t in self._tasks.values() if t._runner is not None]
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        await self.rescue()
        rest = [t._runner for t in self._tasks.values() if t._runner is not None]
        if rest:  # tasks in their terminal hook, bounded by hook_timeout
            await asyncio.wait(rest)
        if self._wheel is not None:
            self._wheel.close()
        self._closed = True

    async def __aenter__(self) -> TaskBucket:
        return self

    async def __aexit__(self, *exc_info: object) -> Literal[False]:
        await self.close()
        return False
