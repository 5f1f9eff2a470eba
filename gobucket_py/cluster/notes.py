"""Notes: what a primary tells the holders of its tasks' backups.

A note is ``[op, bucket, task id]`` -- ``started`` or ``drop`` (the backup
goes; see :mod:`.replicas`), or ``tomb`` (word left with another node for a
silent holder) -- with the task's stamp, where known, in the request's
``stamps`` (see :mod:`.columns`), and the seconds it could still live, in
``lives`` (word of it is kept until then). The notes of one loop pass for one holder go in one
``BACKUP_NOTE`` request, addressed to the holder's incarnation (``to``): a
restarted holder answers ``gone``, as it knows nothing of what its
predecessor did. A holder that does not answer is asked again each
``probe_interval`` while it is alive; once it is not, its notes are
answered ``gone``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import GobucketError
from .membership import MemberState
from .protocol import Kind, slices

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["Notes"]

log = logging.getLogger("gobucket_py")

#: A queued note, the future of its answer, the incarnation it is for (None:
#: any), its task's stamp and its deadline in loop time (None: not known).
Queued = tuple[list[str], "asyncio.Future[str]", str | None, float | None, float | None]


class Notes:
    """The notes one :class:`~gobucket_py.TaskBucketGroup` sends, batched per holder."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        self._queued: dict[str, list[Queued]] = {}
        self._pumps: set[str] = set()

    async def tell(self, node: str, op: str, bucket: str, task_id: str,
                   boot: str | None = None, stamp: float | None = None,
                   deadline: float | None = None) -> str:
        """Tell holder ``node``; its answer (``ok``/``promoted``), or ``gone``
        once it is not alive (it cannot take the task over then without
        asking a majority of the other nodes, which the caller leaves word
        with: ``Replicas._tomb``).
        With ``boot``, the note is for that incarnation only: another one
        answers ``gone`` without being asked. ``stamp``: the task's, and
        ``deadline`` (loop time), if known."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(node, []).append(
            ([op, bucket, task_id], future, boot, stamp, deadline))
        if node not in self._pumps:
            self._pumps.add(node)
            self.group._spawn(self._pump(node))
        return await future

    async def _pump(self, node: str) -> None:
        group = self.group
        try:
            while self._queued.get(node):
                await asyncio.sleep(0)  # notes of this loop pass go together
                queued = self._queued.pop(node, [])
                member = group._members.members.get(node)
                # The incarnation asked: a new one knows nothing of what the
                # old one did (it may have taken the task over), so it is gone.
                boot = None if member is None else member.boot
                _resolve([q for q in queued if q[2] is not None and q[2] != boot], "gone")
                batch = [q for q in queued if q[2] is None or q[2] == boot]
                if not batch:
                    continue
                # In slices that fit a request (many tasks may fall due at once).
                cuts = slices([(q[0][1], q[0][2]) for q in batch], group.config.max_body)
                parts = [batch[cut] for cut in cuts] if len(cuts) > 1 else [batch]
                while parts:
                    batch = parts[0]
                    if (member is None or member.state is not MemberState.ALIVE
                            or member.boot != boot):
                        _resolve([q for part in parts for q in part], "gone")
                        break
                    message: dict[str, object] = {
                        "v": 1, "from": group._members.header(), "to": boot,
                        "notes": [q[0] for q in batch]}
                    stamps = [q[3] for q in batch]
                    if stamps.count(None) != len(stamps):
                        message["stamps"] = stamps
                    now = asyncio.get_running_loop().time()
                    lives = [None if q[4] is None else max(0.0, q[4] - now) for q in batch]
                    if lives.count(None) != len(lives):
                        message["lives"] = lives
                    try:
                        reply = await group.transport.call(member.addr, Kind.BACKUP_NOTE,
                                                           message,
                                                           group.config.request_timeout)
                        answers = reply.get("answers")
                        if not isinstance(answers, list) or len(answers) != len(batch):
                            raise GobucketError(f"{node} answered a malformed note reply")
                    except GobucketError as exc:
                        log.debug("backup note not delivered event=backup_note_not_delivered "
                                  "node=%s peer=%s error=%s", group.node_id, node, exc)
                        await asyncio.sleep(group.config.probe_interval)
                        member = group._members.members.get(node)
                        continue
                    for (_, future, _, _, _), answer in zip(batch, answers, strict=True):
                        if not future.done():
                            future.set_result(str(answer))
                    del parts[0]
        finally:
            self._pumps.discard(node)
            rest = self._queued.pop(node, [])
            _resolve(rest, "gone")


def _resolve(batch: list[Queued], answer: str) -> None:
    for _, future, _, _, _ in batch:
        if not future.done():
            future.set_result(answer)

