"""Reactions to what membership and forwarding report about peers.

Membership calls the group when a peer joins or changes state
(``on_change``), comes back with a new boot id (``on_restart``) or is
presumed lost (``on_lost``); the forwarder when a batch was placed
(``on_batch``). The group's answer is here:

- with replicas, backups follow their holders: re-backed-up when a holder
  dies or leaves, promoted when a primary is gone, reconciled when it is
  back (:mod:`.replicas`, :mod:`.backups`);
- the tasks forwarded to a holder that crashed or is presumed lost are
  reported lost (:mod:`.losses`); a holder that left gracefully handed its
  tasks off, so its routes are just forgotten;
- every change is shown in the event feed (the dashboard).

Like the membership hooks they are, these must not block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .membership import Member, MemberState

if TYPE_CHECKING:
    from .group import TaskBucketGroup

__all__ = ["PeerReactions"]


class PeerReactions:
    """How one :class:`~gobucket_py.TaskBucketGroup` reacts to its peers."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group

    def changed(self, member: Member, old: MemberState | None) -> None:
        """``on_change``: a peer joined (``old`` None) or changed state."""
        group = self.group
        replicas, backups = group._replicas, group._backups
        if replicas.ks or backups.records:
            if member.state is MemberState.DEAD:
                replicas.holder_gone(member.node_id, dead=True)
                backups.primary_gone(member, restarted=False)
            elif member.state is MemberState.LEFT:
                replicas.holder_gone(member.node_id, left=True)
                backups.primary_left(member)
            elif member.state is MemberState.ALIVE and old in (MemberState.SUSPECT,
                                                               MemberState.DEAD):
                backups.primary_back(member)
                replicas.holder_back(member.node_id)
        new = member.state.value
        text = (f"{member.node_id} joined ({member.addr})" if old is None
                else f"{member.node_id}: {old.value} -> {new}")
        group.events.add("peer_joined" if old is None else f"peer_{new}", text,
                         peer=member.node_id)

    def restarted(self, member: Member, was: MemberState) -> None:
        """``on_restart``: a known peer came back with a new boot id."""
        group = self.group
        group._replicas.holder_gone(member.node_id)  # its backups died with it
        if was is MemberState.LEFT:
            # It left gracefully: its tasks were handed off or ended, and it
            # said so. If an incarnation did not say it was done (killed
            # during its stop), each task routed to it is looked for.
            node = member.node_id
            group._backups.primary_replaced(member)
            done = {boot for peer, boot in group._lookup.done if peer == node}
            stale = group._routes.forget_node(node, done)
            if stale:
                group._spawn(group._lookup.after_leave(stale))
            return
        group._backups.primary_gone(member, restarted=True)
        group._losses.report(member.node_id, member.boot, "restarted", other=True)

    def lost(self, member: Member) -> None:
        """``on_lost``: a peer stayed dead past ``lost_after``."""
        self.group._losses.report(member.node_id, member.boot, "presumed lost")

    def forwarded(self, member: Member, accepted: int, sent: int, handoff: bool) -> None:
        """``on_batch``: ``member`` took ``accepted`` of ``sent`` tasks."""
        what = "handoff" if handoff else "overflow"
        self.group.events.add_or_merge(what, member.node_id, accepted, sent)
