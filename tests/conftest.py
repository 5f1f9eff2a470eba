"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gobucket_py import Executor, Task

from .procs import Nodes

if TYPE_CHECKING:
    from .test_cluster import Cluster


@pytest.fixture(scope="module", autouse=True)
def _close_leaked_event_loop() -> None:
    """Close an idle event loop left set by earlier *sync* tests.

    looptime's ``pytest_pyfunc_call`` calls ``policy.get_event_loop()`` for
    sync tests too, which creates a loop that nobody closes (test_config.py and
    test_public_api.py are all sync). When pytest-asyncio later installs its own
    loop, the leaked one is collected and its ResourceWarning ("unclosed event
    loop") fails the next async test, under filterwarnings=error. Closing it
    at the start of every module is enough: no module mixes the two kinds.
    """
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
    if not loop.is_running() and not loop.is_closed():
        loop.close()
    policy.set_event_loop(None)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """An in-memory cluster (``test_cluster.Cluster``), its groups stopped at
    teardown. (Imported here, not at the top: test_cluster imports this module.)"""
    from gobucket_py import MemoryNetwork

    from .test_cluster import Cluster

    made = Cluster(MemoryNetwork())
    yield made
    await made.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    """Subprocess nodes; always terminated (then killed) at teardown."""
    made = Nodes(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()
        print(made.dump())  # shown by pytest only when the test failed
    for node in made.nodes.values():  # no node crashed or failed a request internally
        for run in range(1, node.runs + 1):
            log = (tmp_path / f"{node.node_id}.run{run}.err").read_text(errors="replace")
            assert "Traceback" not in log and "event=handler_error" not in log, log[-3000:]


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
