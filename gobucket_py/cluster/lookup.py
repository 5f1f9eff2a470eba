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
3. every other peer at once. A record of how a task of the id ended (here,
   where it was handed off, or on the route's holder) is the answer only
   when no peer has a live task of the id (filled again) and every peer
   that could hold one said so -- a record is no proof that the id was not
   filled again elsewhere.

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
from .routes import Route, is_lost

if TYPE_CHECKING:
    from ..bucket import TaskBucket
    from .group import TaskBucketGroup

__all__ = ["Lookup"]

_OUTCOMES = {o.value: o for o in DrainOutcome}

#: A peer's answer: a :data:`DrainAnswer` for a drain, a TaskInfo (or None) for a get.
Answer = Any

#: A drain's answer: ``(outcome, the node that held the task, from a
#: record)``. The last is True when no live task was found: the outcome is
#: a record of how an earlier task of the id ended (DRAINED, say, by an
#: earlier drain), true of that task but no proof that none lives elsewhere.
DrainAnswer = tuple[DrainOutcome, str | None, bool]

#: Seconds an origin keeps settling a handoff its sender could not settle:
#: the holder keeps its verdicts on handoff batches for 600 s (see
#: :mod:`.batches`), so a "not taken" after that could be a forgotten one.
RESOLVE_FOR = 500.0

#: A holder's answer for a forward that never reached it (settled void).
_NEVER: Any = object()


class Unknown(Exception):
    """A node that could hold the task could not say (internal)."""


class Refused(Unknown):
    """A peer that left refused the connection: nothing listens there now (internal)."""


class Lookup:
    """Drain and get, for one :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        #: ``(node_id, boot)`` of peers that left and then refused a connection
        #: (or, mounted in an app, said they are done).
        self.exited: set[tuple[str, str]] = set()
        #: ``(node_id, boot)`` of leaving peers mounted in an app: their app
        #: stops listening *before* they hand their tasks off, so a refused
        #: connection proves nothing until they say they are done.
        self.mounted: set[tuple[str, str]] = set()
        #: ``(node_id, boot)`` of peers that said, leaving, that they are done:
        #: every task they held was handed off or ended, and they told its
        #: origin. A route still pointing at one is stale, not a loss.
        self.done: set[tuple[str, str]] = set()

    def forget_member(self, member: Member) -> None:
        """A peer was pruned from the member table."""
        self.exited.discard((member.node_id, member.boot))
        self.mounted.discard((member.node_id, member.boot))
        self.done.discard((member.node_id, member.boot))

    def left(self, member: Member, *, mounted: bool, done: bool) -> None:
        """A peer's LEAVE: it is mounted in an app (see :attr:`mounted`), or
        done (handed off, told origins: nothing of it is left to find)."""
        key = (member.node_id, member.boot)
        if mounted:
            self.mounted.add(key)
        if done:
            self.exited.add(key)
            self.done.add(key)

    def _gone(self, member: Member) -> bool:
        """A peer that left and has certainly exited (its address refused a
        connection since): its tasks are elsewhere. A timeout is no proof: a
        new incarnation may be behind a cut link at that address."""
        return (member.state is MemberState.LEFT
                and (member.node_id, member.boot) in self.exited)

    # -- this node's own answers (to its callers and to peers) ----------------------------

    async def drain_here(self, bucket: str, task_id: str) -> DrainAnswer:
        """Drain a task held here or handed off from here; raises :class:`Unknown`."""
        group = self.group
        local = group._bucket(bucket)
        if bucket in group._replicas.ks:
            task = local.get(task_id)
            if task is not None and task.state is TaskState.PENDING:
                # Its backups go first: if this node dies before the drain, the
                # task is lost (and reported), never drained here and run there.
                took, certain = await group._replicas.release(bucket, task_id)
                if took is not None:  # a backup took it over: drain it there
                    return _drain_answer(await self._ask_id(took, Kind.DRAIN, bucket, task_id))
                if not certain:
                    raise Unknown(f"a backup holder of {task_id!r} could not be told to drop "
                                  "it, nor word left with a majority of the cluster: it "
                                  "could take the task over")
        answer = _drain_local(local, task_id, group.node_id)
        if answer[0] is not DrainOutcome.NOT_FOUND:
            return answer
        target = await self._moved_to(bucket, task_id)
        if target is None:
            answer = _drain_local(local, task_id, group.node_id)  # a failed handoff is back
            if answer[0] is DrainOutcome.NOT_FOUND:
                self._check_backups(bucket, task_id)
            return answer
        answer = _drain_answer(await self._ask_id(target, Kind.DRAIN, bucket, task_id))
        if answer[0] is DrainOutcome.NOT_FOUND:
            self._check_settled(bucket, task_id, target)
        return answer

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
            info = _get_answer(await self._ask_id(target, Kind.GET, bucket, task_id))
            if info is None:
                self._check_settled(bucket, task_id, target)
            return info
        ended = self._ended_info(bucket, task_id)
        if ended is None:
            self._check_backups(bucket, task_id)
        return ended

    async def routed(self, kind: Kind, bucket: str, task_id: str) -> Answer:
        """For a peer's DRAIN or GET that found nothing here, or only a
        record of how an earlier task of the id ended here: what this node,
        the task's origin, knows of where it sent it. A task reported lost
        from here is LOST. A forward this node could not settle may still
        reach its holder, whose "not here" to the asker then proves nothing:
        it is settled first, and the holder's answer relayed if it took the
        task. None: not here, and not on its way from here. Raises
        :class:`Unknown` when the forward cannot be settled."""
        group = self.group
        routes = group._routes
        route = routes.get(bucket, task_id)
        if route is None:
            return None
        if is_lost(route):
            return _lost(kind, bucket, task_id, route[0])
        pending = routes.unsettled.get((bucket, task_id)) if routes.unsettled else None
        if pending is None:
            return None  # settled: the asker asks its holder itself
        member = group._members.members.get(route[0])
        if member is None or member.boot != route[1]:
            return None  # it restarted (its tasks are reported lost) or was pruned
        if await self._took(member, bucket, task_id, pending):
            answer = await self._ask(member, kind, bucket, task_id)
            if kind is Kind.DRAIN or answer is None or answer.state.terminal:
                routes.forget(bucket, task_id)  # it ended: a definite answer
            return answer
        if pending[1]:  # handed off there and never taken: lost
            return self._lost_answer(kind, bucket, task_id, route[0])
        routes.forget(bucket, task_id)  # a fill that was never placed there
        return None

    def _check_backups(self, bucket: str, task_id: str) -> None:
        """A backup held here whose primary is not alive may be taken over here."""
        if self.group._backups.records and self.group._backups.at_risk(bucket, task_id):
            raise Unknown(f"a backup of {task_id!r} is held here and its holder is not alive: "
                          "it may be taken over")

    def _check_settled(self, bucket: str, task_id: str, target: str) -> None:
        """A handoff that could not be settled: its target's "not here" proves nothing."""
        if (bucket, task_id) in self.group._handoff.unsure:
            raise Unknown(f"the handoff of {task_id!r} to {target} could not be settled: it "
                          "may or may not be there")

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
        was = local.ended(task_id)
        ended: DrainAnswer | None = None
        if live:
            here = await self._known(self.drain_here(bucket, task_id), bucket, task_id)
            if here[0] is not DrainOutcome.NOT_FOUND:
                if not here[2]:  # a live task, stopped (or ended just now)
                    return self._drained(bucket, task_id, here[0], here[1])
                ended = here  # a record (here, or where it was handed off)
        if ended is None:
            state = local.ended(task_id)
            outcome = None if state is None else DRAIN_ANSWER.get(state)
            ended = None if outcome is None else (outcome, group.node_id, True)
        answer = await self._find(Kind.DRAIN, bucket, task_id, _drain_rank, ended)
        if ((answer is None or answer[2]) and not live
                and (task_id in local or local.ended(task_id) is not was)):
            # Placed here while the others were asked (a backup of it taken
            # over here, a handoff back; maybe ended already): "not found"
            # would be stale.
            return await self.drain(bucket, task_id)
        if answer is None:
            if bucket in group._replicas.ks and not group._backups.drained_nowhere(bucket,
                                                                                     task_id):
                raise _unavailable(bucket, task_id, [
                    "a backup holder was told it may take a task of the id over"])
            return DrainResult(DrainOutcome.NOT_FOUND, task_id, None)
        return self._drained(bucket, task_id, answer[0], answer[1])

    async def get(self, bucket: str, task_id: str) -> TaskInfo | None:
        """See :meth:`TaskBucketGroup.get`."""
        group = self.group
        local = group._bucket(bucket)
        ended: TaskInfo | None = None
        live = task_id in local or group._handoff.holder(bucket, task_id) is not None
        was = local.ended(task_id)
        if live:
            info: TaskInfo | None = await self._known(self.get_here(bucket, task_id), bucket,
                                                      task_id)
            if info is not None and not info.state.terminal:
                return info
            ended = info  # how it ended (here, or where it was handed off), if it did
        found: TaskInfo | None = await self._find(
            Kind.GET, bucket, task_id, _get_rank,
            ended if ended is not None else self._ended_info(bucket, task_id))
        if ((found is None or found.state.terminal) and not live
                and (task_id in local or local.ended(task_id) is not was)):
            return await self.get(bucket, task_id)  # placed here meanwhile (see drain)
        return found

    def _drained(self, bucket: str, task_id: str, outcome: DrainOutcome, node: str | None
                 ) -> DrainResult:
        if outcome.stopped:
            self.group.events.add_counted("drain", f"{outcome.value} on {node}", task_id,
                                          bucket=bucket, peer=node, outcome=outcome.value)
        return DrainResult(outcome, task_id, node)

    async def _known(self, answer: Any, bucket: str, task_id: str) -> Any:
        try:
            return await answer
        except Unknown as exc:
            raise _unavailable(bucket, task_id, [str(exc)]) from None

    async def _find(self, kind: Kind, bucket: str, task_id: str,
                    rank: Callable[[Answer], int], ended_here: Answer) -> Answer:
        """Ask the route's holder; failing that, every other peer. The
        best-ranked definite answer: a live task's, else a record of how a
        task of the id ended (``ended_here``, or the route holder's), else
        the best other; None if all said no. Raises PeerUnavailableError if a node that could
        hold the task did not say."""
        group = self.group
        members = group._members.members
        routes = group._routes
        route = routes.get(bucket, task_id)
        asked: set[str] = {group.node_id}
        stale: Route | None = None  # to an incarnation gone without saying where
        if route is not None:
            node, boot = route[0], route[1]
            member = members.get(node)
            if not is_lost(route) and group.awaiting_promotion(node):
                raise _unavailable(bucket, task_id, [
                    f"its holder {node} is gone and its backups may be taking it over"])
            if is_lost(route) or (member is not None and member.boot == boot and member.lost):
                return _lost(kind, bucket, task_id, node)
            pending = routes.unsettled.get((bucket, task_id)) if routes.unsettled else None
            if member is None or member.boot != boot:
                # It left (then restarted, or was pruned). If it said it was
                # done, the task is elsewhere or ended; if not (killed during
                # its stop), a peer has it -- or it died there.
                if member is not None and (node, boot) not in self.done:
                    stale = route
                else:
                    routes.forget(bucket, task_id)
            else:
                try:
                    answer = await self._ask(member, kind, bucket, task_id)
                    if pending is not None and rank(answer) == 0:
                        # "Not here" from a holder whose forward was never
                        # settled: it may not have arrived yet. Settle it
                        # first (if it has not arrived, it never will).
                        if await self._took(member, bucket, task_id, pending):
                            answer = await self._ask(member, kind, bucket, task_id)
                        elif pending[1]:  # handed off there and never taken: lost
                            return self._lost_answer(kind, bucket, task_id, node)
                        else:  # a fill that was never placed there
                            routes.forget(bucket, task_id)
                            answer = _NEVER
                except Unknown as exc:
                    if not self._gone(member):
                        raise _unavailable(bucket, task_id, [str(exc)]) from None
                    # Asked again below: a new incarnation may be at its address.
                else:
                    if answer is not _NEVER:
                        asked.add(node)
                        if kind is Kind.DRAIN or answer is None or answer.state.terminal:
                            routes.forget(bucket, task_id)  # it ended: a definite answer
                        if rank(answer) > 0:
                            if not _record(answer):
                                return answer
                            # How the task sent there ended: a newer one of the id
                            # may live elsewhere (filled from another node).
                            if ended_here is None or rank(answer) >= rank(ended_here):
                                ended_here = answer
                # The holder never had it, or handed it off and has exited: look around.
        # A task of the id that ended here is no proof that no newer one lives
        # elsewhere (the id filled again, here or from another node): every
        # node that could hold one is asked, as for an id with no record, and
        # the record is the answer only when none has a live task of it and
        # none failed to say.
        unknown: list[str] = []
        if ended_here is not None:
            unknown.append(f"a task of the id ended ({_told(ended_here)}); whether a newer "
                           "one lives elsewhere could not be found out")
        membership = group._members
        if not membership.joined and (group.seeds or membership.young()):
            # No member list yet: peers it cannot know of may hold the task (a
            # node restarted without seeds waits for its peers to find it).
            raise _unavailable(bucket, task_id,
                               ["this node has not reached any peer yet", *unknown])
        strangers = membership.unreached()
        if strangers:
            raise _unavailable(bucket, task_id, [f"peers name {', '.join(strangers)}, which "
                                                 "this node has not reached yet", *unknown])
        targets = [m for m in members.values() if m.node_id not in asked and not m.lost]
        best = await self._best(kind, bucket, task_id, rank, targets, unknown)
        if best is not None and rank(best) >= _LIVE:
            if stale is not None:
                routes.forget(bucket, task_id)  # it is elsewhere
            return best  # a live task that was stopped, or described
        if group._backups.records and group._backups.at_risk(bucket, task_id):
            unknown.append(f"{group.node_id} holds a backup of it and its holder is not alive")
        if len(unknown) > (ended_here is not None):
            raise _unavailable(bucket, task_id, unknown)
        if ended_here is not None:  # no node has a live task of the id
            if stale is not None and routes.get(bucket, task_id) == stale:
                # A task of the id ended here after it left there: the route is old.
                routes.forget(bucket, task_id)
            # A peer's record of a drain that stopped a task of the id wins
            # over how one ended here (a retried drain answers DRAINED again).
            return best if best is not None and rank(best) > rank(ended_here) else ended_here
        found = best if best is not None and rank(best) > 0 else None
        if stale is not None and routes.get(bucket, task_id) == stale:
            if found is None:  # no node has it, nor its outcome: it died there
                group._report_lost_ids(stale[0], bucket, [task_id], "killed while leaving")
                return _lost(kind, bucket, task_id, stale[0])
            routes.forget(bucket, task_id)  # it is elsewhere: found there from now on
        return found

    async def _best(self, kind: Kind, bucket: str, task_id: str, rank: Callable[[Answer], int],
                    targets: list[Member], unknown: list[str]) -> Answer:
        """Ask ``targets`` at once; the best-ranked answer (None if none had
        the task). Those that could not say are added to ``unknown``."""

        async def one(member: Member) -> Answer:
            try:
                return await self._ask(member, kind, bucket, task_id)
            except Refused:
                return None  # it left, and nothing listens at its address now
            except Unknown as exc:
                # Even a peer that left and exited may have a new incarnation
                # at its address (behind a cut link, not yet heard of here).
                unknown.append(str(exc))
                return None

        answers = await asyncio.gather(*(one(m) for m in targets))
        return max(answers, key=rank, default=None)

    async def _took(self, member: Member, bucket: str, task_id: str,
                    pending: tuple[tuple[str, int, int], bool]) -> bool:
        """Settle a forward that may not have reached ``member``: did it take
        the task? If not, it never will (the batch is void). Raises
        :class:`Unknown` if it cannot say."""
        group = self.group
        forwarder = group._forwarder
        if member.state is MemberState.DEAD or forwarder is None:
            raise Unknown(f"{member.node_id} may hold the task (its forward was not settled) "
                          "and cannot be asked")
        try:
            took = await forwarder.settle(member, pending[0], group.config.request_timeout)
        except GobucketError as exc:
            raise Unknown(f"{member.node_id} may hold the task (its forward was not "
                          f"settled): {exc}") from None
        if group._routes.unsettled.get((bucket, task_id)) == pending:
            del group._routes.unsettled[(bucket, task_id)]
        return took

    def _lost_answer(self, kind: Kind, bucket: str, task_id: str, node: str) -> Answer:
        """A handoff to ``node`` that it never took: report the task lost (once)."""
        self.group._report_lost_ids(node, bucket, [task_id], "handoff not taken")
        return _lost(kind, bucket, task_id, node)

    async def after_leave(self, stale: list[tuple[str, str, Route]]) -> None:
        """A peer that left restarted without having said it was done, and
        these routes still point at its old incarnation: find each task (see
        :meth:`_find`: found on a peer, the route is dropped; on none, it
        died there and is reported lost), asking again while some node
        cannot say, for up to ``RESOLVE_FOR`` seconds."""
        group = self.group
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RESOLVE_FOR
        limit = asyncio.Semaphore(_AFTER_LEAVE_CONCURRENCY)

        async def one(bucket: str, task_id: str, route: Route) -> None:
            async with limit:
                while group.running and group._routes.get(bucket, task_id) == route:
                    try:
                        await self._find(Kind.GET, bucket, task_id, _get_rank,
                                         self._ended_info(bucket, task_id))
                        return
                    except PeerUnavailableError:
                        if loop.time() >= give_up:
                            return  # left as is: a drain still looks for it
                        await asyncio.sleep(group.config.probe_interval)

        await asyncio.gather(*(one(*each) for each in stale))

    async def resolve(self, bucket: str, task_id: str) -> None:
        """Settle, in the background, a handoff its sender could not settle:
        until the holder says whether it took the task (if not, the task is
        reported lost), the route is gone, or the void marks that make a
        late "not taken" trustworthy would have expired."""
        group = self.group
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RESOLVE_FOR
        routes = group._routes
        while loop.time() < give_up:
            pending = routes.unsettled.get((bucket, task_id))
            route = routes.get(bucket, task_id)
            if pending is None or route is None or is_lost(route):
                return
            member = group._members.members.get(route[0])
            if member is None or member.boot != route[1] or not group.running:
                return  # it restarted (its tasks are reported lost), or was pruned
            try:
                if not await self._took(member, bucket, task_id, pending):
                    self._lost_answer(Kind.DRAIN, bucket, task_id, route[0])
                return
            except Unknown:
                await asyncio.sleep(group.config.probe_interval)

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
            key = (member.node_id, member.boot)
            if (member.state is MemberState.LEFT and not exc.maybe_delivered
                    and (key not in self.mounted or key in self.exited)):
                # It left and exited: its tasks were handed off.
                self.exited.add(key)
                raise Refused(f"{member.node_id}: {exc}") from None
            raise Unknown(f"{member.node_id}: {exc}") from None
        except GobucketError as exc:  # a 401 after a clock step, a 500, "starting"...
            raise Unknown(f"{member.node_id} answered with an error: {exc}") from None
        if reply.get("unknown"):
            raise Unknown(f"{member.node_id} could not find out: {reply['unknown']}")
        boot = member.boot
        try:
            group._members.heard(reply.get("from"))  # a restart is noticed at once
        except GobucketError as exc:
            raise Unknown(f"{member.node_id} answered with a bad header: {exc}") from None
        if member.boot != boot:
            # A new incarnation answered for the old one: what the old one
            # held is not its to say (it may be taken over by a backup).
            raise Unknown(f"{member.node_id} restarted while it was asked")
        return reply


#: Tasks looked for at once by :meth:`Lookup.after_leave`.
_AFTER_LEAVE_CONCURRENCY = 16


def _lost(kind: Kind, bucket: str, task_id: str, node: str) -> Answer:
    if kind is Kind.DRAIN:
        return DrainOutcome.LOST, node, False
    return TaskInfo(bucket, task_id, node, None, TaskState.LOST, 0.0, 0.0)


def _record(answer: Answer) -> bool:
    """Is a definite answer only a record of how a task of the id ended (no
    live task, and not a loss)? A get's answer says no more than its state."""
    if isinstance(answer, tuple):
        return bool(answer[2])
    return bool(answer.state.terminal and answer.state is not TaskState.LOST)


def _told(answer: Answer) -> str:
    """How a record answers (a drain's outcome, or a get's state) and where."""
    if isinstance(answer, tuple):
        return f"{answer[0].value.upper()} on {answer[1]}"
    return f"{answer.state.value.upper()} on {answer.node_id}"


def _unavailable(bucket: str, task_id: str, why: list[str]) -> PeerUnavailableError:
    return PeerUnavailableError(
        f"could not find out where task {task_id!r} in bucket {bucket!r} is "
        f"({'; '.join(why)}); it may still be live: try again")


def _drain_local(local: TaskBucket, task_id: str, node: str) -> DrainAnswer:
    """Drain ``task_id`` in this node's bucket: from a record unless it was live."""
    task = local.get(task_id)
    record = task is None or task.state.terminal
    return local.drain_nowait(task_id), node, record


def _drain_answer(reply: dict[str, Any]) -> DrainAnswer:
    outcome = _OUTCOMES.get(reply.get("outcome"))  # type: ignore[arg-type]
    if outcome is None or outcome is DrainOutcome.NOT_FOUND:
        return DrainOutcome.NOT_FOUND, None, False
    node = reply.get("node")
    # (A node of an earlier version names no records: its answers rank as live.)
    return outcome, node if isinstance(node, str) else None, reply.get("record") is True


#: The rank of an answer about a live task: it wins over peers that could
#: not say (a drain stopped it; a get describes it).
_LIVE = 3


def _drain_rank(answer: DrainAnswer | None) -> int:
    """3: a live task was stopped now (that answer wins over peers that
    could not say); 2: a record of a drain that stopped a task of the id
    (a retried drain answers it again, before other records); 1: a record
    of how one ended otherwise (nothing to stop); 0: not there."""
    if answer is None or answer[0] is DrainOutcome.NOT_FOUND:
        return 0
    if answer[0].stopped:
        return 2 if answer[2] else _LIVE
    return 1


def _get_answer(reply: dict[str, Any]) -> TaskInfo | None:
    raw = reply.get("task")
    return None if raw is None else unpack_info(raw)


def _get_rank(info: TaskInfo | None) -> int:
    """3: a live task; 1: a record of how one ended; 0: not there."""
    if info is None:
        return 0
    return 1 if info.state.terminal else _LIVE


def drain_reply(outcome: DrainOutcome, node: str | None, record: bool = False
                ) -> dict[str, Any]:
    """The wire answer of a DRAIN (``from`` is added by the caller); ``record``:
    see :data:`DrainAnswer` (sent only when true)."""
    reply: dict[str, Any] = {"v": 1, "outcome": outcome.value, "node": node}
    if record and outcome is not DrainOutcome.NOT_FOUND:
        reply["record"] = True
    return reply


def get_reply(info: TaskInfo | None) -> dict[str, Any]:
    """The wire answer of a GET."""
    return {"v": 1, "task": None if info is None else pack_info(info)}
