"""A short feed of recent cluster events, for the dashboard.

Bounded (old events fall off) and cheap: one small dict per event. Events
carry node ids, bucket names and task ids, never task payloads.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

__all__ = ["EventFeed"]


class EventFeed:
    """The last ``maxlen`` events, each with a sequence number."""

    def __init__(self, maxlen: int = 200) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self.seq = 0

    def add(self, kind: str, text: str, **fields: str | int | float | None) -> None:
        """Record one event: ``kind`` is a short tag (``peer_dead``,
        ``overflow``, ``drain``, ...), ``text`` a human sentence."""
        self.seq += 1
        self._events.append({"seq": self.seq, "time": time.time(), "kind": kind,
                             "text": text, **fields})

    def add_or_merge(self, kind: str, peer: str, accepted: int, sent: int) -> None:
        """Record a batch event (overflow, handoff), merged into a recent one
        of the same kind and peer under a second old (which moves to the end),
        so a busy node's feed keeps its joins and deaths in view."""
        now = time.time()
        for index in range(len(self._events) - 1, max(-1, len(self._events) - 9), -1):
            event = self._events[index]
            if now - event["time"] >= 1.0:
                break
            if event["kind"] == kind and event.get("peer") == peer:
                del self._events[index]
                accepted += event["accepted"]
                sent += event["sent"]
                break
        self.add(kind, f"{kind}: {accepted}/{sent} tasks accepted by {peer}", peer=peer,
                 accepted=accepted, sent=sent)

    def add_counted(self, kind: str, what: str, task_id: str,
                    **fields: str | int | float | None) -> None:
        """Record one of many alike events (a drain, a refused fill), merged
        into a recent one of the same kind and ``fields`` under a second old
        (which moves to the end): "42 tasks drained on node1", not 42 lines
        that push joins and deaths out of the feed. ``task_id`` is the last
        one merged."""
        now = time.time()
        count = 1
        events = self._events
        for index in range(len(events) - 1, max(-1, len(events) - 9), -1):
            event = events[index]
            if now - event["time"] >= 1.0:
                break
            if event["kind"] == kind and all(event.get(k) == v for k, v in fields.items()):
                del events[index]
                count += event["count"]
                break
        self.add(kind, f"{count} {what}" if count > 1 else f"{task_id}: {what}", count=count,
                 task_id=task_id, **fields)

    def since(self, seq: int = 0) -> list[dict[str, Any]]:
        """Events with a sequence number above ``seq``, oldest first."""
        if seq >= self.seq:
            return []
        return [e for e in self._events if e["seq"] > seq]
