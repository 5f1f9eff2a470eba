"""Replicas, the primary's side: back up each pending time-bomb on k peers.

With ``replicas=k`` (``GroupConfig.replicas``, or a bucket's own
``BucketConfig.replicas``) a node that accepts a time-bomb -- filled here,
forwarded here, handed off here, or taken over from a dead peer -- places k
backups on other alive nodes before the fill is answered (where they go:
:mod:`.placing`). A task that cannot get its k backups is not accepted (the fill
raises :class:`~gobucket_py.NoBackupRoomError`); a taken-over task that
cannot is kept with fewer (it is already accepted).

Immediate tasks start at once and are not backed up.

What the backups must learn (``BACKUP_NOTE``, batched per holder by
:mod:`.notes`):

- **started**: before a replicated time-bomb's ``on_execute`` runs, its
  holders drop their backups and answer (``gate``). So a task is never run
  by a backup after it started here: if this node dies while it runs, it is
  reported lost, not run again. The gate waits for each holder that is
  alive, and -- if this node does not see a majority of the cluster alive
  -- until it does (it may be on the minority side of a partition, where
  backups may be taking its tasks over); a holder that answers "promoted"
  means it took the task over: it does not run here. The gate waits for
  that word even past the task's deadline (EXHAUSTED here while a backup
  ran it would be two outcomes), and a stopping node that cannot get it
  leaves the task to its backups (``event=handoff_unknown``).
- **drop**: a drained task's backups go before ``drain`` answers DRAINED
  (each alive holder has answered); for tasks that end otherwise without
  running (rescued, handed off, out of time) the note is sent and not waited for.

When a holder dies, restarts or leaves, the tasks it backed up are backed up
again elsewhere (a dead one may come back with its now extra backup: the
takeover check lets only one copy run).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..bucket import TaskBucket
from ..errors import ProtocolError
from ..task import Task, TaskState, TaskType
from .backups import majority, unknown
from .columns import read_stamps
from .forward import BACKUP
from .keyed import ByBucket
from .membership import Member, MemberState
from .notes import Notes
from .placing import all_pending, backup_item, pack_data, place_backups
from .wake import resolve

if TYPE_CHECKING:
    from .ended import GateKeepalive
    from .group import TaskBucketGroup

__all__ = ["Replicas"]

#: See _died_early.
_MARGIN = 0.01

#: Bound on the records of uncertain drops and taken-over tasks (each ~200 B).
_MAX_KEPT = 100_000

log = logging.getLogger("gobucket_py")


class Replicas:
    """The backups of the tasks one :class:`~gobucket_py.TaskBucketGroup` holds."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        #: (bucket, task id) -> node ids holding its backups (for live
        #: pending time-bombs of replicated buckets).
        self.holders: ByBucket[tuple[str, ...]] = ByBucket()
        #: Holders replaced because they went dead, with their boot id: if
        #: they come back they may have taken the task over (the gate asks).
        self.former: dict[tuple[str, str], list[tuple[str, str]]] = {}
        #: Drained (or otherwise ended) tasks whose drop some holder did not
        #: answer, and those a holder had already taken over (see release()).
        self.uncertain: dict[tuple[str, str], list[str]] = {}
        #: The stamp and deadline of the last task whose drop left holders
        #: in uncertain.
        self.uncertain_stamps: dict[tuple[str, str], tuple[float, float | None]] = {}
        #: ... and, per holder there (by node id), the earliest stamp of the
        #: tasks it held a backup of (one left by an earlier task of the id
        #: may hold that one's; None: one was not stamped): see _gone_early.
        self.uncertain_since: dict[tuple[str, str], dict[str, float | None]] = {}
        #: ... the holder (node id, boot id) that had taken it over, and the
        #: stamp of the task the answer was about (see took()).
        self.taken: dict[tuple[str, str], tuple[str, str, float | None]] = {}
        #: Per holder: tasks whose drop (or "started") it missed while it was
        #: silent -- word went to other nodes as tombs, but its backup stays
        #: until its deadline unless it is told once it is back.
        #: (With the stamp of each task, where known: see :mod:`.columns`.)
        self.missed: dict[str, dict[tuple[str, str], float | None]] = {}
        #: What the holders are told, batched per holder.
        self.notes = Notes(group)
        # Drops being told, so a retried drain waits for them too.
        self._dropping: dict[tuple[str, str], asyncio.Future[Any]] = {}
        # Single fills waiting for this loop pass's placement: (bucket, origin).
        self._waiting: dict[tuple[str, str], list[tuple[Task, asyncio.Future[bool]]]] = {}
        # Tasks whose gate waits for silent holders (kept in uncertain).
        self._gating: set[tuple[str, str]] = set()
        # Tasks whose backups are being placed: the gate waits for them.
        self._placing: ByBucket[asyncio.Future[None]] = ByBucket()
        # Reschedules being sent to the backups: True if another came meanwhile.
        self._moves: dict[tuple[str, str], bool] = {}
        # Tasks whose deadline a reschedule moved sooner: (stamp, the latest
        # deadline before), see deadline().
        self._outlived: dict[tuple[str, str], tuple[float, float]] = {}
        #: Tasks that did not get their backups because a peer holds word
        #: that an earlier task of the id from this node ended (started,
        #: drained or taken over) -- the fill's error says so (see
        #: :meth:`refused_as_ended`).
        self.ended_there: set[tuple[str, str]] = set()
        #: Backups per task, for each bucket that keeps any.
        self.ks: dict[str, int] = {name: k for name, b in group.buckets.items()
                                   if (k := self.k(b))}

    def refused_as_ended(self, bucket: str, task_id: str) -> bool:
        """Did a peer refuse the last backup of ``task_id`` because it holds
        word that an earlier task of the id from this node ended? (Asked
        once, as the fill's error is made.)"""
        key = (bucket, task_id)
        if key in self.ended_there:
            self.ended_there.discard(key)
            return True
        return False

    def k(self, bucket: TaskBucket) -> int:
        """Backups per task in ``bucket``."""
        own = bucket.config.replicas
        return self.group.config.replicas if own is None else own

    def install(self) -> None:
        """Gate the replicated buckets' time-bombs (see :meth:`gate`); watch
        every bucket's reschedules: backups (:meth:`moved`) and origins
        (:meth:`~.ended.EndedNotices.rescheduled`) learn the new times."""
        ended = self.group._ended
        for name, bucket in self.group.buckets.items():
            if name in self.ks:
                bucket.set_gate(self.gate, self._rescheduled)
            else:
                bucket.set_gate(None, ended.rescheduled)

    def _rescheduled(self, task: Task, was: float) -> None:
        self.group._ended.rescheduled(task)
        self.moved(task, was)

    # -- placing backups -----------------------------------------------------------------

    def protect_one(self, name: str, task: Task, origin: str) -> asyncio.Future[bool]:
        """:meth:`protect` for one task; the tasks of one loop pass (and
        origin) are placed together, as overflowing single fills are."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        key = (name, origin)
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = []
            loop.call_soon(self._flush, key)
        waiting.append((task, future))
        return future

    def _flush(self, key: tuple[str, str]) -> None:
        waiting = self._waiting.pop(key, [])
        if waiting:
            self.group._spawn(self._protect_waiting(key, waiting))

    async def _protect_waiting(self, key: tuple[str, str],
                               waiting: list[tuple[Task, asyncio.Future[bool]]]) -> None:
        try:
            done = await self.protect(key[0], [task for task, _ in waiting], key[1])
        except BaseException:
            done = [False] * len(waiting)  # stop(), or a bug: no caller hangs
            raise
        finally:
            resolve(asyncio.get_running_loop(), [future for _, future in waiting], done)
        # A caller cancelled meanwhile is not there to take back a task that
        # did not get its backups: it is taken back here, as it would have
        # been (else it stayed accepted with no backup and no retry).
        bucket = self.group.buckets.get(key[0])
        if bucket is not None:
            await asyncio.gather(*(self.abandoned(bucket, task) for (task, future), ok
                                   in zip(waiting, done, strict=True)
                                   if not ok and future.cancelled()))

    async def abandoned(self, bucket: TaskBucket, task: Task) -> None:
        """Take back a task that did not get its backups, whose fill's caller
        was cancelled before it could (see :meth:`withdraw`)."""
        if await self.withdraw(bucket, task):
            log.info("a fill whose caller was cancelled got no backup: taken back "
                     "event=fill_taken_back node=%s bucket=%s task_id=%s",
                     self.group.node_id, bucket.name, task.id)

    async def protect(self, name: str, tasks: list[Task], origin: str) -> list[bool]:
        """Back each task up on k peers; True for each that got all k. A
        task that did not keeps the backups it got (the caller withdraws it,
        see :meth:`withdraw`)."""
        group = self.group
        k = self.ks.get(name, 0)
        if not k or not tasks or group._forwarder is None:
            return [True] * len(tasks)
        placing = asyncio.get_running_loop().create_future()
        ids = [task.id for task in tasks]
        registry = self._placing.bucket(name)
        registry.update(dict.fromkeys(ids, placing))
        try:
            return await self._protect(name, tasks, ids, origin, k)
        finally:
            placing.set_result(None)
            for task_id in ids:
                if registry.get(task_id) is placing:
                    del registry[task_id]

    async def _protect(self, name: str, tasks: list[Task], ids: list[str], origin: str,
                       k: int) -> list[bool]:
        ended: set[str] = set()
        if self.ended_there:  # a reason left by an earlier placement (no error made) goes
            self.ended_there.difference_update((name, task_id) for task_id in ids)
        placed = await place_backups(self.group, name, tasks, origin, k, ended)
        holders = self.holders.bucket(name)
        if k == 1 and () not in placed and all_pending(tasks):
            holders.update(zip(ids, placed, strict=True))  # the common case: one backup each
            return [True] * len(tasks)
        results = []
        for task_id, task, kept in zip(ids, tasks, placed, strict=True):
            results.append(len(kept) >= k)
            if len(kept) < k and task_id in ended:
                if len(self.ended_there) >= _MAX_KEPT:
                    self.ended_there.clear()  # (reasons no error took: a wrong one never stays)
                self.ended_there.add((name, task_id))
            if kept:
                if task.state is TaskState.PENDING:
                    holders[task_id] = kept
                else:  # drained (or ended) while its backups were being placed
                    self._start_drop((name, task_id), list(kept), stamp=task._filled,
                                     deadline=self.deadline(task))
        return results

    def moved(self, task: Task, was: float | None = None) -> None:
        """A bucket's reschedule watcher: the task's backups get its new due
        time and deadline. Sent again whole (a holder replaces the backup it
        has, so it is idempotent); one send per task at a time, and a
        reschedule meanwhile is sent after it, so the last one wins. If the
        deadline moved sooner (from ``was``), a holder that misses the move
        keeps the later one: word about the task must outlive that too
        (:meth:`deadline`)."""
        key = (task.bucket, task.id)
        if was is not None and was > task._deadline and (
                key in self.holders or key in self._placing):
            outlived = self._outlived
            if len(outlived) >= _MAX_KEPT:
                for old in list(outlived)[:_MAX_KEPT // 2]:
                    del outlived[old]
            got = outlived.get(key)
            outlived[key] = (task._filled, was if got is None or got[0] != task._filled
                             else max(was, got[1]))
        if key in self._moves:
            self._moves[key] = True
        elif key in self.holders or key in self._placing:
            self._moves[key] = True
            self.group._spawn(self._move(key, task))

    def deadline(self, task: Task) -> float:
        """The latest deadline a backup of ``task`` may hold (its own, or
        an earlier one a reschedule moved sooner) -- or of an earlier task
        of the id whose drop some holder has not answered yet (word about
        this one covers that one too)."""
        key = (task.bucket, task.id)
        latest = task._deadline
        got = self._outlived.get(key)
        if got is not None and got[0] == task._filled:
            latest = max(got[1], latest)
        earlier = self.uncertain_stamps.get(key)
        if earlier is not None and earlier[1] is not None:
            latest = max(earlier[1], latest)
        return latest

    async def _move(self, key: tuple[str, str], task: Task) -> None:
        group = self.group
        forwarder = group._forwarder
        try:
            placing = self._placing.get(key)
            if placing is not None:
                await asyncio.shield(placing)
            while self._moves.get(key) and task.state is TaskState.PENDING:
                self._moves[key] = False
                names = self.holders.get(key, ())
                payload = pack_data(task, group.codec)
                if not names or forwarder is None or payload is None:
                    return
                now = asyncio.get_running_loop().time()
                origin = group._ended.origin_of(key[0], task.id) or group.node_id
                members = group._members.members
                sends = []
                for rank, node in enumerate(names):
                    member = members.get(node)
                    if member is not None and member.state is MemberState.ALIVE:
                        item = backup_item(task, payload, now, origin, rank, names)
                        sends.append(forwarder.send_many(member, [item], mode=BACKUP))
                for verdicts in await asyncio.gather(*sends):
                    if verdicts[0] != "ok" and task.state is TaskState.PENDING:
                        log.warning("a backup did not get a reschedule event=backup_not_moved "
                                    "node=%s bucket=%s task_id=%s error=%s", group.node_id,
                                    key[0], key[1], verdicts[0])
        finally:
            self._moves.pop(key, None)

    async def withdraw(self, bucket: TaskBucket, task: Task) -> bool:
        """Take back a task whose backups could not all be placed, once every
        backup it may have got is certainly gone: True if taken back (its
        fill is refused). False if it stays accepted: it started or ended
        meanwhile, or a holder that may keep a backup (its batch could not
        be settled) did not confirm the drop -- refusing it then would be a
        lie, as that backup would run it if this node crashed (also when
        the drop takes longer than ``settle_timeout``). The task
        stays pending here while its backups are dropped, so a drain or its
        due time meanwhile is served as for any live task."""
        key = (bucket.name, task.id)
        if bucket.get(task.id) is not task:
            return False  # it left (drained, ran, handed off); the id may be another task's now
        self.forget(bucket.name, task.id, task._filled, self.deadline(task))
        dropping = self._dropping.get(key)
        if dropping is not None:
            # Bounded, so the fill is answered in time; the drop goes on.
            done, _ = await asyncio.wait([dropping], timeout=self.group.config.settle_timeout)
            if not done or key in self.uncertain or self.took(key, task) is not None:
                # Kept (its gate tells the silent ones again), and backed up
                # anew: the drop may have reached the holders it had.
                if task.state is TaskState.PENDING:
                    origin = (self.group._ended.origin_of(key[0], task.id)
                              or self.group.node_id)
                    self.group._spawn(self._rebackup(key[0], [task], origin))
                return False
        return bucket.get(task.id) is task and bucket.withdraw(task.id)

    def adopt(self, name: str, task: Task, origin: str, primary: str, boot: str) -> None:
        """A task this node took over from ``primary`` (in ``boot``) as its
        backup: tell the origin where it is now, and back it up again (best
        effort)."""
        group = self.group
        route = group._routes.get(name, task.id)
        if origin == group.node_id or (route is not None and route[0] == primary):
            # It is here now: no route (a late "moved" finds none). The second
            # case: this node is its origin, but the backup names the node
            # that handed it off to ``primary``.
            group._routes.forget(name, task.id)
            if route is None and group._overflow.is_placing(name, task.id):
                # Its forward to ``primary`` is still being settled: the route
                # that adds goes too (as if ``primary`` had said it ended).
                group._routes.keep_early(name, task.id, (primary, boot, "", ""), None,
                                         asyncio.get_running_loop().time())
        elif origin != primary:
            group._ended.accepted(name, task.id, origin)
            group._ended.promoted(name, task.id, origin, primary)
        group._spawn(self._rebackup(name, [task], origin))

    async def _rebackup(self, name: str, tasks: list[Task], origin: str) -> None:
        ok = await self.protect(name, tasks, origin)
        short = [t.id for t, good in zip(tasks, ok, strict=True) if not good
                 and t.state is TaskState.PENDING]
        if short:
            log.warning("tasks have fewer backups than configured event=backups_short "
                        "node=%s bucket=%s count=%d", self.group.node_id, name, len(short))

    def holder_gone(self, node: str, *, dead: bool = False, left: bool = False) -> None:
        """A backup holder died (``dead``: it may only be cut off), restarted
        or ``left``: back its tasks up elsewhere. One that restarted cannot
        answer for what it did before (it may have taken a task over): it is
        asked as one that is gone, so only word left with a majority (or a
        node that saw the takeover) settles its tasks. One that left passed
        what it knew on (``Backups.bequeath``) to the peers it could reach,
        its own takeovers included: it is asked as gone too, so the gate or
        drain asks those peers (they answer "promoted") before it decides."""
        group = self.group
        if not dead:
            self.missed.pop(node, None)  # restarted or left: it holds none of them now
            gone = _gone(node)
            for names in self.uncertain.values():
                if node in names:
                    names[names.index(node)] = gone
        again: dict[str, list[Task]] = {}
        member = group._members.members.get(node)
        for key, held in list(self.holders.items()):
            if node in held:
                self.holders[key] = tuple(n for n in held if n != node)
                if member is not None:
                    # It may have taken the task over before it died,
                    # restarted or left: the gate asks it (or, gone, the others).
                    self.former.setdefault(key, []).append(
                        (node, member.boot if dead else ""))
                task = group.buckets[key[0]].get(key[1])
                if task is not None and task.state is TaskState.PENDING:
                    again.setdefault(key[0], []).append(task)
        for name, tasks in again.items():
            origin_of = group._ended.origin_of
            for task in tasks:
                group._spawn(self._rebackup(name, [task], origin_of(name, task.id)
                                            or group.node_id))

    def holder_back(self, node: str) -> None:
        """A holder this node had seen suspect or dead is alive again: tell it
        the drops it missed, so those backups do not hold its room until
        their deadline."""
        missed = self.missed.pop(node, None)
        if missed:
            self.group._spawn(self._tell_missed(node, missed))

    async def _tell_missed(self, node: str, missed: dict[tuple[str, str], float | None]
                           ) -> None:
        keys = list(missed)
        answers = await asyncio.gather(*(self.notes.tell(node, "drop", *key, None, missed[key])
                                         for key in keys))
        if answers.count("gone"):  # silent again: kept for its next return
            again = self.missed.setdefault(node, {})
            for key, answer in zip(keys, answers, strict=True):
                if answer == "gone":
                    again[key] = _latest(again.get(key, missed[key]), missed[key])
        for key, answer in zip(keys, answers, strict=True):
            # It took the task over while this node could not reach it: a
            # gate or drain still deciding must learn it (as from _drop).
            live = self.group.buckets[key[0]].get(key[1])
            if answer.startswith("promoted:") and self.took(key, live) is None and (
                    key in self.uncertain or key in self._dropping or live is not None):
                took = _promoter(answer)
                self.taken[key] = (*took, missed[key])
                self._follow(key, *took)

    # -- telling the backups ------------------------------------------------------------

    async def gate(self, task: Task) -> bool:
        """Before a replicated time-bomb runs: its backups go (see the module
        docstring). False if a backup took it over. Meanwhile the task
        stays pending here, maybe past its deadline: the origin of a
        forwarded one is told so, and keeps its route (a fill of the id
        again there comes here first; see ``ended.GateKeepalive``)."""
        keepalive = self.group._ended.keep_routed(task)
        key = (task.bucket, task.id)
        self._gating.add(key)
        try:
            return await self._gate(task, keepalive)
        finally:
            self._gating.discard(key)
            if keepalive is not None:
                keepalive.cancel()

    async def _gate(self, task: Task, keepalive: GateKeepalive | None) -> bool:
        """:meth:`gate`, while its keepalive runs (told when the gate waits
        with no bound: see ``GateKeepalive.waits``)."""
        group = self.group
        fenced = 0
        while not majority(group):  # polled: no membership change feed
            if not group.running:
                return self._left_to_backups(task)
            if not fenced:
                log.warning("a replicated task is due but this node does not see a majority "
                            "of the cluster; it waits event=task_fenced node=%s bucket=%s "
                            "task_id=%s", group.node_id, task.bucket, task.id)
            fenced += 1
            if keepalive is not None:
                keepalive.waits()
            await asyncio.sleep(group.config.probe_interval)
        key = (task.bucket, task.id)
        placing = self._placing.get(key)
        if placing is not None:
            await asyncio.shield(placing)  # its backups are being placed: know where first
        dropping = self._dropping.get(key)
        if dropping is not None:
            # A drain is dropping its backups: it decides first (it was
            # waiting before this gate, so it resumes first), and a holder
            # may answer that it took the task over.
            await asyncio.shield(dropping)
        if self.took(key, task, pop=True) is not None:
            return False  # a drain's drop found that a backup took it over
        names = list(self.holders.pop(key, ()))
        names += [n for n in self.uncertain.get(key, ()) if n not in names]  # drain undone
        names += self._former(key, names)
        return await self._tell_started(task, key, names, keepalive)

    async def _tell_started(self, task: Task, key: tuple[str, str], names: list[str],
                            keepalive: GateKeepalive | None) -> bool:
        """The gate's rounds: tell ``names`` the task starts, until every
        holder answered or word covers the silent ones."""
        group = self.group
        while names:
            # Told in a task of its own, which a drain that comes meanwhile
            # waits for (it cancels this runner, not the telling); one in
            # flight already (a drain's retry) tells them the same.
            dropping = (self._dropping.get(key)
                        or self._start_drop(key, names, "started", task._filled,
                                            self.deadline(task)))
            await asyncio.shield(dropping)
            if self.took(key, task, pop=True) is not None:
                return False  # a backup took it over (this node was cut off)
            # Holders still silent stay in uncertain until they answer, so
            # a drain meanwhile knows it cannot be sure.
            names = list(self.uncertain.get(key, ()))
            if names:  # a silent holder, and no majority to leave word with: wait
                if not group.running:
                    return self._left_to_backups(task)
                if keepalive is not None:
                    keepalive.waits()
                await asyncio.sleep(group.config.probe_interval)
                # Read again: one that restarted meanwhile is named gone now
                # (its new boot, asked as the holder, would answer for the
                # old). A drain's drop may have taken them meanwhile: then
                # the next round waits for it.
                names = list(self.uncertain.get(key, ())) or (
                    names if key in self._dropping else [])
        return self.took(key, task, pop=True) is None  # (a drain's drop may have learned it)

    def _left_to_backups(self, task: Task) -> bool:
        """A stopping node that cannot learn whether a backup took a due task
        over (it does not see a majority, or a holder is silent) does not run
        it: a backup may have. It is left to them, and said so."""
        group = self.group
        group.events.add("handoff_unknown", f"{task.id} is left to its backup holders",
                         bucket=task.bucket, task_id=task.id, peer="backups")
        log.warning("a replicated task is due while this node stops and cannot learn "
                    "whether a backup took it over; left to the backups "
                    "event=handoff_unknown node=%s peer=backups bucket=%s task_id=%s",
                    group.node_id, task.bucket, task.id)
        return False

    async def _tomb(self, key: tuple[str, str], told: list[str], settled: list[str],
                    stamp: float | None = None, deadline: float | None = None
                    ) -> tuple[bool, tuple[str, str] | None, set[str]]:
        """Leave word with every other alive node that the task (stamped
        ``stamp``, with its ``deadline``, if known) started or was drained here, for silent holders
        that may later try to take it over (``told``: the holders asked
        already, ``settled`` those of them that took the note, which leaves
        the same word). True if enough nodes have it that, with this one,
        they are a majority of the cluster: a holder about to take a task
        over asks every node it sees alive and needs a majority without the
        primary (``Backups._confirm``), and each of those remembers that it
        agreed, so at least one of them has the word or refuses it
        (``claimed``).

        Nodes that left gracefully count in the cluster's size here until
        they are forgotten (``prune_after``): they pass what they know on
        as they leave (``Backups.bequeath``), but a peer cut off then does
        not get it. A node that restarted forgot it (README, known limits).
        Also returns the holder that took the task over, if a node says one
        did, and the nodes that have the word now."""
        group = self.group
        members = group._members.members
        # A holder back in a new boot cannot vouch for what its old one did.
        others = [m.node_id for m in members.values() if m.state is MemberState.ALIVE
                  and m.node_id not in told and _gone(m.node_id) not in told]
        # The holders that took the note count as word too, but keep it only
        # TOMB_KEEP: told again (at once, with the others), to keep it as long.
        again = settled if deadline is not None else []
        told_all = await asyncio.gather(*(self.notes.tell(node, "tomb", *key, None, stamp,
                                                          deadline)
                                          for node in (*others, *again)))
        answers = told_all[:len(others)]
        if again:  # (one that did not take it again keeps the word too short to count)
            settled = [n for n, a in zip(again, told_all[len(others):], strict=True)
                       if a == "ok"]
        moved_to = next((_promoter(a) for a in answers if a.startswith("promoted:")), None)
        heard = {*settled, *(n for n, a in zip(others, answers, strict=True) if a == "ok")}
        # Every set of other nodes that is a majority of the cluster (what a
        # takeover needs) must hold one that has the word.
        # Nodes that left count in the size here (not in a takeover's):
        # what they agreed to may not have been passed on.
        # So do nodes it has not reached yet (it may have just restarted).
        size = len(members) + 1 + unknown(group)
        without = size - 1 - len(settled) - answers.count("ok")
        return 2 * without <= size, moved_to, heard

    async def release(self, name: str, task_id: str) -> tuple[str | None, bool]:
        """Before a pending task is drained here: drop its backups and wait
        for the holders. Returns the node that had already taken it over (then the drain
        must follow it there), and whether the answer is certain: every
        holder dropped its backup, or word was left with another node for
        those that did not answer (a holder asks every alive node before it
        takes a task over, see ``Backups._confirm``)."""
        key = (name, task_id)
        placing = self._placing.get(key)
        if placing is not None:  # its backups are being placed: they are dropped after
            await asyncio.shield(placing)
        task = self.group.buckets[name].get(task_id)  # the task drained (earlier ones ended)
        stamp, deadline = (self.uncertain_stamps.get(key, (None, None)) if task is None
                           else (task._filled, self.deadline(task)))
        self.forget(name, task_id, stamp, deadline)
        dropping = self._dropping.get(key)
        if dropping is None and key in self.uncertain:  # a retry: ask the silent ones again
            dropping = self._start_drop(key, self.uncertain.pop(key), stamp=stamp,
                                        deadline=deadline)
        if dropping is not None:  # bounded: a holder that never answers makes it "unknown"
            done, _ = await asyncio.wait([dropping], timeout=2 * self.group.config.request_timeout)
            if not done:
                return None, False
        took = self.took(key, task)
        if took is not None:
            member = self.group._members.members.get(took[0])
            if member is None or member.boot != took[1]:
                # Taken by an incarnation that is gone (lost with it, and
                # reported): not to be drained or handed off here; its gate
                # ends the copy here.
                return None, False
            return took[0], True
        return None, key not in self.uncertain

    def cut_off(self) -> int:
        """On stop, after the handoff: the replicated time-bombs still here
        that a backup may be taking over (this node does not see a majority
        of the cluster, or a holder of the task is silent) are neither run
        nor rescued here: each is left to its backup holders
        (``event=handoff_unknown``). How many."""
        group = self.group
        if not self.ks:
            return 0
        alone = not majority(group)
        left = 0
        for name in self.ks:
            bucket = group.buckets[name]
            for task in list(bucket):
                key = (name, task.id)
                # A drop still in flight (a handoff's release timed out on a
                # silent holder) cannot say either: that holder may have it.
                if (task.type is TaskType.TIME_BOMB
                        and (alone or key in self.uncertain or key in self._dropping
                             or self.took(key, task) is not None)
                        and bucket.take_pending(task.id) is not None):
                    self._left_to_backups(task)
                    # Its backups stay: no drop is sent (task_ended would).
                    self.holders.pop(key, None)
                    self.former.pop(key, None)
                    bucket.handed_off(task)
                    left += 1
        return left

    def forget(self, name: str, task_id: str, stamp: float | None = None,
               deadline: float | None = None) -> None:
        """A task (stamped ``stamp``, with its ``deadline``, if known) ended
        here without running: drop its backups (see :meth:`release`)."""
        key = (name, task_id)
        names = list(self.holders.pop(key, ()))
        if self.former:
            names += self._former(key, names)
        if names:
            self._start_drop(key, names, stamp=stamp, deadline=deadline)

    def _former(self, key: tuple[str, str], names: list[str]) -> list[str]:
        """The holders of ``key`` replaced when they went dead: each may have
        taken the task over. One that restarted (or left) since cannot say
        what its earlier incarnation did: it is asked as one that is gone."""
        members = self.group._members.members
        more = []
        for node, boot in self.former.pop(key, ()):
            member = members.get(node)
            same = (member is not None and member.boot == boot
                    and member.state is not MemberState.LEFT)
            name = node if same else _gone(node)
            if name not in names and name not in more:
                more.append(name)
        return more

    def _start_drop(self, key: tuple[str, str], names: list[str], op: str = "drop",
                    stamp: float | None = None, deadline: float | None = None
                    ) -> asyncio.Future[None]:
        dropping = self.group._spawn(self._drop(key, names, op, stamp, deadline))
        self._dropping[key] = dropping

        def done(_: object) -> None:
            if self._dropping.get(key) is dropping:
                del self._dropping[key]

        dropping.add_done_callback(done)
        return dropping

    async def _drop(self, key: tuple[str, str], names: list[str], op: str,
                    stamp: float | None = None, deadline: float | None = None) -> None:
        """Tell ``names`` that the task (stamped ``stamp``, with its
        ``deadline``, if known) started or is to be drained (``op``); record
        in :attr:`uncertain` the silent ones no word could cover, and in
        :attr:`taken` a holder that had already taken the task over."""
        members = self.group._members.members
        # Each holder as the incarnation it is now: one that restarts while
        # this is told is gone (its new one must not answer for the old).
        boots = {n: m.boot for n in names if (m := members.get(n)) is not None}
        # The earliest task each may hold a backup of (one left silent by an
        # earlier task of the id: that one's), read before anything changes it.
        prior = self.uncertain_since.get(key, {})
        since = {node: _earliest(prior.get(node, stamp), stamp) for node in map(_bare, names)}
        # (No deadline: a holder keeps word it takes itself ``TOMB_KEEP``;
        # the word left for a silent one is kept past the deadline, below.)
        answers = await asyncio.gather(*(self.notes.tell(node, op, *key, boots.get(node), stamp)
                                         for node in names))
        # (Not one whose old boot died before it could take the task over.)
        silent = [n for n, a in zip(names, answers, strict=True) if a == "gone"
                  and not self._gone_early(n, since[_bare(n)])]
        for node in silent:  # told again once it is back (see holder_back)
            if _is_gone(node):
                continue  # gone for good (see holder_gone)
            missed = self.missed.setdefault(node, {})
            if len(missed) < _MAX_KEPT or key in missed:
                missed[key] = _latest(missed.get(key, stamp), stamp)
        # A holder that answers "claimed" holds no backup of it any more, but
        # agreed to another holder's takeover: no word is left there.
        silent += [n for n, a in zip(names, answers, strict=True) if a == "claimed"]
        took = [_promoter(a) for a in answers if a.startswith("promoted:")]
        backups, own = self.group._backups, (*key, self.group.node_id)
        passed_on = backups.moved.get(own)
        if passed_on is not None and not backups.of("moved", own, self.group.boot_id, stamp):
            passed_on = None  # a takeover of an earlier incarnation's task of the id
        if passed_on is not None:  # a holder that left had taken it over
            took.append(_promoter(f"promoted:{passed_on}"))
        if silent and not took:
            settled = [n for n, a in zip(names, answers, strict=True) if a == "ok"]
            enough, moved_to, heard = await self._tomb(key, names, settled, stamp, deadline)
            if moved_to is not None:
                took.append(moved_to)
            elif (not enough and all(map(_is_gone, silent)) and self._never_doubted(key)
                  and self._all_heard(silent, heard)):
                # Only holders that restarted (or left) since are silent, and
                # every other node took the word: a takeover needed a
                # majority that held this node dead, which could only be
                # those holders, and this node, since, heard no such word
                # about itself. (Not when some other node did not answer:
                # the nodes that held it dead may be the ones it cannot
                # reach, and then it never hears of it.)
                enough = True
            if enough or took:
                silent = []
        elif took:
            silent = []  # its fate is known: it runs there
        for table in (self.uncertain, self.taken, self.uncertain_stamps):
            if len(table) > _MAX_KEPT:
                for old in list(table)[:_MAX_KEPT // 2]:
                    if old not in self._gating:  # (a gate reads its silent holders there)
                        del table[old]
        if len(self.uncertain_since) > _MAX_KEPT:  # (goes with uncertain)
            for old in [k for k in self.uncertain_since
                        if k not in self.uncertain and k not in self._dropping]:
                del self.uncertain_since[old]
        # A silent holder that restarted meanwhile is gone (holder_gone
        # renamed it in uncertain already, which this must not undo).
        silent = [_gone(n) if n in boots and (
            (m := members.get(n)) is None or m.boot != boots[n]) else n for n in silent]
        # The holders asked now are settled or silent; others still silent
        # from an earlier round stay so.
        silent += [n for n in self.uncertain.get(key, ())
                   if n not in names and n not in silent]
        if silent:
            self.uncertain[key] = silent
            # Only the silent ones, each with its earliest task (asked here,
            # or as a concurrent drop left it).
            kept = self.uncertain_since.get(key, {})
            firsts: dict[str, float | None] = {}
            for node in map(_bare, silent):
                first = since.get(node, kept.get(node, stamp))
                firsts[node] = _earliest(first, kept.get(node, first))
            self.uncertain_since[key] = firsts
            if stamp is not None:  # told again by a retry, once the task is gone
                # (The latest stamp covers the earlier tasks; the deadline
                # is the latest of theirs: the word must outlive each.)
                was = self.uncertain_stamps.get(key, (stamp, deadline))[1]
                self.uncertain_stamps[key] = (stamp, None if was is None or deadline is None
                                              else max(was, deadline))
        else:
            self.uncertain.pop(key, None)
            self.uncertain_stamps.pop(key, None)
            self.uncertain_since.pop(key, None)
        if took:
            self.taken[key] = (*took[0], stamp)
            self._follow(key, *took[0])

    def took(self, key: tuple[str, str], task: Task | None, *, pop: bool = False
             ) -> tuple[str, str] | None:
        """The holder (node id, boot id) that had taken the task ``key``
        over -- ``task``, or (None) the last one drained here -- if a
        holder's answer said so; ``pop``: forget it. An answer about an
        earlier task of the id is no answer about ``task``: it is dropped
        (the new task's gate would end it HANDED_OFF, run nowhere)."""
        got = self.taken.get(key)
        if got is None:
            return None
        node, boot, stamp = got
        stale = task is not None and stamp is not None and stamp < task._filled
        if stale or pop:
            del self.taken[key]
        return None if stale else (node, boot)

    def _all_heard(self, silent: list[str], heard: set[str]) -> bool:
        """Has every node of the cluster but the silent (gone) holders taken
        this node's word (``heard``), none of them unreached?"""
        if unknown(self.group):
            return False
        return all(m.node_id in heard or _gone(m.node_id) in silent
                   for m in self.group._members.members.values()
                   if m.state is not MemberState.LEFT)

    def _gone_early(self, name: str, stamp: float | None) -> bool:
        """Is ``name`` a holder of the task stamped ``stamp`` that restarted,
        whose new boot this node met before any holder could have taken the
        task over (:func:`_died_early`)? Its old boot died with its backup,
        having taken nothing over: it is settled."""
        if stamp is None or not _is_gone(name):
            return False
        member = self.group._members.members.get(_bare(name))
        return (member is not None and member.state is not MemberState.LEFT
                and _died_early(member, stamp, self.group._backups.promote_delay()))

    def _never_doubted(self, key: tuple[str, str]) -> bool:
        """Has this node not had to refute a suspicion of itself since the
        task ``key`` came here?"""
        task = self.group.buckets[key[0]].get(key[1])
        return task is not None and self.group._members.refuted_at < task._filled

    def _follow(self, key: tuple[str, str], node: str, boot: str) -> None:
        """A backup holder (``node`` in ``boot``) took this task over: the
        route of its origin follows, so drains find it there, and its loss
        is reported if that incarnation is gone already."""
        group = self.group
        bucket, task_id = key
        origin = group._ended.origin_of(bucket, task_id)
        if origin is not None:  # forwarded here: tell its origin
            group._ended.moved(bucket, task_id, origin, node, boot=boot)
            return
        local = group.buckets[bucket].get(task_id)
        life = 600.0 if local is None else max(0.0, local.seconds_left)
        now = asyncio.get_running_loop().time()
        group._routes.add(bucket, node, boot, now, life, [task_id])
        group._losses.gone_already(node, boot)

    def task_ended(self, task: Task) -> None:
        """A bucket's outcome watcher: the backups of a task that ended
        without starting (drained, rescued, handed off, out of time) go."""
        if self.holders:
            self.forget(task.bucket, task.id, task._filled, self.deadline(task))

    def handle(self, sender: Member, message: dict[str, Any]) -> dict[str, Any]:
        """A BACKUP_NOTE: notes from a primary, or a takeover check."""
        group = self.group
        if "check" in message:
            primary = message.get("primary")
            if not isinstance(primary, str):
                raise ProtocolError("check needs the primary's node id")
            return {"v": 1, "checked": group._backups.check(sender.node_id, primary,
                                                              message.get("boot"),
                                                              message["check"], sender.boot,
                                                              message.get("boots"),
                                                              message.get("stamps"))}
        if "promoted" in message:
            primary = message.get("primary")
            if not isinstance(primary, str):
                raise ProtocolError("promoted needs the primary's node id")
            took = message["promoted"]
            count = len(took) if isinstance(took, list) else 0
            group._backups.took_over(sender, primary, took, message.get("released", []),
                                     _boots(message, count),
                                     read_stamps(message.get("stamps"), count, "promoted"))
            return {"v": 1}
        if "inherit" in message:
            group._backups.inherit(message["inherit"])
            return {"v": 1}
        if "held" in message:
            return {"v": 1, "kept": self.needed(sender.node_id, message["held"])}
        notes = message.get("notes")
        if not isinstance(notes, list):
            notes = []
        to = message.get("to")
        if to is not None and to != group.boot_id:  # meant for an earlier incarnation
            return {"v": 1, "answers": ["gone"] * len(notes)}
        return {"v": 1, "answers": group._backups.note(sender, notes, message.get("stamps"),
                                                       message.get("lives"))}

    def needed(self, holder: str, held: object) -> list[str]:
        """Which of the backups ``holder`` keeps for this node it still needs
        (``keep``: its backups are being placed, or the task is pending here
        and ``holder`` is one of its holders, or was until it went dead --
        the gate still tells it), and which may go (``drop``)."""
        if not isinstance(held, list) or not all(
                isinstance(t, list) and len(t) == 2 and all(isinstance(v, str) for v in t)
                for t in held):
            raise ProtocolError("held must be a list of [bucket, task id]")
        buckets = self.group.buckets
        answers = []
        for bucket, task_id in held:
            key = (bucket, task_id)
            local = buckets.get(bucket)
            task = None if local is None else local.get(task_id)
            live = task is not None and task.state is TaskState.PENDING
            answers.append("keep" if key in self._placing or (live and (
                holder in self.holders.get(key, ())
                or any(node == holder for node, _ in self.former.get(key, ())))) else "drop")
        return answers


def _died_early(member: Member, stamp: float, promote_after: float) -> bool:
    """Did this node meet ``member``'s current boot before any holder could
    have taken over a task stamped ``stamp``? A holder heard from this node
    when it took the backup, and takes a task over only once it has held
    this node dead ``promote_after`` (``Backups.primary_gone``); the boot
    before the current one had died by the time this one was met. (With a
    margin for timers that fire early, uvloop's by up to a millisecond, and
    for two processes' clocks running at rates a little apart.)"""
    return member.met_at + _MARGIN <= stamp + promote_after


def _bare(name: str) -> str:
    """The node id of a holder's name (``_gone`` or not)."""
    return name[:-len(" (gone)")] if _is_gone(name) else name


def _earliest(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else min(a, b)


def _gone(node: str) -> str:
    """How a holder that restarted is named among the holders of a task:
    asked, it answers "gone" (no node id holds a space)."""
    return f"{node} (gone)"


def _is_gone(name: str) -> bool:
    return name.endswith(" (gone)")


def _boots(message: dict[str, Any], count: int) -> list[str] | None:
    """The optional ``boots`` of a takeover announcement: the boot id of the
    primary whose task each entry is about (None if absent)."""
    boots = message.get("boots")
    if boots is None:
        return None
    if (not isinstance(boots, list) or len(boots) != count
            or not all(isinstance(b, str) for b in boots)):
        raise ProtocolError("boots must be a list of boot ids, one per task")
    return boots


def _latest(a: float | None, b: float | None) -> float | None:
    """The later of two stamps of words about one id (None, not known,
    covers every task: it wins)."""
    return None if a is None or b is None else max(a, b)


def _promoter(answer: str) -> tuple[str, str]:
    """The node and boot id in a ``promoted:<node> <boot>`` answer."""
    node, _, boot = answer[9:].partition(" ")
    return node, boot
