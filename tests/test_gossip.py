"""The piggyback queue and Lifeguard's arithmetic (gobucket_py.cluster.gossip)."""

from __future__ import annotations

from collections import Counter

from gobucket_py.cluster.gossip import (
    MAX_QUEUED,
    Broadcasts,
    retransmits,
    suspicion_timeout,
    sync_interval,
)


def entry(node: str, state: str = "alive", inc: int = 0) -> list[object]:
    return [node, "boot", f"{node}:1", inc, state, "me"]


def test_each_update_is_sent_retransmits_times_then_dropped() -> None:
    queue = Broadcasts()
    for i in range(20):
        queue.add(entry(f"n{i}"))
    sent: Counter[str] = Counter()
    while len(queue):
        batch = queue.take(10, limit=8)
        assert 0 < len(batch) <= 8
        assert len({e[0] for e in batch}) == len(batch)  # no node twice in one message
        sent.update(str(e[0]) for e in batch)
    assert set(sent.values()) == {retransmits(10)} and len(sent) == 20


def test_new_updates_go_first_and_replace_older_news_of_the_same_node() -> None:
    queue = Broadcasts()
    for i in range(8):
        queue.add(entry(f"n{i}"))
    for _ in range(3):
        queue.take(10)  # all eight sent three times
    queue.add(entry("n3", "suspect", 1))
    fresh = [queue.take(10, limit=1) for _ in range(3)]
    assert fresh == [[entry("n3", "suspect", 1)]] * 3  # ahead of the rest until caught up
    assert queue.take(10, limit=1) != [entry("n3", "suspect", 1)]
    rest = [e for _ in range(8) for e in queue.take(10)]
    assert entry("n3") not in rest  # the older news of n3 is gone


def test_the_queue_stays_bounded_under_a_mass_join() -> None:
    queue = Broadcasts()
    for i in range(MAX_QUEUED * 3):
        queue.add(entry(f"n{i}"))
    assert len(queue) == MAX_QUEUED
    assert sum(map(len, queue._levels)) <= MAX_QUEUED * 3


def test_suspicion_timeout_grows_with_log_n_and_falls_with_confirmations() -> None:
    assert suspicion_timeout(1.2, 10, 0) == 1.2
    assert suspicion_timeout(1.2, 1000, 0) == 1.2 * 3
    assert suspicion_timeout(1.2, 10, 3) == 0.6  # enough confirmations: half
    steps = [suspicion_timeout(1.2, 100, c) for c in range(5)]
    assert steps == sorted(steps, reverse=True) and steps[-1] == steps[3] == 1.2
    assert suspicion_timeout(1.2, 2, 5) == 1.2  # two nodes: nobody to confirm
    assert sync_interval(20.0, 10) == 20.0 and sync_interval(20.0, 300) == 200.0
