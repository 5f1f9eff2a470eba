"""The one error tree of gobucket_py.

Every error the library raises on purpose derives from :class:`GobucketError`;
errors of aiohttp and msgpack are converted at the edge (``raise X from exc``)::

    GobucketError
    ├── BucketError
    │   ├── BucketFullError        the bucket holds max_bucket live tasks
    │   ├── DuplicateTaskError     a live task already has this id
    │   └── BucketClosedError      the bucket (or group) is closed
    ├── UnknownBucketError         no bucket of that name (here or on the peer)
    ├── ClusterFullError           no node of the cluster could take the task
    │   └── NoBackupRoomError      with replicas: no room for the task's backups
    └── PeerError                  a peer answered with an error
        ├── PeerUnavailableError   a peer could not be reached or timed out
        │                          (or answered with an error): try again
        ├── PlacementUnknownError  fill: the task may or may not be on a peer
        └── ProtocolError          a message could not be encoded or decoded

Bad configuration raises :class:`ValueError` naming the field, as Python does.
"""

from __future__ import annotations

__all__ = [
    "BucketClosedError",
    "BucketError",
    "BucketFullError",
    "ClusterFullError",
    "DuplicateTaskError",
    "GobucketError",
    "NoBackupRoomError",
    "PeerError",
    "PeerUnavailableError",
    "PlacementUnknownError",
    "ProtocolError",
    "UnknownBucketError",
]


class GobucketError(Exception):
    """Root of every error gobucket_py raises on purpose."""


class BucketError(GobucketError):
    """A bucket refused a task."""


class BucketFullError(BucketError):
    """The bucket already holds ``max_bucket`` live tasks."""


class DuplicateTaskError(BucketError):
    """A live task with the same id is already in the bucket."""


class BucketClosedError(BucketError):
    """The bucket or group is closed (or closing) and accepts no new task."""


class UnknownBucketError(GobucketError):
    """No bucket of that name exists on the node that was asked."""


class ClusterFullError(GobucketError):
    """Neither this node nor any peer could take the task.

    ``rejections`` maps each peer id that was asked to the reason it gave.
    """

    def __init__(self, message: str, rejections: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.rejections: dict[str, str] = dict(rejections or {})


class NoBackupRoomError(ClusterFullError):
    """With replicas: the task could not get its backups on other alive
    nodes (too few peers, or their backup stores are full), so it was not
    accepted. ``rejections`` maps each peer asked to its reason."""


class PeerError(GobucketError):
    """A peer could not be reached, timed out, or answered with an error.

    ``status`` is the HTTP status the peer answered with, if it answered.
    """

    status: int | None = None


class PeerUnavailableError(PeerError):
    """A peer could not say: it refused the connection, did not answer within
    the timeout, or answered with an error; for ``drain`` and ``get`` also a
    holder that is dead but may only be stalled, or no peer reached yet; for
    a :class:`~gobucket_py.GroupClient`, one used outside ``async with``.
    The answer is unknown, not negative: try again.

    ``maybe_delivered`` is False when the request certainly never reached the
    peer (connection refused), True when it may have been processed.
    ``refused`` is True only when the peer's host answered that nothing
    listens at its address (connection refused): a stronger sign of a dead
    process than a timeout, which a broken link gives too.
    """

    def __init__(self, message: str, *, maybe_delivered: bool = True,
                 refused: bool = False) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered
        self.refused = refused


class PlacementUnknownError(PeerError):
    """``fill`` could not find out whether a peer accepted the task.

    The forward to ``node_id`` timed out and the peer could not be asked in
    time whether it had taken the task (``GroupConfig.settle_timeout``). The
    task may be live there, so it was not placed anywhere else. Call
    ``drain`` or ``get`` (which ask ``node_id``) to find out. A new fill of
    the id from the same node asks ``node_id`` first, and raises this again
    while it cannot tell (also when an id this node forwarded earlier may
    still be live on a node that cannot be asked).
    """

    def __init__(self, message: str, *, node_id: str, task_id: str) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.task_id = task_id


class ProtocolError(PeerError):
    """A message could not be encoded or decoded (version, shape or size)."""
