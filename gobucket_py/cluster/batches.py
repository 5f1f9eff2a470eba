"""What a node did with each FILL batch it received: forwards that cannot duplicate.

Every FILL batch carries an identity: the sender's boot id and a sequence
number. The receiver remembers its verdicts for each batch, so a batch that
arrives twice is not filled twice. When a sender's FILL times out it cannot
tell "never arrived" from "applied, reply lost"; before it places those tasks
anywhere else it sends SETTLE for the batch, and the receiver answers either
the verdicts it gave, or -- if the batch has not arrived (yet) -- *void*: the
batch is refused for good if it turns up later (a request buffered in a
stalled node's socket). Either way there is one copy of each task.

Records live in two generations of plain dicts that rotate every ``keep / 2``
seconds, so each is kept between ``keep / 2`` and ``keep`` seconds, at about
100 bytes a batch. Verdicts are needed only while their sender may still
settle -- within ``forward_timeout + settle_timeout`` of sending, while the
receiver runs -- so they are kept 60 s. Void marks must outlive any copy of
the batch still travelling (a TCP retransmission, a buffer), so they are
kept 600 s; there are few of them (one per timed-out batch). So are the
verdicts on handoff batches (few: one per stop): a handoff that its stopping
sender could not settle is settled later by the task's origin, on the
sender's behalf.
"""

from __future__ import annotations

import asyncio
from typing import Final

__all__ = ["VOID", "BatchLedger"]

#: Batch identity: ``(sender boot id, sequence number)``.
Key = tuple[str, int]

#: The record of a batch that was settled before it arrived.
VOID: Final = -1


class _Generations:
    """A map whose entries live between ``keep / 2`` and ``keep`` seconds."""

    __slots__ = ("_half", "_previous", "_rotated", "current")

    def __init__(self, keep: float) -> None:
        self._half = keep / 2
        self.current: dict[Key, int | list[str]] = {}
        self._previous: dict[Key, int | list[str]] = {}
        self._rotated = 0.0

    def get(self, key: Key, now: float) -> int | list[str] | None:
        self._rotate(now)
        found = self.current.get(key)
        return self._previous.get(key) if found is None else found

    def put(self, key: Key, value: int | list[str], now: float) -> None:
        self._rotate(now)
        self.current[key] = value

    def __len__(self) -> int:
        return len(self.current) + len(self._previous)

    def _rotate(self, now: float) -> None:
        if now - self._rotated >= self._half:
            self._previous, self.current = self.current, {}
            if now - self._rotated >= 2 * self._half:
                self._previous = {}
            self._rotated = now


class BatchLedger:
    """Verdicts per received FILL batch, and batches settled as void."""

    def __init__(self, keep: float = 60.0, keep_void: float = 600.0) -> None:
        self._records = _Generations(keep)
        self._voids = _Generations(keep_void)  # and the verdicts on handoff batches
        #: Batches being taken (their tasks wait for backups): their verdicts.
        self.pending: dict[Key, asyncio.Future[list[str]]] = {}

    def __len__(self) -> int:
        return len(self._records) + len(self._voids)

    def seen(self, key: Key, now: float) -> list[str] | int | None:
        """The verdicts already given for batch ``key`` (a count means all
        ``"ok"``), :data:`VOID` if it was settled void, None if unseen."""
        if len(self._voids):
            found = self._voids.get(key, now)
            if found is not None:
                return found
        return self._records.get(key, now)

    def done(self, key: Key, results: list[str], now: float, *, long: bool = False) -> None:
        """Record the verdicts given for batch ``key`` (``long``: a handoff
        batch, kept as long as void marks)."""
        ok = results.count("ok") == len(results)
        (self._voids if long else self._records).put(key, len(results) if ok else results, now)

    def settle(self, key: Key, now: float) -> list[str] | None:
        """The verdicts given for batch ``key``; None if it never arrived, in
        which case it is void from now on."""
        seen = self.seen(key, now)
        if seen is None or seen == VOID:
            self._voids.put(key, VOID, now)
            return None
        return expand(seen)


def expand(seen: list[str] | int) -> list[str]:
    """The verdict list of a record (a count means that many ``"ok"``)."""
    return ["ok"] * seen if isinstance(seen, int) else seen
