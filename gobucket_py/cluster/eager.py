"""Eager answers: a future that is also a coroutine.

:meth:`~gobucket_py.TaskBucketGroup.fill` does its work when it is called
(the task is in the local bucket, or queued for a peer, before it returns)
and hands back an awaitable for the answer, which every way code written
for an ``async def fill`` uses it still takes:

- a fill placed here (or refused at once) returns a coroutine that gives
  the answer: ``await`` costs what awaiting the ``async def`` did;
- a fill waiting for a peer returns an :class:`EagerFuture`: an
  :class:`asyncio.Future`, so ``asyncio.gather`` and ``asyncio.wait_for``
  take it as it is (a coroutine is wrapped in an asyncio task first, which
  is most of what gather costs per overflowing fill), and a coroutine to
  ``asyncio.create_task`` and ``TaskGroup.create_task``, so they take it
  too: a task stepping it waits for the answer.

``await`` gives the :class:`~gobucket_py.FillResult` or raises the error,
never the call itself. Cancelling what waits for the answer gives up on the
answer, not on the work: as with a cancelled ``await`` of an overflowing
fill before, the task may already be placed, and drain or get find it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["EagerFuture", "answered", "failed", "running"]

T = TypeVar("T")


class EagerFuture(asyncio.Future[T], Coroutine[Any, Any, T]):
    """The answer of a call that already did its work (see the module).

    An :class:`asyncio.Future`, and a coroutine to ``asyncio.create_task``."""

    __slots__ = ()

    def send(self, value: Any, /) -> Any:
        """One step, as an asyncio task takes it: the result when there is
        one, else this future to wait on."""
        if self.done():
            raise StopIteration(self.result())  # or the error, or CancelledError
        self._asyncio_future_blocking = True
        return self

    def throw(self, typ: Any, val: Any = None, tb: TracebackType | None = None, /) -> Any:
        """The stepping task was cancelled (or its answer failed): stop waiting."""
        self.cancel()  # no-op once answered
        return super().throw(typ, val, tb)

    def close(self) -> None:
        """Stop waiting (the work goes on), as for a coroutine closed unrun."""
        self.cancel()


async def answered(result: T) -> T:
    """An answer already known, as a coroutine: the cheapest awaitable to
    ``await`` (a done :class:`EagerFuture` costs about 300 ns more)."""
    return result


def failed(error: Exception) -> EagerFuture[Any]:
    """An :class:`EagerFuture` already holding ``error``, raised when awaited."""
    future: EagerFuture[Any] = EagerFuture(loop=asyncio.get_running_loop())
    future.set_exception(error)
    return future


def running(work: Coroutine[Any, Any, T], keep: set[asyncio.Task[Any]]) -> EagerFuture[T]:
    """Start ``work`` now, in a task held in ``keep`` while it runs; its
    outcome becomes the future's. Cancelling the future cancels the work, as
    cancelling an ``await`` of it would have."""
    loop = asyncio.get_running_loop()
    future: EagerFuture[T] = EagerFuture(loop=loop)
    task = loop.create_task(work)
    keep.add(task)

    def settle(task: asyncio.Task[T]) -> None:
        keep.discard(task)
        if future.done():
            if not task.cancelled():
                task.exception()  # retrieved: its caller gave up waiting
        elif task.cancelled():
            future.cancel()
        elif (error := task.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(task.result())

    def give_up(future: asyncio.Future[T]) -> None:
        if future.cancelled():
            task.cancel()

    task.add_done_callback(settle)
    future.add_done_callback(give_up)
    return future
