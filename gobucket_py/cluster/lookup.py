"""Finding a task in the cluster: drain and get, with three-valued answers.

Every node that could hold a task answers one of three things: *here* (a
live task, or the record of how it ended), *definitely not here*, or
*unknown* (an error, a timeout, a stall, a dead peer that may only be
stalled). Only when every node that could hold the task has definitely said
no is the answer NOT_FOUND; any unknown makes the call raise
:class:`~gobucket_py.PeerUnavailableError` (try again), and the route to the
holder is kept. The order of asking:

1. this node: a live task, or one it is handing off (the answer waits for the
   move and follows it);
2. the node this origin forwarded the task to (one hop), whatever its state:
   a node that left still serves, and follows its own handoffs, until it
   exits; a dead node with the same boot id may only be stalled (unknown);
   a restarted or presumed-lost holder means the task is LOST;
3. this node's record of how the task ended here;
4. every other peer at once.

Answers are cached nowhere: a route is dropped only after a definite answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..bucket import DRAIN_ANSWER
from ..errors import GobucketError, PeerUnavailableError, UnknownBucketError
from ..task import DrainOutcome, DrainResult, TaskInfo, TaskState
from .items import pack_info, unpack_info
from .membership import Member, MemberState
from .protocol import Kind
from .routes import is_lost

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["Lookup"]

_OUTCOMES = {o.value: o for o in DrainOutcome}

#: A peer's answer: ``(outcome, node)`` for a drain, a TaskInfo (or None) for a get.
Answer = Any


class Unknown(Exception):
    """A node that could hold the task could not say (internal)."""


class Lookup:
    """Drain and get, for one :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        #: ``(node_id, boot)`` of peers that left and then refused a connection.
        self.exited: set[tuple[str, str]] = set()

    def forget_member(self, member: Member) -> None:
        """A peer was pruned from the member table."""
        self.exited.discard((member.node_id, member.boot))

    def _gone(self, member: Member) -> bool:
        """A peer that left and has certainly exited (its address refused a
        connection since): its tasks are elsewhere. A timeout is no proof: a
        new incarnation may be behind a cut link at that address."""
        return (member.state is MemberState.LEFT
                and (member.node_id, member.boot) in self.exited)

    # -- this node's own answers (to its callers and to peers) ----------------------------

    async def drain_here(self, bucket: str, task_id: str) -> tuple[DrainOutcome, str | None]:
        """Drain a task held here or handed off from here; raises :class:`Unknown`."""
        group = self.group
        local = group._bucket(bucket)
        outcome = local.drain_nowait(task_id)
        if outcome is not DrainOutcome.NOT_FOUND:
            return outcome, group.node_id
        target = await self._moved_to(bucket, task_id)
        if target is None:
            return local.drain_nowait(task_id), group.node_id  # a failed handoff is back
        reply = await self._ask_id(target, Kind.DRAIN, bucket, task_id)
        return _drain_answer(reply)

    async def get_here(self, bucket: str, task_id: str) -> TaskInfo | None:
        """Describe a task held here, handed off from here, or ended here."""
        group = self.group
        local = group._bucket(bucket)
        task = local.get(task_id)
        if task is None and (bucket, task_id) in group._handoff.moving:
            await self._moved_to(bucket, task_id)
            task = local.get(task_id)
        if task is not None:
            return TaskInfo.of(task, group.node_id)
        target = await self._moved_to(bucket, task_id)
        if target is not None:
            return _get_answer(await self._ask_id(target, Kind.GET, bucket, task_id))
        return self._ended_info(bucket, task_id)

    async def _moved_to(self, bucket: str, task_id: str) -> str | None:
        where = self.group._handoff.holder(bucket, task_id)
        if isinstance(where, asyncio.Future):
            return await asyncio.shield(where)
        return where

    def _ended_info(self, bucket: str, task_id: str) -> TaskInfo | None:
        state = self.group._bucket(bucket).ended(task_id)
        if state is None or state is TaskState.HANDED_OFF:
            return None
        return TaskInfo(bucket, task_id, self.group.node_id, None, state, 0.0, 0.0)

    # -- the cluster's answers ---------------------------------------------------------------

    async def drain(self, bucket: str, task_id: str) -> DrainResult:
        """See :meth:`TaskBucketGroup.drain`."""
        group = self.group
        local = group._bucket(bucket)
        live = task_id in local or group._handoff.holder(bucket, task_id) is not None
        if live:
            outcome, node = await self._known(self.drain_here(bucket, task_id), bucket, task_id)
            if outcome is not DrainOutcome.NOT_FOUND:
                return self._drained(bucket, task_id, outcome, node)
        state = local.ended(task_id)
        outcome = None if state is None else DRAIN_ANSWER.get(state)
        ended = None if outcome is None else (outcome, group.node_id)
        answer = await self._find(Kind.DRAIN, bucket, task_id, _drain_rank, ended)
        if answer is None:
            return DrainResult(DrainOutcome.NOT_FOUND, task_id, None)
        return self._drained(bucket, task_id, *answer)

    async def get(self, bucket: str, task_id: str) -> TaskInfo | None:
        """See :meth:`TaskBucketGroup.get`."""
        group = self.group
        local = group._bucket(bucket)
        if task_id in local or group._handoff.holder(bucket, task_id) is not None:
            info: TaskInfo | None = await self._known(self.get_here(bucket, task_id), bucket,
                                                      task_id)
            if info is not None:
                return info
        found: TaskInfo | None = await self._find(Kind.GET, bucket, task_id, _get_rank,
                                                  self._ended_info(bucket, task_id))
        return found

    def _drained(self, bucket: str, task_id: str, outcome: DrainOutcome, node: str | None
                 ) -> DrainResult:
        if outcome.stopped:
            self.group.events.add("drain", f"{task_id} {outcome.value} on {node}",
                                  bucket=bucket, task_id=task_id, peer=node)
        return DrainResult(outcome, task_id, node)

    async def _known(self, answer: Any, bucket: str, task_id: str) -> Any:
        try:
            return await answer
        except Unknown as exc:
            raise _unavailable(bucket, task_id, [str(exc)]) from None

    async def _find(self, kind: Kind, bucket: str, task_id: str,
                    rank: Callable[[Answer], int], ended_here: Answer) -> Answer:
        """Ask the route's holder; failing that, answer with how the task
        ended here (``ended_here``), or ask every other peer. The best-ranked
        definite answer, None if all said no. Raises PeerUnavailableError if
        a node that could hold the task did not say."""
        group = self.group
        members = group._members.members
        routes = group._routes
        route = routes.get(bucket, task_id)
        asked: set[str] = {group.node_id}
        if route is not None:
            node, boot = route[0], route[1]
            asked.add(node)
            member = members.get(node)
            if is_lost(route) or (member is not None and member.boot == boot and member.lost):
                if kind is Kind.DRAIN:
                    return DrainOutcome.LOST, node
                return TaskInfo(bucket, task_id, node, None, TaskState.LOST, 0.0, 0.0)
            if member is None or member.boot != boot:
                routes.forget(bucket, task_id)  # it left (and restarted, or was pruned)
            else:
                try:
                    answer = await self._ask(member, kind, bucket, task_id)
                except Unknown as exc:
                    if not self._gone(member):
                        raise _unavailable(bucket, task_id, [str(exc)]) from None
                else:
                    if kind is Kind.DRAIN or answer is None or answer.state.terminal:
                        routes.forget(bucket, task_id)  # it ended: a definite answer
                    if rank(answer) > 0:
                        return answer
                # The holder never had it, or handed it off and has exited: look around.
        if ended_here is not None:
            return ended_here
        membership = group._members
        if not membership.joined and (group.seeds or membership.young()):
            # No member list yet: peers it cannot know of may hold the task (a
            # node restarted without seeds waits for its peers to find it).
            raise _unavailable(bucket, task_id, ["this node has not reached any peer yet"])
        strangers = membership.unreached()
        if strangers:
            raise _unavailable(bucket, task_id, [f"peers name {', '.join(strangers)}, which "
                                                 "this node has not reached yet"])
        targets = [m for m in members.values() if m.node_id not in asked and not m.lost]
        unknown: list[str] = []

        async def one(member: Member) -> Answer:
            try:
                return await self._ask(member, kind, bucket, task_id)
            except Unknown as exc:
                if not self._gone(member):
                    unknown.append(str(exc))
                return None

        answers = await asyncio.gather(*(one(m) for m in targets))
        best = max(answers, key=rank, default=None)
        if best is not None and rank(best) >= 2:
            return best  # a live task that was stopped, or described
        if unknown:
            raise _unavailable(bucket, task_id, unknown)
        return best if best is not None and rank(best) > 0 else None

    async def _ask_id(self, node_id: str, kind: Kind, bucket: str, task_id: str
                      ) -> dict[str, Any]:
        member = self.group._members.members.get(node_id)
        if member is None:
            raise Unknown(f"{node_id} (took the task in a handoff) is no longer known")
        return await self._call(member, kind, bucket, task_id)

    async def _ask(self, member: Member, kind: Kind, bucket: str, task_id: str) -> Answer:
        reply = await self._call(member, kind, bucket, task_id)
        return _drain_answer(reply) if kind is Kind.DRAIN else _get_answer(reply)

    async def _call(self, member: Member, kind: Kind, bucket: str, task_id: str
                    ) -> dict[str, Any]:
        """One peer's reply; raises :class:`Unknown` for anything but an answer."""
        group = self.group
        if member.state is MemberState.DEAD:
            raise Unknown(f"{member.node_id} is dead (it may only be stalled)")
        message = {"v": 1, "from": group._members.header(), "bucket": bucket, "id": task_id,
                   "follow": True}
        try:
            reply = await group.transport.call(member.addr, kind, message,
                                               group.config.request_timeout)
        except UnknownBucketError:
            return {}  # it has no such bucket: definitely not there
        except PeerUnavailableError as exc:
            if member.state is MemberState.LEFT and not exc.maybe_delivered:
                # It left and exited: its tasks were handed off.
                self.exited.add((member.node_id, member.boot))
            raise Unknown(f"{member.node_id}: {exc}") from None
        except GobucketError as exc:  # a 401 after a clock step, a 500, "starting"...
            raise Unknown(f"{member.node_id} answered with an error: {exc}") from None
        if reply.get("unknown"):
            raise Unknown(f"{member.node_id} could not find out: {reply['unknown']}")
        return reply


def _unavailable(bucket: str, task_id: str, why: list[str]) -> PeerUnavailableError:
    return PeerUnavailableError(
        f"could not find out where task {task_id!r} in bucket {bucket!r} is "
        f"({'; '.join(why)}); it may still be live: try again")


def _drain_answer(reply: dict[str, Any]) -> tuple[DrainOutcome, str | None]:
    outcome = _OUTCOMES.get(reply.get("outcome"))  # type: ignore[arg-type]
    if outcome is None or outcome is DrainOutcome.NOT_FOUND:
        return DrainOutcome.NOT_FOUND, None
    node = reply.get("node")
    return outcome, node if isinstance(node, str) else None


def _drain_rank(answer: tuple[DrainOutcome, str | None] | None) -> int:
    if answer is None or answer[0] is DrainOutcome.NOT_FOUND:
        return 0
    return 2 if answer[0].stopped else 1


def _get_answer(reply: dict[str, Any]) -> TaskInfo | None:
    raw = reply.get("task")
    return None if raw is None else unpack_info(raw)


def _get_rank(info: TaskInfo | None) -> int:
    if info is None:
        return 0
    return 1 if info.state.terminal else 2


def drain_reply(outcome: DrainOutcome, node: str | None) -> dict[str, Any]:
    """The wire answer of a DRAIN (``from`` is added by the caller)."""
    return {"v": 1, "outcome": outcome.value, "node": node}


def get_reply(info: TaskInfo | None) -> dict[str, Any]:
    """The wire answer of a GET."""
    return {"v": 1, "task": None if info is None else pack_info(info)}
