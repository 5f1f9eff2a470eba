"""gobucket_py: bounded in-memory task buckets for asyncio, shared by a cluster.

Local use::

    from gobucket_py import BucketConfig, TaskBucket, TaskType

    async def backup(task):
        print("confirmation for", task.id, "never came")

    async with TaskBucket(BucketConfig(life_span=60, run_after=30), backup) as bucket:
        await bucket.fill(TaskType.TIME_BOMB, "order-42", {"user": 7})
        await bucket.drain("order-42")  # the confirmation arrived: never runs

Everything a user needs is in ``__all__``; other modules may change.
"""

__version__ = "0.1.0"  # first: observe.metrics reads it while this package loads

from .bucket import TaskBucket
from .client import GroupClient
from .cluster import (
    GroupState,
    HttpTransport,
    Keyring,
    MemberState,
    MemoryNetwork,
    PeerInfo,
    TaskBucketGroup,
    TLSConfig,
    Transport,
)
from .codec import Codec, Serializer
from .config import BucketConfig, GroupConfig
from .errors import (
    BucketClosedError,
    BucketError,
    BucketFullError,
    ClusterFullError,
    DuplicateTaskError,
    GobucketError,
    NoBackupRoomError,
    PeerError,
    PeerUnavailableError,
    PlacementUnknownError,
    ProtocolError,
    UnknownBucketError,
)
from .executor import Executor, FunctionExecutor, Handler
from .observe.web import serve_pages
from .task import DrainOutcome, DrainResult, FillResult, Task, TaskInfo, TaskState, TaskType

__all__ = [
    "BucketClosedError",
    "BucketConfig",
    "BucketError",
    "BucketFullError",
    "ClusterFullError",
    "Codec",
    "DrainOutcome",
    "DrainResult",
    "DuplicateTaskError",
    "Executor",
    "FillResult",
    "FunctionExecutor",
    "GobucketError",
    "GroupClient",
    "GroupConfig",
    "GroupState",
    "Handler",
    "HttpTransport",
    "Keyring",
    "MemberState",
    "MemoryNetwork",
    "NoBackupRoomError",
    "PeerError",
    "PeerInfo",
    "PeerUnavailableError",
    "PlacementUnknownError",
    "ProtocolError",
    "Serializer",
    "Task",
    "TaskBucket",
    "TaskBucketGroup",
    "TaskInfo",
    "TaskState",
    "TaskType",
    "TLSConfig",
    "Transport",
    "UnknownBucketError",
    "__version__",
    "serve_pages",
]
