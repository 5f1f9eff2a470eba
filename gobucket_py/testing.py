"""A test kit: a whole cluster of your buckets in one event loop, with faults.

:class:`MemoryCluster` starts N :class:`~gobucket_py.TaskBucketGroup` s on a
:class:`~gobucket_py.MemoryNetwork` (no sockets; messages still go through
msgpack), each with its own buckets from your factory and your executor, and
puts the network's faults and process faults one call away::

    from gobucket_py import BucketConfig, TaskType
    from gobucket_py.testing import MemoryCluster

    async with MemoryCluster(3, {"backups": BucketConfig(60, 30, max_bucket=2)},
                             executor=Backup()) as cluster:
        await cluster.settle()                   # every node sees every other one
        placed = await cluster["n1"].fill("backups", "order-42", task_type=TaskType.TIME_BOMB)
        cut = cluster.partition(["n1"], ["n2", "n3"])
        cluster.crash("n2")                      # kill -9: its tasks vanish, no hook runs
        await cluster.restart("n2")              # a new incarnation, empty buckets
        cut.heal()

With pytest, installing gobucket_py registers this module as a plugin (the
``pytest11`` entry point ``gobucket_py``; or pass ``-p gobucket_py.testing``):
its fixture ``gobucket_cluster`` makes clusters and closes them after the
test::

    async def test_overflow(gobucket_cluster):
        cluster = await gobucket_cluster(3, {"backups": BucketConfig(60, 30)},
                                         executor=Backup())

The fixture needs pytest-asyncio (or anyio's plugin) to run. Mark tests
``@pytest.mark.looptime`` (the looptime plugin) to fake the loop clock: a
minute of cluster time then takes milliseconds and runs the same way every
time. Without it the nodes use the fast timers of
:meth:`GroupConfig.local() <gobucket_py.GroupConfig.local>` in real time: a
``settle()`` after ``start()`` takes milliseconds, a crashed node is seen
dead in about 0.5 s.

Importing this module does not import pytest unless pytest is installed, and
``import gobucket_py`` never imports this module.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, cast

from .bucket import TaskBucket
from .cluster.group import TaskBucketGroup
from .cluster.membership import MemberState
from .cluster.memory import Fault, MemoryNetwork
from .codec import Serializer
from .config import BucketConfig, GroupConfig
from .executor import Executor, Handler

__all__ = ["BucketsFactory", "Fault", "MemoryCluster"]

#: Makes one node's buckets: called with the node's name for each
#: incarnation (a restart gets fresh, empty buckets, as a new process would).
BucketsFactory = Callable[[str], Mapping[str, TaskBucket]]


class MemoryCluster:
    """N :class:`~gobucket_py.TaskBucketGroup` s on one
    :class:`~gobucket_py.MemoryNetwork`, named ``n1`` .. ``nN``.

    ``buckets`` is either ``{name: BucketConfig}``, with ``executor`` (an
    :class:`~gobucket_py.Executor` or an ``async def handler(task)``) shared
    by every node, or a factory ``buckets(node_name) -> {name: TaskBucket}``.
    ``nodes`` is a count or the node names. Every node is seeded with every
    other one and uses ``config`` (default :meth:`GroupConfig.local()
    <gobucket_py.GroupConfig.local>`: fast timers). ``setup(group)`` is called
    for each new incarnation before it starts, e.g. to set
    ``group.on_tasks_lost``. Each node's placement choices come from
    ``random.Random(name)``, so with a faked clock a run repeats exactly.

    Use it as ``async with`` (or ``await start()`` and ``await close()``).
    ``cluster["n1"]`` is a running node's group; ``network`` is the
    :class:`~gobucket_py.MemoryNetwork` for anything not wrapped here
    (``down``, ``hang``, ``calls``, ``faults``). Example::

        async with MemoryCluster(3, {"jobs": BucketConfig(60, 30, max_bucket=1)},
                                 executor=handler) as cluster:
            await cluster.settle()
            await cluster["n1"].fill("jobs", "a", task_type=TaskType.TIME_BOMB)
            placed = await cluster["n1"].fill("jobs", "b", task_type=TaskType.TIME_BOMB)
            assert placed.forwarded                       # n1 was full
            cluster.crash(placed.node_id)                 # its holder dies
    """

    def __init__(
        self,
        nodes: int | Iterable[str] = 3,
        buckets: Mapping[str, BucketConfig] | BucketsFactory | None = None,
        *,
        executor: Executor | Handler | None = None,
        config: GroupConfig | None = None,
        serializer: Serializer | None = None,
        setup: Callable[[TaskBucketGroup], object] | None = None,
        network: MemoryNetwork | None = None,
    ) -> None:
        names = [f"n{i}" for i in range(1, nodes + 1)] if isinstance(nodes, int) else list(nodes)
        if not names or len(set(names)) != len(names) or not all(
                isinstance(n, str) and n for n in names):
            raise ValueError(f"nodes must be a count >= 1 or distinct names, got {nodes!r}")
        if buckets is None:
            raise ValueError("buckets: give {name: BucketConfig} (with executor=) or a "
                             "factory node_name -> {name: TaskBucket}")
        if callable(buckets):
            if executor is not None:
                raise ValueError("executor= goes with bucket configs; a buckets factory "
                                 "makes its own executors")
            self._factory: BucketsFactory = buckets
        else:
            if executor is None:
                raise ValueError("executor: bucket configs need an executor (an Executor "
                                 "or an async def handler(task))")
            configs = dict(buckets)
            for name, bucket_config in configs.items():
                if not isinstance(bucket_config, BucketConfig):
                    raise TypeError(f"buckets[{name!r}] must be a BucketConfig, "
                                    f"got {type(bucket_config).__name__}")
            run = executor

            def factory(node: str) -> dict[str, TaskBucket]:
                return {name: TaskBucket(cfg, run, name=name) for name, cfg in configs.items()}

            self._factory = factory
        #: The node names, in start order.
        self.names: list[str] = names
        #: The in-memory network the nodes talk over.
        self.network = network or MemoryNetwork()
        self.config = config or GroupConfig.local()
        self._serializer = serializer
        self._setup = setup
        self._groups: dict[str, TaskBucketGroup] = {}
        self._started = False
        self._burials: set[asyncio.Task[None]] = set()  # crashed incarnations being cleared
        self._errors: list[BaseException] = []  # what clearing them raised, for close()

    # -- nodes ---------------------------------------------------------------------

    def __getitem__(self, name: str) -> TaskBucketGroup:
        """The running group of node ``name``; KeyError if it is down."""
        group = self._groups.get(name)
        if group is None:
            state = "is down (crashed or stopped)" if name in self.names else "is not a node"
            raise KeyError(f"{name!r} {state}; running: {sorted(self._groups)}")
        return group

    @property
    def groups(self) -> dict[str, TaskBucketGroup]:
        """The running nodes' groups by name (a copy)."""
        return dict(self._groups)

    async def start(self) -> None:
        """Start every node, in order (they find each other as they come up;
        :meth:`settle` waits for that). Start once."""
        if self._started:
            raise RuntimeError("a MemoryCluster starts once; make a new one")
        self._started = True
        for name in self.names:
            await self._start(name)

    async def _start(self, name: str) -> TaskBucketGroup:
        seeds = [n for n in self.names if n != name]
        group = TaskBucketGroup(self._factory(name), seeds, node_id=name,
                                transport=self.network.transport(name), config=self.config,
                                rng=random.Random(name), serializer=self._serializer)
        if self._setup is not None:
            self._setup(group)
        await group.start()
        self._groups[name] = group
        return group

    async def restart(self, name: str) -> TaskBucketGroup:
        """Start a new incarnation of a node that was crashed or stopped: new
        boot id, fresh buckets from the factory, same name and address.
        Peers see a restart (tasks it held before a crash are reported lost
        by their origins). RuntimeError if it is running."""
        if name not in self.names:
            raise KeyError(f"{name!r} is not a node of this cluster")
        if name in self._groups:
            raise RuntimeError(f"{name} is running: crash() or stop() it first")
        return await self._start(name)

    def crash(self, name: str) -> None:
        """Kill node ``name`` without grace (``kill -9``).

        At once: its address refuses calls, requests it was handling and
        replies on their way to it are lost, its pending tasks vanish
        without any hook, and its running ``on_execute`` calls are cancelled
        (no hook follows). No word of it reaches a peer; they find out by
        probing it (``MemberState.SUSPECT``, then ``DEAD``). Its group is
        then shut down in the background, with nothing left to hand off.
        """
        group = self[name]
        del self._groups[name]
        self.network.crash(name)
        for bucket in group.buckets.values():
            for task in list(bucket):
                if bucket.take_pending(task.id) is None and task._runner is not None:
                    task._runner.cancel()  # running, or in its terminal hook
        burial = asyncio.get_running_loop().create_task(group.stop())
        self._burials.add(burial)
        burial.add_done_callback(self._buried)

    def _buried(self, burial: asyncio.Task[None]) -> None:
        self._burials.discard(burial)
        if not burial.cancelled() and burial.exception() is not None:
            self._errors.append(burial.exception())  # type: ignore[arg-type]

    async def stop(self, name: str) -> None:
        """Stop node ``name`` gracefully (SIGTERM): it tells its peers it is
        leaving and hands its pending tasks to them (see
        :meth:`TaskBucketGroup.stop <gobucket_py.TaskBucketGroup.stop>`)."""
        group = self[name]
        del self._groups[name]
        await group.stop()

    async def close(self) -> None:
        """End every running node as :meth:`crash` does -- no hook runs and
        nothing is handed off, so nothing reaches your executor after the
        test -- and heal the network. Idempotent. To test a graceful
        shutdown, :meth:`stop` nodes first. Raises what shutting down a
        crashed node's group raised (a bug worth seeing)."""
        self.network.heal()  # stalls release what they held (to dead nodes: lost)
        for name in list(self._groups):
            self.crash(name)
        if self._burials:
            await asyncio.wait(list(self._burials))
        if self._errors:
            error, self._errors = self._errors[0], []
            raise error

    async def __aenter__(self) -> MemoryCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> Literal[False]:
        await self.close()
        return False

    # -- waiting -------------------------------------------------------------------

    def state(self, observer: str, peer: str) -> MemberState | None:
        """How running node ``observer`` sees ``peer`` now (None: unknown to it)."""
        for info in self[observer].peers:
            if info.node_id == peer:
                return info.state
        return None

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0,
                       what: str = "") -> None:
        """Wait until ``condition()`` is true, checking every half probe
        interval; TimeoutError (naming ``what``) after ``timeout`` seconds
        of loop time. E.g. until n1 sees the crashed n2 as dead::

            await cluster.wait_for(lambda: cluster.state("n1", "n2") is MemberState.DEAD)
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        step = max(self.config.probe_interval / 2, 0.001)
        while not condition():
            if loop.time() >= deadline:
                raise TimeoutError(f"not true within {timeout:g}s: {what or condition}")
            await asyncio.sleep(step)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every running node sees every other running node alive
        and knows its free room (placement then has all candidates). Heal
        partitions and stalls first: across them it cannot happen."""

        def missing() -> list[str]:
            gaps = []
            for name, group in self._groups.items():
                seen = {p.node_id: p for p in group.peers}
                for other in self._groups:
                    info = seen.get(other)
                    if other != name and (info is None or info.state is not MemberState.ALIVE
                                          or not info.free):
                        gaps.append(f"{name} -> {other}: "
                                    f"{info.state.value if info else 'unknown'}")
            return gaps

        try:
            await self.wait_for(lambda: not missing(), timeout)
        except TimeoutError:
            raise TimeoutError(f"cluster did not settle within {timeout:g}s: "
                               + ", ".join(missing())) from None

    # -- network faults (see MemoryNetwork for what a caller sees) ------------------

    def delay(self, src: str, dst: str, seconds: float, *, both_ways: bool = False) -> Fault:
        """Add ``seconds`` of latency from ``src`` to ``dst``
        (:meth:`MemoryNetwork.delay <gobucket_py.MemoryNetwork.delay>`)."""
        return self.network.delay(src, dst, seconds, both_ways=both_ways)

    def drop_replies(self, src: str, dst: str) -> Fault:
        """``dst`` applies ``src``'s calls, whose replies are lost
        (:meth:`MemoryNetwork.drop_replies <gobucket_py.MemoryNetwork.drop_replies>`)."""
        return self.network.drop_replies(src, dst)

    def partition(self, a: str | Iterable[str], b: str | Iterable[str], *,
                  one_way: bool = False) -> Fault:
        """Cut the links between ``a`` and ``b``
        (:meth:`MemoryNetwork.partition <gobucket_py.MemoryNetwork.partition>`)."""
        return self.network.partition(a, b, one_way=one_way)

    def stall(self, name: str) -> Fault:
        """Hold node ``name``'s traffic, as SIGSTOP would
        (:meth:`MemoryNetwork.stall <gobucket_py.MemoryNetwork.stall>`)."""
        return self.network.stall(name)

    def resume(self, name: str) -> None:
        """Deliver what a stall held and let ``name``'s traffic flow again."""
        self.network.resume(name)

    def heal(self) -> None:
        """Undo every delay, dropped reply, partition and stall (crashed or
        stopped nodes stay down: :meth:`restart` them)."""
        self.network.heal()


# -- the pytest plugin (the pytest11 entry point names this module) -----------------

try:
    import pytest
except ImportError:  # the kit works without pytest; only the fixture needs it
    pass
else:
    _F = TypeVar("_F", bound=Callable[..., Any])

    def _async_fixture() -> Callable[[_F], _F]:
        try:
            import pytest_asyncio
        except ImportError:  # anyio's plugin runs async fixtures of its own tests
            return cast("Callable[[_F], _F]", pytest.fixture)
        return cast("Callable[[_F], _F]", pytest_asyncio.fixture)

    @_async_fixture()
    async def gobucket_cluster() -> AsyncIterator[Callable[..., Awaitable[MemoryCluster]]]:
        """Make started :class:`MemoryCluster` s (same arguments); each is
        closed after the test::

            async def test_crash(gobucket_cluster):
                cluster = await gobucket_cluster(3, {"jobs": BucketConfig(60, 30)},
                                                 executor=handler)
                await cluster.settle()
        """
        made: list[MemoryCluster] = []

        async def make(*args: Any, **kwargs: Any) -> MemoryCluster:
            cluster = MemoryCluster(*args, **kwargs)
            made.append(cluster)
            await cluster.start()
            return cluster

        try:
            yield make
        finally:
            for cluster in reversed(made):
                await cluster.close()
