"""The wire format between peers: message kinds, the msgpack codec, validation.

Every request is an HTTP ``POST /v1/<kind>`` whose body is a msgpack map with
the protocol version ``"v"``, the sender's :class:`NodeHeader` ``"from"`` and
the fields of that kind. Replies are msgpack maps with ``"v"`` and ``"from"``
too. Decoding is bounded (sizes, no ext types) and every field is checked, so
malformed input becomes a :class:`~gobucket_py.ProtocolError` (HTTP 400),
never a crash. A task's data rides inside as bytes, packed on its own by the
group's :class:`~gobucket_py.Codec` (whose few ext types are its own, see
:mod:`gobucket_py.codec`). Nothing but msgpack crosses the wire; never pickle.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

import msgpack

from ..config import MAX_SECONDS
from ..errors import PeerUnavailableError, ProtocolError

__all__ = ["PROTOCOL_VERSION", "Kind", "NodeHeader", "boot_started", "decode", "decode_reply",
           "encode", "new_boot_id", "slices"]

#: Bumped on any incompatible change; a peer speaking another version gets 400.
PROTOCOL_VERSION = 1

#: Limits applied while decoding, before any object is built.
MAX_STR = 1 << 20
MAX_ITEMS = 100_000

T = TypeVar("T")


class Kind(IntEnum):
    """Message kinds; each is served at ``/v1/<name>``."""

    PING = 1       #: probe; carries membership and capacity, answered with the same
    PING_REQ = 2   #: "probe that node for me" (SWIM's indirect probe)
    FILL = 3       #: a batch of tasks to accept (overflow or handoff)
    DRAIN = 4      #: drain one task held by the receiver
    GET = 5        #: describe one task held by the receiver
    LEAVE = 6      #: the sender is stopping gracefully
    SUBMIT = 7     #: a client asks the receiver to fill as the origin (may overflow)
    STATS = 8      #: per-bucket counters of the receiver
    SETTLE = 9     #: "did you take FILL batch N?"; if not yet, it is void for good
    ENDED = 10     #: "these tasks you forwarded me ended (or moved)"; the origin drops routes
    BACKUP_NOTE = 11  #: primary <-> backup holder: "it started", "drop it", "I dropped yours"

    @property
    def path(self) -> str:
        return f"/v1/{self.name.lower().replace('_', '-')}"


PATHS = {kind.path: kind for kind in Kind}


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack ext type {code} is not allowed")


def encode(message: dict[str, Any]) -> bytes:
    """Pack a message. Raises :class:`TypeError` naming what cannot be packed."""
    try:
        return msgpack.packb(message, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"not msgpack-serializable: {exc}") from exc


def decode(body: bytes, max_body: int) -> dict[str, Any]:
    """Unpack and check a message body: a map with the right protocol version."""
    if len(body) > max_body:
        raise ProtocolError(f"body of {len(body)} bytes exceeds {max_body}")
    try:
        message = msgpack.unpackb(
            body, raw=False, strict_map_key=True, ext_hook=_no_ext, use_list=True,
            max_str_len=MAX_STR, max_bin_len=max_body,
            max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS, max_ext_len=0)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for bad input
        raise ProtocolError(f"malformed msgpack body: {type(exc).__name__}: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"message must be a map, got {type(message).__name__}")
    version = message.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not {PROTOCOL_VERSION}")
    return message


def decode_reply(addr: str, kind: Kind, body: bytes, max_body: int) -> dict[str, Any]:
    """:func:`decode` for a peer's 200 reply. A reply that cannot be read
    (too large, malformed, another version) says nothing of what the peer
    did: it answered, so it had the request and may have applied it. That
    is :class:`~gobucket_py.PeerUnavailableError` with ``maybe_delivered``,
    never the :class:`~gobucket_py.ProtocolError` of a refused request (a
    400, which applied nothing): a forward treated as refused would be
    placed again elsewhere."""
    try:
        return decode(body, max_body)
    except ProtocolError as exc:
        raise PeerUnavailableError(f"peer {addr} answered {kind.name} with a reply that "
                                   f"cannot be read: {exc}") from exc


def field(message: dict[str, Any], name: str, kind: type[T]) -> T:
    """``message[name]``, checked to be of ``kind`` (bool is not an int)."""
    value = message.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def number(message: dict[str, Any], name: str) -> float:
    """A finite number >= 0."""
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 <= value < MAX_SECONDS):
        raise ProtocolError(f"field {name!r} must be a number >= 0, got {value!r}")
    return float(value)


#: The longest node id, boot id or address a peer may send.
MAX_NAME = 256


def new_boot_id() -> str:
    """A boot id for a node starting now: 16 hex digits of the wall clock in
    nanoseconds, ``-``, then 16 random ones. Peers order a node's boots by
    the first part (see :func:`boot_started`), so a late message from an
    earlier boot is not taken for a restart back to it; the random part
    keeps two starts within one clock tick apart."""
    return f"{time.time_ns():016x}-{secrets.token_hex(8)}"


def boot_started(boot: str) -> int | None:
    """The start time (ns) a boot id made by :func:`new_boot_id` carries;
    None for one made otherwise (an earlier version's, a test's)."""
    if len(boot) != 33 or boot[16] != "-":
        return None
    try:
        return int(boot[:16], 16)
    except ValueError:
        return None


def is_name(value: object) -> bool:
    """A node id, boot id or address as it may appear on the wire: a
    non-empty string of at most ``MAX_NAME`` printable characters, no
    whitespace (it goes into ``key=value`` log lines as it is)."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_NAME and value.isprintable()
            and not any(c.isspace() for c in value))


@dataclass(slots=True)
class NodeHeader:
    """Who sent a message: identity, incarnation, state and free capacity.

    ``boot`` changes on every start, so a fast restart is seen as a new
    incarnation whose old tasks are gone. ``free`` maps each bucket to its
    free slots; it rides on every message so placement data stays fresh.
    """

    node_id: str
    boot: str
    addr: str
    incarnation: int
    leaving: bool
    free: dict[str, int]

    def pack(self) -> list[Any]:
        return [self.node_id, self.boot, self.addr, self.incarnation, self.leaving, self.free]

    @classmethod
    def unpack(cls, raw: object) -> NodeHeader:
        if not isinstance(raw, list) or len(raw) != 6:
            raise ProtocolError("field 'from' must be a 6-item node header")
        node_id, boot, addr, inc, leaving, free = raw
        if not (is_name(node_id) and (boot == "" or is_name(boot)) and is_name(addr)
                and isinstance(inc, int) and not isinstance(inc, bool) and inc >= 0
                and isinstance(leaving, bool) and isinstance(free, dict)):
            raise ProtocolError("malformed node header in field 'from'")
        for key, value in free.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int):
                raise ProtocolError("node header capacity must map bucket names to ints")
        return cls(node_id, boot, addr, inc, leaving, free)


#: Gossip entries: ``[node_id, boot, addr, incarnation, state]``.
def check_gossip(raw: object) -> list[tuple[str, str, str, int, str, str]]:
    """Validate a ``"members"`` (whole list) or ``"updates"`` (piggyback)
    list: entries ``[node id, boot, addr, incarnation, state]``, optionally
    followed by the node id of whoever suspects it (``""`` if absent)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ProtocolError("field 'members' must be a list")
    out = []
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) in (5, 6)):
            raise ProtocolError("each member entry must have 5 or 6 items")
        node_id, boot, addr, inc, state = entry[:5]
        by = entry[5] if len(entry) == 6 else ""
        if not (is_name(node_id) and (boot == "" or is_name(boot)) and is_name(addr)
                and isinstance(inc, int) and not isinstance(inc, bool)
                and isinstance(state, str) and (by == "" or is_name(by))):
            raise ProtocolError("malformed member entry")
        out.append((node_id, boot, addr, inc, state, by))
    return out


#: Items per slice at most (well under ``MAX_ITEMS``, a list's limit in a body).
SLICE_ITEMS = 10_000


def slices(names: Sequence[Sequence[str]], max_body: int) -> list[slice]:
    """``names`` (rows of strings: [bucket, task id, ...], each with a few
    small fields beside it) cut into runs whose message stays well within
    ``max_body``:
    the notes of many tasks due at once, or a takeover check about every
    task of a dead primary, could be far larger than one request may be."""
    budget = max(1, max_body // 4)
    cuts: list[slice] = []
    start, used = 0, 0
    for index, row in enumerate(names):
        weight = sum(map(_size, row)) + 64  # (its boot, stamp, verdict beside it)
        if (used + weight > budget or index - start >= SLICE_ITEMS) and index > start:
            cuts.append(slice(start, index))
            start, used = index, 0
        used += weight
    if start < len(names) or not cuts:
        cuts.append(slice(start, len(names)))
    return cuts


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())
