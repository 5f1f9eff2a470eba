"""Task data on the wire: msgpack plus a few ext types, and a user hook.

A task's data crosses to another node when it overflows, is handed off on a
graceful stop, is backed up (replicas), or is submitted by a
:class:`~gobucket_py.GroupClient`. Each time it is packed on its own by a
:class:`Codec`, and unpacked by the receiver's, so it arrives as the types
it left with:

========================  ====  ================================================
Python type               ext   payload
========================  ====  ================================================
``datetime`` (naive or    1     UTF-8 ``isoformat()``; an aware one keeps its UTC
aware)                          offset (its tzinfo comes back as a fixed-offset
                                ``datetime.timezone``: same instant, same offset)
``date``                  2     UTF-8 ``isoformat()`` (``YYYY-MM-DD``)
``UUID``                  3     its 16 bytes
``Decimal``               4     UTF-8 ``str()`` (exact: digits, exponent, sign,
                                NaN and Infinity)
``tuple``                 5     the items, packed as a msgpack array by this codec
a :class:`Serializer`     6     ``[tag, value]`` packed by this codec: the user's
type                            ``encode`` turned the object into a tag and a value
                                the codec carries
========================  ====  ================================================

Everything else msgpack packs natively: ``None``, ``bool``, ``int`` (64-bit),
``float``, ``str``, ``bytes``, ``list`` and ``dict``. Subclasses of those
arrive as the base type (an ``IntEnum`` as an ``int``, an ``OrderedDict`` as
a ``dict``, a named tuple as a ``tuple``), a ``datetime`` subclass as a
``datetime``. Dict keys may be any of these hashable types (``int``, a
``tuple``, a ``UUID``...). A standard msgpack timestamp (ext -1) from another
msgpack producer is read as an aware UTC ``datetime``. Ext codes 0-31 are
reserved for this module; nothing else is accepted, and nothing is ever
pickled.

Anything else raises :class:`TypeError` naming its type -- unless a
:class:`Serializer` given to the group (``TaskBucketGroup(serializer=...)``)
and to its clients (``GroupClient(serializer=...)``) carries it. Every node
of a cluster must be given the same serializer.

A :class:`Codec` keeps one msgpack packer and is not thread-safe: each group
and each client makes its own, used on its event loop.
"""

from __future__ import annotations

import datetime as _dt
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import msgpack

__all__ = ["EXT_DATE", "EXT_DATETIME", "EXT_DECIMAL", "EXT_TUPLE", "EXT_USER", "EXT_UUID",
           "PACKED_NONE", "Codec", "Serializer"]

EXT_DATETIME = 1
EXT_DATE = 2
EXT_UUID = 3
EXT_DECIMAL = 4
EXT_TUPLE = 5
EXT_USER = 6

#: Tuples and user types nested in one another (each is packed and unpacked by a
#: nested call) at most this deep, so hostile input cannot exhaust the C stack.
MAX_NESTING = 32

#: ``None`` packed: most tasks carry no data, so neither side packs it each time.
PACKED_NONE: bytes = msgpack.packb(None)

_ExtType = msgpack.ExtType
_new = tuple.__new__
#: The types with an ext code, datetime before date (it is one).
_EXT_TYPES = (_dt.datetime, UUID, Decimal, _dt.date, tuple)


@runtime_checkable
class Serializer(Protocol):
    """Carries types the built-in codec does not know, as a tag and a value.

    ``encode(obj)`` is called for each object in task data that the codec
    cannot pack itself (see :mod:`gobucket_py.codec`); it returns ``(tag,
    value)``: a short ``str`` naming the type and a value the codec can pack
    -- which may hold ``datetime``, ``Decimal``, other user types, and so on.
    It raises :class:`TypeError` for an object it does not carry either.
    ``decode(tag, value)`` rebuilds the object on the receiving node; it
    raises :class:`ValueError` (or :class:`TypeError`) for a tag it does not
    know. Both run on the event loop for every such object of every packed
    task: keep them fast, pure and non-blocking. Example::

        class Sets:
            def encode(self, obj):
                if isinstance(obj, frozenset | set):
                    return type(obj).__name__, sorted(obj)
                raise TypeError(f"cannot carry {type(obj).__name__}")

            def decode(self, tag, value):
                if tag == "set":
                    return set(value)
                if tag == "frozenset":
                    return frozenset(value)
                raise ValueError(f"unknown tag {tag!r}")

        group = TaskBucketGroup(buckets, peers, serializer=Sets())
    """

    def encode(self, obj: Any) -> tuple[str, Any]:
        """``(tag, value)`` for ``obj``; :class:`TypeError` if it is not carried."""
        ...

    def decode(self, tag: str, value: Any) -> Any:
        """The object ``encode`` turned into ``(tag, value)``."""
        ...


def _type_name(obj: object) -> str:
    kind = type(obj)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


class Codec:
    """Packs and unpacks task data (see :mod:`gobucket_py.codec` for the format).

    ``Codec(serializer).unpack(Codec(serializer).pack(data)) == data`` for
    every supported ``data``; a quick way to test a serializer::

        codec = Codec(Sets())
        assert codec.unpack(codec.pack({"tags": {"a", "b"}})) == {"tags": {"a", "b"}}
    """

    __slots__ = ("_depth", "_loading", "_packers", "serializer")

    def __init__(self, serializer: Serializer | None = None) -> None:
        if serializer is not None and not isinstance(serializer, Serializer):
            raise TypeError("serializer must have encode(obj) -> (tag, value) and "
                            f"decode(tag, value) methods, got {type(serializer).__name__}")
        self.serializer = serializer
        # One packer per nesting level of tuples and user types: a packer must
        # not be re-entered from its own default() while it packs.
        self._packers: list[msgpack.Packer] = [self._packer()]
        self._depth = 0
        self._loading = 0

    def _packer(self) -> msgpack.Packer:
        # strict_types: tuples and subclasses of native types reach _default,
        # so a tuple stays a tuple (it may be a dict key); datetime=False: the
        # codec's own ext type keeps naive datetimes and UTC offsets.
        return msgpack.Packer(default=self._default, use_bin_type=True, datetime=False,
                              strict_types=True)

    def pack(self, data: Any) -> bytes:
        """``data`` as bytes; :class:`TypeError` naming what cannot be packed."""
        if data is None:
            return PACKED_NONE
        try:
            return self._packers[0].pack(data)  # type: ignore[no-any-return]
        except TypeError:
            raise
        except RecursionError:
            raise TypeError("task data is nested too deeply to be packed") from None
        except (ValueError, OverflowError) as exc:
            raise TypeError(f"task data cannot be packed: {exc}") from exc

    def _nested(self, value: Any) -> bytes:
        depth = self._depth + 1
        if depth > MAX_NESTING:
            raise TypeError(f"task data nests tuples or serializer types more than "
                            f"{MAX_NESTING} deep")
        self._depth = depth
        try:
            if depth == len(self._packers):
                self._packers.append(self._packer())
            return self._packers[depth].pack(value)  # type: ignore[no-any-return]
        finally:
            self._depth = depth - 1

    def _default(self, obj: Any) -> Any:
        """What msgpack cannot pack itself (an exact-type miss). Hot: the
        up-front check of every fill comes here for each such object."""
        kind = type(obj)
        if kind not in _EXT_TYPES:  # a subclass of one of them, or none
            kind = next((t for t in _EXT_TYPES if isinstance(obj, t)), kind)
        # The base classes' methods: a subclass's own isoformat() or str()
        # (pandas' nanoseconds, say) could give text the receiver refuses.
        # ExtType built without its Python __new__ (a third of the cost).
        if kind is _dt.datetime:
            return _new(_ExtType, (EXT_DATETIME, _dt.datetime.isoformat(obj).encode()))
        if kind is UUID:
            return _new(_ExtType, (EXT_UUID, obj.bytes))
        if kind is Decimal:
            return _new(_ExtType, (EXT_DECIMAL, Decimal.__str__(obj).encode()))
        if kind is _dt.date:
            return _new(_ExtType, (EXT_DATE, _dt.date.isoformat(obj).encode()))
        if kind is tuple:
            return _new(_ExtType, (EXT_TUPLE, self._nested(list(obj))))
        # Subclasses of the native types travel as their base type.
        base: type[Any]
        for base in (str, int, float, dict, list, bytes):
            if isinstance(obj, base):
                return base(obj)
        serializer = self.serializer
        if serializer is None:
            raise TypeError(f"an object of type {_type_name(obj)!r} is not serializable "
                            "(task data that may travel to a peer can hold None, bool, int, "
                            "float, str, bytes, list, tuple, dict, datetime, date, UUID and "
                            "Decimal; give the group a serializer= for other types)")
        try:
            encoded = serializer.encode(obj)
        except TypeError as exc:
            raise TypeError(f"an object of type {_type_name(obj)!r} is not serializable: "
                            f"the serializer refused it ({exc})") from None
        if not (isinstance(encoded, tuple) and len(encoded) == 2
                and type(encoded[0]) is str):
            raise TypeError(f"serializer.encode of an object of type {_type_name(obj)!r} "
                            f"must return (tag: str, value), got {encoded!r:.80}")
        return _new(_ExtType, (EXT_USER, self._nested(list(encoded))))

    def unpack(self, raw: bytes) -> Any:
        """The data packed in ``raw``. Bounded by its size (no length read from
        ``raw`` can allocate more); raises :class:`ValueError` (or another
        msgpack error) if ``raw`` is malformed."""
        if raw == PACKED_NONE:
            return None
        size = len(raw)
        return msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=self._ext,
                               timestamp=3, max_str_len=size, max_bin_len=size,
                               max_array_len=size, max_map_len=size, max_ext_len=size)

    def _inner(self, payload: bytes) -> Any:
        depth = self._loading + 1
        if depth > MAX_NESTING:
            raise ValueError(f"tuples or user types nested more than {MAX_NESTING} deep")
        self._loading = depth
        try:
            return self.unpack(payload)
        finally:
            self._loading = depth - 1

    def _ext(self, code: int, payload: bytes) -> Any:
        if code == EXT_DATETIME:
            return _dt.datetime.fromisoformat(payload.decode())
        if code == EXT_DATE:
            return _dt.date.fromisoformat(payload.decode())
        if code == EXT_UUID:
            return UUID(bytes=payload)
        if code == EXT_DECIMAL:
            try:
                return Decimal(payload.decode())
            except InvalidOperation:
                raise ValueError("malformed Decimal") from None
        if code == EXT_TUPLE:
            items = self._inner(payload)
            if type(items) is not list:
                raise ValueError("a packed tuple must hold an array")
            return tuple(items)
        if code == EXT_USER:
            pair = self._inner(payload)
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                raise ValueError("a packed user type must be [tag, value]")
            if self.serializer is None:
                raise ValueError(f"data holds a user type {pair[0]!r} but this node has no "
                                 "serializer= to decode it")
            return self.serializer.decode(pair[0], pair[1])
        raise ValueError(f"msgpack ext type {code} is not allowed in task data")
