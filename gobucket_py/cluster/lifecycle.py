"""Lifecycle of a group: its states, starting (joining the cluster), stopping.

A group is NEW, then RUNNING after ``start``, STOPPING while it leaves and
STOPPED for good (it cannot be started again). Starting listens, then wires
membership and forwarding to the group's parts (:mod:`.reactions`,
:mod:`.losses`, :mod:`.lookup`, :mod:`.routes`), installs replicas and the
buckets' outcome watchers, and starts probing. Stopping is idempotent and
goes in a stated order, so that nothing is stranded: announce leaving, hand
pending tasks to peers (:mod:`.handoff`), give running tasks what is left of
``stop_grace``, tell origins what ended here, let fills in flight get their
verdicts, wait (under a deadline) for background work, stop membership;
then cancel what is left and close the transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import StrEnum
from typing import TYPE_CHECKING

from .forward import Forwarder
from .membership import Membership
from .transport import HttpTransport

if TYPE_CHECKING:
    from ..task import Task
    from .group import TaskBucketGroup

__all__ = ["GroupState", "start", "stop"]

log = logging.getLogger("gobucket_py")


class GroupState(StrEnum):
    """Lifecycle of a group; a stopped group cannot be started again."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


async def start(group: TaskBucketGroup) -> None:
    """The body of ``group.start``."""
    if group.state is not GroupState.NEW:
        raise RuntimeError(f"cannot start a group that is {group.state.value}")
    group.state = GroupState.RUNNING
    try:
        await group.transport.start(group._server.handle)
    except BaseException:
        group.state = GroupState.STOPPED
        raise
    membership = Membership(node_id=group.node_id, boot=group.boot_id,
                            transport=group.transport, config=group.config,
                            capacity=group.capacity, seeds=group.seeds, rng=group.rng)
    reactions = group._reactions
    membership.on_restart = reactions.restarted
    membership.on_lost = reactions.lost
    membership.on_returned = group._losses.returned
    membership.on_pruned = group._lookup.forget_member
    group._routes.hold = group._losses.unresolved
    group._routes.moved_early = group._ended.followed
    config = group.config  # a forward is settled within these (then its route is added)
    group._routes.early_keep = max(group._routes.early_keep, 2 * (
        config.forward_timeout + config.request_timeout + config.settle_timeout))
    membership.on_change = reactions.changed
    group._membership = membership
    if isinstance(group.transport, HttpTransport):
        # Known members' hosts get past the connection cap (see cluster/guard.py).
        def is_member_host(host: str) -> bool:
            return any(m.addr.rpartition(":")[0].strip("[]") == host
                       for m in membership.members.values())

        group.transport.limits.trusted = is_member_host
    group._forwarder = Forwarder(group.transport, membership, group.config)
    group._forwarder.on_batch = reactions.forwarded
    ended, replicas = group._ended, group._replicas
    replicas.install()

    def task_ended(task: Task) -> None:  # with replicas, backups learn it too
        ended.task_ended(task)
        replicas.task_ended(task)

    for name, bucket in group.buckets.items():
        bucket.node = group.node_id
        bucket.add_outcome_watcher(ended.task_ended if name not in replicas.ks
                                   else task_ended)
    group.started_at = time.time()
    await membership.start()
    group.events.add("node_started", f"{group.node_id} started at {group.address}",
                     node=group.node_id)
    log.info("node started event=node_started node=%s addr=%s boot=%s seeds=%s",
             group.node_id, group.address, group.boot_id, ",".join(group.seeds) or "-")


async def stop(group: TaskBucketGroup) -> None:
    """The body of ``group.stop``."""
    if group._stopped is not None:
        await asyncio.shield(group._stopped)
        return
    group._stopped = asyncio.get_running_loop().create_future()
    try:
        if group.state is GroupState.RUNNING:
            await _leave(group)
        for task in list(group._background):
            task.cancel()
        if group._background:
            await asyncio.wait(list(group._background))
        await group.transport.close()
    finally:
        group.state = GroupState.STOPPED
        group._stopped.set_result(None)


async def _leave(group: TaskBucketGroup) -> None:
    """Leave the cluster gracefully, in order (see the module docstring)."""
    group.state = GroupState.STOPPING
    group.events.add("node_stopping", f"{group.node_id} is leaving", node=group.node_id)
    membership = group._members
    mounted = not getattr(group.transport, "listen", True)
    await membership.announce_leave(mounted=mounted)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + group.config.stop_grace
    handed = await group._handoff.run(deadline)
    group._replicas.cut_off()
    await group._backups.bequeath()
    grace = max(0.0, deadline - loop.time())
    await asyncio.gather(*(b.close(grace) for b in group.buckets.values()))
    await group._ended.flush()  # tell origins what ended here, before going
    assert group._forwarder is not None
    config = group.config
    # Let forwards in flight get their verdicts, so no caller is stranded.
    await group._forwarder.close(config.forward_timeout + config.settle_timeout)

    if group._background:
        await asyncio.wait(list(group._background), timeout=config.request_timeout)
    # Done: everything held here was handed off or ended, and origins were
    # told (so a route still pointing here after a restart is stale; without
    # this word -- killed during the stop -- origins look for those tasks).
    # A mounted node's app stopped listening already: this says it is over.
    await membership.announce_leave(done=True)
    await membership.stop()
    log.info("node stopped event=node_stopped node=%s handed_off=%d",
             group.node_id, handed)
