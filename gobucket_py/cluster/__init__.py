"""The cluster: peers over HTTP (or in memory), membership, placement, handoff."""

from .auth import Keyring
from .group import GroupState, TaskBucketGroup
from .membership import MemberState, PeerInfo
from .memory import MemoryNetwork
from .tls import TLSConfig
from .transport import HttpTransport, Transport

__all__ = ["GroupState", "HttpTransport", "Keyring", "MemberState", "MemoryNetwork", "PeerInfo",
           "TLSConfig", "TaskBucketGroup", "Transport"]
