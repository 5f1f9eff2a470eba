"""FILL batches column by column (:mod:`gobucket_py.cluster.columns`): what
the sender packs reads back as the same tasks, shared values travel once,
slices of a batch are batches, and a malformed batch is refused naming its
fault."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from gobucket_py import TaskType
from gobucket_py.cluster.columns import FillBatch, FillColumns, join_fill, pack_fill, read_fill
from gobucket_py.cluster.forward import _fitting, _weight
from gobucket_py.cluster.protocol import decode, encode
from gobucket_py.errors import ProtocolError

NONE = msgpack.packb(None)
IMMEDIATE, BOMB = TaskType.IMMEDIATE, TaskType.TIME_BOMB


def wire(cols: list[list[Any]]) -> Any:
    """``cols`` as the receiver gets it: encoded, then decoded."""
    return decode(encode({"v": 1, "cols": cols}), 1 << 20)["cols"]


def test_a_common_batch_sends_one_value_for_what_all_its_tasks_share() -> None:
    items = [("jobs", f"t{i}", 1, NONE, 30.0, 60.0) for i in range(300)]
    cols = pack_fill(items)
    assert cols == [["jobs"], [f"t{i}" for i in range(300)], [1], [NONE], [30.0], [60.0]]
    batch = read_fill(wire(cols), msgpack.unpackb)
    assert len(batch) == 300
    assert all(batch.shared(i) for i in (0, 2, 3, 4, 5)) and not batch.shared(1)
    assert list(batch) == [("jobs", f"t{i}", BOMB, None, 30.0, 60.0) for i in range(300)]
    rows_body = encode({"v": 1, "items": items})
    assert len(encode({"v": 1, "cols": cols})) < len(rows_body) / 3


def test_a_mixed_batch_reads_back_task_by_task() -> None:
    items = [("jobs", "a", 0, msgpack.packb({"x": 1}), 0.0, 5.0),
             ("other", "b", 1, NONE, 2.5, 9.0),
             ("jobs", "c", 1, msgpack.packb([1, 2]), 3.0, 9.0)]
    cols = pack_fill(items)
    assert all(len(column) == 3 for column in cols)
    rows = list(read_fill(wire(cols), msgpack.unpackb))
    assert rows == [("jobs", "a", IMMEDIATE, {"x": 1}, 0.0, 5.0),
                    ("other", "b", BOMB, None, 2.5, 9.0),
                    ("jobs", "c", BOMB, [1, 2], 3.0, 9.0)]


def test_shared_data_is_unpacked_once_per_task_never_aliased() -> None:
    """Equal payloads travel once; each task still gets its own object (a
    task mutating its data must not change another's)."""
    packed = msgpack.packb({"n": 1})
    cols = pack_fill([("jobs", f"t{i}", 1, packed, 1.0, 2.0) for i in range(3)])
    assert cols[3] == [packed]
    data = read_fill(wire(cols), msgpack.unpackb).column(3)
    assert data == [{"n": 1}] * 3
    assert len({id(d) for d in data}) == 3


def test_times_sent_as_ints_read_as_floats() -> None:
    batch = read_fill([["jobs"], ["a", "b"], [1], [NONE], [3, 4], [10]], msgpack.unpackb)
    rows = list(batch)
    assert rows == [("jobs", "a", BOMB, None, 3.0, 10.0), ("jobs", "b", BOMB, None, 4.0, 10.0)]
    assert all(type(r[4]) is float and type(r[5]) is float for r in rows)


def test_a_slice_of_a_batch_is_a_batch_of_those_tasks() -> None:
    items = [("jobs", f"t{i}", 1, NONE, float(i), 60.0) for i in range(10)]
    batch = read_fill(wire(pack_fill(items)), msgpack.unpackb)
    part = batch[3:7]
    assert isinstance(part, FillBatch) and len(part) == 4
    assert list(part) == [("jobs", f"t{i}", BOMB, None, float(i), 60.0) for i in range(3, 7)]
    assert part.shared(0) and not part.shared(4)
    tail = batch[9:20]
    assert list(tail) == [("jobs", "t9", BOMB, None, 9.0, 60.0)]
    assert len(batch[5:5]) == 0 and list(batch[5:5]) == []


GOOD = ["jobs", "t", 1, NONE, 5.0, 10.0]


def columns(item: list[Any], n: int = 1) -> list[list[Any]]:
    """Columns of ``n`` copies of ``item`` (ids made distinct), one value per task."""
    return [[f"{item[1]}{i}" if k == 1 and isinstance(item[1], str) else item[k]
             for i in range(n)] for k in range(6)]


@pytest.mark.parametrize("index, value, message", [
    (0, 7, "bucket and id must be strings"),
    (1, 7, "bucket and id must be strings"),
    (1, "", "bucket and id must be strings"),
    (2, 2, "type must be 0 or 1"),
    (2, True, "type must be 0 or 1"),
    (2, 1.0, "type must be 0 or 1"),
    (3, "text", "data must be msgpack bytes"),
    (3, b"\xc1", "data is malformed"),
    (3, msgpack.packb([1, 2])[:-1], "data is malformed"),
    (4, -1, "run_after must be a number >= 0"),
    (4, True, "run_after must be a number >= 0"),
    (5, float("nan"), "life_span must be a number >= 0"),
    (5, float("inf"), "life_span must be a number >= 0"),
    (5, 10**13, "life_span must be a number >= 0"),
    (5, "10", "life_span must be a number >= 0"),
])
def test_a_malformed_fill_batch_is_refused_with_its_fault(index: int, value: Any,
                                                          message: str) -> None:
    item = list(GOOD)
    item[index] = value
    if index != 1:
        with pytest.raises(ProtocolError, match=message):
            read_fill(columns(item), msgpack.unpackb)  # in every task of the batch
        shared = columns(GOOD, 3)
        shared[index] = [value]  # as the one value all share
        with pytest.raises(ProtocolError, match=message):
            read_fill(shared, msgpack.unpackb)
    mixed = columns(GOOD, 3)
    mixed[index][1] = value  # in one task only, among good ones
    with pytest.raises(ProtocolError, match=message):
        read_fill(mixed, msgpack.unpackb)


@pytest.mark.parametrize("cols, message", [
    ("cols", "6 lists"),
    ({"bucket": ["jobs"]}, "6 lists"),
    (columns(GOOD)[:5], "6 lists"),
    ([*columns(GOOD)[:5], "x"], "6 lists"),
    ([[], [], [], [], [], []], "at least one task"),
    ([*columns(GOOD, 3)[:4], [1.0, 2.0], columns(GOOD, 3)[5]], "run_after holds 2 values"),
    ([["jobs"], ["a"], [1], [NONE, NONE], [1.0], [2.0]], "data holds 2 values for 1 tasks"),
    ([["jobs"], ["a", "b"], [1], [NONE], [1.0], [2.0, 3.0, 4.0]], "life_span holds 3"),
])
def test_a_misshapen_fill_batch_is_refused(cols: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        read_fill(cols, msgpack.unpackb)


# -- items of one shape (FillColumns): the sender's form of single fills ------------------


def shaped(n: int, start: int = 0) -> FillColumns:
    return FillColumns("jobs", 1, NONE, 30.0, 60.0, [f"t{i}" for i in range(start, start + n)])


def test_items_of_one_shape_are_the_items_they_stand_for() -> None:
    columns = shaped(5)
    rows = [("jobs", f"t{i}", 1, NONE, 30.0, 60.0) for i in range(5)]
    assert list(columns) == rows and len(columns) == 5
    assert columns[3] == rows[3] and list(columns[1:4]) == rows[1:4]
    assert columns[1:4].ids is not columns.ids  # a slice owns its ids
    assert pack_fill(columns) == pack_fill(rows)
    assert list(read_fill(wire(pack_fill(columns[2:])), msgpack.unpackb)) == [
        ("jobs", f"t{i}", BOMB, None, 30.0, 60.0) for i in range(2, 5)]


def test_joined_parts_stay_columns_only_when_they_share_a_shape() -> None:
    joined = join_fill([shaped(3), shaped(2, 3)])
    assert type(joined) is FillColumns and joined.ids == [f"t{i}" for i in range(5)]
    other = FillColumns("jobs", 0, NONE, 0.0, 60.0, ["i0"])
    mixed = join_fill([shaped(2), other, [("jobs", "r", 1, NONE, 1.0, 2.0)]])
    assert mixed == [*shaped(2), ("jobs", "i0", 0, NONE, 0.0, 60.0),
                     ("jobs", "r", 1, NONE, 1.0, 2.0)]


def test_the_forwarder_weighs_columns_as_it_weighs_their_items() -> None:
    columns = FillColumns("jobs", 1, msgpack.packb("x" * 50), 1.0, 2.0,
                          [f"id-{i}" for i in range(40)])
    assert _weight(columns, 40) == _weight(list(columns), 40)
    budget = _weight(columns, 17) + 3
    assert _fitting(columns, 40, budget) == _fitting(list(columns), 40, budget)
