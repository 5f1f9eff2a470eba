"""Placing backups: where the k backups of each replicated task go.

The primary's side of :mod:`.replicas` asks :func:`place_backups` for a
list of tasks at once. Each backup goes to an alive peer picked by the same
two choices by free room as overflow, in batches through the forwarder
(``FILL`` with ``backup``), so a batch whose reply is lost is settled, never
stored twice. A peer that refuses (its backup store is full) is not asked
again for that task; rounds go on until each task has its k or no peer is
left, within the bound of a fill (``forward_timeout`` per round).
"""

from __future__ import annotations

import asyncio
import logging
import operator
from typing import TYPE_CHECKING, cast

from ..codec import Codec
from ..task import Task, TaskState
from .columns import Columns
from .forward import BACKUP, Item, Unsettled
from .items import PACKED_NONE
from .membership import Member, MemberState
from .placement import pick

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["all_pending", "backup_item", "pack_data", "place_backups"]

log = logging.getLogger("gobucket_py")

_PENDING = TaskState.PENDING
_state = operator.attrgetter("state")


async def place_backups(group: TaskBucketGroup, name: str, tasks: list[Task], origin: str,
                        k: int, ended: set[str] | None = None) -> list[tuple[str, ...]]:
    """Place ``k`` backups of each task of bucket ``name`` on alive peers;
    per task, the nodes that took one -- and those that may have (their
    batch could not be settled: they are told when the task starts or is
    drained, and another is placed). Empty for a task whose data the codec
    cannot carry (see :func:`pack_data`). The ids a peer refused because
    it holds word that an earlier task of the id from this node ended
    (verdict ``dropped``, see ``Backups.store``) are added to ``ended``."""
    forwarder = group._forwarder
    assert forwarder is not None
    count = len(tasks)
    # Per task: nodes that took a backup (shared tuples: one per node for
    # the common one-backup case), nodes that may have (their batch could
    # not be settled), nodes that refused.
    have: list[tuple[str, ...]] = [()] * count
    maybe: dict[int, list[str]] = {}
    refused: dict[int, set[str]] = {}
    codec = group.codec
    payloads = [PACKED_NONE if task.data is None else pack_data(task, codec) for task in tasks]
    wanted = (list(range(count)) if None not in payloads else
              [i for i, payload in enumerate(payloads) if payload is not None])
    loop = asyncio.get_running_loop()
    rng = group.rng
    cfg = group.config
    # A fill answers within its bound: no new round once the time of the
    # rounds left is spent (a batch may wait behind others, and settle).
    last = loop.time() + cfg.forward_timeout * (cfg.max_attempts - 1)
    for attempt in range(cfg.max_attempts):
        if attempt or not all_pending(tasks):
            wanted = [i for i in wanted if tasks[i].state is _PENDING
                      and len(have[i]) < k]
        if not wanted or loop.time() > last:
            break
        pool = [m for m in group._members.members.values() if m.state is MemberState.ALIVE]
        room = {m: m.estimate(name) for m in pool}
        room_of = room.__getitem__
        sends: dict[Member, tuple[list[int], list[Item]]] = {}  # per peer: indexes, items
        fast: Columns | None = None  # the common case's one batch, column by column
        now = loop.time()
        only = pool[0] if len(pool) == 1 else None
        names_of = {m: (m.node_id,) for m in pool}  # one backup: its holders, shared
        if k == 1 and only is not None and not attempt:
            # The common case -- one peer, each task fresh -- as a tight loop
            # that builds the batch column by column (no tuple per task).
            ids: list[str] = []
            runs: list[float] = []
            lives: list[float] = []
            stamps: list[float] = []
            for i in wanted:
                task = tasks[i]
                ids.append(task.id)
                stamps.append(task._filled)
                run_after = task._run_at - now
                if run_after < 0.0:
                    run_after = 0.0
                runs.append(run_after)
                life_span = task._filled + task._life - now
                lives.append(run_after + 0.001 if life_span <= run_after else life_span)
            # (wanted holds no task whose data could not be packed)
            fast = Columns(name, origin, names_of[only], ids,
                           cast("list[bytes]", payloads if len(wanted) == count
                                else [payloads[i] for i in wanted]), runs, lives, stamps)
            room[only] -= len(ids)
        for i in () if fast else wanted:
            task = tasks[i]
            got = have[i]
            if k == 1 and not got and pool and (not refused or i not in refused):
                member = only or pick(pool, room_of, rng)  # one backup: no exclusions
                room[member] -= 1
                share = sends.get(member)
                if share is None:
                    share = sends[member] = ([], [])
                share[0].append(i)
                share[1].append(backup_item(task, payloads[i],  # type: ignore[arg-type]
                                            now, origin, 0, names_of[member]))
                continue
            no = refused.get(i)
            chosen: list[Member] = []
            for _rank in range(len(got), k):
                options = pool if not (got or no or chosen) else [
                    m for m in pool if m.node_id not in got
                    and (no is None or m.node_id not in no) and m not in chosen]
                if not options:
                    break
                member = pick(options, room_of, rng)
                room[member] -= 1
                chosen.append(member)
            if len(got) + len(chosen) < k:
                continue  # no node left to try (the end decides, maybe holders count)
            names = (*got, *(m.node_id for m in chosen))
            payload = payloads[i]
            assert payload is not None  # not wanted otherwise
            for rank, member in enumerate(chosen, start=len(got)):
                share = sends.get(member)
                if share is None:
                    share = sends[member] = ([], [])
                share[0].append(i)
                share[1].append(backup_item(task, payload, now, origin, rank, names))
        if fast is not None and only is not None:
            futures = [(only, wanted, forwarder.send_many(only, fast, mode=BACKUP), only.boot)]
        elif sends:
            futures = [(member, share[0], forwarder.send_many(member, share[1], mode=BACKUP),
                        member.boot) for member, share in sends.items()]
        else:
            break
        for member, indexes, future, boot in futures:
            node = member.node_id
            one = (node,)
            for i, verdict in zip(indexes, await future, strict=True):
                if verdict == "ok":
                    got = have[i]
                    have[i] = (*got, node) if got else one
                elif verdict == "restarted" and member.boot != boot:
                    pass  # meant for its last incarnation; the new one is asked next round
                else:
                    if verdict == "dropped" and ended is not None:
                        ended.add(tasks[i].id)
                    # Unsettled: it may hold one -- it is told when the task
                    # starts or is drained, but another is placed (two
                    # copies of a backup: the takeover check lets one run).
                    refused.setdefault(i, set()).add(node)
                    if isinstance(verdict, Unsettled):
                        maybe.setdefault(i, []).append(node)
    if maybe:
        # A holder whose batch could not be settled counts: it may hold the
        # backup, which would run the task after a crash here, so refusing
        # the fill could be a lie (accepted, it has at worst fewer backups).
        for i, nodes in maybe.items():
            have[i] = (*have[i], *nodes)
    return have


def all_pending(tasks: list[Task]) -> bool:
    """Are all ``tasks`` still pending (a C-speed pass)?"""
    return set(map(_state, tasks)) == {_PENDING}


def pack_data(task: Task, codec: Codec) -> bytes | None:
    """A task's data as it travels in a backup; None if the codec cannot carry it."""
    try:
        return codec.pack(task.data)
    except TypeError as exc:
        log.warning("task data is not serializable; not backed up event=backup_refused "
                    "bucket=%s task_id=%s error=%s", task.bucket, task.id, exc)
        return None


def backup_item(task: Task, payload: bytes, now: float, origin: str, rank: int,
                names: tuple[str, ...]) -> Item:
    """The BACKUP item of ``task`` for its rank-``rank`` holder (times from
    ``now``; its stamp, the task's fill time here, last: see :mod:`.columns`)."""
    run_after = max(0.0, task._run_at - now)
    life_span = max(task._deadline - now, run_after + 0.001)
    return (task.bucket, task.id, 1, payload, run_after, life_span, origin, rank, names,
            task._filled)
