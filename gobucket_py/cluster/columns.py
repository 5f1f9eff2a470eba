"""FILL batches on the wire, column by column.

A batch travels as ``cols``: one list per field instead of a list per task.
A column whose value is the same for every task (the bucket, the type, the
times, the data when there is none, in the common case) travels once, as a
one-value list. Both sides do a few C-speed passes per column instead of
Python work per task, the receiver decodes no list per task, and the body is
about a third smaller.

- Overflow and handoff batches (``FILL``): six columns -- bucket, task id,
  type, packed data, run_after, life_span (:func:`pack_fill`,
  :func:`read_fill`). A receiver takes the older form, ``items`` (a list
  per task), as well; a sender falls back to it for a peer that refuses
  ``cols`` (see :mod:`.forward`).
- Backup batches (``FILL`` with ``backup``): eight columns -- bucket, task
  id, packed data, run_after, life_span, origin, rank, holders
  (:func:`pack_columns`, :func:`read_columns`) -- and, beside them,
  ``stamps``: each task's *stamp*, its fill time on the primary's loop
  clock, which tells one task of an id from another filled on the same
  node in the same incarnation (:func:`pack_stamps`; a node of an earlier
  version sends none, and ignores them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, cast, overload

from ..codec import PACKED_NONE
from ..config import MAX_SECONDS
from ..errors import ProtocolError
from ..task import TaskType

__all__ = ["BackupBatch", "Columns", "FillBatch", "FillColumns", "join_fill", "pack_columns",
           "pack_fill", "pack_stamps", "read_columns", "read_fill", "read_stamps"]

#: A FILL batch's columns, in order: the fields of a FILL item (see :mod:`.items`).
FILL_COLUMNS = ("bucket", "id", "type", "data", "run_after", "life_span")
#: FILL columns that may travel as one value for the whole batch (not the ids).
_FILL_SHARED = frozenset({0, 2, 3, 4, 5})
_FILL_FIELDS = tuple(map(itemgetter, range(len(FILL_COLUMNS))))
#: The task type of each wire code.
_TYPES = (TaskType.IMMEDIATE, TaskType.TIME_BOMB)


class FillColumns(Sequence[tuple[Any, ...]]):
    """FILL items of one shape: the same bucket, type code, packed data,
    run_after and life_span, only the ids differ (the common case of
    overflowing single fills: no data, the bucket's times). Held as the ids
    and the shared fields -- no tuple per item -- from the fill to the wire;
    a sequence of items to the forwarder, which slices it into batches."""

    __slots__ = ("bucket", "code", "data", "ids", "life_span", "run_after")

    def __init__(self, bucket: str, code: int, data: bytes, run_after: float,
                 life_span: float, ids: list[str]) -> None:
        self.bucket, self.code, self.data = bucket, code, data
        self.run_after, self.life_span, self.ids = run_after, life_span, ids

    def shape(self) -> tuple[Any, ...]:
        """The item of an empty id: the fields every item shares."""
        return (self.bucket, "", self.code, self.data, self.run_after, self.life_span)

    def like(self, ids: list[str]) -> FillColumns:
        """Items of this shape with ``ids`` (the list itself, not a copy)."""
        return FillColumns(self.bucket, self.code, self.data, self.run_after, self.life_span,
                           ids)

    def item(self, task_id: str) -> tuple[Any, ...]:
        """The item of this shape with id ``task_id``."""
        return (self.bucket, task_id, self.code, self.data, self.run_after, self.life_span)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> tuple[Any, ...]: ...
    @overload
    def __getitem__(self, index: slice) -> FillColumns: ...

    def __getitem__(self, index: int | slice) -> tuple[Any, ...] | FillColumns:
        if isinstance(index, slice):
            return self.like(self.ids[index])
        return self.item(self.ids[index])

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        bucket, code, data = self.bucket, self.code, self.data
        run_after, life_span = self.run_after, self.life_span
        return ((bucket, task_id, code, data, run_after, life_span) for task_id in self.ids)


def join_fill(parts: Sequence[Sequence[tuple[Any, ...]]]) -> Sequence[tuple[Any, ...]]:
    """The items of ``parts`` in order: one :class:`FillColumns` if they all
    are, of one shape; else a list of items."""
    first = parts[0]
    if type(first) is FillColumns:
        shape = first.shape()
        same = [p for p in parts if type(p) is FillColumns and p.shape() == shape]
        if len(same) == len(parts):
            ids: list[str] = []
            for part in same:
                ids += part.ids
            return first.like(ids)
    return [item for part in parts for item in part]


def pack_fill(items: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """The ``cols`` of a FILL batch of items ``(bucket, id, type code, packed
    data, run_after, life_span)``: a pass per column."""
    if type(items) is FillColumns:
        return [[items.bucket], items.ids, [items.code], [items.data], [items.run_after],
                [items.life_span]]
    size = len(items)
    out: list[list[Any]] = []
    for index, field in enumerate(_FILL_FIELDS):
        column = list(map(field, items))
        first = column[0]
        out.append([first] if index in _FILL_SHARED and column.count(first) == size else column)
    return out


class _Checked:
    """A checked ``cols`` batch of ``size`` tasks: its ``columns``, each one
    value per task or one for all. Iterates its tasks as rows."""

    __slots__ = ("columns", "size")

    def __init__(self, columns: list[list[Any]], size: int) -> None:
        self.columns = columns
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        size = self.size
        return zip(*(column if len(column) == size else itertools.repeat(column[0], size)
                     for column in self.columns), strict=True)


class FillBatch(_Checked):
    """A checked FILL ``cols`` batch, its data unpacked: ``columns`` are
    bucket, id, type (a :class:`~gobucket_py.TaskType`), data, run_after,
    life_span, each either one value per task or one for all (``shared``).
    Iterates its tasks as 6-field rows, as :func:`~.items.decode_item` gives."""

    __slots__ = ()

    def __getitem__(self, part: slice) -> FillBatch:
        """The tasks in ``part`` (a slice with no step), as a batch."""
        size = self.size
        start, stop, _ = part.indices(size)
        return FillBatch([column if len(column) != size else column[start:stop]
                          for column in self.columns], max(0, stop - start))

    def shared(self, index: int) -> bool:
        """Does column ``index`` hold one value for every task?"""
        return len(self.columns[index]) == 1 and self.size > 1

    def column(self, index: int) -> Sequence[Any]:
        """Column ``index`` with one value per task."""
        column = self.columns[index]
        return column if len(column) == self.size else [column[0]] * self.size


def read_fill(raw: object, unpack: Callable[[bytes], Any]) -> FillBatch:
    """Check a received FILL ``cols`` and unpack its data with ``unpack``;
    ``ProtocolError`` (a 400) naming the fault if it is malformed."""
    columns, size = _shaped(raw, FILL_COLUMNS, _FILL_SHARED, "fill")
    _, _, codes, payloads, run_afters, life_spans = columns
    if not _all(int, codes) or not set(codes) <= {0, 1}:
        raise ProtocolError("fill item type must be 0 or 1")
    codes[:] = [_TYPES[code] for code in codes]
    if not _all(bytes, payloads):
        raise ProtocolError("fill item data must be msgpack bytes")
    if len(payloads) == 1 and payloads[0] == PACKED_NONE:
        payloads[0] = None  # (immutable: one for all; any other data is unpacked per task)
    else:
        if len(payloads) != size:
            payloads[:] = payloads * size
        try:
            payloads[:] = [None if p == PACKED_NONE else unpack(p) for p in payloads]
        except Exception as exc:  # msgpack, the ext types and a serializer raise many types
            detail = f"{type(exc).__name__}: {exc}"[:200]
            raise ProtocolError(f"fill item data is malformed: {detail}") from exc
    _numbers("run_after", run_afters, "fill")
    _numbers("life_span", life_spans, "fill")
    return FillBatch(columns, size)

#: The columns, in order (a backup's FILL item without its type, which is
#: always a time-bomb, then origin, rank and the node ids of all its backup
#: holders in rank order).
COLUMNS = ("bucket", "id", "data", "run_after", "life_span", "origin", "rank", "holders")
#: Columns that may travel as one value for the whole batch.
_SHARED = frozenset({0, 2, 5, 6, 7})
#: Each column's field of a 10-field backup item (the type, 2, is dropped;
#: the stamp, 9, travels beside the columns).
_FIELDS = tuple(map(itemgetter, (0, 1, 3, 4, 5, 6, 7, 8)))
_STAMP = itemgetter(9)


class Columns(Sequence[tuple[Any, ...]]):
    """Backup items of one bucket, origin and holders, rank 0, held column by
    column as the primary builds them (no tuple per item): a sequence of
    items to the forwarder, which slices it into batches, and packed as is."""

    __slots__ = ("bucket", "holders", "ids", "life_spans", "origin", "payloads", "run_afters",
                 "stamps")

    def __init__(self, bucket: str, origin: str, holders: tuple[str, ...], ids: list[str],
                 payloads: list[bytes], run_afters: list[float], life_spans: list[float],
                 stamps: list[float]) -> None:
        self.bucket, self.origin, self.holders = bucket, origin, holders
        self.ids, self.payloads = ids, payloads
        self.run_afters, self.life_spans, self.stamps = run_afters, life_spans, stamps

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> tuple[Any, ...]: ...
    @overload
    def __getitem__(self, index: slice) -> Columns: ...

    def __getitem__(self, index: int | slice) -> tuple[Any, ...] | Columns:
        if isinstance(index, slice):
            return Columns(self.bucket, self.origin, self.holders, self.ids[index],
                           self.payloads[index], self.run_afters[index],
                           self.life_spans[index], self.stamps[index])
        return (self.bucket, self.ids[index], 1, self.payloads[index], self.run_afters[index],
                self.life_spans[index], self.origin, 0, self.holders, self.stamps[index])


def pack_columns(items: Sequence[tuple[Any, ...]]) -> list[Any]:
    """The ``cols`` of a batch of backup items ``(bucket, id, 1, packed data,
    run_after, life_span, origin, rank, holders)``. (A pass per column, not
    ``zip(*items)``: that makes an iterator -- a GC-tracked object -- per item.)"""
    if isinstance(items, Columns):
        payloads = items.payloads
        first = payloads[0]
        return [(items.bucket,), items.ids,
                (first,) if payloads.count(first) == len(payloads) else payloads,
                items.run_afters, items.life_spans, (items.origin,), (0,), (items.holders,)]
    size = len(items)
    out: list[Any] = []
    for index, field in enumerate(_FIELDS):
        column = list(map(field, items))
        first = column[0]
        out.append((first,) if index in _SHARED and column.count(first) == size else column)
    return out


def pack_stamps(items: Sequence[tuple[Any, ...]]) -> list[float]:
    """The ``stamps`` of a batch of backup items: one per item, or one for
    all when they are the same (tasks filled in one loop pass)."""
    column = items.stamps if isinstance(items, Columns) else list(map(_STAMP, items))
    first = column[0]
    return [first] if column.count(first) == len(column) else list(column)


class BackupBatch(_Checked):
    """A checked backup ``cols`` batch: iterates its backups as 8-field rows.
    ``stamps``: each backup's stamp (see the module docstring), None for
    all if the sender gave none."""

    __slots__ = ("stamps",)

    def __init__(self, columns: list[list[Any]], size: int, stamps: list[float] | None
                 ) -> None:
        super().__init__(columns, size)
        self.stamps = stamps


def _all(kind: type, column: list[Any]) -> bool:
    return set(map(type, column)) <= {kind}


def _shaped(raw: object, names: tuple[str, ...], shared: frozenset[int], what: str
            ) -> tuple[list[list[Any]], int]:
    """``raw`` checked to be one list per column of ``names`` (bucket and id
    first), each holding a value per task -- or one for all, for a column in
    ``shared`` -- with string buckets and ids; and the number of tasks."""
    if type(raw) is not list or len(raw) != len(names) or not _all(list, raw):
        raise ProtocolError(f"{what} cols must be a list of {len(names)} lists "
                            f"({', '.join(names)})")
    size = len(raw[1])
    if not size:
        raise ProtocolError(f"a {what} batch must hold at least one task")
    for index, column in enumerate(raw):
        if len(column) != size and not (index in shared and len(column) == 1):
            raise ProtocolError(f"{what} column {names[index]} holds {len(column)} values "
                                f"for {size} tasks")
    buckets, ids = raw[0], raw[1]
    if not _all(str, buckets) or not _all(str, ids) or "" in ids:
        raise ProtocolError(f"{what} item bucket and id must be strings")
    return raw, size


def _numbers(name: str, column: list[Any], what: str = "backup") -> None:
    """Check a time column in place: floats (ints made floats), 0 <= x < 1e12."""
    kinds = set(map(type, column))
    if not kinds <= {float, int}:
        bad = next(v for v in column if type(v) is not float and type(v) is not int)
        raise ProtocolError(f"{what} item {name} must be a number >= 0, got {bad!r}")
    if int in kinds:
        try:
            column[:] = map(float, column)
        except OverflowError:
            raise ProtocolError(f"{what} item {name} must be a number >= 0 and < 1e12"
                               ) from None
    total = sum(column)
    if total != total or min(column) < 0.0 or max(column) >= MAX_SECONDS:  # NaN makes the sum NaN
        bad = next(v for v in column if not 0.0 <= v < MAX_SECONDS)
        raise ProtocolError(f"{what} item {name} must be a number >= 0, got {bad!r}")


def read_columns(raw: object, stamps: object = None) -> BackupBatch:
    """Check a received ``cols`` and ``stamps`` (None: not sent);
    ``ProtocolError`` (a 400) naming the fault if either is malformed."""
    columns, size = _shaped(raw, COLUMNS, _SHARED, "backup")
    _, _, payloads, run_afters, life_spans, origins, ranks, holders = columns
    if not _all(bytes, payloads):
        raise ProtocolError("backup item data must be msgpack bytes")
    _numbers("run_after", run_afters)
    _numbers("life_span", life_spans)
    if not _all(str, origins) or not _all(int, ranks) or not set(ranks) <= {0, 1}:
        raise ProtocolError("backup item origin must be a string and rank 0 or 1")
    for names in holders:
        if type(names) is not list or not 0 < len(names) <= 2 or not _all(str, names):
            raise ProtocolError("backup item holders must be a list of 1 or 2 node ids")
    if stamps is None:
        return BackupBatch(columns, size, None)
    if type(stamps) is list and len(stamps) == 1:
        stamps = stamps * size  # one for all (one object: float() keeps a float as is)
    checked = read_stamps(stamps, size, "backup")
    if checked is None or None in checked:
        raise ProtocolError(f"backup stamps must be a list of 1 or {size} numbers")
    return BackupBatch(columns, size, cast("list[float]", checked))


def read_stamps(raw: object, count: int, what: str, field: str = "stamps"
                ) -> list[float | None] | None:
    """The optional ``stamps`` of a message about ``count`` tasks: each
    task's stamp (see the module docstring), or None where not known; None
    if not sent. ``ProtocolError`` (a 400) if malformed. (Also reads other
    per-task numbers, such as the ``lives`` of backup notes: ``field``.)"""
    if raw is None:
        return None
    bad = ProtocolError(f"{what} {field} must be a list of finite numbers (or nil), one per "
                        "task")
    if (not isinstance(raw, list) or len(raw) != count
            or not all(s is None or type(s) in (float, int) for s in raw)):
        raise bad
    try:
        stamps = [None if s is None else float(s) for s in raw]
    except OverflowError:
        raise bad from None
    if not all(s is None or math.isfinite(s) for s in stamps):
        raise bad
    return stamps
