"""The cluster: peers over HTTP (or in memory), membership, placement, handoff."""

from .auth import Keyring
from .eager import EagerFuture
from .group import GroupState, TaskBucketGroup
from .membership import MemberState, PeerInfo
from .memory import MemoryNetwork
from .tls import TLSConfig
from .transport import HttpTransport, Transport

__all__ = ["EagerFuture", "GroupState", "HttpTransport", "Keyring", "MemberState",
           "MemoryNetwork", "PeerInfo", "TLSConfig", "TaskBucketGroup", "Transport"]
