"""Backups this node keeps of its peers' pending time-bombs, and taking them over.

With ``replicas=k`` a node that accepts a time-bomb (its *primary*) places k
backups on other nodes (:mod:`.replicas`). A backup is a compact tuple: the
packed task, its due time and deadline on this node's loop clock (the times
travel as seconds relative to receipt), and who holds the task: primary node
id and boot id, the task's origin and its stamp.

A backup is dropped when its primary says the task started or was drained
(``BACKUP_NOTE``), when its deadline passes, or when the primary leaves
gracefully (its tasks were handed off and backed up anew by their new
holders). It is *promoted* -- filled into the local bucket with its original
due time and deadline, firing at once if already past due -- when the primary
is proven gone (it restarted: a new boot id) or dead for ``promote_after``
(default: ``lost_after``, when it is presumed lost), and only while this node
sees a majority of the nodes it knows (not counting those that left) alive:
on the minority side of a partition nothing is promoted, and the primary
there does not start its replicated tasks either (see ``Replicas.gate``).
With two backups, both holders ask (below), and the one with the lower node
id takes the task over. (The rank-1 holder used to leave it to the rank-0
one whenever that one was alive, which lost the task when the rank-0 holder
held no copy: it had refused it, or restarted since.)

A primary declared dead may only be stalled or cut off, and a backup may be
stale (its primary replaced it while this node was silent, then started or
drained the task). So before it takes a task over, a backup holder asks every
other alive node, and needs all of them to answer and, with itself, a
majority of the cluster (nodes that left gracefully not counted: they pass
what they know on as they leave, see :meth:`bequeath`). A node objects if it
sees the primary alive in the same boot, holds word from the primary that the
task started or was drained (a *tombstone*, which the primary leaves with a
majority whenever a backup holder does not answer), holds the task live, took
it over already, or holds a backup of it too with a lower node id (then that
one takes it over). A node that does not object remembers it agreed (a
*claim*): a tombstone the primary sends later is refused there ("claimed"),
so the primary's majority and the holder's cannot both win. Once it has
decided, the holder tells them whether it took each task over, and they
answer the primary "promoted:<node> <boot>" from then on.

What a node agreed to is kept in memory: one that restarts forgets it. If
most of the nodes that agreed to a takeover restart before the old primary,
cut off meanwhile, asks them, and the holder that took the task over cannot
be reached, the old primary may run the task too (README, known limits).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from sys import intern
from typing import TYPE_CHECKING, Any

from ..errors import BucketClosedError, DuplicateTaskError, GobucketError, ProtocolError
from ..task import TaskType
from .columns import read_stamps
from .items import PACKED_NONE
from .lifecycle import GroupState
from .membership import Member, MemberState
from .protocol import Kind, slices
from .routes import is_lost

if TYPE_CHECKING:
    from .columns import BackupBatch
    from .group import TaskBucketGroup

__all__ = ["Backups", "majority", "unknown"]

log = logging.getLogger("gobucket_py")

#: ``(primary, primary boot, origin, packed data, due, deadline, stamp)``;
#: due and deadline in this node's loop time; the stamp is the task's fill
#: time on the primary's loop clock (None from a node of an earlier
#: version). (The batch also names the task's holders, in rank order: not
#: kept, as with two copies the lower node id takes the task over.)
Backup = tuple[str, str, str, bytes, float, float, float | None]

#: Tombstones are kept this long (s) -- after their task's deadline, where
#: the primary said when that is (word left for a silent holder: its stale
#: backup lives until then, and its takeover check must still find the
#: word) -- and at most this many.
TOMB_KEEP = 600.0
_MAX_TOMBS = 100_000
#: At most this many records of each kind are passed on by a leaving node.
_BEQUEST = 20_000


def unknown(group: TaskBucketGroup) -> int:
    """Nodes this node has not reached yet that may be in the cluster (seeds
    not reached since it started, nodes peers name: ``Membership.unreached``):
    a node that restarted into a partition does not know them, but they
    count in the cluster's size."""
    ms = group._members
    strangers = ms.unreached()
    if not strangers:
        return 0
    known = {ms.transport.address, group.node_id}
    for m in ms.members.values():
        known.add(m.addr)
        known.add(m.node_id)
    return sum(1 for s in set(strangers) if s not in known)


def majority(group: TaskBucketGroup, without: str | None = None) -> bool:
    """Does this node see a majority of the nodes it knows (itself included,
    nodes that left gracefully not counted, nodes not reached yet counted:
    see :func:`unknown`) alive -- not counting ``without``?"""
    members = group._members.members.values()
    known = 1 + unknown(group)
    alive = 1
    for m in members:
        if m.state is MemberState.LEFT:
            continue
        known += 1
        if m.state is MemberState.ALIVE and m.node_id != without:
            alive += 1
    return 2 * alive > known


class Backups:
    """The backups one :class:`~gobucket_py.TaskBucketGroup` holds for its peers."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        #: bucket -> (task id, primary node id) -> backup.
        self.records: dict[str, dict[tuple[str, str], Backup]] = {}
        #: Tasks promoted here: (bucket, task id, primary node id) -> loop
        #: time, so a primary that comes back and asks learns it moved.
        self.promoted: dict[tuple[str, str, str], float] = {}
        #: Word left by primaries: these tasks started or were drained while
        #: one of their backup holders was silent -> loop time.
        self.tombs: dict[tuple[str, str, str], float] = {}
        #: Tombstones kept longer than ``TOMB_KEEP`` from when they were
        #: written, as their task lives on -> loop time until which they are kept.
        self.tomb_until: dict[tuple[str, str, str], float] = {}
        #: Takeovers this node agreed to: (bucket, task id, primary) -> the
        #: backup holder that asked (see :meth:`check`). Whichever comes
        #: first here, a tomb or a claim, wins: a primary's later tomb is
        #: answered ``claimed`` and a holder's later check ``tomb``.
        self.claims: dict[tuple[str, str, str], str] = {}
        #: Drains this node answered NOT_FOUND: (bucket, task id) -> loop
        #: time. A holder that then learns its primary is gone (later than
        #: the nodes the drain asked) and asks to take a backup of the id
        #: over is answered ``tomb``: taken over, it would run after that
        #: answer. Kept ``TOMB_KEEP``, at most ``_MAX_TOMBS``; left only
        #: while a node is not alive or restarted lately (see drained_nowhere).
        self.not_found: dict[tuple[str, str], float] = {}
        #: The boot id of the holder that asked, per claim (not for claims
        #: passed on by a leaving node): if it restarts, its old incarnation
        #: can no longer say whether it took the task over.
        self.claim_boots: dict[tuple[str, str, str], str] = {}
        #: Claims whose holder then took the task over (it said so): its
        #: node id and boot id, as ``"<node> <boot>"``.
        self.moved: dict[tuple[str, str, str], str] = {}
        #: The primary's boot id each tomb, claim, promotion and move above
        #: is about (by table, then key), where it is known. Such a word is
        #: about one task, of one incarnation: a new incarnation that fills
        #: the id again has another task, which the word must not answer for
        #: (see :meth:`of`). Words are never dropped or changed for this,
        #: only not applied to the other incarnation's task: the claim and
        #: tomb protocol about one task stays as it was. A key
        #: whose words were about more than one incarnation (or one not
        #: known) has no label: they apply to every incarnation, as before.
        self.boots: dict[str, dict[tuple[str, str, str], str]] = {}
        #: Within a labelled incarnation, the latest *stamp* (fill time on the
        #: primary's clock, see :mod:`.columns`) of the tasks a key's words
        #: are about, where every word named one: the words apply to that
        #: task and earlier ones of the id, not to one the primary filled
        #: after (an id filled again on the same node). Without a stamp
        #: here, the words apply to every task of the incarnation.
        self.stamps: dict[str, dict[tuple[str, str, str], float]] = {}
        # (latest deadline, seq, bucket, keys): expiry, one entry per stored
        # batch; keys that were dropped or stored again since are skipped.
        self._expiry: list[tuple[float, int, str, list[tuple[str, str]]]] = []
        self._seq = itertools.count()
        # Tasks being confirmed before a takeover: (bucket, task id).
        self._confirming: set[tuple[str, str]] = set()
        # Of those, the ones a holder with a lower id asked about meanwhile:
        # it takes them over (see check), this node must not.
        self._conceded: set[tuple[str, str]] = set()
        # Primaries whose backups wait for this node to see a majority: the
        # boot that died (None: it restarted) and when that death began
        # (None: promoted at once), so a later death does not count.
        self._waiting: dict[str, tuple[str | None, float | None]] = {}
        self._retry: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(map(len, self.records.values()))

    def count(self, bucket: str) -> int:
        """Backups held here for ``bucket``."""
        return len(self.records.get(bucket, ()))

    # -- what primaries send -----------------------------------------------------------

    def store(self, items: BackupBatch, primary: Member, stamps: list[float] | None = None
              ) -> list[str]:
        """Keep the backups of one batch (checked by
        :func:`~.columns.read_columns`, with their ``stamps`` if the primary
        sent them); a verdict per backup."""
        group = self.group
        now = asyncio.get_running_loop().time()
        self._expire(now)
        if not group.running:
            return ["closed"] * len(items)
        verdicts = []
        stored: dict[str, list[tuple[str, str]]] = {}
        latest = now
        node, boot = primary.node_id, primary.boot
        if primary.state is MemberState.LEFT:
            # A copy sent before it stopped, read late: what it had is handed
            # off (and backed up by its new holders), and a copy kept would
            # name a holder gone for good (see primary_left).
            return ["dropped"] * len(items)
        # Late copies: it started or was drained, or was taken over (say a
        # primary back from a stall re-sending it on a reschedule).
        ended = (("tombs", self.tombs), ("promoted", self.promoted), ("moved", self.moved)) if (
            self.tombs or self.promoted or self.moved) else ()
        records, buckets = self.records, group.buckets
        last_bucket = None
        where: dict[tuple[str, str], Backup] = {}
        keys: list[tuple[str, str]] = []
        limit = 0
        each_stamp = itertools.repeat(None, len(items)) if stamps is None else stamps
        for (bucket, task_id, payload, run_after, life_span, origin, _, _), stamp in zip(
                items, each_stamp, strict=True):
            if bucket != last_bucket:
                local = buckets.get(bucket)
                if local is None:
                    verdicts.append("unknown bucket")
                    continue
                last_bucket = bucket
                where = records.get(bucket) or records.setdefault(bucket, {})
                keys = stored.setdefault(bucket, [])
                most = local.config.max_backups
                limit = local.config.max_bucket if most is None else most
            if ended and any((bucket, task_id, node) in table and self.of(name, (
                    bucket, task_id, node), boot, stamp) for name, table in ended):
                verdicts.append("dropped")
                continue
            key = (task_id, node)
            held = where.get(key)
            if held is None:
                if len(where) >= limit:
                    verdicts.append("backup full")
                    continue
            elif _later(held, boot, stamp):
                verdicts.append("dropped")  # a late copy of an earlier task's backup
                continue
            deadline = now + life_span
            where[key] = (node, boot, intern(origin), payload, now + run_after, deadline, stamp)
            keys.append(key)
            if deadline > latest:
                latest = deadline
            verdicts.append("ok")
        for bucket, keys in stored.items():  # one expiry entry per batch and bucket
            if keys:
                heapq.heappush(self._expiry, (latest, next(self._seq), bucket, keys))
        return verdicts

    def note(self, primary: Member, notes: list[Any], stamps: object = None,
             lives: object = None) -> list[str]:
        """A primary's notes: ``[op, bucket, task id]`` with op ``started``
        or ``drop`` (the backup goes) -- each answered ``ok``, or
        ``promoted`` if this node already took the task over. ``stamps``:
        the stamp of each note's task (see :mod:`.columns`), or None;
        ``lives``: the seconds each note's task could still live (the word
        is kept ``TOMB_KEEP`` past then), or None."""
        stamps = read_stamps(stamps, len(notes), "backup note")
        lives = read_stamps(lives, len(notes), "backup note", "lives")
        answers = []
        for index, entry in enumerate(notes):
            if (not isinstance(entry, list) or len(entry) != 3
                    or entry[0] not in ("started", "drop", "tomb")
                    or not all(isinstance(v, str) for v in entry)):
                raise ProtocolError("each backup note is [started|drop|tomb, bucket, task id]")
            _, bucket, task_id = entry
            stamp = None if stamps is None else stamps[index]
            key = (bucket, task_id, primary.node_id)
            where = self.records.get(bucket)
            if where is not None:
                backup = where.get((task_id, primary.node_id))
                if backup is not None and not _later(backup, primary.boot, stamp):
                    del where[(task_id, primary.node_id)]  # (a late note of an earlier task: kept)
            if key in self.promoted and self.of("promoted", key, primary.boot, stamp):
                answers.append(f"promoted:{self.group.node_id} {self.group.boot_id}")
                continue
            if key in self.moved and self.of("moved", key, primary.boot, stamp):
                answers.append(f"promoted:{self.moved[key]}")  # another holder took it over
                continue
            if key in self.claims and self.of("claims", key, primary.boot, stamp):
                # A backup holder may be taking it over: no word here. (Not
                # for a claim about another incarnation's task of the id: a
                # primary that restarted and filled it again has a new task,
                # which that takeover is not about.)
                claimer, boot = self.claims[key], self.claim_boots.get(key)
                member = self.group._members.members.get(claimer)
                if boot is not None and member is not None and member.boot != boot:
                    # It restarted before it said whether it took the task
                    # over (it may have, and run it): taken as if it had,
                    # so the primary does not run it (it is reported lost).
                    answers.append(f"promoted:{claimer} {boot}")
                else:
                    answers.append("claimed")
                continue
            # Word that it started or was drained: kept, so a backup of it
            # that arrives late (another connection) is refused, and a node
            # about to take it over learns not to.
            life = None if lives is None else lives[index]
            self._tomb(key, primary.boot, stamp, None if life is None else life + TOMB_KEEP)
            answers.append("ok")
        return answers

    # -- membership events ---------------------------------------------------------------

    def primary_left(self, member: Member) -> None:
        """A primary stopped gracefully: its tasks were handed off (and are
        backed up anew by their new holders), or ran or were rescued there."""
        self._drop_where(lambda b: b[0] == member.node_id)

    def primary_replaced(self, member: Member) -> None:
        """A primary that had left started again (``member``, in its new
        boot): what its earlier boots backed up here since they left (a
        copy sent before the stop, stored late) is stale, as the backups
        :meth:`primary_left` dropped were, and would keep lookups of those
        tasks "unknown" (a holder not alive) until their deadline."""
        self._drop_where(lambda b: b[0] == member.node_id and b[1] != member.boot)

    def primary_back(self, member: Member) -> None:
        """A primary this node had seen suspect or dead is alive again (same
        boot id). Drops it sent meanwhile could not reach this node (its word
        went to others as tombs), so ask it which of its backups here it
        still needs, and drop the rest: stale backups would hold backup
        room until their deadline."""
        if any(b[0] == member.node_id and b[1] == member.boot
               for where in self.records.values() for b in where.values()):
            self.group._spawn(self._reconcile(member))

    async def _reconcile(self, member: Member) -> None:
        group = self.group
        node, boot = member.node_id, member.boot
        every = [(bucket, key, b) for bucket, where in self.records.items()
                 for key, b in where.items() if b[0] == node and b[1] == boot]
        names = [(bucket, key[0]) for bucket, key, _ in every]
        dropped = 0
        for cut in slices(names, group.config.max_body):
            held = every[cut]
            message = {"v": 1, "from": group._members.header(), "notes": [],
                       "held": [list(name) for name in names[cut]]}
            try:
                reply = await group.transport.call(member.addr, Kind.BACKUP_NOTE, message,
                                                   group.config.request_timeout)
            except GobucketError as exc:
                log.debug("backups not reconciled event=backups_not_reconciled node=%s "
                          "peer=%s error=%s", group.node_id, node, exc)
                break  # kept until their deadline, as before; the next return tries again
            kept = reply.get("kept")
            if not isinstance(kept, list) or len(kept) != len(held) or member.boot != boot:
                break
            for (bucket, key, backup), answer in zip(held, kept, strict=True):
                where = self.records.get(bucket)
                # Only the record asked about: one stored again since is newer.
                if answer == "drop" and where is not None and where.get(key) is backup:
                    del where[key]
                    dropped += 1
        if dropped:
            log.info("stale backups dropped after a peer came back event=backups_reconciled "
                     "node=%s peer=%s dropped=%d kept=%d", group.node_id, node, dropped,
                     len(every) - dropped)

    def primary_gone(self, member: Member, *, restarted: bool) -> None:
        """A primary restarted (``restarted``: its backups are those of
        other boots) or was declared dead: take its tasks over (a dead one
        after ``promote_after``, if it is still dead then)."""
        delay = self.promote_delay()
        if restarted or not delay:
            self._waiting[member.node_id] = (None if restarted else member.boot, None)
            self._promote_waiting()
        else:
            # Timed from this death: a timer armed by an earlier one must not
            # take over within a later, shorter one (the primary counts on a
            # takeover no sooner than ``promote_after`` after it was last
            # heard: see ``replicas._died_early``).
            asyncio.get_running_loop().call_later(delay, self._still_dead, member.node_id,
                                                  member.boot, member.state_since)

    def promote_delay(self) -> float:
        """How long this node holds a primary dead before it takes its tasks
        over (``promote_after``, by default ``lost_after``). Nodes of one
        cluster are meant to share it (README, replicas)."""
        cfg = self.group.config
        return cfg.lost_after if cfg.promote_after is None else cfg.promote_after

    def _still_dead(self, node: str, boot: str, since: float) -> None:
        member = self.group._members.members.get(node)
        if (member is not None and member.boot == boot and member.state is MemberState.DEAD
                and member.state_since == since):  # (dead again since: that one's timer comes)
            self._waiting[node] = (boot, since)
            self._promote_waiting()

    def _promote_waiting(self) -> None:
        self._retry = None
        group = self.group
        if not self._waiting or not group.running:
            return
        if not majority(group):
            log.warning("not promoting backups: this node does not see a majority of the "
                        "cluster alive event=promotion_deferred node=%s primaries=%s",
                        group.node_id, ",".join(self._waiting))
            self._retry = asyncio.get_running_loop().call_later(
                group.config.probe_interval, self._promote_waiting)
            return
        members = group._members.members
        waiting, self._waiting = self._waiting, {}
        for node, (lost_boot, since) in waiting.items():
            member = members.get(node)
            if member is None:
                continue
            if lost_boot is not None and (member.state is not MemberState.DEAD
                                          or member.boot != lost_boot
                                          or since not in (None, member.state_since)):
                continue  # it came back after all (dead again: that death's timer comes)
            self._promote(node, lost_boot, member.boot)

    def _promote(self, node: str, lost_boot: str | None, new_boot: str) -> None:
        """Take over the backups of ``node`` (in ``lost_boot``; None: in any
        boot but ``new_boot``), once the other nodes confirm (:meth:`_confirm`)."""
        group = self.group
        chosen: list[tuple[str, str, Backup]] = []
        for bucket, where in self.records.items():
            mine = [(key, b) for key, b in where.items() if b[0] == node
                    and (b[1] == lost_boot if lost_boot is not None else b[1] != new_boot)]
            for key, backup in mine:
                del where[key]
                chosen.append((bucket, key[0], backup))
        if chosen:
            # From now on lookups here say "unknown" for them (see at_risk).
            self._confirming.update((bucket, task_id) for bucket, task_id, _ in chosen)
            group._spawn(self._confirm(node, lost_boot, chosen))

    def at_risk(self, bucket: str, task_id: str) -> bool:
        """Is a backup of this task held here for a primary that is not
        alive (so it may be taken over here)? A lookup then cannot say
        "not here"."""
        if (bucket, task_id) in self._confirming:
            return True
        where = self.records.get(bucket)
        if not where:
            return False
        for member in self.group._members.members.values():
            backup = where.get((task_id, member.node_id))
            if backup is not None and (member.state is not MemberState.ALIVE
                                       or member.boot != backup[1]):
                return True
        return False

    async def _confirm(self, node: str, lost_boot: str | None,
                       chosen: list[tuple[str, str, Backup]]) -> None:
        keys = [(bucket, task_id) for bucket, task_id, _ in chosen]
        try:
            await self._confirm_all(node, lost_boot, chosen)
        finally:
            self._confirming.difference_update(keys)
            self._conceded.difference_update(keys)

    async def _confirm_all(self, node: str, lost_boot: str | None,
                           chosen: list[tuple[str, str, Backup]]) -> None:
        """Ask every other alive node whether ``node`` left word that these
        tasks started or were drained while a backup holder was silent (a
        *tombstone*, see ``Replicas``), or whether one of them holds the task
        live; promote those nobody objects to. Needs an answer from each
        alive node, and a majority of the cluster counting this one; asked
        again every probe interval until then. Whatever ends it, the nodes
        asked learn which tasks were taken over and which were not (so they
        stop refusing the primary's word about those, see ``check``)."""
        group = self.group
        loop = asyncio.get_running_loop()
        keys = [[b, t] for b, t, _ in chosen]
        boot_of = {(b, t): backup[1] for b, t, backup in chosen}
        stamp_of = {(b, t): backup[6] for b, t, backup in chosen}
        asked: dict[str, Member] = {}  # every node asked: each may hold claims
        took: list[list[str]] = []
        try:
            while chosen and group.running:
                chosen = [c for c in chosen if c[2][5] > loop.time()]  # still within its life
                if not chosen:
                    return
                member = group._members.members.get(node)
                if (lost_boot is not None and member is not None and member.boot == lost_boot
                        and member.state is MemberState.ALIVE):
                    self._keep(chosen)  # it was only cut off or stalled: it keeps its tasks
                    return
                others = [m for m in group._members.members.values()
                          if m.state is MemberState.ALIVE and m.node_id != node]
                asked.update((m.node_id, m) for m in others)
                objections = await self._ask_others(node, lost_boot, others, chosen)
                if objections is not None:
                    took = self._take_over(node, [c for c, no in zip(chosen, objections,
                                                                     strict=True) if no == "ok"])
                    return
                await asyncio.sleep(group.config.probe_interval)
        finally:
            if asked:
                taken = {(b, t) for b, t in took}
                released = [key for key in keys if (key[0], key[1]) not in taken]
                group._spawn(self._announce(list(asked.values()), node, took, released,
                                            [boot_of[(b, t)] for b, t in took],
                                            [stamp_of[(b, t)] for b, t in took]))

    def _keep(self, chosen: list[tuple[str, str, Backup]]) -> None:
        """Put back the backups of a takeover called off (their primary is
        alive after all); one stored again meanwhile is newer."""
        for bucket, task_id, backup in chosen:
            where = self.records.setdefault(bucket, {})
            where.setdefault((task_id, backup[0]), backup)

    async def _announce(self, others: list[Member], node: str, took: list[list[str]],
                        released: list[list[str]], boots: list[str],
                        stamps: list[float | None]) -> None:
        """Tell the nodes that agreed to a takeover whether it happened, so
        they answer the old primary "promoted here" (it then leaves the
        task to this node) or take its word again, instead of "claimed".
        Retried while they are alive."""
        group = self.group
        header = group._members.header()
        # In slices (see slices()): the tasks taken over, then those let go.
        messages: list[dict[str, Any]] = [
            {"v": 1, "from": header, "notes": [], "promoted": took[cut], "released": [],
             "primary": node, "boots": boots[cut], "stamps": stamps[cut]}
            for cut in slices(took, group.config.max_body) if took]
        messages += [{"v": 1, "from": header, "notes": [], "promoted": [],
                      "released": released[cut], "primary": node, "boots": [], "stamps": []}
                     for cut in slices(released, group.config.max_body) if released]
        members = group._members.members

        async def tell(member: Member) -> None:
            # Also while this node stops: a takeover it made must be known.
            # A node that is not alive now (stalled, cut off) still holds the
            # claim: it is told once it is back, unless it restarted (its
            # claims went with it) or left. A claim never released would
            # refuse the primary's word for good.
            boot = member.boot
            todo = list(messages)
            while (todo and group.state is not GroupState.STOPPED
                   and members.get(member.node_id) is member and member.boot == boot
                   and member.state is not MemberState.LEFT):
                if member.state is MemberState.ALIVE:
                    try:
                        await group.transport.call(member.addr, Kind.BACKUP_NOTE, todo[0],
                                                   group.config.request_timeout)
                        del todo[0]
                        continue
                    except GobucketError:
                        pass
                await asyncio.sleep(group.config.probe_interval)

        await asyncio.gather(*(tell(m) for m in others))

    def took_over(self, asker: Member, primary: str, took: object, released: object,
                  boots: list[str] | None = None, stamps: list[float | None] | None = None
                  ) -> None:
        """``asker`` took over (``took``: tasks of ``primary``'s incarnations
        ``boots``, stamped ``stamps``, where given) or let go (``released``)
        these tasks of ``primary`` that this node agreed to (see
        :meth:`_announce`)."""
        for tasks in (took, released):
            if not isinstance(tasks, list) or not all(
                    isinstance(t, list) and len(t) == 2 and all(isinstance(v, str) for v in t)
                    for t in tasks):
                raise ProtocolError("promoted and released must be lists of [bucket, task id]")
        assert isinstance(took, list) and isinstance(released, list)
        moved, claims = self.moved, self.claims
        if len(moved) >= _MAX_TOMBS:
            for old in list(moved)[:_MAX_TOMBS // 2]:
                del moved[old]
        for index, (bucket, task_id) in enumerate(took):
            key = (bucket, task_id, primary)
            self._about("moved", key, None if boots is None else boots[index],
                        None if stamps is None else stamps[index])
            moved[key] = f"{asker.node_id} {asker.boot}"
        for bucket, task_id in released:
            key = (bucket, task_id, primary)
            if claims.get(key) == asker.node_id:
                del claims[key]
                self.claim_boots.pop(key, None)

    async def _ask_others(self, node: str, lost_boot: str | None, others: list[Member],
                          chosen: list[tuple[str, str, Backup]]) -> list[str] | None:
        """Each other node's objections to taking the ``chosen`` backups of
        ``node``'s tasks over (each named with the primary's incarnation and
        the task's stamp); None unless every one answered and they are a
        majority with this node."""
        group = self.group
        if not majority(group, without=node):
            return None
        tasks = [(bucket, task_id) for bucket, task_id, _ in chosen]
        header = group._members.header()
        # One request per slice (each task's answer stands alone: a slice
        # asked again is answered the same).
        messages: list[dict[str, Any]] = [{"v": 1, "from": header, "notes": [],
                     "check": [list(t) for t in tasks[cut]], "primary": node, "boot": lost_boot,
                     "boots": [backup[1] for _, _, backup in chosen[cut]],
                     "stamps": [backup[6] for _, _, backup in chosen[cut]]}
                    for cut in slices(tasks, group.config.max_body)]

        async def ask(member: Member) -> list[str] | None:
            answers: list[str] = []
            for message in messages:
                try:
                    reply = await group.transport.call(member.addr, Kind.BACKUP_NOTE, message,
                                                       group.config.request_timeout)
                except GobucketError:
                    return None
                checked = reply.get("checked")
                if not isinstance(checked, list) or len(checked) != len(message["check"]):
                    return None
                answers += map(str, checked)
            return answers

        replies = await asyncio.gather(*(ask(m) for m in others))
        if any(r is None for r in replies):
            return None
        verdicts = ["ok"] * len(tasks)
        for reply in replies:
            assert reply is not None
            for i, answer in enumerate(reply):
                if answer.startswith("backup:") and answer[7:] > group.node_id:
                    continue  # another backup of it, on a node that defers to this one
                if answer != "ok":
                    verdicts[i] = answer
        return verdicts

    def _take_over(self, node: str, chosen: list[tuple[str, str, Backup]]) -> list[list[str]]:
        """Fill ``chosen`` into the local buckets; the [bucket, id] of each taken."""
        group = self.group
        now = asyncio.get_running_loop().time()
        took: list[list[str]] = []
        for bucket, task_id, backup in chosen:
            _, boot, origin, payload, due, deadline, stamp = backup
            if deadline <= now:
                continue  # its life span is over: it can no longer run
            if (bucket, task_id) in self._conceded:
                continue  # a holder with a lower id asked meanwhile: it takes it over
            key = (bucket, task_id, node)
            if key in self.tombs and not self._older("tombs", key, boot, stamp):
                continue  # its primary told this node meanwhile that it started or was drained
            if self.answered_not_found(bucket, task_id, now):
                continue  # a drain here answered NOT_FOUND (see check())
            route = group._routes.get(bucket, task_id)
            if route is not None and route[0] == node and is_lost(route):
                # This node is its origin and reported it lost (its takeover
                # was deferred past promote_grace): taken over now, it would
                # run after that report -- what check() answers another holder.
                continue
            if ((key in self.moved and self.of("moved", key, boot, stamp))
                    or (key in self.promoted and self.of("promoted", key, boot, stamp))):
                # Another holder took this task over already (this node was
                # told, or a leaving one passed it on), or this one did. (Not
                # word about another incarnation's task of the id, or an
                # earlier one's.)
                continue
            local = group.buckets[bucket]
            try:
                data = None if payload == PACKED_NONE else group.codec.unpack(payload)
            except Exception as exc:  # stored unread; e.g. a type no serializer= here decodes
                log.warning("backup data cannot be decoded; not promoted "
                            "event=promotion_failed node=%s bucket=%s task_id=%s error=%s",
                            group.node_id, bucket, task_id, f"{type(exc).__name__}: {exc}")
                continue
            try:
                task = local.fill_validated(TaskType.TIME_BOMB, task_id, data,
                                            max(0.0, due - now), deadline - now, over=True)
            except (DuplicateTaskError, BucketClosedError) as exc:
                log.warning("backup not promoted event=promotion_failed node=%s bucket=%s "
                            "task_id=%s error=%s", group.node_id, bucket, task_id, exc)
                continue
            local.recovered[task.id] = max(0.0, now - due)
            self._about("promoted", (bucket, task.id, node), boot, stamp)
            self.promoted[(bucket, task.id, node)] = now
            took.append([bucket, task.id])
            group._replicas.adopt(bucket, task, origin, node, boot)
        promoted = len(took)
        if promoted:
            group.events.add("tasks_promoted", f"{promoted} tasks of {node} taken over here",
                             peer=node)
            log.warning("took over tasks of a peer that is gone event=tasks_promoted "
                        "node=%s peer=%s count=%d", group.node_id, node, promoted)
        return took

    def check(self, asker: str, primary: str, boot: object, tasks: object,
              asker_boot: str | None = None, boots: object = None, stamps: object = None
              ) -> list[str]:
        """Answer backup holder ``asker``, about to take over ``primary``'s
        tasks: ``alive`` (this node sees ``primary`` alive in boot ``boot``),
        ``tomb`` (it left word that the task started or was drained),
        ``reported`` (this node, its origin, reported it lost: taken over
        now, it would run after that report), ``live``
        (a task of that id lives here), ``promoted`` (this node took it over
        already), ``backup:<id>`` (this node holds a backup of it too: the
        lower id takes it over), ``claimed`` (another holder with a lower id
        asked first), or ``ok`` -- which this node remembers as a claim:
        a tomb the primary sends later is refused (see :meth:`note`).
        ``boots``: the primary's incarnation each task is about (an earlier
        version sends none: then ``boot``, if given); a claim answers only
        for that incarnation's task. ``stamps``: each task's stamp (see
        :mod:`.columns`), where known: a tomb about an earlier task of the
        id from the same incarnation is no objection, and a claim answers
        for that task and earlier ones only."""
        if not isinstance(tasks, list) or not all(
                isinstance(t, list) and len(t) == 2 and all(isinstance(v, str) for v in t)
                for t in tasks):
            raise ProtocolError("check must be a list of [bucket, task id]")
        if boot is not None and not isinstance(boot, str):
            raise ProtocolError("check boot must be a string or nil")
        if boots is not None and not (isinstance(boots, list) and len(boots) == len(tasks)
                                      and all(isinstance(b, str) for b in boots)):
            raise ProtocolError("check boots must be a string per task, or nil")
        stamps = read_stamps(stamps, len(tasks), "check")
        group = self.group
        seen = group._members.members.get(primary)
        if (boot is not None and seen is not None and seen.boot == boot
                and seen.state is MemberState.ALIVE):
            return ["alive"] * len(tasks)
        answers = []
        claims = self.claims
        for index, (bucket, task_id) in enumerate(tasks):
            key = (bucket, task_id, primary)
            about = boot if boots is None else boots[index]
            stamp = None if stamps is None else stamps[index]
            local = group.buckets.get(bucket)
            where = self.records.get(bucket)
            claimer = claims.get(key)
            route = group._routes.get(bucket, task_id)
            if key in self.tombs and not self._older("tombs", key, about, stamp):
                answers.append("tomb")
            elif route is not None and route[0] == primary and is_lost(route):
                answers.append("reported")
            elif self.not_found and self.answered_not_found(bucket, task_id):
                answers.append("tomb")  # a drain here answered NOT_FOUND
            elif key in self.promoted and not self._older("promoted", key, about, stamp):
                answers.append("promoted")
            elif local is not None and task_id in local:
                answers.append("live")
            elif ((where is not None and (task_id, primary) in where)
                  or (bucket, task_id) in self._confirming):
                answers.append(f"backup:{group.node_id}")  # two copies: the lower id wins
                if asker < group.node_id and (bucket, task_id) in self._confirming:
                    # It goes on (it asked this node: views may differ, and
                    # this node's own check may not reach it), so this one
                    # must not.
                    self._conceded.add((bucket, task_id))
            elif claimer is not None and claimer < asker:
                answers.append("claimed")
            else:
                if claimer is None and len(claims) >= _MAX_TOMBS:
                    for old in list(claims)[:_MAX_TOMBS // 2]:
                        del claims[old]
                        self.claim_boots.pop(old, None)
                self._about("claims", key, about, stamp)
                claims[key] = asker
                if asker_boot is None:
                    self.claim_boots.pop(key, None)
                else:
                    self.claim_boots[key] = asker_boot
                answers.append("ok")
        return answers

    # -- leaving -------------------------------------------------------------------------

    async def bequeath(self) -> None:
        """On a graceful stop: pass the word this node holds (tombstones,
        claims, takeovers it was told of) on to every alive peer, so a
        majority that counts only the nodes still there still holds it.
        Best effort, bounded by ``request_timeout`` per message (a large
        bequest goes as several); the most recent ``_BEQUEST`` records of
        each kind."""
        group = self.group
        tomb_keys = list(self.tombs)[-_BEQUEST:]
        moves = list(self.moved.items())[-_BEQUEST:]
        promotions = list(self.promoted)[-_BEQUEST:]
        tombs = [list(k) for k in tomb_keys]
        claim_keys = list(self.claims)[-_BEQUEST:]
        claims = [[*k, self.claims[k]] for k in claim_keys]
        mine = f"{group.node_id} {group.boot_id}"  # what it took over itself
        moved = [*([*k, v] for k, v in moves), *([*k, mine] for k in promotions)]
        if not (tombs or claims or moved):
            return
        # Which incarnation's task each tomb, claim and move is about, where known:
        # a key of two moved rows (a move and a promotion) only if both are
        # about the same one.
        labels: dict[tuple[str, str, str], str | None] = {}
        # ... and the latest stamp of the tasks they are about, where every
        # word named one (a key of two moved rows: the later of both).
        upto: dict[tuple[str, str, str], float | None] = {}
        for name, keys in (("moved", [k for k, _ in moves]), ("promoted", promotions)):
            stamps = self.stamps.get(name, {})
            for k in keys:
                boot = self._boot(name, k)
                labels[k] = boot if labels.get(k, boot) == boot else None
                stamp = stamps.get(k)
                if k in upto:
                    prior = upto[k]
                    stamp = None if stamp is None or prior is None else max(stamp, prior)
                upto[k] = stamp
        kept: dict[str, dict[tuple[str, str, str], Any]] = {
            "tombs": self.stamps.get("tombs", {}), "claims": self.stamps.get("claims", {}),
            "moved": upto}
        # How much longer each tomb is kept than TOMB_KEEP from now, if it is.
        now = asyncio.get_running_loop().time()
        keep = [None if (until := self.tomb_until.get(k)) is None else max(0.0, until - now)
                for k in tomb_keys]
        header = group._members.header()
        messages: list[dict[str, Any]] = []
        for kind, rows in (("tombs", tombs), ("claims", claims), ("moved", moved)):
            # In slices that fit a request (see slices(): a row is named twice here).
            for cut in slices(rows, group.config.max_body // 2) if rows else ():
                keys = list(dict.fromkeys((r[0], r[1], r[2]) for r in rows[cut]))
                labelled = [[*k, b] for k in keys if (
                    b := labels.get(k) if kind == "moved" else self._boot(kind, k))]
                # Which incarnation's task each row is about, and the stamp,
                # one per labelled row (under a key earlier versions ignore).
                inherit: dict[str, Any] = {
                    "tombs": [], "claims": [], "moved": [], kind: rows[cut],
                    "about": {kind: labelled, "stamps": {
                        kind: [kept[kind].get((r[0], r[1], r[2])) for r in labelled]}}}
                if kind == "tombs":
                    inherit["keep"] = keep[cut]
                messages.append({"v": 1, "from": header, "notes": [], "inherit": inherit})
        peers = [m for m in group._members.members.values() if m.state is MemberState.ALIVE]

        async def send(member: Member) -> None:
            for message in messages:
                try:
                    await group.transport.call(member.addr, Kind.BACKUP_NOTE, message,
                                               group.config.request_timeout)
                except GobucketError as exc:
                    log.debug("word not passed on event=bequest_not_delivered node=%s "
                              "peer=%s error=%s", group.node_id, member.node_id, exc)
                    return

        await asyncio.gather(*(send(m) for m in peers))

    def inherit(self, bequest: object) -> None:
        """Keep the word a leaving peer passed on (see :meth:`bequeath`)."""
        if not isinstance(bequest, dict):
            raise ProtocolError("inherit must be a map")
        about = bequest.get("about", {})
        if not isinstance(about, dict) or not all(
                isinstance(rows, list) and all(
                    isinstance(r, list) and len(r) == 4 and all(isinstance(v, str) for v in r)
                    for r in rows)
                for rows in (about.get(kind, []) for kind in ("tombs", "claims", "moved"))):
            raise ProtocolError("inherit 'about' maps tombs, claims and moved to rows "
                                "[bucket, task id, primary, its boot id]")
        sent = about.get("stamps", {})
        if not isinstance(sent, dict):
            raise ProtocolError("inherit 'about' stamps must be a map")
        boots: dict[str, dict[tuple[str, str, str], str]] = {"tombs": {}, "claims": {},
                                                              "moved": {}}
        stamps: dict[str, dict[tuple[str, str, str], float]] = {"tombs": {}, "claims": {},
                                                               "moved": {}}
        for kind, known in boots.items():
            labelled = about.get(kind, [])
            given = read_stamps(sent.get(kind), len(labelled), "inherit 'about'")
            for i, r in enumerate(labelled):
                key = (r[0], r[1], r[2])
                if key not in known:
                    known[key] = r[3]
                    stamp = None if given is None else given[i]
                    if stamp is not None:
                        stamps[kind][key] = stamp
        rows = [bequest.get(kind, []) for kind in ("tombs", "claims", "moved")]
        keep = read_stamps(bequest.get("keep"), len(rows[0]) if isinstance(rows[0], list)
                           else 0, "inherit", "keep")
        for kind, (size, table) in zip(rows, ((3, None), (4, self.claims), (4, self.moved)),
                                       strict=True):
            if not isinstance(kind, list) or not all(
                    isinstance(r, list) and len(r) == size and all(isinstance(v, str) for v in r)
                    for r in kind):
                raise ProtocolError("inherit rows must be lists of strings")
            for index, row in enumerate(kind):
                key = (row[0], row[1], row[2])
                if table is None:
                    self._tomb(key, boots["tombs"].get(key), stamps["tombs"].get(key),
                               None if keep is None else keep[index])
                else:
                    # (Kept here already: a label that differs goes.)
                    kind_name = "moved" if table is self.moved else "claims"
                    self._about(kind_name, key, boots[kind_name].get(key),
                                stamps[kind_name].get(key))
                    if key not in table and len(table) < _MAX_TOMBS:
                        table[key] = row[3]
                        if table is self.claims:
                            self.claim_boots.pop(key, None)

    # -- housekeeping ---------------------------------------------------------------------

    def of(self, table: str, key: tuple[str, str, str], boot: str,
           stamp: float | None = None) -> bool:
        """Is the word under ``key`` in ``table`` ("tombs", "claims",
        "promoted" or "moved") about the task of the primary's incarnation
        ``boot`` -- with ``stamp``, about that task or an earlier one of the
        id? Yes too when that is not known (word from a node of an earlier
        version, or a word that named no stamp)."""
        was = self._boot(table, key)
        if was is None:
            return True
        if was != boot:
            return False
        upto = None if stamp is None else self.stamps.get(table, {}).get(key)
        return upto is None or stamp <= upto  # type: ignore[operator]

    def _older(self, table: str, key: tuple[str, str, str], boot: str | None,
               stamp: float | None) -> bool:
        """Are the words under ``key`` in ``table`` known to be about tasks of
        incarnation ``boot`` filled before the one stamped ``stamp``?"""
        if boot is None or stamp is None or self._boot(table, key) != boot:
            return False
        upto = self.stamps.get(table, {}).get(key)
        return upto is not None and upto < stamp

    def _boot(self, table: str, key: tuple[str, str, str]) -> str | None:
        """The primary's boot the word under ``key`` in ``table`` is about, if known."""
        boots = self.boots.get(table)
        return None if boots is None else boots.get(key)

    def _about(self, table: str, key: tuple[str, str, str], boot: str | None,
               stamp: float | None = None) -> None:
        """A word about the task of the primary's incarnation ``boot`` (None:
        not known), stamped ``stamp`` (None: not known), is about to be kept
        under ``key`` in ``table``. If a word is kept there already about
        another incarnation, or one not known, the key loses its label: its
        words then apply to every incarnation (a late word about an earlier
        one must not relabel a later one's). Within the incarnation, the
        key's stamp is the latest of its words' (a word about a task covers
        the earlier ones of the id: they had ended when it was filled), and
        goes if one of them named none."""
        boots = self.boots.setdefault(table, {})
        stamps = self.stamps.setdefault(table, {})
        kept: dict[tuple[str, str, str], Any] = getattr(self, table)
        known = key in kept
        if boot is None or (known and boots.get(key) != boot):
            boots.pop(key, None)
            stamps.pop(key, None)
            return
        if len(boots) >= 2 * _MAX_TOMBS:  # words gone since: keep those still kept
            for gone in [k for k in boots if k not in kept]:
                del boots[gone]
            for gone in [k for k in stamps if k not in kept]:
                del stamps[gone]
        boots[key] = boot
        if stamp is None or (known and key not in stamps):
            stamps.pop(key, None)
        elif known:
            stamps[key] = max(stamps[key], stamp)
        else:
            stamps[key] = stamp

    def _tomb(self, key: tuple[str, str, str], boot: str | None = None,
              stamp: float | None = None, keep: float | None = None) -> None:
        """Keep a primary's word that the task (of its incarnation ``boot``,
        stamped ``stamp``, where known) started or was drained: for
        ``TOMB_KEEP``, or ``keep`` seconds if that is longer."""
        self._about("tombs", key, boot, stamp)
        now = asyncio.get_running_loop().time()
        tombs, until = self.tombs, self.tomb_until
        if len(tombs) >= _MAX_TOMBS:  # the oldest half goes (kept in insertion order)
            log.warning("too many tombstones: the oldest half is forgotten early "
                        "event=tombs_trimmed node=%s count=%d", self.group.node_id,
                        _MAX_TOMBS // 2)
            for old in list(tombs)[:_MAX_TOMBS // 2]:
                del tombs[old]
                if old != key:  # (one written again keeps what it was kept for)
                    until.pop(old, None)
        tombs.pop(key, None)  # (to the end: the table stays in the order of its times)
        tombs[key] = now
        if keep is not None and keep > TOMB_KEEP:
            until[key] = max(until.get(key, 0.0), now + keep)
        self._prune_tombs(now)

    def answered_not_found(self, bucket: str, task_id: str, now: float | None = None) -> bool:
        """Did a drain here answer NOT_FOUND for ``task_id`` within ``TOMB_KEEP``?"""
        at = self.not_found.get((bucket, task_id))
        if at is None:
            return False
        if now is None:
            now = asyncio.get_running_loop().time()
        return now - at < TOMB_KEEP

    def drained_nowhere(self, bucket: str, task_id: str) -> bool:
        """A drain of ``task_id`` found it nowhere: remember it (see
        :attr:`not_found`, unless every node is alive and none restarted
        lately) and return True -- unless a holder was told here
        it may take a backup of the id over (a claim) and may still do so
        (it has not said it did, and it is neither presumed lost nor
        restarted): then False, and the drain cannot say NOT_FOUND."""
        members = self.group._members.members
        claims = self.claims
        for node in members if claims else ():
            key = (bucket, task_id, node)
            claimer = claims.get(key)
            if claimer is None or key in self.moved:
                continue  # none, or the holder said it took the task over (it ran there)
            holder, boot = members.get(claimer), self.claim_boots.get(key)
            if holder is not None and not holder.lost and boot in (None, holder.boot):
                return False  # it may still take it over
        now = asyncio.get_running_loop().time()
        settled = now - self.promote_delay()  # met before this: not a restart a takeover waits on
        if all(m.state is MemberState.ALIVE and m.met_at < settled for m in members.values()):
            # Every node alive, none met anew (a restart) within the time a
            # takeover waits: no backup is about to be taken over, and no word
            # is left (it would keep a later task of the id from being taken
            # over: a drain-then-fill of one id is a common pattern).
            return True
        marks = self.not_found
        while marks and (len(marks) >= _MAX_TOMBS
                         or now - next(iter(marks.values())) >= TOMB_KEEP):
            del marks[next(iter(marks))]
        marks.pop((bucket, task_id), None)
        marks[(bucket, task_id)] = now
        return True

    def _prune_tombs(self, now: float) -> None:
        """Forget the tombstones older than ``TOMB_KEEP`` (the oldest come
        first); one kept longer goes to the end, as if written now."""
        tombs, until = self.tombs, self.tomb_until
        while tombs:
            first = next(iter(tombs))
            if now - tombs[first] < TOMB_KEEP:
                break
            del tombs[first]
            if until.get(first, now) > now:
                tombs[first] = now
            else:
                until.pop(first, None)

    def _drop_where(self, test: Any) -> None:
        for where in self.records.values():
            for key in [k for k, b in where.items() if test(b)]:
                del where[key]

    def _expire(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] < now:
            _, _, bucket, keys = heapq.heappop(heap)
            where = self.records.get(bucket)
            if where is not None:
                for key in keys:
                    backup = where.get(key)
                    if backup is not None and backup[5] < now:
                        del where[key]
        if self.promoted and len(self.promoted) > 10_000:
            horizon = now - 600.0
            self.promoted = {k: t for k, t in self.promoted.items() if t > horizon}


def _later(backup: Backup, boot: str, stamp: float | None) -> bool:
    """Is ``backup`` known to be of a task of incarnation ``boot`` filled
    after the one stamped ``stamp`` (a word or copy about that one is late)?"""
    held = backup[6]
    return stamp is not None and held is not None and backup[1] == boot and held > stamp
