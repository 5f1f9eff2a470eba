"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import asyncio
from typing import Any

from gobucket_py import Executor, Task


class Recorder(Executor):
    """An executor that records every hook call as ``(hook, task_id, loop_time)``.

    ``work`` maps a task id (or ``"*"``) to seconds to sleep in on_execute, or
    to an exception to raise there. ``hook_sleep`` makes terminal hooks slow.
    """

    def __init__(self, work: dict[str, Any] | None = None, hook_sleep: float = 0.0,
                 hook_raises: bool = False) -> None:
        self.work = work or {}
        self.hook_sleep = hook_sleep
        self.hook_raises = hook_raises
        self.calls: list[tuple[str, str, float]] = []
        self.errors: list[BaseException] = []

    def _rec(self, hook: str, task: Task) -> None:
        self.calls.append((hook, task.id, asyncio.get_running_loop().time()))

    def hooks(self, task_id: str) -> list[str]:
        """The hooks called for one task, in order."""
        return [h for h, t, _ in self.calls if t == task_id]

    def at(self, hook: str, task_id: str) -> float:
        """Loop time at which ``hook`` was called for ``task_id``."""
        return next(ts for h, t, ts in self.calls if h == hook and t == task_id)

    async def on_execute(self, task: Task) -> None:
        self._rec("execute", task)
        job = self.work.get(task.id, self.work.get("*", 0))
        if isinstance(job, BaseException):
            raise job
        if job:
            await asyncio.sleep(job)

    async def _hook(self, name: str, task: Task) -> None:
        self._rec(name, task)
        if self.hook_sleep:
            await asyncio.sleep(self.hook_sleep)
        if self.hook_raises:
            raise RuntimeError(f"{name} hook failed on purpose")

    async def on_finish(self, task: Task) -> None:
        await self._hook("finish", task)

    async def on_execute_error(self, task: Task, error: BaseException) -> None:
        self.errors.append(error)
        await self._hook("error", task)

    async def on_task_exhausted(self, task: Task) -> None:
        await self._hook("exhausted", task)

    async def on_panic(self, task: Task) -> None:
        await self._hook("panic", task)
