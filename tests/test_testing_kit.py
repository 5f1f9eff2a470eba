"""gobucket_py.testing used as a user would: their executor, their buckets, faults.

Most tests fake the loop clock (looptime); one runs in real time, as a user's
suite without looptime would, and two run the pytest plugin in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gobucket_py import (
    BucketConfig,
    ClusterFullError,
    DrainOutcome,
    Executor,
    GroupConfig,
    MemberState,
    PeerUnavailableError,
    PlacementUnknownError,
    Task,
    TaskBucket,
    TaskBucketGroup,
    TaskState,
    TaskType,
)
from gobucket_py.testing import MemoryCluster

BOMB = TaskType.TIME_BOMB
ROOT = Path(__file__).resolve().parent.parent


class Backup(Executor):
    """The user's executor: records which jobs ran, and which ended how."""

    def __init__(self, work: float = 0.0) -> None:
        self.work = work
        self.ran: list[str] = []
        self.hooks: list[tuple[str, str]] = []

    async def on_execute(self, task: Task) -> None:
        self.ran.append(task.id)
        if self.work:
            await asyncio.sleep(self.work)

    async def on_finish(self, task: Task) -> None:
        self.hooks.append(("finish", task.id))

    async def on_panic(self, task: Task) -> None:
        self.hooks.append(("panic", task.id))


def jobs(max_bucket: int = 2, run_after: float = 10) -> dict[str, BucketConfig]:
    return {"jobs": BucketConfig(life_span=60, run_after=run_after, max_bucket=max_bucket)}


@pytest.mark.looptime
async def test_fill_overflow_and_drain_across_nodes() -> None:
    backup = Backup()
    async with MemoryCluster(3, jobs(), executor=backup) as cluster:
        await cluster.settle()
        placed = [await cluster["n1"].fill("jobs", f"order-{i}", {"order": i}, task_type=BOMB)
                  for i in range(6)]
        assert [p.node_id for p in placed[:2]] == ["n1", "n1"]
        assert all(p.forwarded and p.node_id in ("n2", "n3") for p in placed[2:])
        assert {len(g.buckets["jobs"]) for g in cluster.groups.values()} == {2}
        with pytest.raises(ClusterFullError):
            await cluster["n1"].fill("jobs", "order-6", task_type=BOMB)
        # Confirmations arrive through other instances: drains find the jobs anywhere.
        for i in range(0, 6, 2):
            assert (await cluster["n3"].drain("jobs", f"order-{i}")).outcome is DrainOutcome.DRAINED
        info = await cluster["n2"].get("jobs", "order-1")
        assert info is not None and info.state is TaskState.PENDING
        await asyncio.sleep(11)  # the rest fire on whichever node holds them
        assert sorted(backup.ran) == ["order-1", "order-3", "order-5"]
        assert sorted(backup.hooks) == [("finish", f"order-{i}") for i in (1, 3, 5)]


@pytest.mark.looptime
async def test_crash_loses_the_holders_tasks_silently_and_origins_report_them() -> None:
    backup = Backup(work=30)
    lost: list[tuple[str, str, list[str]]] = []

    def setup(group: TaskBucketGroup) -> None:  # every incarnation, before it starts
        group.on_tasks_lost = lambda peer, bucket, ids: lost.append((peer, bucket, sorted(ids)))

    async with MemoryCluster(["a", "b"], jobs(max_bucket=2, run_after=5), executor=backup,
                             setup=setup) as cluster:
        await cluster.settle()
        for job in ("mine-1", "mine-2", "pending"):
            placed = await cluster["a"].fill("jobs", job, task_type=BOMB)
        assert placed.node_id == "b"
        await cluster["b"].fill("jobs", "running", task_type=TaskType.IMMEDIATE)
        await asyncio.sleep(0.1)
        assert backup.ran == ["running"]
        cluster.crash("b")  # its running job is cancelled and its pending one vanishes: no hook
        with pytest.raises(KeyError, match="down"):
            cluster["b"]
        await cluster.wait_for(lambda: cluster.state("a", "b") is MemberState.DEAD)
        await cluster.restart("b")  # a new boot id: a learns that its forwarded job is gone
        await cluster.settle()
        await cluster.wait_for(lambda: bool(lost), what="a reports the lost job")
        assert lost == [("b", "jobs", ["pending"])]
        assert (await cluster["a"].drain("jobs", "pending")).outcome is DrainOutcome.LOST
        await asyncio.sleep(60)
        assert backup.ran == ["running", "mine-1", "mine-2"]
        assert sorted(backup.hooks) == [("finish", "mine-1"), ("finish", "mine-2")]


@pytest.mark.looptime
async def test_with_replicas_a_crash_loses_nothing_pending() -> None:
    backup = Backup()
    async with MemoryCluster(3, jobs(run_after=10), executor=backup,
                             config=GroupConfig.local(replicas=1)) as cluster:
        await cluster.settle()
        assert (await cluster["n1"].fill("jobs", "job", task_type=BOMB)).node_id == "n1"
        cluster.crash("n1")  # held here, backed up on n2 or n3
        await asyncio.sleep(11)  # lost_after (5 s): a backup takes it over, runs it when due
        assert backup.ran == ["job"]
        await cluster.restart("n1")
        await cluster.settle()
        await asyncio.sleep(60)
        assert backup.ran == ["job"]


@pytest.mark.looptime
async def test_partition_then_heal() -> None:
    backup = Backup()
    async with MemoryCluster(3, jobs(max_bucket=1), executor=backup) as cluster:
        await cluster.settle()
        await cluster["n1"].fill("jobs", "mine", task_type=BOMB)
        far = await cluster["n1"].fill("jobs", "far", task_type=BOMB)
        cut = cluster.partition(["n1"], ["n2", "n3"])
        await cluster.wait_for(lambda: cluster.state("n1", far.node_id) is MemberState.DEAD,
                               what="n1 sees the far side dead")
        assert cluster.state(far.node_id, "n1") is MemberState.DEAD
        with pytest.raises(ClusterFullError):  # its own bucket is full, no peer alive
            await cluster["n1"].fill("jobs", "more", task_type=BOMB)
        with pytest.raises(PeerUnavailableError):  # "unknown", never "not found"
            await cluster["n1"].drain("jobs", "far")
        with pytest.raises(TimeoutError, match="did not settle"):
            await cluster.settle(timeout=1)
        cut.heal()
        await cluster.settle()
        assert (await cluster["n1"].drain("jobs", "far")).outcome is DrainOutcome.DRAINED
        await asyncio.sleep(11)
        assert backup.ran == ["mine"]


@pytest.mark.looptime
async def test_stall_delay_and_graceful_stop() -> None:
    backup = Backup()
    async with MemoryCluster(3, jobs(max_bucket=1), executor=backup) as cluster:
        await cluster.settle()
        await cluster["n1"].fill("jobs", "mine", task_type=BOMB)
        far = await cluster["n1"].fill("jobs", "far", task_type=BOMB)
        cluster.stall(far.node_id)  # SIGSTOP: its peers' calls time out
        with pytest.raises(PeerUnavailableError):
            await cluster["n1"].get("jobs", "far")
        cluster.resume(far.node_id)
        # n1 may have declared it dead meanwhile: until it hears from it again,
        # lookups say "unknown" (it may only have been stalled).
        await cluster.wait_for(lambda: cluster.state("n1", far.node_id) is MemberState.ALIVE)
        slow = cluster.delay("n1", far.node_id, 0.2)  # shorter than the timeouts: only late
        info = await cluster["n1"].get("jobs", "far")
        assert info is not None and info.node_id == far.node_id
        slow.heal()
        assert cluster.network.faults == []
        await cluster.stop(far.node_id)  # graceful: its pending job is handed off
        info = await cluster["n1"].get("jobs", "far")
        assert info is not None and info.state is TaskState.PENDING
        assert info.node_id not in ("n1", far.node_id)
        await asyncio.sleep(11)
        assert sorted(backup.ran) == ["far", "mine"]


@pytest.mark.looptime
async def test_a_buckets_factory_and_drop_replies() -> None:
    made: list[str] = []

    def buckets(node: str) -> dict[str, TaskBucket]:
        made.append(node)
        return {"jobs": TaskBucket(BucketConfig(60, 10, max_bucket=1), Backup(), name="jobs")}

    async with MemoryCluster(2, buckets, config=GroupConfig.local(max_attempts=1)) as cluster:
        await cluster.settle()
        await cluster["n1"].fill("jobs", "a", task_type=BOMB)
        lossy = cluster.drop_replies("n1", "n2")  # n2 takes the forward; n1 never hears
        with pytest.raises(PlacementUnknownError):  # it may be there: it is
            await cluster["n1"].fill("jobs", "b", task_type=BOMB)
        lossy.heal()
        assert "b" in cluster["n2"].buckets["jobs"]
        cluster.crash("n2")
        await cluster.restart("n2")
    assert made == ["n1", "n2", "n2"]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        MemoryCluster(3)
    with pytest.raises(ValueError, match="executor"):
        MemoryCluster(3, jobs())
    with pytest.raises(ValueError, match="executor"):
        MemoryCluster(3, lambda node: {}, executor=Backup())
    with pytest.raises(ValueError, match="distinct"):
        MemoryCluster(["a", "a"], jobs(), executor=Backup())
    with pytest.raises(TypeError, match="BucketConfig"):
        MemoryCluster(2, {"jobs": 10}, executor=Backup())  # type: ignore[dict-item]


@pytest.mark.looptime
async def test_a_cluster_starts_once() -> None:
    cluster = MemoryCluster(1, jobs(), executor=Backup())
    async with cluster:
        with pytest.raises(RuntimeError, match="starts once"):
            await cluster.start()
        with pytest.raises(RuntimeError, match="running"):
            await cluster.restart("n1")
    await cluster.close()  # idempotent


async def test_in_real_time_without_looptime() -> None:
    """Without a faked clock the local preset's timers keep a test short."""
    backup = Backup()
    t0 = time.perf_counter()
    async with MemoryCluster(3, jobs(max_bucket=1, run_after=0.2), executor=backup) as cluster:
        await cluster.settle()
        for i in range(3):
            await cluster["n2"].fill("jobs", f"t{i}", task_type=BOMB)
        cluster.crash("n3")
        await cluster.wait_for(lambda: cluster.state("n1", "n3") is MemberState.DEAD)
        await cluster.restart("n3")
        await cluster.settle()
    assert time.perf_counter() - t0 < 5
    assert len(backup.ran) <= 3


# -- the pytest plugin -----------------------------------------------------------------

USER_TESTS = '''
import asyncio

import pytest

from gobucket_py import BucketConfig, MemberState, TaskType

ran = []

async def backup(task):
    ran.append(task.id)

@pytest.mark.asyncio
@pytest.mark.looptime
async def test_with_fake_time(gobucket_cluster):
    cluster = await gobucket_cluster(3, {"jobs": BucketConfig(60, 30, max_bucket=1)},
                                     executor=backup)
    await cluster.settle()
    await cluster["n1"].fill("jobs", "a", task_type=TaskType.TIME_BOMB)
    placed = await cluster["n1"].fill("jobs", "b", task_type=TaskType.TIME_BOMB)
    assert placed.forwarded
    cluster.crash(placed.node_id)
    await cluster.wait_for(lambda: cluster.state("n1", placed.node_id) is MemberState.DEAD)
    await asyncio.sleep(31)
    assert ran == ["a"]
    await cluster["n1"].fill("jobs", "left-pending", task_type=TaskType.TIME_BOMB)

@pytest.mark.asyncio
async def test_in_real_time(gobucket_cluster):
    cluster = await gobucket_cluster(2, {"jobs": BucketConfig(60, 30)}, executor=backup)
    await cluster.settle()
    await cluster["n2"].fill("jobs", "left-pending-too", task_type=TaskType.TIME_BOMB)

def test_the_teardowns_ran_nothing():
    assert ran == ["a"]
'''


def run_pytest(tmp_path: Path, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """Run USER_TESTS in a project of its own (strict asyncio mode, warnings as errors)."""
    (tmp_path / "test_user_app.py").write_text(textwrap.dedent(USER_TESTS))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_the_plugin_is_registered_through_its_entry_point(tmp_path: Path) -> None:
    names = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert names.get("gobucket_py") == "gobucket_py.testing", (
        "the pytest11 entry point is missing: reinstall (make install)")
    done = run_pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_the_plugin_loads_with_dash_p(tmp_path: Path) -> None:
    # As where the entry point is not installed: blocked, then loaded by module name.
    done = run_pytest(tmp_path, "-p", "no:gobucket_py", "-p", "gobucket_py.testing")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_the_kit_imports_without_pytest_and_the_core_never_imports_it() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["pytest"] = None        # as if pytest were not installed
        import gobucket_py
        assert "gobucket_py.testing" not in sys.modules
        from gobucket_py.testing import MemoryCluster
        import gobucket_py.testing as kit
        assert not hasattr(kit, "gobucket_cluster")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
