"""wake.resolve: futures settled at once, their waiting tasks woken from one
loop callback, with everything a task awaiting ``future.set_result`` would
see kept: its result, its context, cancellation, and the order."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from typing import Any

import pytest

from gobucket_py.cluster.wake import _wake, resolve

where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="-")


async def waiting_tasks(n: int) -> tuple[list[asyncio.Future[int]], list[asyncio.Task[Any]],
                                           list[tuple[str, int, str]]]:
    """``n`` tasks, each awaiting its own future; each records (name, result,
    its context var) when woken."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[int]] = [loop.create_future() for _ in range(n)]
    woken: list[tuple[str, int, str]] = []

    async def waiter(k: int) -> None:
        where.set(f"task{k}")
        woken.append((f"task{k}", await futures[k], where.get()))

    tasks = [asyncio.create_task(waiter(k)) for k in range(n)]
    await asyncio.sleep(0)  # each is now awaiting its future
    return futures, tasks, woken


async def test_waiters_get_their_results_in_order_from_one_callback() -> None:
    loop = asyncio.get_running_loop()
    futures, tasks, woken = await waiting_tasks(5)
    scheduled: list[object] = []
    real = loop.call_soon

    def spy(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        scheduled.append(callback)
        return real(callback, *args, **kwargs)

    loop.call_soon = spy  # type: ignore[method-assign]
    try:
        resolve(loop, futures, [10, 11, 12, 13, 14])
    finally:
        del loop.call_soon  # back to the class's method
    assert all(f.done() for f in futures)  # settled at once: a stop() sees them done
    assert [f.result() for f in futures] == [10, 11, 12, 13, 14]
    assert scheduled == [_wake]  # one callback, not five
    assert woken == []  # woken in the next pass, as set_result would
    await asyncio.gather(*tasks)
    assert woken == [(f"task{k}", 10 + k, f"task{k}") for k in range(5)]


async def test_done_futures_are_left_alone_and_a_cancelled_waiter_is_cancelled() -> None:
    loop = asyncio.get_running_loop()
    futures, tasks, woken = await waiting_tasks(3)
    tasks[0].cancel()  # cancels its future too
    await asyncio.sleep(0)
    assert futures[0].cancelled()
    resolve(loop, futures, [1, 2, 3])
    tasks[2].cancel()  # after its future is settled, before it is woken: as asyncio does
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[2], asyncio.CancelledError)
    assert woken == [("task1", 2, "task1")]


async def test_futures_without_one_waiter_are_settled_the_usual_way() -> None:
    loop = asyncio.get_running_loop()
    lone: asyncio.Future[str] = loop.create_future()  # nobody waits
    shared: asyncio.Future[str] = loop.create_future()  # two callbacks
    seen: list[str] = []
    shared.add_done_callback(lambda f: seen.append("a:" + f.result()))
    shared.add_done_callback(lambda f: seen.append("b:" + f.result()))
    resolve(loop, [lone, shared], ["x", "y"])
    assert lone.result() == "x" and shared.result() == "y"
    await asyncio.sleep(0)
    assert seen == ["a:y", "b:y"]


async def test_a_future_that_does_not_show_its_callbacks_is_set() -> None:
    class Plain:
        """A future-like object without ``_callbacks``."""

        def __init__(self) -> None:
            self.value: object = None

        def done(self) -> bool:
            return self.value is not None

        def set_result(self, value: object) -> None:
            self.value = value

    plain = Plain()
    resolve(asyncio.get_running_loop(), [plain], [7])  # type: ignore[list-item]
    assert plain.value == 7


async def test_a_waiter_that_escapes_with_keyboardinterrupt_does_not_strand_the_rest() -> None:
    loop = asyncio.get_running_loop()
    ran: list[int] = []

    def ok(k: int) -> Any:
        return lambda _future: ran.append(k)

    def escapes(_future: object) -> None:
        raise KeyboardInterrupt

    future: asyncio.Future[int] = loop.create_future()
    callbacks = [ok(0), escapes, ok(2), ok(3)]
    contexts = [contextvars.copy_context() for _ in callbacks]
    with pytest.raises(KeyboardInterrupt):
        _wake(callbacks, contexts, [future] * 4)
    assert ran == [0]
    await asyncio.sleep(0)
    assert ran == [0, 2, 3]  # each in a callback of its own


async def test_each_future_is_let_go_as_its_waiter_runs() -> None:
    """The wake callback drops its hold on a future (and its waiter) before
    it runs the next one, so the caller's objects are freed one at a time
    among its new allocations, not all at the end of the callback."""
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[int]] = []
    refs: list[weakref.ref[asyncio.Future[int]]] = []
    earlier_alive: list[int] = []

    def new_future() -> asyncio.Future[int]:
        future: asyncio.Future[int] = loop.create_future()
        pending.append(future)
        refs.append(weakref.ref(future))
        return future

    async def waiter(k: int) -> int:
        value = await new_future()  # held by nobody here once it is awaited
        earlier_alive.append(sum(ref() is not None for ref in refs[:k]))
        return value

    tasks = [asyncio.create_task(waiter(k)) for k in range(5)]
    await asyncio.sleep(0)
    resolve(loop, pending, [0, 1, 2, 3, 4])
    pending.clear()
    assert await asyncio.gather(*tasks) == [0, 1, 2, 3, 4]
    assert earlier_alive == [0, 0, 0, 0, 0]  # was [0, 1, 2, 3, 4]: held until the end
