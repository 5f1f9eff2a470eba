"""The executor: the user's code, called at each step of a task's life.

Concurrency rule: every hook runs on the bucket's event loop, one asyncio task
per gobucket task. Hooks may await anything; they must not block the loop.
``on_execute`` is bounded by the task's lifespan, every other hook by
``BucketConfig.hook_timeout``. An exception in any hook is logged and counted,
and never stops the bucket.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from .task import Task

__all__ = ["Executor", "FunctionExecutor", "Handler", "as_executor"]

#: A plain ``async def handler(task)`` usable instead of an :class:`Executor`.
Handler: TypeAlias = Callable[[Task], Awaitable[None]]


class Executor:
    """Base class for task executors. Override ``on_execute``; the other hooks
    default to doing nothing.

    Exactly one of the terminal hooks follows each accepted task:

    * ``on_execute`` returns → ``on_finish``
    * ``on_execute`` raises → ``on_execute_error(task, error)`` (no ``on_finish``)
    * the lifespan ends first → ``on_execute`` is cancelled → ``on_task_exhausted``
    * ``drain`` → no hook
    * ``rescue()`` / ``close()`` → ``on_panic``

    Three cases end a task without these pairings: with replicas, a
    time-bomb whose lifespan ran out while its start waited for the
    cluster's word gets ``on_task_exhausted`` though ``on_execute`` never
    ran; ``KeyboardInterrupt`` or ``SystemExit`` from ``on_execute`` ends it
    FAILED with no hook (and goes on up); a task handed off to a peer on a
    graceful stop gets no hook here (it runs there).

    Example::

        class Backup(Executor):
            async def on_execute(self, task: Task) -> None:
                await send_reminder(task.data)

            async def on_panic(self, task: Task) -> None:
                await park_somewhere_durable(task.id, task.data)
    """

    async def on_execute(self, task: Task) -> None:
        """Do the task's work. Required."""
        raise NotImplementedError("Executor subclasses must implement on_execute")

    async def on_finish(self, task: Task) -> None:
        """Called after ``on_execute`` returned."""

    async def on_execute_error(self, task: Task, error: BaseException) -> None:
        """Called with the exception ``on_execute`` raised."""

    async def on_task_exhausted(self, task: Task) -> None:
        """Called after the lifespan ran out and ``on_execute`` was cancelled."""

    async def on_panic(self, task: Task) -> None:
        """Called for each live task by ``rescue()`` (and by ``close()`` for
        tasks that did not finish within the grace period)."""


class FunctionExecutor(Executor):
    """Adapts ``async def handler(task)`` to an :class:`Executor`."""

    def __init__(self, handler: Handler) -> None:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(
                f"handler must be an 'async def' function taking the task, got {handler!r}"
            )
        self.handler = handler

    async def on_execute(self, task: Task) -> None:
        await self.handler(task)

    def __repr__(self) -> str:
        return f"FunctionExecutor({self.handler!r})"


def as_executor(executor: Executor | Handler) -> Executor:
    """Return ``executor`` as an :class:`Executor`, wrapping a plain handler."""
    if isinstance(executor, Executor):
        if type(executor).on_execute is Executor.on_execute:
            raise TypeError(f"{type(executor).__name__} must implement on_execute")
        for name in ("on_execute", "on_finish", "on_execute_error", "on_task_exhausted",
                     "on_panic"):
            if not inspect.iscoroutinefunction(getattr(executor, name)):
                raise TypeError(f"{type(executor).__name__}.{name} must be an 'async def'")
        return executor
    if callable(executor):
        return FunctionExecutor(executor)
    raise TypeError(f"executor must be an Executor or an async function, got {executor!r}")


def overrides(executor: Executor, name: str) -> bool:
    """True if ``executor`` overrides the hook ``name`` (no-op hooks are skipped
    on the hot path)."""
    return getattr(type(executor), name) is not getattr(Executor, name)
