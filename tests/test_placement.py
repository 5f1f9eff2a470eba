"""Two random choices (``placement.pick``): which peer an overflowing task goes to."""

from __future__ import annotations

import random
from collections import Counter
from itertools import combinations
from typing import Any

from gobucket_py.cluster.placement import pick


def test_one_candidate_is_the_choice() -> None:
    pool: list[Any] = ["a"]
    assert pick(pool, lambda m: 0, random.Random(1)) == "a"


def test_of_two_candidates_the_roomier_one_ties_drawn_at_random() -> None:
    rng = random.Random(7)
    rooms = {"a": 3, "b": 5}
    pool: list[Any] = ["a", "b"]
    assert {pick(pool, rooms.__getitem__, rng) for _ in range(200)} == {"b"}
    rooms["a"] = 9
    assert {pick(pool, rooms.__getitem__, rng) for _ in range(200)} == {"a"}
    rooms["b"] = 9
    ties = Counter(pick(pool, rooms.__getitem__, rng) for _ in range(4000))
    assert set(ties) == {"a", "b"} and abs(ties["a"] - 2000) < 200, ties


def test_of_more_candidates_two_distinct_are_drawn_uniformly() -> None:
    rng = random.Random(11)
    pool: list[Any] = ["a", "b", "c", "d"]
    rooms = {"a": 1, "b": 2, "c": 3, "d": 4}
    compared: list[str] = []

    def room(member: str) -> int:
        compared.append(member)
        return rooms[member]

    pairs: Counter[frozenset[str]] = Counter()
    picked: Counter[str] = Counter()
    n = 12_000
    for _ in range(n):
        compared.clear()
        picked[pick(pool, room, rng)] += 1
        assert len(compared) == 2 and compared[0] != compared[1]
        pairs[frozenset(compared)] += 1
    # Each of the 6 pairs about as often; a member wins the pairs it is the
    # roomier of: d 3/6, c 2/6, b 1/6, a never.
    assert set(pairs) == {frozenset(p) for p in combinations(pool, 2)}
    assert all(abs(count - n / 6) < n / 6 * 0.1 for count in pairs.values()), pairs
    assert picked["a"] == 0
    for member, share in (("b", 1 / 6), ("c", 2 / 6), ("d", 3 / 6)):
        assert abs(picked[member] / n - share) < 0.02, picked
