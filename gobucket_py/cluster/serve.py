"""What a node answers to its peers and clients: one handler per message kind.

Everything in a request is validated before its sender is trusted, so a
malformed request (a 400) or one for an unknown bucket (a 404) does not even
make its sender a member. A FILL batch is all or nothing at the message level
(one bad item: 400, nothing filled); well-formed items then get one verdict
each (``ok``, ``full``, ``duplicate``, ``closed``, ``unknown bucket``,
``invalid: ...``).
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
    ProtocolError,
    UnknownBucketError,
)
from ..task import DrainOutcome, TaskInfo, TaskType
from .items import decode_item, pack_info
from .protocol import Kind, check_gossip, field, number

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["PeerServer"]

_OUTCOMES = {o.value: o for o in DrainOutcome}
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
            membership.heard(sender)  # all or nothing: 400 before any fill
            # "from" last: the capacity it reports includes this batch.
            return {"v": 1, "results": [self._accept(*item) for item in checked],
                    "from": membership.header()}
        if kind is Kind.LEAVE:
            membership.heard(sender)
            return {"v": 1, "from": membership.header()}
        bucket = field(message, "bucket", str)
        task_id = field(message, "id", str)
        follow = message.get("follow") is True
        group._bucket(bucket)  # an unknown bucket is a 404 before anything else
        membership.heard(sender)
        if kind is Kind.DRAIN:
            return await self._drain(bucket, task_id, follow)
        return await self._get(bucket, task_id, follow)

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

    async def _follow(self, kind: Kind, bucket: str, task_id: str) -> dict[str, Any] | None:
        """A task this node is handing off (or handed off) is answered for by its new home."""
        group = self.group
        key = (bucket, task_id)
        moving = group._moving.get(key)
        target = await asyncio.shield(moving) if moving is not None else group._moved.get(key)
        if target is None:
            return None
        membership = group._members
        member = membership.members.get(target)
        if member is None:
            return None
        message = {"v": 1, "from": membership.header(), "bucket": bucket, "id": task_id,
                   "follow": False}
        try:
            return await group.transport.call(member.addr, kind, message,
                                              group.config.request_timeout)
        except GobucketError:
            return None

    async def _drain(self, bucket: str, task_id: str, follow: bool) -> dict[str, Any]:
        group = self.group
        local = group._bucket(bucket)
        outcome = local.drain_nowait(task_id)
        node: str | None = group.node_id
        if outcome is DrainOutcome.NOT_FOUND:
            node = None
            if follow or (bucket, task_id) in group._moving:
                followed = await self._follow(Kind.DRAIN, bucket, task_id)
                if followed is None and task_id in local:
                    outcome = local.drain_nowait(task_id)  # the handoff failed: it is back
                    node = group.node_id
                elif followed is not None and followed.get("outcome") in _OUTCOMES:
                    outcome = _OUTCOMES[followed["outcome"]]
                    node = followed.get("node")
        return {"v": 1, "from": group._members.header(), "outcome": outcome.value,
                "node": node}

    async def _get(self, bucket: str, task_id: str, follow: bool) -> dict[str, Any]:
        group = self.group
        task = group._bucket(bucket).get(task_id)
        info: list[Any] | None = None
        if task is not None:
            info = pack_info(TaskInfo.of(task, group.node_id))
        elif follow:
            followed = await self._follow(Kind.GET, bucket, task_id)
            if followed is not None and isinstance(followed.get("task"), list):
                info = followed["task"]
        return {"v": 1, "from": group._members.header(), "task": info}
