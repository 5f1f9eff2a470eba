"""What a node answers to its peers and clients: one handler per message kind.

Everything in a request is validated before its sender is trusted, so a
malformed request (a 400) or one for an unknown bucket (a 404) does not even
make its sender a member. A FILL batch is all or nothing at the message level
(one bad item: 400, nothing filled); well-formed items then get one verdict
each (``ok``, ``full``, ``duplicate``, ``closed``, ``unknown bucket``,
``invalid: ...``). A FILL batch is identified by its sender's boot id and
a sequence number (:mod:`.batches`): one that arrives twice is answered as
the first time, and one the sender settled as void is refused.

DRAIN and GET are answered by :mod:`.lookup`: a task held here, handed off
from here (followed), or ended here; ``unknown`` in the reply when a node
this one asked could not say.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..config import check_times
from ..errors import (
    BucketClosedError,
    BucketFullError,
    DuplicateTaskError,
    GobucketError,
    PlacementUnknownError,
    ProtocolError,
    UnknownBucketError,
)
from ..task import TaskType
from .batches import VOID, expand
from .items import decode_item, pack_info
from .lookup import Unknown, drain_reply, get_reply
from .protocol import Kind, check_gossip, field, number

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["PeerServer"]

_FILLS = ("local", "forwarded", "rejected")


class PeerServer:
    """Serves the peer protocol for one :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group

    async def handle(self, kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
        """The transport's handler: answer one decoded request."""
        group = self.group
        membership = group._membership
        if membership is None:
            raise ProtocolError("node is starting")
        if kind is Kind.SUBMIT:
            return await self._submit(message)
        if kind is Kind.STATS:
            return {"v": 1, "node": group.node_id, "state": group.state.value,
                    "buckets": {n: {**b.stats(), "capacity": b.config.max_bucket,
                                    "fills": dict(zip(_FILLS, group.fill_counts[n],
                                                      strict=True))}
                                for n, b in group.buckets.items()},
                    "peers": {m.node_id: m.state.value for m in membership.members.values()}}
        if message.get("scope") == "cluster":  # a client: route like a local call
            return await self._client(kind, message)
        # Validate everything before trusting the sender: a malformed request
        # must not even make its sender a member.
        sender = message.get("from")
        if kind is Kind.PING:
            gossip = check_gossip(message.get("members"))
            membership.heard(sender)
            membership.merge_checked(gossip)
            return {"v": 1, "from": membership.header(), "members": membership.gossip()}
        if kind is Kind.PING_REQ:
            field(message, "target", str)
            membership.heard(sender)
            return await membership.handle_ping_req(message)
        if kind is Kind.FILL:
            checked = [decode_item(raw) for raw in field(message, "items", list)]
            seq = message.get("batch")
            if seq is not None and type(seq) is not int:
                raise ProtocolError("batch must be an int")
            member = membership.heard(sender)  # all or nothing: 400 before any fill
            results = self._fill(checked, None if member is None or seq is None
                                 else (member.boot, seq))
            if member is not None and message.get("handoff") is not True:
                # Tell the origin when each ends (so a crash here reports only live ones).
                group._ended.accepted_batch(checked, results, member.node_id)
            # "from" last: the capacity it reports includes this batch.
            return {"v": 1, "results": results, "from": membership.header()}
        if kind is Kind.ENDED:
            notice = group._ended.check(message)
            member = membership.heard(sender)
            if member is not None:
                group._ended.apply(member.node_id, notice)
            return {"v": 1, "from": membership.header()}
        if kind is Kind.SETTLE:
            seq = field(message, "batch", int)
            member = membership.heard(sender)
            if member is None:
                raise ProtocolError("a node does not settle with itself")
            now = asyncio.get_running_loop().time()
            given = group._batches.settle((member.boot, seq), now)
            return {"v": 1, "from": membership.header(),
                    **({"void": True} if given is None else {"results": given})}
        if kind is Kind.LEAVE:
            membership.heard(sender)
            return {"v": 1, "from": membership.header()}
        bucket = field(message, "bucket", str)
        task_id = field(message, "id", str)
        group._bucket(bucket)  # an unknown bucket is a 404 before anything else
        asker = membership.heard(sender)
        try:
            if kind is Kind.DRAIN:
                if asker is not None:
                    group._ended.forget(bucket, task_id, asker.node_id)
                reply = drain_reply(*await group._lookup.drain_here(bucket, task_id))
            else:
                reply = get_reply(await group._lookup.get_here(bucket, task_id))
        except Unknown as exc:
            reply = {"v": 1, "unknown": str(exc)}
        reply["from"] = membership.header()
        return reply

    async def _submit(self, message: dict[str, Any]) -> dict[str, Any]:
        """A client asks this node to fill as the origin (``GroupClient.fill``)."""
        group = self.group
        bucket, task_id, task_type, data, _, _ = decode_item(
            [message.get("bucket"), message.get("id"), message.get("type"),
             message.get("data"), 0, 1])
        times = {k: message.get(k) for k in ("run_after", "life_span")}
        run_after = None if times["run_after"] is None else number(times, "run_after")
        life_span = None if times["life_span"] is None else number(times, "life_span")
        try:
            placed = await group.fill(bucket, task_id, data, task_type=task_type,
                                      run_after=run_after, life_span=life_span)
        except UnknownBucketError:
            raise  # a 404, as for every endpoint
        except PlacementUnknownError as exc:
            return {"v": 1, "error": type(exc).__name__, "message": str(exc),
                    "node": exc.node_id}
        except GobucketError as exc:
            return {"v": 1, "error": type(exc).__name__, "message": str(exc)}
        except (TypeError, ValueError) as exc:
            return {"v": 1, "error": "ValueError", "message": str(exc)}
        return {"v": 1, "node": placed.node_id, "forwarded": placed.forwarded}

    async def _client(self, kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
        """A client's cluster-wide drain or get (``GroupClient``)."""
        group = self.group
        bucket = field(message, "bucket", str)
        task_id = field(message, "id", str)
        if kind not in (Kind.DRAIN, Kind.GET):
            raise ProtocolError(f"{kind.name} does not take scope=cluster")
        try:
            if kind is Kind.DRAIN:
                result = await group.drain(bucket, task_id)
                return {"v": 1, "outcome": result.outcome.value, "node": result.node_id}
            info = await group.get(bucket, task_id)
            return {"v": 1, "task": None if info is None else pack_info(info)}
        except UnknownBucketError:
            raise  # a 404, like a peer's
        except GobucketError as exc:  # e.g. a possible holder did not answer: say so
            return {"v": 1, "error": type(exc).__name__, "message": str(exc)}

    def _fill(self, items: list[tuple[str, str, TaskType, Any, float, float]],
              key: tuple[str, int] | None) -> list[str]:
        """Verdicts for one FILL batch; a batch seen before is not filled again."""
        if key is None:
            return [self._accept(*item) for item in items]
        ledger = self.group._batches
        now = asyncio.get_running_loop().time()
        seen = ledger.seen(key, now)
        if seen == VOID:
            return ["void"] * len(items)  # its sender settled it as not taken
        if seen is not None:
            return expand(seen)
        results = [self._accept(*item) for item in items]
        ledger.done(key, results, now)
        return results

    def _accept(self, bucket_name: str, task_id: str, task_type: TaskType, data: Any,
                run_after: float, life_span: float) -> str:
        """One forwarded task: the verdict for its sender."""
        group = self.group
        bucket = group.buckets.get(bucket_name)
        if bucket is None:
            return "unknown bucket"
        if not group.running:
            return "closed"
        # decode_item made both finite numbers >= 0; the rest of check_times:
        if task_type is TaskType.IMMEDIATE:
            run_after = 0.0
        if not 0 < life_span or run_after >= life_span:
            try:
                check_times(life_span, run_after)
            except ValueError as exc:
                return f"invalid: {exc}"
        try:
            bucket.fill_validated(task_type, task_id, data, run_after, life_span)
        except BucketFullError:
            return "full"
        except DuplicateTaskError:
            return "duplicate"
        except BucketClosedError:
            return "closed"
        except (TypeError, ValueError) as exc:
            return f"invalid: {exc}"
        return "ok"
