"""Waking many waiting callers with one loop callback.

When a batch of forwarded fills is answered (or a batch of backups made),
each caller waits on its own future. ``future.set_result`` would schedule
each caller's wakeup as its own event-loop callback (a ``Handle``, made and
run by the loop's Python code on asyncio): on a sender that overflows, a
large share of each fill's cost.

:func:`resolve` settles the futures at once, so whatever looks at them
later sees them done, but first takes each one's single waiter (the
awaiting task's wakeup) off it, and runs all those waiters from one
callback in the next loop pass: the pass the loop would have run them in,
in the same order, each in its own context. A future with no waiter or
more than one, or one that does not show its callbacks, is settled the
usual way.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["resolve"]

T = TypeVar("T")


def resolve(loop: asyncio.AbstractEventLoop, futures: Sequence[asyncio.Future[T]],
           results: Sequence[T]) -> None:
    """``future.set_result(result)`` for each pair whose future is not done,
    with the waiters woken from one callback rather than one each."""
    # Three lists, not a tuple per waiter: fewer objects for the GC to track
    # while a batch's callers wait for their turn.
    callbacks: list[Callable[[Any], object]] = []
    contexts: list[contextvars.Context] = []
    woken: list[asyncio.Future[T]] = []
    for future, result in zip(futures, results, strict=True):
        if future.done():
            continue  # cancelled, or stopped
        waiting = getattr(future, "_callbacks", None)
        if waiting and len(waiting) == 1:
            callback, context = waiting[0]
            if future.remove_done_callback(callback) == 1:
                future.set_result(result)
                callbacks.append(callback)
                contexts.append(context)
                woken.append(future)
                continue
        future.set_result(result)
    if woken:
        loop.call_soon(_wake, callbacks, contexts, woken)


def _wake(callbacks: list[Any], contexts: list[contextvars.Context], futures: list[Any]
          ) -> None:
    """Run each waiter in its own context, as the loop would have. (Each
    waiter's slots in ``callbacks`` and ``futures`` are emptied as it runs.)"""
    index = 0
    try:
        for callback, context, future in zip(callbacks, contexts, futures, strict=True):
            # Let go of the future and the waiter as each one is run: they
            # are freed as the caller moves on, among its new allocations,
            # not in a heap at the end (the collector counts frees only
            # until its next pass, and would run more often).
            callbacks[index] = futures[index] = None
            context.run(callback, future)
            index += 1
    except BaseException:
        # A task's step lets only KeyboardInterrupt and SystemExit out: the
        # rest of the waiters are still woken, one callback each.
        loop = asyncio.get_running_loop()
        for i in range(index + 1, len(futures)):
            loop.call_soon(callbacks[i], futures[i], context=contexts[i])
        raise
