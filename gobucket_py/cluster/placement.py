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
from collections.abc import Iterable

from .membership import Member, MemberState

__all__ = ["candidates", "order"]


def candidates(members: Iterable[Member], bucket: str) -> list[Member]:
    """Alive peers that report free room in ``bucket``."""
    return [m for m in members if m.state is MemberState.ALIVE and m.estimate(bucket) > 0]


def order(members: list[Member], bucket: str, rng: random.Random, limit: int) -> list[Member]:
    """Up to ``limit`` distinct peers in the order to try them: each is the
    better (more estimated free slots) of two drawn at random from the rest."""
    pool = list(members)
    chosen: list[Member] = []
    while pool and len(chosen) < limit:
        if len(pool) == 1:
            pick = pool[0]
        else:
            a, b = rng.sample(pool, 2)
            pick = a if a.estimate(bucket) >= b.estimate(bucket) else b
        chosen.append(pick)
        pool.remove(pick)
    return chosen
