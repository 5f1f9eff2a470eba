"""The wire forms of a task: FILL items (to forward) and task infos (get).

A FILL item is ``(bucket, task_id, type, packed data, run_after, life_span)``:
type 0 is immediate and 1 a time-bomb, the data is packed on its own by the
group's :class:`~gobucket_py.codec.Codec` (so a receiver can bound its
decoding, and ``datetime``, ``UUID``... arrive as themselves), and the times
are seconds relative to receipt, so clock skew between nodes does not matter.
"""

from __future__ import annotations

from typing import Any

from ..bucket import TaskBucket
from ..codec import PACKED_NONE, Codec
from ..config import MAX_SECONDS, check_times
from ..errors import ProtocolError
from ..task import TaskInfo, TaskState, TaskType
from .forward import Item

__all__ = ["PACKED_NONE", "TYPES", "check_item", "decode_item", "encode_item", "pack_info",
           "task_times", "unpack_info"]

TYPES = (TaskType.IMMEDIATE, TaskType.TIME_BOMB)


def task_times(bucket: TaskBucket, task_type: TaskType, run_after: float | None,
               life_span: float | None) -> tuple[float, float]:
    """``(run_after, life_span)`` for a task that overflows, as relative seconds."""
    config = bucket.config
    if life_span is None and run_after is None:  # the common case, first
        if task_type is TaskType.TIME_BOMB:
            return config.run_after, config.life_span
        if task_type is TaskType.IMMEDIATE:
            return 0.0, config.life_span
    immediate = task_type is TaskType.IMMEDIATE
    if not immediate and task_type is not TaskType.TIME_BOMB:
        raise TypeError(f"task_type must be a TaskType, got {task_type!r}")
    if immediate and run_after:
        raise ValueError("run_after applies to TaskType.TIME_BOMB tasks only")
    ls, ra = check_times(config.life_span if life_span is None else life_span,
                         0.0 if immediate else
                         config.run_after if run_after is None else run_after)
    return ra, ls


def encode_item(bucket: str, task_id: str, data: Any, task_type: TaskType, run_after: float,
                life_span: float, codec: Codec) -> Item:
    """The wire form of one task to forward; ``TypeError`` if it cannot travel."""
    if type(task_id) is not str or not task_id:
        raise TypeError(f"task_id must be a non-empty str, got {task_id!r}")
    try:
        payload = PACKED_NONE if data is None else codec.pack(data)
    except TypeError as exc:
        raise TypeError(f"bucket {bucket!r} is full here and task {task_id!r} cannot be "
                        f"forwarded: {exc}") from exc
    return (bucket, task_id, 0 if task_type is TaskType.IMMEDIATE else 1, payload, run_after,
            life_span)


def check_item(raw: object) -> tuple[str, str, TaskType, bytes, float, float]:
    """Check one received FILL item, its data still packed; ``ProtocolError``
    (a 400) if malformed."""
    if not isinstance(raw, list) or len(raw) != 6:
        raise ProtocolError("each fill item must be a 6-item list")
    bucket, task_id, type_code, payload, run_after, life_span = raw
    if not isinstance(bucket, str) or not isinstance(task_id, str) or not task_id:
        raise ProtocolError("fill item bucket and id must be strings")
    if type(type_code) is not int or type_code not in (0, 1):
        raise ProtocolError(f"fill item type must be 0 or 1, got {type_code!r}")
    if not isinstance(payload, bytes):
        raise ProtocolError("fill item data must be msgpack bytes")
    for name, value in (("run_after", run_after), ("life_span", life_span)):
        if (type(value) is not float and type(value) is not int) or not 0 <= value < MAX_SECONDS:
            raise ProtocolError(f"fill item {name} must be a number >= 0, got {value!r}")
    return bucket, task_id, TYPES[type_code], payload, float(run_after), float(life_span)


def decode_item(raw: object, codec: Codec) -> tuple[str, str, TaskType, Any, float, float]:
    """Check one received FILL item and unpack its data with ``codec``;
    ``ProtocolError`` (a 400) if malformed."""
    bucket, task_id, task_type, payload, run_after, life_span = check_item(raw)
    try:
        data = None if payload == PACKED_NONE else codec.unpack(payload)
    except Exception as exc:  # msgpack, the ext types and a serializer raise many types
        detail = f"{type(exc).__name__}: {exc}"[:200]
        raise ProtocolError(f"fill item data is malformed: {detail}") from exc
    return bucket, task_id, task_type, data, run_after, life_span


def pack_info(info: TaskInfo) -> list[Any]:
    """A :class:`TaskInfo` as a msgpack list (no payload)."""
    return [info.bucket, info.task_id, info.node_id,
            None if info.type is None else info.type.value, info.state.value,
            info.seconds_to_run, info.seconds_left]


def unpack_info(raw: object) -> TaskInfo:
    """The inverse of :func:`pack_info`; ``ProtocolError`` if malformed."""
    if not isinstance(raw, list) or len(raw) != 7:
        raise ProtocolError("malformed task info")
    bucket, task_id, node, type_, state, to_run, left = raw
    try:
        return TaskInfo(str(bucket), str(task_id), str(node),
                        None if type_ is None else TaskType(type_), TaskState(state),
                        float(to_run), float(left))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed task info: {exc}") from exc
