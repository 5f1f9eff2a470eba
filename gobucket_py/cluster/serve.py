"""What a node answers to its peers and clients: one handler per message kind.

Everything in a request is validated before its sender is trusted, so a
malformed request (a 400) or one for an unknown bucket (a 404) does not even
make its sender a member. A FILL batch is all or nothing at the message level
(one bad item: 400, nothing filled); well-formed items then get one verdict
each (``ok``, ``full``, ``duplicate``, ``closed``, ``unknown bucket``,
``invalid: ...``). A FILL batch is identified by its sender's boot id and
a sequence number (:mod:`.batches`): one that arrives twice is answered as
the first time, and one the sender settled as void is refused. A batch meant
for an earlier incarnation of this node (``to``: the boot id its sender knew)
is refused whole (``restarted``): its sender's route then names the
incarnation that took a task, and only that one's crash reports it lost.

DRAIN and GET are answered by :mod:`.lookup`: a task held here, handed off
from here (followed), ended here, or forwarded from here and reported lost
or not settled yet (settled first, then followed); ``unknown`` in the reply
when a node this one asked could not say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
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
from ..task import DrainOutcome, Task, TaskState, TaskType
from .batches import VOID, expand
from .columns import BackupBatch, FillBatch, read_columns, read_fill
from .items import decode_item, pack_info
from .lookup import Unknown, drain_reply, get_reply
from .protocol import Kind, field, number

if TYPE_CHECKING:
    from .group import TaskBucketGroup
    from .membership import Member

__all__ = ["PeerServer"]

log = logging.getLogger("gobucket_py")
_IMMEDIATE = TaskType.IMMEDIATE
_BOMB = TaskType.TIME_BOMB

_FILLS = ("local", "forwarded", "rejected")

#: A FILL batch is taken a slice of this many tasks at a time, and the loop
#: gets a pass whenever its slices have taken ``_PASS`` seconds: the node's
#: own timers are not held up by a big batch (or by many at once).
_SLICE = 64
_PASS = 0.0002

#: A received FILL batch: rows (decoded items), backup columns or fill columns.
Batch = list[Any] | BackupBatch | FillBatch

#: What a bucket refuses a forwarded task with; :func:`_refusal` names the verdict.
_REFUSALS = (BucketFullError, DuplicateTaskError, BucketClosedError, TypeError, ValueError)


def _origins(message: dict[str, Any], count: int) -> list[str | None] | None:
    """The ``origins`` of a handoff batch of ``count`` items: one node id (or
    None) per item, or absent (a sender of an earlier version); else a 400."""
    origins = message.get("origins")
    if origins is None:
        return None
    if (not isinstance(origins, list) or len(origins) != count
            or not all(o is None or (isinstance(o, str) and o) for o in origins)):
        raise ProtocolError("origins must be a list of node ids (or nil), one per item")
    return origins


def _times(task_type: TaskType, run_after: float, life_span: float) -> tuple[float, str | None]:
    """A forwarded task's run_after as taken (0 for an immediate task), and
    the verdict if its times are invalid. (Decoding made both numbers finite
    and >= 0; this is the rest of ``check_times``.)"""
    if task_type is _IMMEDIATE:
        run_after = 0.0
    if not 0 < life_span or run_after >= life_span:
        try:
            check_times(life_span, run_after)
        except ValueError as exc:
            return run_after, f"invalid: {exc}"
    return run_after, None


def _refusal(exc: Exception) -> str:
    """The verdict its sender gets for a task the bucket refused with ``exc``."""
    if isinstance(exc, BucketFullError):
        return "full"
    if isinstance(exc, DuplicateTaskError):
        return "duplicate"
    if isinstance(exc, BucketClosedError):
        return "closed"
    return f"invalid: {exc}"


def _verdict(fill: Callable[[TaskType, str, Any, float, float], Task], task_type: TaskType,
             task_id: str, data: Any, run_after: float, life_span: float) -> str:
    """Fill one forwarded task with ``fill`` (a bucket's ``fill_validated``):
    the verdict its sender gets."""
    try:
        fill(task_type, task_id, data, run_after, life_span)
    except _REFUSALS as exc:
        return _refusal(exc)
    return "ok"


class PeerServer:
    """Serves the peer protocol for one :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        #: Held while a FILL batch is taken: one batch at a time, a slice per
        #: loop pass (concurrent batches would each take a slice per pass).
        self._taking = asyncio.Lock()

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
                                                      strict=True)),
                                    "backups": group._backups.count(n)}
                                for n, b in group.buckets.items()},
                    "peers": {m.node_id: m.state.value for m in membership.members.values()}}
        if message.get("scope") == "cluster":  # a client: route like a local call
            return await self._client(kind, message)
        # Validate everything before trusting the sender: a malformed request
        # must not even make its sender a member.
        sender = message.get("from")
        if kind is Kind.PING:
            return membership.handle_ping(message)
        if kind is Kind.PING_REQ:
            field(message, "target", str)
            membership.heard(sender)
            return await membership.handle_ping_req(message)
        if kind is Kind.FILL:
            backup = message.get("backup") is True
            codec = group.codec
            checked: Batch = (
                read_columns(field(message, "cols", list), message.get("stamps")) if backup else
                read_fill(message["cols"], codec.unpack) if "cols" in message else
                [decode_item(raw, codec) for raw in field(message, "items", list)])
            seq = message.get("batch")
            if seq is not None and type(seq) is not int:
                raise ProtocolError("batch must be an int")
            to = message.get("to")  # the incarnation the sender meant
            if to is not None and not isinstance(to, str):
                raise ProtocolError("to must be a string")
            handoff = message.get("handoff") is True
            origins = _origins(message, len(checked)) if handoff else None
            member = membership.heard(sender)  # all or nothing: 400 before any fill
            if to and to != membership.boot:  # meant for this node before a restart
                return {"v": 1, "results": ["restarted"] * len(checked),
                        "from": membership.header()}
            key = None if member is None or seq is None else (member.boot, seq)
            if backup:
                if member is None:
                    raise ProtocolError("a node does not back up its own tasks")
                results = await self._fill(checked, key, handoff, member, backup=True)
                return {"v": 1, "results": results, "from": membership.header()}
            results = await self._fill(checked, key, handoff, member, origins=origins)
            # "from" last: the capacity it reports includes this batch.
            return {"v": 1, "results": results, "from": membership.header()}
        if kind is Kind.ENDED:
            notice = group._ended.check(message)
            member = membership.heard(sender)
            if member is not None:
                group._ended.apply(member.node_id, member.boot, notice)
            return {"v": 1, "from": membership.header()}
        if kind is Kind.SETTLE:
            seq = field(message, "batch", int)
            boot = message.get("boot")  # a batch sent by another node (after a handoff)
            if boot is not None and not isinstance(boot, str):
                raise ProtocolError("boot must be a string")
            member = membership.heard(sender)
            if member is None:
                raise ProtocolError("a node does not settle with itself")
            batch_key = (boot or member.boot, seq)
            taking = group._batches.pending.get(batch_key)
            if taking is not None:  # its tasks wait for their backups: wait for the verdicts
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(taking), group.config.request_timeout)
                if not taking.done():  # not void: it is being taken; ask again
                    return {"v": 1, "from": membership.header(), "pending": True}
            now = asyncio.get_running_loop().time()
            given = group._batches.settle(batch_key, now)
            return {"v": 1, "from": membership.header(),
                    **({"void": True} if given is None else {"results": given})}
        if kind is Kind.BACKUP_NOTE:
            member = membership.heard(sender)
            if member is None:
                raise ProtocolError("a node does not send backup notes to itself")
            return {**group._replicas.handle(member, message), "from": membership.header()}
        if kind is Kind.LEAVE:
            member = membership.heard(sender)
            if member is not None:
                group._lookup.left(member, mounted=message.get("mounted") is True,
                                   done=message.get("done") is True)
            return {"v": 1, "from": membership.header()}
        bucket = field(message, "bucket", str)
        task_id = field(message, "id", str)
        group._bucket(bucket)  # an unknown bucket is a 404 before anything else
        asker = membership.heard(sender)
        lookup = group._lookup
        try:
            if kind is Kind.DRAIN:
                task = forgotten = None
                if asker is not None:
                    # Before the drain: a task it drains here ends at once, and
                    # its origin learns that from the answer (no notice). The
                    # answer may be unknown: then it is its origin's again.
                    forgotten = group._ended.forget(bucket, task_id, asker.node_id)
                    if forgotten is not None:
                        task = group.buckets[bucket].get(task_id)
                try:
                    drained = await lookup.drain_here(bucket, task_id)
                    # Not here, or only a record of how an earlier task of the
                    # id ended here: what this node sent on of the id comes
                    # first (a forward not settled yet may still reach its
                    # holder), unless it is not found there.
                    if drained[0] is DrainOutcome.NOT_FOUND or drained[2]:
                        sent = await lookup.routed(kind, bucket, task_id)
                        if sent is not None and sent[0] is not DrainOutcome.NOT_FOUND:
                            drained = sent
                except BaseException:  # Unknown (or stopped): no definite answer
                    group._ended.unforget(bucket, task_id, task, forgotten)
                    raise
                group._ended.drain_answered(bucket, task_id, forgotten)
                reply = drain_reply(*drained)
            else:
                info = await lookup.get_here(bucket, task_id)
                if info is None or info.state.terminal:
                    info = await lookup.routed(kind, bucket, task_id) or info
                reply = get_reply(info)
        except Unknown as exc:
            reply = {"v": 1, "unknown": str(exc)}
        reply["from"] = membership.header()
        return reply

    async def _submit(self, message: dict[str, Any]) -> dict[str, Any]:
        """A client asks this node to fill as the origin (``GroupClient.fill``)."""
        group = self.group
        bucket, task_id, task_type, data, _, _ = decode_item(
            [message.get("bucket"), message.get("id"), message.get("type"),
             message.get("data"), 0, 1], group.codec)
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

    async def _fill(self, items: Batch, key: tuple[str, int] | None,
                    handoff: bool, sender: Member | None, *, backup: bool = False,
                    origins: list[str | None] | None = None) -> list[str]:
        """Verdicts for one FILL batch; a batch seen before is not filled again.
        ``origins``: of a handoff batch, the node each task came from first."""
        group = self.group
        if key is None:
            return await self._take(items, sender, backup, handoff, [], origins)
        ledger = group._batches
        now = asyncio.get_running_loop().time()
        seen = ledger.seen(key, now)
        if seen == VOID:
            return ["void"] * len(items)  # its sender settled it as not taken
        if seen is not None:
            return expand(seen)
        taking = ledger.pending.get(key)
        if taking is not None:  # the same batch again while it is being taken
            return list(await asyncio.shield(taking))
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        ledger.pending[key] = future
        results: list[str] = []
        try:
            await self._take(items, sender, backup, handoff, results, origins, key[1])
        except BaseException as exc:
            if results:  # (stopped) some were taken: never "void" -- the rest were not
                results += ["closed"] * (len(items) - len(results))
                ledger.done(key, results, asyncio.get_running_loop().time(), long=handoff)
                future.set_result(results)
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: the waiters get it
            raise
        finally:
            del ledger.pending[key]
        ledger.done(key, results, asyncio.get_running_loop().time(), long=handoff)
        future.set_result(results)
        return results

    async def _take(self, items: Batch, sender: Member | None, backup: bool, handoff: bool,
                    results: list[str], origins: list[str | None] | None = None,
                    seq: int = 0) -> list[str]:
        """Take one batch, its verdicts added to ``results`` as they are given
        (slice by slice: a batch of thousands does not hold this node's
        timers). ``origins``: see :meth:`_fill`; ``seq``: the batch's number
        (0 if not given), named in the ended notices of its tasks."""
        group = self.group
        if isinstance(items, BackupBatch):
            assert sender is not None and backup
            results += group._backups.store(items, sender, items.stamps)
            return results
        # Tell the origin when each ends (so a crash here reports only live
        # ones) -- slice by slice: a task may end while the rest are taken.
        origin = sender.node_id if sender is not None and not handoff else None
        size = len(items)
        clock = time.perf_counter  # (real time: CPU spent, whatever the loop's clock says)
        async with self._taking:
            deadline = clock() + _PASS
            for start in range(0, size, _SLICE):
                if start and clock() >= deadline:
                    await asyncio.sleep(0)
                    deadline = clock() + _PASS
                part = items if size <= _SLICE else items[start:start + _SLICE]
                verdicts = self._accept(part)
                results += verdicts
                if origin is not None:
                    group._ended.accepted_batch(part, verdicts, origin, seq)
                elif origins is not None and sender is not None:
                    self._handed(part, verdicts, origins[start:start + len(part)], sender)
        if handoff and sender is not None:
            group.handoffs_received[sender.node_id] += results.count("ok")
        if group._replicas.ks:
            await self._back_up(items, results, sender, handoff, origins)
        return results

    def _handed(self, items: Batch, verdicts: list[str], origins: list[str | None],
                sender: Member) -> None:
        """Tasks handed off here by ``sender`` that another node had forwarded
        to it (one slice of a batch, as it is taken: a task may end before
        the next): that node, their origin, is told when each ends here."""
        here = self.group.node_id
        via = (sender.node_id, sender.boot)
        for item, verdict, origin in zip(items, verdicts, origins, strict=True):
            if verdict == "ok" and origin is not None and origin != here:
                self.group._ended.handed(item[0], item[1], origin, via)

    async def _back_up(self, items: list[Any] | FillBatch, results: list[str],
                       sender: Member | None, handoff: bool,
                       origins: list[str | None] | None = None) -> None:
        """Back up the time-bombs this batch brought to replicated buckets;
        one that cannot get its backups is taken back ("no backup room") --
        unless it is a handoff: that task was accepted long ago, and its
        leaving holder would only rescue it, so it stays with fewer. Each
        backup names the task's origin (a handed-off task's first sender)."""
        group = self.group
        replicas = group._replicas
        sent_by = group.node_id if sender is None else sender.node_id
        wanted: dict[tuple[str, str], list[tuple[int, Task]]] = {}
        for index, (item, verdict) in enumerate(zip(items, results, strict=True)):
            if verdict == "ok" and item[2] is TaskType.TIME_BOMB and replicas.ks.get(item[0]):
                task = group.buckets[item[0]].get(item[1])
                if task is not None:
                    origin = (origins[index] if origins is not None else None) or sent_by
                    wanted.setdefault((item[0], origin), []).append((index, task))
        for (name, origin), pairs in wanted.items():
            tasks = [task for _, task in pairs]
            short = 0
            for (index, task), ok in zip(pairs, await replicas.protect(name, tasks, origin),
                                         strict=True):
                if ok:
                    continue
                if handoff:
                    short += task.state is TaskState.PENDING
                elif await replicas.withdraw(group.buckets[name], task):
                    results[index] = "no backup room"
                    group._ended.origins.get(name, {}).pop(task.id, None)
            if short:
                log.warning("tasks have fewer backups than configured event=backups_short "
                            "node=%s bucket=%s count=%d", group.node_id, name, short)

    def _accept(self, items: list[Any] | FillBatch) -> list[str]:
        """The forwarded tasks of one batch: a verdict for each, for its sender."""
        if isinstance(items, FillBatch) and all(map(items.shared, (0, 2, 4, 5))):
            return self._accept_alike(items)
        group = self.group
        buckets = group.buckets
        running = group.running  # (nothing below awaits: it cannot change)
        verdicts: list[str] = []
        verdict = verdicts.append
        for bucket_name, task_id, task_type, data, run_after, life_span in items:
            bucket = buckets.get(bucket_name)
            if bucket is None:
                verdict("unknown bucket")
                continue
            if not running:
                verdict("closed")
                continue
            run_after, invalid = _times(task_type, run_after, life_span)
            if invalid is not None:
                verdict(invalid)
                continue
            verdict(_verdict(bucket.fill_validated, task_type, task_id, data, run_after,
                             life_span))
        return verdicts

    def _accept_alike(self, batch: FillBatch) -> list[str]:
        """``_accept`` for the common batch: one bucket, type and times for
        all its tasks, checked once."""
        group = self.group
        buckets, ids, types, _, run_afters, life_spans = batch.columns
        size = batch.size
        bucket = group.buckets.get(buckets[0])
        if bucket is None:
            return ["unknown bucket"] * size
        if not group.running:
            return ["closed"] * size
        task_type, life_span = types[0], life_spans[0]
        run_after, invalid = _times(task_type, run_afters[0], life_span)
        if invalid is not None:
            return [invalid] * size
        fill = bucket.fill_validated
        data = batch.column(3)
        if task_type is _BOMB and bucket.fills_cold(run_after) \
                and not group._replicas.ks.get(buckets[0]):
            # Pending until well after this pass and held by no one here (a
            # replicated one is: its backups are made from its Task), so cold
            # at once, as each would be at the end of this pass; one that
            # cannot go cold (a duplicate, or no room) the usual way.
            verdicts: list[str] = []
            index = 0
            while index < size:
                taken = bucket.fill_cold(ids, data, run_after, life_span, index)
                verdicts += ["ok"] * (taken - index)
                if taken < size:
                    verdicts.append(_verdict(fill, task_type, ids[taken], data[taken],
                                             run_after, life_span))
                index = taken + 1
            return verdicts
        return [_verdict(fill, task_type, task_id, value, run_after, life_span)
                for task_id, value in zip(ids, data, strict=True)]
