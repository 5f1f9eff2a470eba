"""GroupClient: use a cluster from a process that is not a node.

It asks one node to act for it: ``fill`` makes that node the origin (local
first, then overflow), ``drain`` and ``get`` are routed cluster-wide by it.
Requests are signed like peer traffic::

    async with GroupClient("127.0.0.1:6666", secret="...") as client:
        placed = await client.fill("backups", "order-42", {"order": 42},
                                   task_type=TaskType.TIME_BOMB)
        await client.drain("backups", "order-42")

Task data is packed here by the same codec as a node's (give the client the
nodes' ``serializer=`` if they have one), so a fill's data that cannot travel
raises ``TypeError`` before anything is sent.
"""

from __future__ import annotations

from typing import Any, Literal

from . import errors
from .cluster.addresses import check_peer
from .cluster.auth import Keyring
from .cluster.items import unpack_info
from .cluster.protocol import Kind
from .cluster.tls import TLSConfig
from .cluster.transport import HttpTransport
from .codec import Codec, Serializer
from .config import check_positive
from .task import DrainOutcome, DrainResult, FillResult, TaskInfo, TaskType

__all__ = ["GroupClient"]

_ERRORS: dict[str, type[Exception]] = {
    name: getattr(errors, name) for name in errors.__all__} | {"ValueError": ValueError}


def _raise_error(reply: dict[str, Any], task_id: str) -> None:
    """Raise the error the node reported (same class as in-process), if any."""
    if "error" in reply:
        error = _ERRORS.get(str(reply["error"]), errors.GobucketError)
        if error is errors.PlacementUnknownError:
            raise errors.PlacementUnknownError(str(reply.get("message")),
                                               node_id=str(reply.get("node")), task_id=task_id)
        raise error(str(reply.get("message")))


class GroupClient:
    """A signed HTTP client of one node (see the module docstring).

    Use it as ``async with GroupClient(...) as client``: the connection pool
    opens on entry and closes on exit; outside that, every call raises
    :class:`~gobucket_py.PeerUnavailableError` ("transport is closed").
    ``address`` is the node's ``host:port``; ``timeout`` bounds each call
    (seconds); ``secret`` is the nodes' (None: unsigned requests, which a
    node with a secret refuses with 401).

    Errors come back as the node raised them, with these differences: a
    ``TypeError`` on the node arrives as ``ValueError``, a malformed request
    as :class:`~gobucket_py.PeerError` (HTTP 400), and
    ``ClusterFullError.rejections`` is empty (the message names them).
    """

    def __init__(self, address: str, *, secret: str | None = None, timeout: float = 5.0,
                 tls: TLSConfig | None = None, serializer: Serializer | None = None) -> None:
        self.address = check_peer(address, "address")
        self.timeout = check_positive("timeout", timeout)
        #: Packs task data as the nodes do (``serializer`` must be theirs).
        self.codec = Codec(serializer)
        keyring = None if secret is None else Keyring.parse(secret)
        self._transport = HttpTransport("127.0.0.1", 0, keyring=keyring, tls=tls)

    async def __aenter__(self) -> GroupClient:
        await self._transport.open_client()
        return self

    async def __aexit__(self, *exc_info: object) -> Literal[False]:
        await self.close()
        return False

    async def close(self) -> None:
        """Release the connection pool."""
        await self._transport.close()

    async def _call(self, kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
        return await self._transport.call(self.address, kind, {"v": 1, **message}, self.timeout)

    async def fill(self, bucket: str, task_id: str, data: Any = None, *,
                   task_type: TaskType = TaskType.IMMEDIATE, run_after: float | None = None,
                   life_span: float | None = None) -> FillResult:
        """Like ``TaskBucketGroup.fill`` on the node (errors: see the class).
        The result's ``task`` is None: the Task lives in the node's process."""
        if not isinstance(task_type, TaskType):
            raise TypeError(f"task_type must be a TaskType, got {task_type!r}")
        try:
            payload = self.codec.pack(data)
        except TypeError as exc:
            raise TypeError(f"task {task_id!r} was not sent: {exc}") from exc
        reply = await self._call(Kind.SUBMIT, {
            "bucket": bucket, "id": task_id, "type": 0 if task_type is TaskType.IMMEDIATE else 1,
            "data": payload, "run_after": run_after, "life_span": life_span})
        _raise_error(reply, task_id)
        return FillResult(bucket, task_id, str(reply["node"]), bool(reply["forwarded"]))

    async def drain(self, bucket: str, task_id: str) -> DrainResult:
        """Drain the task wherever it lives. Raises the node's error, e.g.
        :class:`~gobucket_py.PeerUnavailableError` when a possible holder did not answer."""
        reply = await self._call(Kind.DRAIN, {"bucket": bucket, "id": task_id,
                                              "scope": "cluster"})
        _raise_error(reply, task_id)
        node = reply.get("node")
        return DrainResult(DrainOutcome(reply["outcome"]), task_id,
                           node if isinstance(node, str) else None)

    async def get(self, bucket: str, task_id: str) -> TaskInfo | None:
        """Describe the task wherever it lives, or None (errors as for ``drain``)."""
        reply = await self._call(Kind.GET, {"bucket": bucket, "id": task_id,
                                            "scope": "cluster"})
        _raise_error(reply, task_id)
        raw = reply.get("task")
        return None if raw is None else unpack_info(raw)

    async def stats(self) -> dict[str, Any]:
        """The node's id, state and per-bucket counters."""
        return await self._call(Kind.STATS, {})
