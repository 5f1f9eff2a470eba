"""Loss reports: tasks this node forwarded to a holder that is gone.

A holder is gone when it comes back with a new boot id (it crashed: its
tasks died with it) or stays dead past ``config.lost_after`` (presumed
lost). Each task routed there is reported once, through the group's
``on_tasks_lost``, ``lost_counts``, ``lost_by_peer``, the event feed and an
``event=tasks_lost`` log line. A graceful handoff is never a loss.

With replicas, a report first waits ``promote_grace`` for backups to say
they took the tasks over (``awaiting``); meanwhile the routes to that holder
are kept and lookups answer "unknown" rather than LOST. A holder presumed
lost that speaks again with the same boot id was not lost after all: its
tasks are live again (``event=tasks_returned``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .lifecycle import GroupState
from .membership import Member, MemberState

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["Losses", "TasksLost"]

log = logging.getLogger("gobucket_py")

#: ``on_tasks_lost(peer_id, bucket, task_ids)``; may be async.
TasksLost = Callable[[str, str, list[str]], Any]


async def _call_lost(callback: TasksLost, peer_id: str, bucket: str, task_ids: list[str],
                     node_id: str) -> None:
    try:
        result = callback(peer_id, bucket, task_ids)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("on_tasks_lost raised event=callback_error node=%s "
                      "callback=on_tasks_lost peer=%s bucket=%s tasks=%d", node_id, peer_id,
                      bucket, len(task_ids))


class Losses:
    """The loss reports of one :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group
        #: Holders proven gone or presumed lost whose loss report waits for
        #: backups to take their tasks over: node id -> loop time it ends.
        self.awaiting: dict[str, float] = {}

    def awaiting_promotion(self, node_id: str) -> bool:
        """Is a loss report for ``node_id`` waiting for backups to take over?"""
        until = self.awaiting.get(node_id)
        return until is not None and asyncio.get_running_loop().time() < until

    def unresolved(self, node_id: str) -> bool:
        """Is ``node_id`` silent but not yet presumed lost, or gone with its loss
        report waiting for backups to take over, or back from silence
        (suspect or dead, same boot) only just (so routes to it stay)? Not
        after it joined or restarted: a restart's routes are reported lost."""
        if self.awaiting and self.awaiting_promotion(node_id):
            return True
        membership = self.group._membership
        member = None if membership is None else membership.members.get(node_id)
        if member is None or member.lost:
            return False
        if member.state in (MemberState.SUSPECT, MemberState.DEAD):
            return True
        # Back from silence: what it queued for this node meanwhile (ended
        # notices; a waiting start gate's word that the task is still
        # there, see ended.GateKeepalive) comes within a probe or two and
        # a round trip. Until then its routes are not taken as expired.
        config = self.group.config
        grace = 2 * config.probe_interval + config.request_timeout
        return (member.state is MemberState.ALIVE
                and member.was in (MemberState.SUSPECT, MemberState.DEAD)
                and asyncio.get_running_loop().time() - member.state_since < grace)

    def returned(self, member: Member) -> None:
        """A holder presumed lost spoke again with the same boot id."""
        group = self.group
        back = group._routes.unmark_lost(member.node_id, member.boot)
        if back:
            group.events.add("tasks_returned", f"{back} tasks presumed lost on "
                             f"{member.node_id} are live again", peer=member.node_id)
            log.warning("a peer presumed lost came back with the same boot id; the tasks "
                        "reported lost there may still run event=tasks_returned node=%s "
                        "peer=%s count=%d", group.node_id, member.node_id, back)

    def report(self, node_id: str, boot: str, why: str, *, other: bool = False,
               waited: bool = False) -> None:
        """Report once every task routed to ``node_id`` (in ``boot``; with
        ``other``, in any earlier boot) as lost. With replicas, first wait
        ``promote_grace`` for backups to say they took tasks over."""
        group = self.group
        if group._replicas.ks and not waited:
            loop = asyncio.get_running_loop()
            grace = group.config.promote_grace
            self.awaiting[node_id] = loop.time() + grace
            loop.call_later(grace, lambda: self.report(node_id, boot, why, other=other,
                                                       waited=True))
            return
        if waited and self.awaiting.get(node_id, 0.0) <= asyncio.get_running_loop().time():
            self.awaiting.pop(node_id, None)
        if not group.running and group.state is not GroupState.STOPPING:
            return
        if other and waited and (member := group._members.members.get(node_id)) is not None:
            # "Every incarnation but the new one": the newest now (it may
            # have restarted again meanwhile, and routes to it are live).
            boot = member.boot
        for bucket, task_ids in group._routes.mark_lost(node_id, boot, other=other).items():
            self._tell(node_id, bucket, task_ids, why)

    def gone_already(self, node_id: str, boot: str) -> None:
        """A route was just added or moved to ``node_id`` in ``boot``: if that
        incarnation is known gone, its routes were reported before this one
        came, so report again (each task is reported once)."""
        group = self.group
        if node_id == group.node_id:
            return  # handed back to this node
        member = group._members.members.get(node_id)
        if member is None or member.boot != boot:
            self.report(node_id, boot, "restarted")
        elif member.lost:
            self.report(node_id, boot, "presumed lost")

    def report_ids(self, node_id: str, bucket: str, task_ids: list[str], why: str) -> None:
        """Report these tasks routed to ``node_id`` as lost (each once)."""
        marked = self.group._routes.mark_lost_ids(bucket, task_ids)
        if marked:
            self._tell(node_id, bucket, marked, why)

    def _tell(self, node_id: str, bucket: str, task_ids: list[str], why: str) -> None:
        group = self.group
        group.lost_counts[bucket] = group.lost_counts.get(bucket, 0) + len(task_ids)
        group.lost_by_peer[node_id] += len(task_ids)
        group.events.add("tasks_lost", f"{len(task_ids)} tasks lost on {node_id} ({why})",
                         bucket=bucket, peer=node_id)
        log.warning("tasks forwarded to a peer are lost event=tasks_lost node=%s peer=%s "
                    "reason=%s bucket=%s count=%d", group.node_id, node_id,
                    why.replace(" ", "_"), bucket, len(task_ids))
        callback = group.on_tasks_lost
        if callback is not None:
            group._spawn(_call_lost(callback, node_id, bucket, task_ids, group.node_id))
