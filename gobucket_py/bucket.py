"""TaskBucket: a bounded map of tasks and their lifecycle on one event loop.

Admission is atomic: ``fill`` does its checks and its insert with no ``await``
in between, so concurrent fills can never overshoot ``max_bucket`` or accept a
duplicate id (GoBucket bug 1). Pending time-bombs live in one
:class:`~gobucket_py.timers.TimerWheel`; an asyncio task is only created when a
task runs.

Outcome records: when a task leaves the bucket (finished, failed, exhausted,
drained, cancelled, rescued, handed off), ``task id -> TaskState`` is kept so
that a retried ``drain`` (and :meth:`TaskBucket.ended`) says how it ended. Two
generations of plain dicts (current, old): a loop timer, armed only while
records exist, rotates them every ``outcome_retention / 2`` (old = current,
current = {}), and current rotates early when it reaches ``max_outcomes / 2``,
so a record lives ``retention / 2`` to ``retention`` seconds and at most
``max_outcomes`` are held. A record is one dict entry whose value is an enum
singleton: **31 to 62 bytes per record** without the id string, depending on
where the dict is in its growth (tracemalloc: 31 B at 999,999 records over two
generations; 62 B at 1,000,000 in one, ``make bench``), plus 61 B for a
12-character id such as ``"order-123456"`` that only the record keeps alive.
The default ``max_outcomes=1_000_000`` thus bounds records to about 31-62 MB
(90-120 MB with such ids) per bucket. On the hot path it is one dict store
and one comparison.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

from .config import BucketConfig, check_delay, check_times
from .deadlines import Deadlines
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
_SLICE = TimerWheel.SLICE
_DRAINED = TaskState.DRAINED
#: Outcome records hold a state's str value (see TaskBucket.__init__).
_STATE_OF: dict[str, TaskState] = {state._value_: state for state in TaskState}
_DRAINED_RECORD: str = _DRAINED._value_
_CANCELLED = TaskState.CANCELLED
_NOT_FOUND = DrainOutcome.NOT_FOUND
_DRAINED_ANSWER = DrainOutcome.DRAINED
_INFO = logging.INFO
_DEBUG = logging.DEBUG
#: Longest wait between the checks a waiting join() makes for tasks nothing
#: else would end (see TaskBucket.join).
_REAP_EVERY = 10.0
#: Outcomes logged per task at DEBUG only, and counted at INFO (see _log_outcome).
_QUIET = frozenset({"drained", "cancelled", "handed_off"})
#: Seconds between two ``event=tasks_ended`` summary lines of one bucket.
SUMMARY_EVERY = 10.0
#: Pending time-bombs that nobody else refers to are made cold (see
#: ``TaskBucket._freeze``) at the end of the loop pass of their fill, if due
#: more than COOL_HORIZON later; those someone held then, by a sweep one to
#: two COOL_EVERY seconds later, in steps of about COOL_STEP tasks.
COOL_EVERY = 1.0
COOL_HORIZON = 2.0
COOL_STEP = 1000
#: Cold tasks and outcome records are kept in this many dicts, by the hash of
#: their id (see TaskBucket.__init__).
COLD_SHARDS = 256
_SHARD = COLD_SHARDS - 1
_pack = struct.Struct("3d").pack  # a cold task's loop times: filled, run_at, life
_unpack = struct.Struct("3d").unpack


def _shards() -> list[dict[str, Any]]:
    """An empty set of COLD_SHARDS dicts."""
    return [{} for _ in range(COLD_SHARDS)]

#: What ``drain`` answers for a task that already ended (or is in its terminal
#: hook), by its terminal state. HANDED_OFF is absent: from this bucket's view
#: the task is gone (the cluster layer follows handoffs itself): NOT_FOUND.
_DRAIN_ANSWER: dict[TaskState, DrainOutcome] = {
    TaskState.DRAINED: DrainOutcome.DRAINED,
    TaskState.CANCELLED: DrainOutcome.CANCELLED,
    TaskState.FINISHED: DrainOutcome.FINISHED,
    TaskState.FAILED: DrainOutcome.FAILED,
    TaskState.EXHAUSTED: DrainOutcome.EXHAUSTED,
    TaskState.RESCUED: DrainOutcome.RESCUED,
}
#: The same mapping, for the cluster layer's answers about ended tasks.
DRAIN_ANSWER = _DRAIN_ANSWER

#: Raised by a hook, these end the bucket's loop run (asyncio re-raises them
#: out of the loop), so ``rescue()`` holds them until every task is rescued.
_FATAL = (KeyboardInterrupt, SystemExit)

#: Counter names reported by :meth:`TaskBucket.stats`.
STAT_NAMES = ("filled", "started", "rejected_full", "rejected_duplicate", "finished", "failed",
              "exhausted", "drained", "cancelled", "rescued", "handed_off", "hook_errors",
              "hook_timeouts")


def _name(hook: Callable[..., Awaitable[None]]) -> str:
    return getattr(hook, "__name__", "hook")


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
        # Live tasks by id, as Tasks; and the cold ones (see _freeze), packed
        # into bytes, in COLD_SHARDS dicts by hash of the id: a dict that keeps
        # its size under churn is rebuilt whole now and then, which at 800,000
        # entries held the loop for ~40 ms; a shard's rebuild is 1/256 of that.
        self._tasks: dict[str, Task] = {}
        self._cold: list[dict[str, bytes]] = _shards()
        self._cold_n = 0  # cold tasks in all shards
        self._cold_data: dict[str, Any] = {}  # the data of cold tasks that have some
        self._cool_timer: asyncio.Handle | None = None
        self._young_soon = False  # _cool_young is queued for this loop pass
        # Immediate tasks get their runner at once, up to SLICE in a loop
        # pass; past that (a burst) they wait here, in order, and get it
        # SLICE a pass (see _start_ready). _started: runners made this pass;
        # _ready_soon: _start_ready is queued.
        self._ready: deque[Task] = deque()
        self._started = 0
        self._ready_soon = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wheel: TimerWheel | None = None
        self._deadlines: Deadlines | None = None  # of running tasks
        self._closing = False
        self._closed = False
        self._max = config.max_bucket
        self._counts = dict.fromkeys(STAT_NAMES, 0)
        # Drained/cancelled/handed-off since the last summary line, and when
        # the next one may be written (see _log_outcome).
        self._quiet: dict[str, int] = {}
        self._summary_at = 0.0
        self._idle: asyncio.Future[None] | None = None  # set by join()
        # Outcome records: task id -> terminal state, in two generations
        # (see the module docstring). None when disabled.
        half = (config.max_outcomes + 1) // 2
        on = config.outcome_retention > 0 and half > 0
        # Each generation is COLD_SHARDS dicts by hash of the id, for the
        # reason the cold tasks are: no rebuild or free of half a million
        # entries at once (see _rotate_records, _free_records). A record is
        # the state's plain str value, not the TaskState member: a member is
        # an object the garbage collector tracks, so a dict of them is
        # visited entry by entry in every full pass (~15 ms at a million
        # here), where a dict of strs is left out once a pass has seen it.
        self._records: list[dict[str, str]] | None = _shards() if on else None
        self._records_old: list[dict[str, str]] = _shards()
        self._records_n = self._records_old_n = 0  # records in each generation
        self._records_dying: list[dict[str, str]] = []  # forgotten, freed a bit a pass
        self._records_half = half  # rotate early when current holds this many
        self._records_timer: asyncio.TimerHandle | None = None  # armed while records exist
        # _records_due() runs when current holds this many: 1 while the timer
        # is not armed (to arm it), else _records_half (to rotate early). One
        # comparison per ended task.
        self._records_trigger = 1
        self._fatal: list[BaseException] = []  # KeyboardInterrupt/SystemExit held by rescue()
        # Runners that did not end when cancelled (waited for once, not again).
        self._stuck: set[asyncio.Task[None]] = set()
        #: Called with each task as it reaches a terminal state (used by the
        #: cluster layer and metrics). Must not block.
        self.on_outcome: Callable[[Task], None] | None = None
        # The cluster layer's own outcome watcher (see add_outcome_watcher).
        self._watcher: Callable[[Task], None] | None = None
        #: How late time-bombs fire (seconds after their due time).
        self.lateness = Histogram()
        #: Node id in log lines; set by :class:`~gobucket_py.TaskBucketGroup`.
        self.node = "-"
        # With replicas (cluster layer): awaited before a time-bomb's
        # on_execute; False means another node took the task over.
        self._gate: Callable[[Task], Awaitable[bool]] | None = None
        # With replicas: told of each reschedule, so the backups move too.
        self._moved: Callable[[Task, float], None] | None = None
        #: Live tasks that a backup recovered after their holder died:
        #: task id -> how late they were (seconds past due) when recovered.
        self.recovered: dict[str, float] = {}

    # -- introspection -------------------------------------------------------

    def __len__(self) -> int:
        """Live tasks: pending, running, or in their terminal hook."""
        return len(self._tasks) + self._cold_n

    def __contains__(self, task_id: object) -> bool:
        return (task_id in self._tasks
                or (self._cold_n > 0 and task_id in self._cold[hash(task_id) & _SHARD]))

    def __iter__(self) -> Iterator[Task]:
        for shard in self._cold:
            for task_id in list(shard):
                self._thaw(task_id)
        return iter(list(self._tasks.values()))

    def __repr__(self) -> str:
        return f"<TaskBucket {self.name!r} {len(self)}/{self._max}>"

    @property
    def free(self) -> int:
        """Free slots: ``max_bucket - len(bucket)``; 0 once closing."""
        return 0 if self._closing else self._max - len(self._tasks) - self._cold_n

    @property
    def closed(self) -> bool:
        """True once ``close()`` has started."""
        return self._closing

    def fits(self, task_id: object) -> bool:
        """``free > 0 or task_id in bucket``: would a fill of ``task_id`` here
        be answered here (filled, or refused as a duplicate) rather than
        refused for want of room? One call, for the path of every fill."""
        return ((not self._closing and self._max - len(self._tasks) - self._cold_n > 0)
                or task_id in self._tasks
                or (self._cold_n > 0 and task_id in self._cold[hash(task_id) & _SHARD]))

    def get(self, task_id: str) -> Task | None:
        """The live task with that id, or None."""
        task = self._tasks.get(task_id)
        if task is None and self._cold_n and task_id in self._cold[hash(task_id) & _SHARD]:
            return self._thaw(task_id)
        return task

    # -- cold pending tasks ----------------------------------------------------
    #
    # A full pass of Python's garbage collector visits every tracked object,
    # and a Task is one: with 800,000 pending it took ~180 ms, during which
    # nothing fired. A pending time-bomb that nobody but the bucket refers to
    # (the caller dropped what fill returned) is therefore kept as 24 bytes
    # (its three loop times) in a dict of bytes, which the collector stops
    # tracking as a whole, and its id in a wheel slot that becomes a tuple of
    # ids (untracked too): from the end of its fill's loop pass (or a sweep
    # a second or two later, if its filler held it then) until it is due,
    # or until someone asks for it (get, iteration, drain, reschedule,
    # handoff, rescue). Made cold at once, it never reaches the collector's
    # oldest generation, whose growth is what triggers a full pass. Its Task
    # is made again then; as nobody held the old one, nobody can tell.

    def _freeze(self, task: Task) -> bool:
        """Keep ``task`` (pending, referred to by nobody else) cold; False
        (nothing changed) if it is not this bucket's live task."""
        tasks = self._tasks
        task_id = task.id
        if tasks.get(task_id) is not task:
            return False
        del tasks[task_id]
        self._cold[hash(task_id) & _SHARD][task_id] = _pack(task._filled, task._run_at,
                                                            task._life)
        self._cold_n += 1
        if task.data is not None:
            self._cold_data[task_id] = task.data
        return True

    def _thaw(self, task_id: str) -> Task:
        """The Task of a cold task again (live from now on, as before)."""
        filled, run_at, life = _unpack(self._cold[hash(task_id) & _SHARD].pop(task_id))
        self._cold_n -= 1
        task = Task(self, task_id, self._cold_data.pop(task_id, None), TaskType.TIME_BOMB,
                    filled, run_at, life)
        self._tasks[task_id] = task
        return task

    def _peek(self, task_id: str) -> Task | float | None:
        """For the wheel: the live Task, or the run_at of a cold task, or None."""
        task = self._tasks.get(task_id)
        if task is not None:
            return task
        packed = self._cold[hash(task_id) & _SHARD].get(task_id)
        return None if packed is None else _unpack(packed)[1]

    def _cool_young(self) -> None:
        self._young_soon = False
        wheel, loop = self._wheel, self._loop
        if wheel is None or loop is None or self._closing:
            return
        if wheel.cool_young(self._freeze, loop.time() + COOL_HORIZON, COOL_STEP):
            self._young_soon_after(loop)  # more: in the next pass
        elif self._cool_timer is None and wheel.warming():
            self._cool_timer = loop.call_later(COOL_EVERY, self._cool)

    def _cool(self) -> None:
        self._cool_timer = None
        wheel, loop = self._wheel, self._loop
        if wheel is None or loop is None or self._closing:
            return
        if wheel.cool(self._freeze, loop.time() + COOL_HORIZON, COOL_STEP):
            self._cool_timer = loop.call_soon(self._cool)  # the sweep goes on
        elif wheel.warming():
            self._cool_timer = loop.call_later(COOL_EVERY, self._cool)

    def ended(self, task_id: str) -> TaskState | None:
        """How the task with that id ended here, if it did recently.

        The terminal state (FINISHED, FAILED, EXHAUSTED, DRAINED, CANCELLED,
        RESCUED or HANDED_OFF) of the last task with that id that left this
        bucket, remembered for ``outcome_retention / 2`` to
        ``outcome_retention`` seconds and at most ``max_outcomes`` records
        (past that the oldest are forgotten early). None when a task with that
        id is live (pending, running or in its terminal hook: see
        :meth:`get`), when none ended here within the retention, or when
        records are disabled (``outcome_retention=0`` or ``max_outcomes=0``).
        """
        if task_id in self:
            return None
        return self._record(task_id)

    def _record(self, task_id: str) -> TaskState | None:
        records = self._records
        if records is None:
            return None
        h = hash(task_id) & _SHARD
        state = records[h].get(task_id) or self._records_old[h].get(task_id)
        return None if state is None else _STATE_OF[state]

    def stats(self) -> dict[str, int]:
        """Counters since creation: fills, rejections, one per terminal
        outcome, hook errors and hook timeouts, plus ``live`` (every task
        not ended), ``pending`` (time-bombs waiting to fire; an immediate
        task waits a loop pass at most) and ``outcome_records`` (records of
        ended tasks held for :meth:`ended` and ``drain``)."""
        out = dict(self._counts)
        out["live"] = len(self)
        out["pending"] = len(self._wheel) if self._wheel is not None else 0
        records = self._records
        out["outcome_records"] = (0 if records is None
                                  else self._records_n + self._records_old_n)
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
        self._wheel = TimerWheel(loop, self._fire, peek=self._peek, thaw=self._thaw)
        self._deadlines = Deadlines(loop)
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
                       life_span: float, *, over: bool = False) -> Task:
        """Internal, for the cluster layer.

        ``fill_nowait`` for times already validated as by ``check_times``
        (``0 <= run_after < life_span``, finite), e.g. by the cluster layer
        for tasks arriving from a peer: they are not checked again. ``over``
        admits it even when the bucket is full (a backup taking over a task
        whose holder died: it was admitted once already)."""
        return self._fill(task_type, task_id, data, run_after, life_span, True, over)

    def fills_cold(self, run_after: float) -> bool:
        """Internal, for the cluster layer.

        Whether :meth:`fill_cold` takes time-bombs due in ``run_after``
        seconds: due later than ``COOL_HORIZON``, and the bucket open."""
        if self._wheel is None:
            self._bind()
        assert self._wheel is not None
        return not self._closing and run_after > COOL_HORIZON + 2 * self._wheel.resolution

    def fill_cold(self, task_ids: list[str], data: Sequence[Any], run_after: float,
                  life_span: float, start: int = 0) -> int:
        """Internal, for the cluster layer.

        Fill the time-bombs ``task_ids[start:]``
        (with ``data``, one per id; times validated as for
        :meth:`fill_validated`) straight into cold storage, as a fill would
        once its loop pass ends (see ``_freeze``): no Task is made until one
        is due or asked for. Stops at the first that must go through
        :meth:`fill_validated` instead (a duplicate, the bucket full, or an
        id that is not a non-empty str) and returns its index
        (``len(task_ids)`` when all went in). Takes none unless
        :meth:`fills_cold`."""
        room = min(len(task_ids) - start, self.free)
        if room <= 0 or not self.fills_cold(run_after):  # (which binds the loop)
            return start
        loop, wheel = self._loop, self._wheel
        assert loop is not None and wheel is not None
        now = loop.time()
        run_at = now + run_after
        tasks, cold, cold_data = self._tasks, self._cold, self._cold_data
        packed = _pack(now, run_at, life_span)  # (bytes: one object for all of them)
        taken: list[str] = []
        take = taken.append
        end = start + room
        index = start
        while index < end:
            task_id = task_ids[index]
            if type(task_id) is not str or not task_id:
                break  # (fill_validated says what is wrong with it)
            shard = cold[hash(task_id) & _SHARD]
            if task_id in tasks or task_id in shard:
                break
            shard[task_id] = packed
            value = data[index]
            if value is not None:
                cold_data[task_id] = value
            take(task_id)
            index += 1
        if taken:
            self._cold_n += len(taken)
            self._counts["filled"] += len(taken)
            wheel.add_cold(run_at, taken)
        return index

    def _fill(self, task_type: TaskType, task_id: str, data: Any, run_after: float | None,
              life_span: float | None, checked: bool, over: bool = False) -> Task:
        loop = self._loop or self._bind()
        if self._closing:
            raise BucketClosedError(f"bucket {self.name!r} is closed")
        if type(task_id) is not str or not task_id:
            raise TypeError(f"task_id must be a non-empty str, got {task_id!r}")
        tasks = self._tasks
        if task_id in tasks or (self._cold_n and task_id in self._cold[hash(task_id) & _SHARD]):
            self._counts["rejected_duplicate"] += 1
            raise DuplicateTaskError(f"task {task_id!r} is already live in bucket {self.name!r}")
        if len(tasks) + self._cold_n >= self._max and not over:
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
            task = Task(self, task_id, data, task_type, now, now, ls)
            tasks[task_id] = task
            self._counts["filled"] += 1
            if self._started < _SLICE and not self._ready:
                self._started += 1
                task._runner = loop.create_task(self._run(task))
            else:
                self._ready.append(task)
            if not self._ready_soon:
                self._ready_soon = True
                loop.call_soon(self._start_ready)
            return task
        if task_type is not TaskType.TIME_BOMB:
            raise TypeError(f"task_type must be a TaskType, got {task_type!r}")
        ra = cfg.run_after
        if checked and run_after is not None and life_span is not None:
            ls, ra = life_span, run_after
        elif run_after is not None or life_span is not None:
            ls, ra = check_times(ls if life_span is None else life_span,
                                 ra if run_after is None else run_after)
        task = Task(self, task_id, data, task_type, now, now + ra, ls)
        tasks[task_id] = task
        self._counts["filled"] += 1
        assert self._wheel is not None
        self._wheel.add(task)
        if not self._young_soon:  # (_young_soon_after, inlined: every fill passes here)
            self._young_soon = True
            loop.call_soon(self._cool_young)
        return task

    def _young_soon_after(self, loop: asyncio.AbstractEventLoop) -> None:
        """A Task entry went into the wheel: try to make it cold at the end
        of this loop pass."""
        if not self._young_soon:
            self._young_soon = True
            loop.call_soon(self._cool_young)

    def _start_ready(self) -> None:
        """A new loop pass: give runners to the next SLICE immediate tasks
        that wait (they take their first step in the next pass, in fill
        order). A waiting task holds no asyncio task, coroutine, context or
        handle: a burst of 100,000 fills is 100,000 objects for the garbage
        collector to walk, not 500,000."""
        ready, loop = self._ready, self._loop
        assert loop is not None
        count = min(len(ready), _SLICE)
        self._started = count
        now = loop.time()
        for _ in range(count):
            task = ready.popleft()
            if task.state is _PENDING and task._runner is None:  # (not drained meanwhile)
                task._runner = loop.create_task(
                    self._run(task) if task._deadline > now else self._run_out(task))
        if ready or count:  # (count: a new pass must reset _started)
            loop.call_soon(self._start_ready)
        else:
            self._ready_soon = False

    def _unschedule(self, task: Task) -> None:
        """A pending task will not run: cancel its runner if it has one,
        else take it off the wheel (a time-bomb) or leave it to be skipped
        (an immediate not started yet: its state is no longer PENDING)."""
        if task._runner is not None:
            task._runner.cancel()  # not started yet: its body will never run
        elif task.type is TaskType.TIME_BOMB and self._wheel is not None:
            self._wheel.discard(task)

    def _fire(self, task: Task) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self.lateness.observe(now - task._run_at)
        if now >= task._deadline and self._gate is None:  # (a gate decides it, see _pass_gate)
            task._runner = loop.create_task(self._run_out(task))
        else:
            task._runner = loop.create_task(self._run(task))

    async def _run_out(self, task: Task) -> None:
        """A task whose lifespan ran out before it could start (the loop was
        held up, or its clock stepped): EXHAUSTED, without running."""
        if task.state is _PENDING:
            task.state = TaskState.EXHAUSTED
            await self._end(task, "exhausted", self._on_exhausted)

    def _reap(self) -> None:
        """End, as CANCELLED, each pending task whose runner was cancelled
        from outside before its first step (all tasks are, as a loop shuts
        down): its coroutine never ran, so nothing else would end it."""
        for task in [t for t in self._tasks.values()
                     if t._runner is not None and t.state is _PENDING and t._runner.done()]:
            self._stop_now(task, TaskState.CANCELLED, "cancelled")

    async def _wait_runners(self, runners: list[asyncio.Task[None]], why: str) -> None:
        """Wait for cancelled runners to end (their terminal hook included,
        bounded by ``hook_timeout``), for twice ``hook_timeout`` at most: an
        ``on_execute`` or hook that swallows its CancelledError holds its
        slot until it returns (its outcome comes then), not the caller."""
        timeout = 2 * self.config.hook_timeout
        _, stuck = await asyncio.wait(runners, timeout=timeout)
        self._stuck = {r for r in self._stuck if not r.done()} | stuck
        if stuck:
            log.error("tasks did not end when cancelled (on_execute or a hook swallows "
                      "CancelledError?) event=cancel_ignored node=%s bucket=%s count=%d "
                      "during=%s waited=%.3gs", self.node, self.name, len(stuck), why,
                      timeout)

    # -- the lifecycle ---------------------------------------------------------

    async def _run(self, task: Task) -> None:
        # Cancelled before this line runs => the body never runs (drain won).
        if task.state is not _PENDING:
            return
        if self._gate is not None and task.type is TaskType.TIME_BOMB and not (
                await self._pass_gate(self._gate, task)):
            return
        task.state = _RUNNING
        self._counts["started"] += 1
        deadlines = self._deadlines
        assert deadlines is not None
        deadlines.start(task)
        try:
            await self._execute(task)
        except asyncio.CancelledError as exc:
            expired = deadlines.stop(task)
            current = asyncio.current_task()
            assert current is not None
            if task.state is _RUNNING:
                if expired and current.cancelling() == 0:  # its lifespan ran out
                    task.state = TaskState.EXHAUSTED
                    await self._end(task, "exhausted", self._on_exhausted)
                    return
                if current.cancelling() == 0:
                    # Nobody cancelled this runner: on_execute let out the
                    # CancelledError of something it awaited (a future another
                    # component cancelled). That is a failure of on_execute.
                    task.state = TaskState.FAILED
                    await self._end(task, "failed", self._on_error, exc)
                    return
                # Cancelled from outside (loop shutdown, someone cancelled the
                # runner): not ours to swallow, but the task still ends once.
                self._stop_now(task, TaskState.CANCELLED, "cancelled")
                raise
            # drain() or rescue() set the state before cancelling us.
            current.uncancel()
            await self._after_stop(task)
            return
        except BaseException as exc:
            expired = deadlines.stop(task)
            if task.state is TaskState.RESCUED:  # it raised on its way out
                await self._end_rescued(task)
                if isinstance(exc, _FATAL):
                    self._fatal.append(exc)  # see _end_rescued
            elif task.state is not _RUNNING:  # drained: it already ended
                if isinstance(exc, _FATAL):
                    raise
            elif isinstance(exc, _FATAL):
                # KeyboardInterrupt/SystemExit: end the task (no hook), then let it out.
                self._stop_now(task, TaskState.FAILED, "failed")
                raise
            elif expired:  # it raised once cancelled for its deadline
                task.state = TaskState.EXHAUSTED
                await self._end(task, "exhausted", self._on_exhausted)
            else:
                task.state = TaskState.FAILED
                await self._end(task, "failed", self._on_error, exc)
            return
        deadlines.stop(task)  # (a deadline's cancel it swallowed is taken back)
        if task.state is not _RUNNING:
            await self._after_stop(task)  # on_execute swallowed a drain/rescue cancel
            return
        task.state = TaskState.FINISHED
        if self._on_finish is None:  # the common case: no hook, end without a coroutine
            try:
                self._report(task, "finished")
            finally:
                self._release(task)
            return
        await self._end(task, "finished", self._on_finish)

    async def _pass_gate(self, gate: Callable[[Task], Awaitable[bool]], task: Task) -> bool:
        """Await the cluster's word before a replicated time-bomb runs; False
        if it must not run here (drained or rescued meanwhile, out of time,
        or taken over elsewhere), in which case it has ended.

        The word is awaited even past the task's deadline: until the backups
        answer, a backup may have taken the task over and run it, so
        EXHAUSTED here could be a second outcome. Only a gate that let it go
        makes a task that ran out of time EXHAUSTED."""
        try:
            go = await gate(task)
        except asyncio.CancelledError:
            if task.state is not _PENDING:
                return False  # drain() or rescue() ended it before cancelling us
            self._stop_now(task, TaskState.CANCELLED, "cancelled")
            raise
        if task.state is not _PENDING:
            return False
        if not go:  # a backup took it over while this node was cut off: it runs there
            self._stop_now(task, TaskState.HANDED_OFF, "handed_off")
            return False
        loop = self._loop
        assert loop is not None
        if loop.time() >= task._deadline:  # its lifespan ran out before it could start
            task.state = TaskState.EXHAUSTED
            await self._end(task, "exhausted", self._on_exhausted)
            return False
        return True

    def set_gate(self, gate: Callable[[Task], Awaitable[bool]] | None,
                 moved: Callable[[Task, float], None] | None = None) -> None:
        """Internal, for the cluster layer.

        Set the cluster layer's gate, and its watcher of reschedules (see
        :mod:`gobucket_py.cluster.replicas`): called with the task and its
        deadline before the reschedule."""
        self._gate = gate
        self._moved = moved

    async def _after_stop(self, task: Task) -> None:
        if task.state is TaskState.RESCUED:
            await self._end_rescued(task)

    async def _end_rescued(self, task: Task) -> None:
        try:
            await self._end(task, "rescued", self._on_panic)
        except _FATAL as exc:
            # Held for rescue(), which re-raises it once every task is rescued
            # (raised here, asyncio would stop the loop part-way through).
            self._fatal.append(exc)

    def _stop_now(self, task: Task, state: TaskState, outcome: str) -> None:
        """End a task at once, without its hook: count, free the slot, notify."""
        task.state = state
        self._counts[outcome] += 1
        self._release(task)
        self._notify(task)

    async def _end(
        self,
        task: Task,
        outcome: str,
        hook: Callable[..., Awaitable[None]] | None,
        *args: Any,
    ) -> None:
        """Count the outcome, run its hook (bounded), then free the slot."""
        try:
            self._report(task, outcome)
            if hook is not None:
                await self._call_hook(hook, task, *args)
        finally:
            self._release(task)

    def _report(self, task: Task, outcome: str) -> None:
        """Count the outcome and report it (log, watcher, ``on_outcome``)."""
        self._counts[outcome] += 1
        if outcome != "finished":
            self._log_outcome(task, outcome)
        if self._watcher is not None:
            self._watcher(task)
        if self.on_outcome is not None:
            try:
                self.on_outcome(task)
            except Exception:
                log.exception("on_outcome callback failed event=callback_error node=%s "
                              "bucket=%s task_id=%s", self.node, self.name, task.id)

    async def _call_hook(
        self, hook: Callable[..., Awaitable[None]], task: Task, *args: Any
    ) -> None:
        timeout = asyncio.timeout(self.config.hook_timeout)
        try:
            async with timeout:
                await hook(task, *args)
        except Exception as exc:
            if timeout.expired():
                self._counts["hook_timeouts"] += 1
                log.error("hook timed out event=hook_timeout node=%s bucket=%s task_id=%s "
                          "hook=%s timeout=%.3gs", self.node, self.name, task.id,
                          _name(hook), self.config.hook_timeout)
            else:
                self._hook_error(hook, task, exc)
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # a real cancel from outside: let it through
            self._hook_error(hook, task, exc)  # the hook's own CancelledError
        except _FATAL as exc:
            self._hook_error(hook, task, exc)
            raise
        except BaseException as exc:  # a custom BaseException subclass
            self._hook_error(hook, task, exc)

    def _hook_error(self, hook: Callable[..., Awaitable[None]], task: Task,
                    exc: BaseException) -> None:
        self._counts["hook_errors"] += 1
        log.error("hook raised event=hook_error node=%s bucket=%s task_id=%s hook=%s "
                  "error=%r", self.node, self.name, task.id, _name(hook), exc, exc_info=exc)

    def _release(self, task: Task) -> None:
        if self._tasks.get(task.id) is task:
            self._remove(task)

    def _remove(self, task: Task) -> None:
        """Free the slot of a task that reached a terminal state; record it."""
        task_id = task.id
        tasks = self._tasks
        del tasks[task_id]
        if self.recovered:
            self.recovered.pop(task_id, None)
        records = self._records
        if records is not None:
            shard = records[hash(task_id) & _SHARD]
            had = len(shard)
            shard[task_id] = task.state._value_  # (see __init__: a str, untracked)
            self._records_n += len(shard) - had
            if self._records_n >= self._records_trigger:
                self._records_due()
        if not tasks and not self._cold_n and self._idle is not None:
            if not self._idle.done():
                self._idle.set_result(None)
            self._idle = None

    def _records_due(self) -> None:
        """Arm the rotation timer, or rotate early when the current generation is full."""
        assert self._records is not None and self._loop is not None
        if self._records_n >= self._records_half:
            self._rotate_records()
        elif self._records_timer is None:
            self._records_timer = self._loop.call_later(self.config.outcome_retention / 2,
                                                        self._rotate_records)
            self._records_trigger = self._records_half

    def _rotate_records(self) -> None:
        """Forget the old generation; the current one becomes old. Armed again
        (for another ``retention / 2``) only while records remain."""
        if self._records_timer is not None:
            self._records_timer.cancel()
            self._records_timer = None
        old = self._records
        assert old is not None and self._loop is not None
        if not self._records_dying and self._records_old_n:
            self._loop.call_soon(self._free_records)
        if self._records_old_n:
            self._records_dying.extend(self._records_old)
        self._records_old, self._records_old_n = old, self._records_n
        self._records, self._records_n = _shards(), 0
        if self._records_old_n:
            self._records_timer = self._loop.call_later(self.config.outcome_retention / 2,
                                                        self._rotate_records)
            self._records_trigger = self._records_half
        else:
            self._records_trigger = 1  # no records left: the next one arms the timer

    def _free_records(self) -> None:
        """Free forgotten records a few shards a loop pass (half a million at
        once held the loop for ~10 ms)."""
        dying = self._records_dying
        del dying[-8:]
        if dying and self._loop is not None:
            self._loop.call_soon(self._free_records)

    async def join(self) -> None:
        """Wait until the bucket holds no live task (every task has reached
        its outcome and its terminal hook has returned).

        A task whose runner something else cancelled before its first step
        (it would never end by itself) is ended CANCELLED here: at once, or
        while waiting, within 1 s at first and 10 s at most (the check looks
        at every task, so it is not made on each task's way)."""
        self._reap()
        if not self._tasks and not self._cold_n:
            return
        if self._idle is None:
            self._idle = asyncio.get_running_loop().create_future()
        idle, every = self._idle, 1.0
        while not idle.done():
            await asyncio.wait([idle], timeout=every)  # never cancels it
            self._reap()
            every = min(2 * every, _REAP_EVERY)

    # -- drain / reschedule / take -------------------------------------------

    async def drain(self, task_id: str) -> DrainResult:
        """Cancel a task. No hook runs (GoBucket parity); the slot is freed at once.

        A live task: DRAINED if it had not started (it never will), CANCELLED
        if ``on_execute`` was running (it has been cancelled).

        A task that already reached its outcome answers how it ended:
        FINISHED, FAILED, EXHAUSTED or RESCUED (nothing to stop), or DRAINED /
        CANCELLED if an earlier drain stopped it. This holds while the task
        is in its terminal hook and, once it has left the bucket, for
        ``outcome_retention`` (see :meth:`ended`). NOT_FOUND: never filled
        here, handed off to a peer, or ended longer ago than that.

        Changed from GoBucket (and from earlier versions, which answered
        NOT_FOUND for every task that was not live): a retried drain whose
        first attempt was applied (its reply lost) answers DRAINED again,
        and a drain that comes after the task ran learns that it did, instead
        of a NOT_FOUND that cannot be told from "never existed".
        ``bool(result)`` is True only when a drain stopped the task.
        """
        return DrainResult(self.drain_nowait(task_id), task_id)

    def drain_nowait(self, task_id: str) -> DrainOutcome:
        """``drain`` without the coroutine; returns the outcome only."""
        task = self.get(task_id)
        if task is None:
            state = self._record(task_id)
            return _NOT_FOUND if state is None else _DRAIN_ANSWER.get(state, _NOT_FOUND)
        state = task.state
        if state is _PENDING:
            task.state = _DRAINED
            self._remove(task)
            self._counts["drained"] += 1
            self._unschedule(task)
            self._notify(task)
            return DrainOutcome.DRAINED
        if state is _RUNNING:
            task.state = _CANCELLED
            self._remove(task)
            self._counts["cancelled"] += 1
            assert task._runner is not None
            task._runner.cancel()
            self._notify(task)
            return DrainOutcome.CANCELLED
        return _DRAIN_ANSWER.get(state, _NOT_FOUND)  # in its terminal hook

    def drain_many_nowait(self, task_ids: Iterable[str]) -> list[DrainOutcome]:
        """``drain_nowait`` for many tasks at once: the outcome of each, in
        order, exactly as one ``drain_nowait`` per id would give (the same
        records, counters, hooks, watchers and log lines). The fastest way to
        cancel many pending tasks (BENCHMARKS.md has the rate)."""
        out: list[DrainOutcome] = []
        append = out.append
        tasks = self._tasks
        cold = self._cold
        wheel = self._wheel
        records = self._records
        # The inlined path below is for pending time-bombs with nobody
        # watching; anything else goes through drain_nowait.
        inline = (wheel is not None and not self.recovered and not log.isEnabledFor(_DEBUG)
                  and self._watcher is None and self.on_outcome is None)
        drained = 0
        discarded = 0  # wheel entries gone stale, told to the wheel in one go
        try:
            for task_id in task_ids:
                task = tasks.get(task_id)
                if task is not None:
                    if (not inline or task.state is not _PENDING
                            or task._runner is not None or task.type is _IMMEDIATE):
                        # (none of these touches the wheel, so its count may lag)
                        append(self.drain_nowait(task_id))  # the general path
                        continue
                    task.state = _DRAINED
                    del tasks[task_id]
                elif (inline and self._cold_n
                      and task_id in (shard := cold[hash(task_id) & _SHARD])):
                    del shard[task_id]  # cold: pending, not started, no Task to mark
                    self._cold_n -= 1
                    if self._cold_data:
                        self._cold_data.pop(task_id, None)
                else:
                    append(self.drain_nowait(task_id))
                    continue
                if records is not None:
                    kept = records[hash(task_id) & _SHARD]
                    had = len(kept)
                    kept[task_id] = _DRAINED_RECORD
                    self._records_n += len(kept) - had
                    if self._records_n >= self._records_trigger:
                        self._records_due()
                        records = self._records  # rotated: a new generation
                drained += 1
                discarded += 1
                append(_DRAINED_ANSWER)
        finally:
            if discarded:
                assert wheel is not None
                wheel.discard_many(discarded)
            if drained:
                self._counts["drained"] += drained
                self._count_quiet("drained", drained)
                if not tasks and not self._cold_n and self._idle is not None:
                    if not self._idle.done():
                        self._idle.set_result(None)
                    self._idle = None
        return out

    def _notify(self, task: Task) -> None:
        self._log_outcome(task, task.state)
        if self._watcher is not None:
            self._watcher(task)
        if self.on_outcome is not None:
            try:
                self.on_outcome(task)
            except Exception:
                log.exception("on_outcome callback failed event=callback_error node=%s "
                              "bucket=%s task_id=%s", self.node, self.name, task.id)

    def _log_outcome(self, task: Task, outcome: str) -> None:
        """One line per failed, exhausted or rescued task (INFO); drained,
        cancelled and handed-off tasks (the bulk: every confirmed backup job)
        one line each at DEBUG, and counted into one INFO line per bucket at
        most every ``SUMMARY_EVERY`` seconds (``event=tasks_ended``)."""
        if outcome in _QUIET:
            if log.isEnabledFor(_DEBUG):
                log.debug("task %s event=%s node=%s bucket=%s task_id=%s", outcome, outcome,
                          self.node, self.name, task.id)
            self._count_quiet(outcome, 1)
        elif log.isEnabledFor(_INFO):
            log.info("task %s event=%s node=%s bucket=%s task_id=%s", outcome, outcome,
                     self.node, self.name, task.id)

    def _count_quiet(self, outcome: str, count: int) -> None:
        self._quiet[outcome] = self._quiet.get(outcome, 0) + count
        now = time.monotonic()
        if now >= self._summary_at:
            self._summary_at = now + SUMMARY_EVERY
            self._summarise()

    def _summarise(self) -> None:
        quiet, self._quiet = self._quiet, {}
        if quiet:
            log.info("tasks ended event=tasks_ended node=%s bucket=%s %s", self.node, self.name,
                     " ".join(f"{k}={v}" for k, v in sorted(quiet.items())))

    def add_outcome_watcher(self, watcher: Callable[[Task], None]) -> None:
        """Internal, for the cluster layer.

        Set the cluster layer's watcher, called like ``on_outcome`` with
        each task that reaches a terminal state, before ``on_outcome`` (which
        stays the user's). One per bucket; it must not block or raise."""
        self._watcher = watcher

    async def reschedule(self, task_id: str, run_after: float) -> bool:
        """Move a pending time-bomb to fire ``run_after`` seconds from now.

        The lifespan moves by the same amount (a watchdog: "push my backup job
        30 s further"). Returns False if the task is not a pending time-bomb.
        In a replicated bucket the task's backups get the new times too (sent
        in the background: a crash right after may still run it at the old
        time). Raises ValueError for a ``run_after`` that is not a finite
        number >= 0, whether or not the task is there.
        """
        delay = check_delay("run_after", run_after)
        task = self.get(task_id)
        if (task is None or task.state is not _PENDING or task._runner is not None
                or task.type is not TaskType.TIME_BOMB):
            return False
        now = self.loop_time()
        was = task._deadline
        remaining_life = was - task._run_at
        old = task._run_at
        task._run_at = now + delay
        task._life = task._run_at + remaining_life - task._filled
        assert self._wheel is not None
        self._wheel.moved(task, old)
        assert self._loop is not None
        self._young_soon_after(self._loop)
        if self._moved is not None:
            self._moved(task, was)
        return True

    def take_pending(self, task_id: str) -> Task | None:
        """Internal, for the cluster layer.

        Remove a pending task without running it and return it, for a
        handoff to another node. Its state becomes HANDED_OFF; call
        :meth:`handed_off` once a peer has it, or :meth:`restore` if none took it."""
        task = self.get(task_id)
        if task is None or task.state is not _PENDING:
            return None
        task.state = TaskState.HANDED_OFF
        self._remove(task)
        self._unschedule(task)
        return task

    def withdraw(self, task_id: str) -> bool:
        """Internal, for the cluster layer.

        Take back a pending task as if it had never been accepted (no
        outcome, no hook): the cluster layer could not back it up. False if
        it is not pending (it started, or ended, meanwhile)."""
        task = self.take_pending(task_id)
        if task is None:
            return False
        self._counts["filled"] -= 1
        return True

    def handed_off(self, task: Task) -> None:
        """Internal, for the cluster layer.

        Record that a task taken by :meth:`take_pending` now lives on a
        peer: count it and report the outcome (``on_outcome``, the log)."""
        self._counts["handed_off"] += 1
        self._notify(task)

    def restore(self, task: Task) -> None:
        """Internal, for the cluster layer.

        Put back a task taken by :meth:`take_pending` (its handoff failed),
        with its original times. It runs here, or is rescued on close."""
        if task._owner is not self or task.state is not TaskState.HANDED_OFF:
            raise ValueError(f"task {task.id!r} was not taken from bucket {self.name!r}")
        if task.id in self:
            raise DuplicateTaskError(f"task {task.id!r} is already live in bucket {self.name!r}")
        loop = self._loop or self._bind()
        task.state = _PENDING
        task._runner = None
        self._tasks[task.id] = task
        if task.type is _IMMEDIATE:
            task._runner = loop.create_task(self._run(task))  # (a handoff's rare failure)
        else:
            assert self._wheel is not None
            self._wheel.add(task)
            self._young_soon_after(loop)

    # -- rescue / close --------------------------------------------------------

    async def rescue(self) -> int:
        """Cancel every live task (pending or running) and await ``on_panic``
        for each. Returns how many. Tasks already in their terminal hook keep
        their outcome and are not counted. Never deadlocks: each ``on_panic``
        is bounded by ``hook_timeout``, and a running ``on_execute`` that does
        not end when cancelled (it swallows CancelledError) is waited for
        twice ``hook_timeout`` at most (logged, ``event=cancel_ignored``): its
        ``on_panic`` runs when it returns.

        An ``on_panic`` that raises anything (even its own CancelledError or
        another BaseException) is logged and counted as a hook error; every
        other task still gets its ``on_panic`` and every slot is freed. A
        KeyboardInterrupt or SystemExit from a hook is re-raised once every
        task is rescued. Cancelling the caller still cancels ``rescue()``
        (the slots are freed all the same)."""
        direct: list[Task] = []
        runners: list[asyncio.Task[None]] = []
        self._reap()
        for task in self:  # (cold ones thawed: each gets its on_panic)
            if task.state is _PENDING:
                task.state = TaskState.RESCUED
                self._unschedule(task)
                direct.append(task)
            elif task.state is _RUNNING:
                task.state = TaskState.RESCUED
                assert task._runner is not None
                task._runner.cancel()
                runners.append(task._runner)
        waits: list[Awaitable[Any]] = [self._end_rescued(t) for t in direct]
        if runners:
            waits.append(self._wait_runners(runners, "rescue"))
        if waits:
            await asyncio.gather(*waits)
        if self._fatal:
            fatal = self._fatal[0]
            self._fatal.clear()
            raise fatal
        return len(direct) + len(runners)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, wait up to ``grace`` seconds for running tasks,
        then rescue the rest (``on_panic``). Idempotent. A hook that raises
        never stops it part-way (see :meth:`rescue`); a KeyboardInterrupt or
        SystemExit from a hook is re-raised once the bucket is closed.
        ``ValueError`` for a ``grace`` that is not a finite number >= 0
        (before anything is closed)."""
        grace = check_delay("grace", grace)
        if self._closed:
            return
        self._closing = True
        # Started or about to start (immediate, or fired): give them the grace.
        if self._cool_timer is not None:
            self._cool_timer.cancel()
            self._cool_timer = None
        ready, self._ready = self._ready, deque()
        for task in ready:  # accepted immediates start now: they get the grace too
            if task.state is _PENDING and task._runner is None:
                assert self._loop is not None  # (it filled them)
                task._runner = self._loop.create_task(self._run(task))
        running = [t._runner for t in self._tasks.values() if t._runner is not None]
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        fatal: BaseException | None = None
        try:
            await self.rescue()
        except _FATAL as exc:
            fatal = exc
        rest = [t._runner for t in self._tasks.values()
                if t._runner is not None and t._runner not in self._stuck]
        if rest:  # tasks in their terminal hook, bounded by hook_timeout
            await self._wait_runners(rest, "close")
        if self._wheel is not None:
            self._wheel.close()
        if self._records_timer is not None:
            # Records stay readable (ended(), drain) but no longer expire: the
            # timer would keep a closed bucket, and its records, alive for
            # outcome_retention after nothing refers to it any more.
            self._records_timer.cancel()
            self._records_timer = None
        self._closed = True
        self._summarise()  # what ended since the last summary line
        if fatal is not None:
            raise fatal

    async def __aenter__(self) -> TaskBucket:
        return self

    async def __aexit__(self, *exc_info: object) -> Literal[False]:
        await self.close()
        return False
