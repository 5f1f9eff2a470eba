"""Units of the origin's memory of forwarded tasks (cluster/routes.py) and of
the forwarder's per-peer queue (cluster/forward.py)."""

from __future__ import annotations

import asyncio

from gobucket_py.cluster.forward import _Group, _Queue
from gobucket_py.cluster.routes import Routes


def test_routes_remember_until_the_deadline() -> None:
    routes = Routes()
    routes.add("jobs", "n2", "boot2", now=100.0, life_span=10.0, task_ids=["a", "b"])
    routes.add("other", "n3", "boot3", now=100.0, life_span=50.0, task_ids=["a"])
    assert routes.get("jobs", "a") == ("n2", "boot2", 111.0, 0)
    assert routes.get("other", "a") == ("n3", "boot3", 151.0, 0)
    assert routes.get("jobs", "zzz") is None and routes.get("nope", "a") is None
    assert len(routes) == 3
    routes.expire(110.5)  # not yet: life span plus a second
    assert len(routes) == 3
    routes.expire(111.5)
    assert routes.get("jobs", "a") is None and routes.get("jobs", "b") is None
    assert routes.get("other", "a") is not None and len(routes) == 1


def test_refilled_task_keeps_its_newer_route_when_the_old_one_expires() -> None:
    routes = Routes()
    routes.add("jobs", "n2", "b2", now=0.0, life_span=10.0, task_ids=["a"])
    routes.forget("jobs", "a")  # drained, then filled again elsewhere
    routes.add("jobs", "n3", "b3", now=5.0, life_span=10.0, task_ids=["a"])
    routes.expire(12.0)  # the first entry's time: the record is newer, kept
    assert routes.get("jobs", "a") == ("n3", "b3", 16.0, 0)
    routes.expire(16.5)
    assert routes.get("jobs", "a") is None


def test_an_ended_notice_naming_an_earlier_batch_keeps_the_route() -> None:
    """The route of a task sent after batch 5: a notice naming batch 5 or
    earlier, or 0 (a task that came to the holder otherwise: handed off or
    taken over), is about an earlier task of the id; one naming a later
    batch, or none (-1: a peer of an earlier version), is about this one."""
    routes = Routes()
    routes.add("jobs", "n2", "b2", 0.0, 60.0, ["a", "b", "c", "d"], sent=(0.0, 5))
    routes.ended("jobs", "a", "n2", 1.0, batch=5)
    routes.ended("jobs", "b", "n2", 1.0, batch=3)
    routes.ended("jobs", "d", "n2", 1.0, batch=0)
    kept = ("n2", "b2", 61.0, 5)
    assert routes.get("jobs", "a") == routes.get("jobs", "b") == routes.get("jobs", "d") == kept
    routes.ended("jobs", "a", "n2", 1.0, batch=6)
    routes.ended("jobs", "b", "n2", 1.0)
    routes.ended("jobs", "c", "n3", 1.0, batch=9)  # not routed there
    assert routes.get("jobs", "a") is None and routes.get("jobs", "b") is None
    assert routes.get("jobs", "c") == kept


def test_a_moved_route_takes_any_notice_from_its_new_holder() -> None:
    """A route moved to n3 (a handoff): n3 got the task otherwise than by a
    batch of this node's, so its notice names batch 0, and ends it."""
    routes = Routes()
    routes.add("jobs", "n2", "b2", 0.0, 60.0, ["a"], sent=(0.0, 5))
    assert routes.move("jobs", "a", "n2", "n3", "b3") == ("n3", "b3", 61.0, 0)
    routes.ended("jobs", "a", "n3", 1.0, batch=0)
    assert routes.get("jobs", "a") is None


def test_an_early_ended_notice_is_matched_to_its_forward_by_batch() -> None:
    """A notice that arrives before its route (it overtook the verdict)
    keeps the route from being added only if it names a later batch than
    the one before the forward: else it is about an earlier task. Without a
    batch number, its arrival time decides, as before."""
    routes = Routes()
    routes.ended("jobs", "old", "n2", 10.0, batch=4)  # arrived after the send, but stale
    routes.ended("jobs", "new", "n2", 10.0, batch=6)
    routes.ended("jobs", "plain", "n2", 10.0)  # arrived after the send
    routes.ended("jobs", "handed", "n2", 10.0, batch=0)  # came to n2 otherwise: earlier
    routes.ended("jobs", "twice", "n2", 10.0, batch=6)  # this task's, then an earlier's
    routes.ended("jobs", "twice", "n2", 10.5, batch=4)
    routes.add("jobs", "n2", "b2", 11.0, 60.0, ["old", "new", "plain", "handed", "twice"],
               sent=(9.0, 5))
    assert routes.get("jobs", "old") == routes.get("jobs", "handed") == ("n2", "b2", 72.0, 5)
    assert routes.get("jobs", "new") is None and routes.get("jobs", "plain") is None
    assert routes.get("jobs", "twice") is None


def test_forget_node_drops_only_its_routes_in_the_boots_given() -> None:
    routes = Routes()
    routes.add("jobs", "n2", "b2", now=0.0, life_span=60.0, task_ids=["a", "b"])
    routes.add("jobs", "n2", "b2x", now=0.0, life_span=60.0, task_ids=["d", "e"])
    routes.add("jobs", "n3", "b3", now=0.0, life_span=60.0, task_ids=["c"])
    assert routes.mark_lost_ids("jobs", ["e"]) == ["e"]
    rest = routes.forget_node("n2", {"b2"})
    assert rest == [("jobs", "d", ("n2", "b2x", 61.0, 0))]  # not said done; "e" reported already
    assert routes.get("jobs", "a") is None and routes.get("jobs", "b") is None
    assert routes.get("jobs", "c") is not None and len(routes) == 3


def test_drained_routes_do_not_grow_the_expiry_queue_without_bound() -> None:
    routes = Routes()
    for i in range(20_000):  # fill and drain, long life spans: nothing expires
        routes.add("jobs", "n2", "b2", now=0.0, life_span=3600.0, task_ids=[f"t{i}"])
        routes.forget("jobs", f"t{i}")
    assert len(routes) == 0
    assert routes._queued <= 1024 + 1  # swept, not 20,000 stale entries
    assert len(routes._expiry) == routes._queued


def test_a_route_extended_many_times_keeps_one_heap_entry() -> None:
    """A waiting start gate's holder says "still here" every probe
    interval, and no forward may come meanwhile (nothing else expires
    routes): each word moves the route's expiry, not the heap, and the
    entry due at the old expiry is pushed again at the new one."""
    routes = Routes()
    routes.add("jobs", "n2", "b2", now=0.0, life_span=10.0, task_ids=["a"])
    now = 0.0
    for _ in range(100_000):  # ~a day of words every second, with no add
        now += 1.0
        routes.extend("jobs", "a", "n2", now, 2.0)
    assert routes.get("jobs", "a") == ("n2", "b2", now + 3.0, 0)
    assert len(routes._expiry) == routes._queued == 1
    routes.expire(now + 2.5)  # the old entry comes due: pushed again, the route kept
    assert routes.get("jobs", "a") is not None
    assert len(routes._expiry) == routes._queued == 1
    assert routes._expiry[0][0] == now + 3.0
    routes.expire(now + 3.5)  # no word since: it lapses
    assert routes.get("jobs", "a") is None and routes._queued == 0


def test_an_extend_goes_only_to_its_tasks_route() -> None:
    """A "still here" or reschedule word keeps a route only if it is from
    the holder the route names, in its boot, about the task the route is
    for, and the task was not reported lost. A word naming a batch up to
    the route's mark counts: the route was re-added by a fill again the
    holder did not answer, while the earlier task still waits there."""
    routes = Routes()
    routes.add("jobs", "n2", "b2", 0.0, 10.0, ["a", "b", "c", "d", "e", "f"], sent=(0.0, 5))
    first = ("n2", "b2", 11.0, 5)
    routes.extend("jobs", "a", "n2", 1.0, 30.0, "old-boot")  # an earlier incarnation's
    routes.extend("jobs", "c", "n3", 1.0, 30.0, "b3")  # not routed there
    assert routes.mark_lost_ids("jobs", ["d"]) == ["d"]
    routes.extend("jobs", "d", "n2", 1.0, 30.0, "b2")  # reported lost
    assert routes.get("jobs", "a") == routes.get("jobs", "c") == first
    assert routes.get("jobs", "d") == ("n2", "!b2", 11.0, 5)
    routes.extend("jobs", "b", "n2", 1.0, 30.0, "b2")
    routes.extend("jobs", "e", "n2", 1.0, 30.0, "b2")
    routes.extend("jobs", "f", "n2", 1.0, 30.0)  # a peer of an earlier version: no boot
    assert routes.get("jobs", "b") == routes.get("jobs", "e") == routes.get("jobs", "f") == (
        "n2", "b2", 32.0, 5)


async def test_queue_splits_an_entry_across_batches_and_keeps_offsets() -> None:
    loop = asyncio.get_running_loop()
    queue = _Queue("boot-1")
    many: asyncio.Future[list[str | Exception]] = loop.create_future()
    group = _Group(many, 5)  # type: ignore[arg-type]
    single: asyncio.Future[str] = loop.create_future()
    items = [("jobs", f"m{i}", 1, b"\xc0", 30.0, 60.0) for i in range(5)]
    alone = ("jobs", "s", 1, b"\xc0", 30.0, 60.0)
    queue.entries.extend([(list(items), group, 0), ([alone], single, 0)])
    queue.items = 6
    first = queue.take(3, 1 << 20)
    assert [(len(chunk), offset) for chunk, _, offset in first] == [(3, 0)]
    second = queue.take(3, 1 << 20)  # the rest of the group, then the single item
    assert [(chunk, sink, offset) for chunk, sink, offset in second] == [
        (items[3:], group, 3), ([alone], single, 0)]
    assert queue.items == 0 and not queue.entries
    group.settle(3, ["ok", "full"])
    assert not many.done()
    group.settle(0, ["ok", "ok", "duplicate"])
    assert many.result() == ["ok", "ok", "duplicate", "ok", "full"]


async def test_queue_cuts_a_batch_by_bytes_and_sends_an_oversized_item_alone() -> None:
    """A batch weighs at most its byte budget (data, id and a little per
    item); the first item always goes, however big, so nothing is stuck."""
    loop = asyncio.get_running_loop()
    queue = _Queue("boot-1")
    many: asyncio.Future[list[str | Exception]] = loop.create_future()
    group = _Group(many, 6)  # type: ignore[arg-type]
    items = [("jobs", f"k{i}", 1, b"x" * 1000, 30.0, 60.0) for i in range(5)]
    items.insert(2, ("jobs", "huge", 1, b"x" * 10_000, 30.0, 60.0))
    queue.entries.append((list(items), group, 0))
    queue.items = 6
    taken = [queue.take(100, 2500) for _ in range(5)]
    assert [[(len(chunk), offset) for chunk, _, offset in batch] for batch in taken] == [
        [(2, 0)], [(1, 2)], [(2, 3)], [(1, 5)], []]
    assert queue.items == 0 and not queue.entries
