"""Which peer gets an overflowing task: the best of two random choices.

Always picking the apparently least-loaded peer herds every node onto the same
one while load reports are stale; two random choices keep the maximum load
near log log n and stay good with stale data (Mitzenmacher). Estimates count
what this node has sent since each peer's last report (``Member.inflight``).
This module is pure: it takes members and a random generator, and touches no
network.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Iterable

from .membership import Member, MemberState

__all__ = ["candidates", "pick"]

_ALIVE = MemberState.ALIVE


def candidates(members: Iterable[Member], bucket: str, exclude: Container[str] = ()
               ) -> list[Member]:
    """Alive peers that report free room in ``bucket``, except those in ``exclude``."""
    return [m for m in members if m.state is _ALIVE and m.estimate(bucket) > 0
            and m.node_id not in exclude]


def pick(pool: list[Member], room: Callable[[Member], int], rng: random.Random) -> Member:
    """The better (more free slots by ``room``, e.g. ``Member.estimate``
    for a bucket) of two peers drawn at random from ``pool``, which must not
    be empty. (Two of two are both: then the roomier, a tie drawn at random.)"""
    size = len(pool)
    if size == 1:
        return pool[0]
    if size == 2:
        a, b = pool
        room_a, room_b = room(a), room(b)
        if room_a != room_b:
            return a if room_a > room_b else b
        return pool[rng.random() < 0.5]
    # Two distinct indexes, uniformly (as rng.sample(pool, 2), at a third of its cost).
    i = int(rng.random() * size)
    j = int(rng.random() * (size - 1))
    a, b = pool[i], pool[j + (j >= i)]
    return a if room(a) >= room(b) else b
