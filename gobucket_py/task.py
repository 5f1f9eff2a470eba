"""Task records and the small enums and results around them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from .bucket import TaskBucket

__all__ = ["DrainOutcome", "DrainResult", "FillResult", "Task", "TaskInfo", "TaskState", "TaskType"]


class TaskType(StrEnum):
    """When a task runs."""

    #: Runs at once after fill.
    IMMEDIATE = "immediate"
    #: Runs ``run_after`` seconds after fill (a "backup job").
    TIME_BOMB = "time_bomb"


class TaskState(StrEnum):
    """Where a task is in its lifecycle. Every accepted task ends in exactly one
    terminal state (every member but PENDING and RUNNING)."""

    #: Accepted, waiting to run (a time-bomb before its time, or an immediate
    #: task whose runner has not started yet).
    PENDING = "pending"
    #: ``on_execute`` is running.
    RUNNING = "running"
    #: ``on_execute`` returned; ``on_finish`` runs or ran.
    FINISHED = "finished"
    #: ``on_execute`` raised; ``on_execute_error`` runs or ran.
    FAILED = "failed"
    #: The lifespan ran out during ``on_execute``, which was cancelled (or,
    #: with replicas, before it could start); ``on_task_exhausted`` runs or ran.
    EXHAUSTED = "exhausted"
    #: Drained before it started: it never ran and never will. No hook.
    DRAINED = "drained"
    #: Drained while ``on_execute`` ran: it was cancelled. No hook.
    CANCELLED = "cancelled"
    #: Handed to ``on_panic`` by ``rescue()`` or ``close()``.
    RESCUED = "rescued"
    #: Moved to another node of the cluster before it started (graceful stop).
    HANDED_OFF = "handed_off"
    #: Cluster only, as the origin sees a forwarded task: the node holding it
    #: restarted (a new boot id) or stayed dead past ``GroupConfig.lost_after``.
    #: Reported once through ``TaskBucketGroup.on_tasks_lost``.
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        """True for every state but PENDING and RUNNING."""
        return self is not TaskState.PENDING and self is not TaskState.RUNNING


class DrainOutcome(StrEnum):
    """What ``drain(task_id)`` found.

    A drain is retry-safe: a task that already ended answers how it ended
    (for ``BucketConfig.outcome_retention``), so a retried drain whose first
    attempt was applied answers DRAINED again, never NOT_FOUND.
    """

    #: The task had not started; it will never run (anywhere). Also the
    #: answer for a task an earlier drain stopped.
    DRAINED = "drained"
    #: ``on_execute`` was running and has been cancelled (now or earlier).
    CANCELLED = "cancelled"
    #: Nothing to stop: the task already ran to completion.
    FINISHED = "finished"
    #: Nothing to stop: ``on_execute`` already raised.
    FAILED = "failed"
    #: Nothing to stop: the task's lifespan already ran out while it ran.
    EXHAUSTED = "exhausted"
    #: Nothing to stop: the task was handed to ``on_panic`` (rescue, close).
    RESCUED = "rescued"
    #: Cluster only: the node holding the task crashed (restarted) or is
    #: presumed lost (dead past ``GroupConfig.lost_after``); the loss was
    #: reported through ``on_tasks_lost``.
    LOST = "lost"
    #: No such task: it was never filled, was handed off to a peer, or ended
    #: longer ago than the outcome records are kept. In a cluster, said only
    #: when every node that could hold it answered (with the exceptions in
    #: the README's "Known limits").
    NOT_FOUND = "not_found"

    @property
    def stopped(self) -> bool:
        """True when a drain stopped the task (DRAINED or CANCELLED)."""
        return self is DrainOutcome.DRAINED or self is DrainOutcome.CANCELLED


@dataclass(frozen=True, slots=True)
class DrainResult:
    """The answer of ``drain``: the outcome and, in a cluster, the node that
    held the task (``None`` when not found or for a local bucket)."""

    outcome: DrainOutcome
    task_id: str
    node_id: str | None = None

    def __bool__(self) -> bool:
        """True when a drain stopped the task (DRAINED or CANCELLED)."""
        return self.outcome.stopped


class Task:
    """One task in a bucket. Created by ``TaskBucket.fill``; read-only for users.

    Times: ``filled_at``, ``run_at`` and ``deadline`` are wall-clock
    (``time.time()`` scale) estimates derived from the event loop's
    monotonic clock, on which the task's times are kept, so they stay right
    when the wall clock jumps; ``seconds_left`` is the time until the
    deadline.
    """

    # A million pending tasks must fit in ~200 bytes each: slots, no dict, the
    # bucket name/loop reached through the owning bucket, and the lifespan a
    # reference to the bucket's own (shared) figure unless the fill set one:
    # two floats per task (fill and due times), not four.
    __slots__ = ("_filled", "_life", "_owner", "_run_at", "_runner", "data", "id", "state",
                 "type")

    def __init__(
        self,
        owner: TaskBucket,
        task_id: str,
        data: Any,
        task_type: TaskType,
        filled: float,
        run_at: float,
        life: float,
    ) -> None:
        self.id = task_id
        self.data = data
        self.type = task_type
        self.state = TaskState.PENDING
        self._owner = owner
        self._filled = filled  # loop time
        self._run_at = run_at  # loop time
        self._life = life  # seconds from fill to the deadline
        self._runner: asyncio.Task[None] | None = None

    @property
    def _deadline(self) -> float:
        """The deadline, in loop time."""
        return self._filled + self._life

    @property
    def filled_at(self) -> float:
        """Wall-clock time (``time.time()`` scale) of the fill."""
        return self._wall(self._filled)

    @property
    def bucket(self) -> str:
        """Name of the bucket that holds the task."""
        return self._owner.name

    def _wall(self, loop_time: float) -> float:
        return time.time() + (loop_time - self._owner.loop_time())

    @property
    def run_at(self) -> float:
        """Wall-clock time (``time.time()`` scale) at which the task fires."""
        return self._wall(self._run_at)

    @property
    def deadline(self) -> float:
        """Wall-clock time at which the lifespan runs out."""
        return self._wall(self._deadline)

    @property
    def seconds_left(self) -> float:
        """Seconds until the deadline (negative once past it)."""
        return self._deadline - self._owner.loop_time()

    @property
    def seconds_to_run(self) -> float:
        """Seconds until the task fires (0 once due)."""
        return max(0.0, self._run_at - self._owner.loop_time())

    @property
    def recovered(self) -> float | None:
        """With replicas: how late the task was (seconds past due, 0 if not
        yet due) when a backup took it over after its holder died; None for
        a task that was never recovered."""
        return self._owner.recovered.get(self.id) if self._owner.recovered else None

    def __repr__(self) -> str:
        return (f"<Task {self.id!r} bucket={self.bucket!r} type={self.type.value} "
                f"state={self.state.value}>")


@dataclass(slots=True)
class FillResult:
    """Where a ``TaskBucketGroup.fill`` put the task.

    ``forwarded`` is False when the task lives on this node (then ``task`` is
    the local :class:`Task`; None from a :class:`~gobucket_py.GroupClient`,
    whose node holds it), True when a peer took it. (Not frozen: one is
    made per fill, and a frozen dataclass costs four times as much to build.)
    """

    bucket: str
    task_id: str
    node_id: str
    forwarded: bool
    task: Task | None = None


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as seen from anywhere in the cluster (no payload).

    A live task has state PENDING or RUNNING. One that ended recently (see
    ``BucketConfig.outcome_retention``) has its terminal state, ``type``
    None and both times 0; one whose holder was lost has state LOST.
    """

    bucket: str
    task_id: str
    node_id: str
    type: TaskType | None
    state: TaskState
    seconds_to_run: float
    seconds_left: float

    @classmethod
    def of(cls, task: Task, node_id: str) -> TaskInfo:
        """Describe a local task."""
        return cls(task.bucket, task.id, node_id, task.type, task.state, task.seconds_to_run,
                   task.seconds_left)
