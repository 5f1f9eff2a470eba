"""End-to-end: real ``gobucket-node`` subprocesses on loopback, real HTTP, real signals.

Every test starts its own nodes (``python -m gobucket_py --fast``, i.e.
``GroupConfig.local()`` timers) on free ports, and watches the cluster through
an in-process *observer* group on the test's event loop. The observer's one
``jobs`` slot is taken by an anchor task, so its fills overflow to the
subprocess nodes and nothing is ever handed to it. The subprocess nodes' own
view of the cluster is read with a signed PING (its ack carries the member
list). All waiting polls with a deadline; nothing sleeps for long.

The tests of the peer protocol (discovery, forwarding, failure detection,
handoff, restarts, a partitioned holder) run twice: over plain HTTP and
over mutual TLS (``mode`` = ``"mtls"``: every node, the observer and any
client have their own certificate from one CA made once per session; UDP
probes are off under TLS, so failure detection rides on HTTPS alone). The
CLI, signal and logging tests run over plain HTTP only: they are about
one node's flags and output, which TLS does not change (test_tls.py checks
the TLS flags).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gobucket_py import (
    BucketConfig,
    ClusterFullError,
    DrainOutcome,
    Executor,
    GroupClient,
    GroupConfig,
    MemberState,
    PeerInfo,
    PeerUnavailableError,
    PlacementUnknownError,
    Task,
    TaskBucket,
    TaskBucketGroup,
    TaskInfo,
    TaskState,
    TaskType,
)
from gobucket_py.cluster.protocol import Kind
from gobucket_py.cluster.transport import HttpTransport

from .pki import HAVE_OPENSSL, PKI
from .procs import (
    ROOT,
    SECRET,
    Node,
    Nodes,
    Proxy,
    clean_env,
    free_port,
    node_argv,
    wait_for,
)

BOMB = TaskType.TIME_BOMB
ALIVE, DEAD, LEFT = MemberState.ALIVE, MemberState.DEAD, MemberState.LEFT
ANCHOR = "observer-anchor"

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("POSIX signals", allow_module_level=True)


# -- fixtures and helpers --------------------------------------------------------------------


class Idle(Executor):
    """The observer never runs anything (its only task is the anchor)."""

    async def on_execute(self, task: Task) -> None:
        return None


Observe = Callable[..., Awaitable[TaskBucketGroup]]

#: Run a test over plain HTTP and over mutual TLS.
over_plain_and_mtls = pytest.mark.parametrize("mode", [
    "plain",
    pytest.param("mtls", marks=pytest.mark.skipif(
        not HAVE_OPENSSL, reason="needs the openssl command (make test installs it)")),
])


@pytest.fixture(scope="session")
def cluster_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA and the certificates of n1..n3, the observer and a client (once per session)."""
    return PKI(tmp_path_factory.mktemp("cluster-pki"), ("n1", "n2", "n3", "obs", "client"))


@pytest.fixture
def mode() -> str:
    """``plain``, unless a test is parametrized with :data:`over_plain_and_mtls`."""
    return "plain"


@pytest.fixture
def nodes(nodes: Nodes, mode: str, request: pytest.FixtureRequest) -> Nodes:
    """conftest's subprocess nodes, over mutual TLS in ``mtls`` mode."""
    if mode == "mtls":
        nodes.use_tls(request.getfixturevalue("cluster_pki"))
    else:
        assert mode == "plain", mode
    return nodes


@pytest.fixture
async def observe(nodes: Nodes) -> AsyncIterator[Observe]:
    """Make an in-process observer/client group seeded with some nodes.

    Depends on ``nodes`` so it is stopped before the subprocesses are.
    """
    groups: list[TaskBucketGroup] = []

    async def make(*seeds: Node, node_id: str = "obs") -> TaskBucketGroup:
        # Same times as tests/node_app.py's defaults: a forwarded task gets the
        # *filling* node's bucket times (unless the fill gives its own).
        bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=1), Idle(),
                            name="jobs")
        group = TaskBucketGroup({"jobs": bucket}, [s.addr for s in seeds], port=0,
                                node_id=node_id, secret=SECRET, config=GroupConfig.local(),
                                tls=nodes.tls_for(node_id))
        await group.start()
        groups.append(group)
        placed = await group.fill("jobs", ANCHOR, task_type=BOMB, run_after=590,
                                  life_span=600)  # takes the one slot for good
        assert placed.node_id == node_id and not placed.forwarded
        return group

    yield make
    for group in groups:
        group.buckets["jobs"].drain_nowait(ANCHOR)  # nothing to hand off on stop
        await stop_observer(group)


async def stop_observer(group: TaskBucketGroup) -> None:
    """``group.stop()``, and no connection to it is left open when it returns.

    Over TLS a close is an exchange with the peer (close_notify both ways),
    which the server's cleanup does not wait for; ``stop`` does. A socket
    left closing after the loop is closed would be collected unclosed later
    (a ResourceWarning that fails some later test).
    """
    await group.stop()
    transport = group.transport
    if isinstance(transport, HttpTransport):
        assert transport.limits.open == 0 and not transport.limits.guards


def peer(group: TaskBucketGroup, node_id: str) -> PeerInfo | None:
    return next((p for p in group.peers if p.node_id == node_id), None)


def states(group: TaskBucketGroup) -> dict[str, MemberState]:
    return {p.node_id: p.state for p in group.peers}


async def until_state(group: TaskBucketGroup, node_id: str, state: MemberState,
                      timeout: float = 5.0, boot_not: str | None = None) -> PeerInfo:
    def check() -> PeerInfo | None:
        info = peer(group, node_id)
        if info is None or info.state is not state:
            return None
        if boot_not is not None and info.boot_id == boot_not:
            return None
        return info
    try:
        found: PeerInfo = await wait_for(check, timeout, f"{group.node_id} to see {node_id} "
                                                         f"{state.value}", interval=0.005)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it sees {states(group)}") from None
    return found


async def view(group: TaskBucketGroup, node: Node) -> dict[str, tuple[str, str]]:
    """A subprocess node's own peer table: ``{node_id: (state, boot_id)}``.

    Asked with a signed PING carrying no gossip; the ack lists its members.
    """
    membership = group._membership
    assert membership is not None
    reply = await group.transport.call(node.addr, Kind.PING,
                                       {"v": 1, "from": membership.header(), "members": []},
                                       2.0)
    return {entry[0]: (entry[4], entry[1]) for entry in reply["members"]}


async def until_view(group: TaskBucketGroup, node: Node,
                     want: Callable[[dict[str, tuple[str, str]]], bool], what: str,
                     timeout: float = 5.0) -> dict[str, tuple[str, str]]:
    last: dict[str, tuple[str, str]] = {}

    async def check() -> bool:
        nonlocal last
        last = await view(group, node)
        return want(last)
    try:
        await wait_for(check, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {node.node_id} sees {last}") from None
    return last


def knows(node_id: str, boot_id: str) -> Callable[[dict[str, tuple[str, str]]], bool]:
    """A view in which ``node_id`` is alive with boot ``boot_id``."""
    return lambda v: v.get(node_id) == ("alive", boot_id)


def sees_alive(*node_ids: str) -> Callable[[dict[str, tuple[str, str]]], bool]:
    return lambda v: all(v.get(n, ("",))[0] == "alive" for n in node_ids)


async def mesh(group: TaskBucketGroup, *members: Node, timeout: float = 5.0) -> None:
    """Wait until the observer and every node see every other node alive."""
    ids = [m.node_id for m in members]
    for node_id in ids:
        await until_state(group, node_id, ALIVE, timeout)
    for m in members:
        others = [i for i in ids if i != m.node_id]
        await until_view(group, m, sees_alive(*others, group.node_id),
                         f"{m.node_id} to see {others} alive", timeout)


async def get_all(group: TaskBucketGroup, ids: list[str]) -> dict[str, TaskInfo | None]:
    """``group.get`` every id (a few at a time).

    ``get`` answers None both for "no node holds it" and "the peers did not
    answer within request_timeout" (see test_unreachable_holder_is_not_reported_as_not_found), so
    on a heavily loaded machine a None is asked again before it counts; real
    losses are caught independently by the ledger and the handoff logs.
    """
    limit = asyncio.Semaphore(8)

    async def one(task_id: str) -> TaskInfo | None:
        async with limit:
            for _ in range(3):
                info = await group.get("jobs", task_id)
                if info is not None:
                    return info
            return None
    found = await asyncio.gather(*(one(i) for i in ids))
    return dict(zip(ids, found, strict=True))


async def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (in a thread: the tests of this module are all async)."""
    return await asyncio.to_thread(
        subprocess.run, node_argv(*args), cwd=ROOT, env=clean_env(**env), capture_output=True,
        text=True, timeout=30, stdin=subprocess.DEVNULL)


# -- 1. CLI ------------------------------------------------------------------------------------


async def test_help_lists_every_flag() -> None:
    done = await run_cli("--help")
    assert done.returncode == 0, done.stderr
    for flag in ("--app", "--host", "--port", "--node-id", "--advertise", "--peers", "--secret",
                 "--secret-file", "--log-level"):
        assert flag in done.stdout, flag
    assert "--fast" in done.stdout and "GOBUCKET_" in done.stdout


@pytest.mark.parametrize("args", [
    ("--app", "tests.node_app:buckets", "--port", "notanint"),
    ("--app", "nope:x", "--port", "0"),
], ids=["bad-port", "unimportable-app"])
async def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...]) -> None:
    done = await run_cli(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gobucket-node: error:"), lines[0]
    assert done.stdout == ""


async def test_help_does_not_show_secrets_from_the_environment() -> None:
    done = await run_cli("--help", GOBUCKET_SECRET="s3cret-from-env",
                         GOBUCKET_PAGES_TOKEN="token-from-the-env-0123")
    assert done.returncode == 0, done.stderr
    assert "--secret" in done.stdout and "--pages-token" in done.stdout
    assert "s3cret-from-env" not in done.stdout
    assert "token-from-the-env-0123" not in done.stdout


@pytest.mark.parametrize(("env", "flag"), [
    ({"GOBUCKET_PORT": "abc"}, "--port"),
    ({"GOBUCKET_STOP_GRACE": "soon"}, "--stop-grace"),
    ({"GOBUCKET_REPLICAS": "5"}, "--replicas"),
    ({"GOBUCKET_LOOP": "trio"}, "--loop"),
    ({"GOBUCKET_LOG_LEVEL": "verbose"}, "--log-level"),
    ({"GOBUCKET_PLACEMENT": "spread"}, "--placement"),
], ids=["port", "stop-grace", "replicas", "loop", "log-level", "placement"])
async def test_bad_environment_values_exit_2_naming_the_flag(env: dict[str, str],
                                                             flag: str) -> None:
    done = await run_cli("--app", "tests.node_app:buckets", "--port", "0", **env) \
        if flag != "--port" else await run_cli("--app", "tests.node_app:buckets", **env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gobucket-node: error:"), done.stderr
    assert flag in lines[0], lines[0]
    assert "listening" not in done.stdout


async def test_public_host_without_secret_is_refused() -> None:
    done = await run_cli("--app", "tests.node_app:buckets", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "gobucket-node: error:" in done.stderr
    assert "secret" in done.stderr
    assert "listening" not in done.stdout


# -- 2. discovery --------------------------------------------------------------------------------


@over_plain_and_mtls
async def test_discovery_from_one_seed(nodes: Nodes, observe: Observe) -> None:
    n1 = nodes.add("n1")
    await nodes.start(n1)
    n2, n3 = nodes.add("n2", [n1]), nodes.add("n3", [n1])
    await nodes.start(n2, n3)
    started = time.monotonic()
    obs = await observe(n3)  # knows only n3
    for node_id in ("n1", "n2", "n3"):
        await until_state(obs, node_id, ALIVE, timeout=5.0 - (time.monotonic() - started))
    assert time.monotonic() - started < 5.0
    # Every node learned every other one (and the observer) from its single seed.
    await mesh(obs, n1, n2, n3)
    info = peer(obs, "n1")
    assert info is not None and info.address == n1.addr and info.free == {"jobs": 1000}
    assert info.last_heard is not None and abs(time.time() - info.last_heard) < 2.0


# -- 3. kill -9 --------------------------------------------------------------------------------


@over_plain_and_mtls
async def test_kill_9_is_detected_fast_and_never_routed_to(nodes: Nodes,
                                                           observe: Observe) -> None:
    n1 = nodes.add("n1")
    n2, n3 = nodes.add("n2", [n1]), nodes.add("n3", [n1])
    await nodes.start(n1, n2, n3)
    obs = await observe(n1)
    await mesh(obs, n1, n2, n3)

    killed = time.monotonic()
    os.kill(n3.pid, signal.SIGKILL)

    # Fills racing the detection: a forward refused by the dead node fails over
    # to a live one; one whose connection was reset mid-request may have been
    # taken, so it says so (PlacementUnknownError) and goes nowhere else.
    async def fill_during_detection() -> list[str]:
        placed = []
        for i in range(20):
            try:
                placed.append((await obs.fill("jobs", f"race-{i}", task_type=BOMB)).node_id)
            except PlacementUnknownError as exc:
                assert exc.node_id == "n3"  # only the killed node can be in doubt
            await asyncio.sleep(0.02)
        return placed
    racing = asyncio.create_task(fill_during_detection())

    await until_state(obs, "n3", DEAD, timeout=3.0)
    detected = time.monotonic() - killed
    print(f"kill -9 detection on the observer: {detected:.3f}s")
    assert detected < 3.0
    assert await n3.wait_exit(2.0) == -signal.SIGKILL

    # The other subprocess nodes reach the same verdict on their own.
    for node in (n1, n2):
        seen = await until_view(obs, node, lambda v: v.get("n3", ("",))[0] == "dead",
                                f"{node.node_id} to see n3 dead", timeout=3.0)
        assert seen["n1" if node is n2 else "n2"][0] == "alive"
    print(f"kill -9 detection on n1 and n2: within {time.monotonic() - killed:.3f}s")

    assert "n3" not in await racing
    placed = [(await obs.fill("jobs", f"after-{i}", task_type=BOMB)).node_id for i in range(40)]
    assert "n3" not in placed
    assert set(placed) == {"n1", "n2"}  # two-choice placement uses both survivors
    assert states(obs) == {"n1": ALIVE, "n2": ALIVE, "n3": DEAD}


# -- 4. SIGTERM ----------------------------------------------------------------------------------


@over_plain_and_mtls
async def test_sigterm_exits_0_and_peers_see_left_not_dead(nodes: Nodes,
                                                           observe: Observe) -> None:
    n1 = nodes.add("n1")
    n2, n3 = nodes.add("n2", [n1]), nodes.add("n3", [n1])
    await nodes.start(n1, n2, n3)
    obs = await observe(n1)
    await mesh(obs, n1, n2, n3)

    sent = time.monotonic()
    assert await n2.stop(timeout=5.0) == 0
    print(f"SIGTERM to exit: {time.monotonic() - sent:.3f}s")
    assert "event=node_stopped" in n2.stderr()
    await until_state(obs, "n2", LEFT, timeout=2.0)
    for node in (n1, n3):
        await until_view(obs, node, lambda v: v.get("n2", ("",))[0] == "left",
                         f"{node.node_id} to see n2 left", timeout=2.0)

    # It stays LEFT (never DEAD) well past the failure-detection time (~0.7 s).
    settle = time.monotonic() + 1.0
    while time.monotonic() < settle:
        assert peer(obs, "n2").state is LEFT  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    for node in (n1, n3):
        assert (await view(obs, node))["n2"][0] == "left"
    assert states(obs) == {"n1": ALIVE, "n2": LEFT, "n3": ALIVE}


async def test_sigint_also_stops_gracefully(nodes: Nodes) -> None:
    n1 = nodes.add("n1")
    await nodes.start(n1)
    line = await n1.wait_listening()
    # Once started, the runner leaves its startup objects out of later
    # collector passes (gc.freeze): thousands of modules' objects at least.
    assert int(line.split("gc_frozen=")[1].split()[0]) > 10_000, line
    n1.signal(signal.SIGINT)
    assert await n1.wait_exit(5.0) == 0
    assert "event=node_stopped" in n1.stderr()
    assert n1.stdout().count("listening on") == 1


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
async def test_log_lines_are_structured_and_follow_log_level(nodes: Nodes, level: str) -> None:
    n1 = nodes.add("n1", env={"NODE_MAX": 1}, log_level=level)
    await nodes.start(n1)
    async with GroupClient(n1.addr, secret=SECRET, tls=nodes.client_tls) as client:
        await client.fill("jobs", "kept", "secret-payload", task_type=BOMB)
        assert (await client.drain("jobs", "kept")).outcome is DrainOutcome.DRAINED
        await client.fill("jobs", "one", "secret-payload", task_type=BOMB)
        with pytest.raises(ClusterFullError):  # alone and full
            await client.fill("jobs", "two", "secret-payload", task_type=BOMB)
    assert await n1.stop() == 0
    lines = n1.stderr().splitlines()
    assert lines and all("secret-payload" not in line for line in lines)
    drained = [line for line in lines if "event=tasks_ended" in line]  # counted, at INFO
    full = [line for line in lines if "event=cluster_full" in line]
    assert len(full) == 1 and "node=n1 bucket=jobs task_id=two" in full[0]  # WARNING
    if level == "INFO":
        assert len(drained) == 1 and "node=n1 bucket=jobs drained=1" in drained[0]
        assert not [line for line in lines if "event=drained" in line]  # per task: DEBUG
        assert any("event=node_started node=n1" in line for line in lines)
    else:
        assert not drained and not [line for line in lines if " INFO " in line]


# -- 5. graceful handoff -------------------------------------------------------------------------


@over_plain_and_mtls
async def test_sigterm_hands_pending_tasks_to_peers_with_their_remaining_time(
        nodes: Nodes, observe: Observe) -> None:
    times = {"NODE_RUN_AFTER": 30, "NODE_LIFE": 60, "NODE_MAX": 100}
    n2 = nodes.add("n2", env=times)
    await nodes.start(n2)
    obs = await observe(n2)
    await until_state(obs, "n2", ALIVE)

    filled_at: dict[str, float] = {}
    for i in range(50):
        task_id = f"bomb-{i:02d}"
        placed = await obs.fill("jobs", task_id, {"i": i}, task_type=BOMB, run_after=30,
                                life_span=60)
        filled_at[task_id] = time.monotonic()
        assert placed.node_id == "n2" and placed.forwarded
    ids = list(filled_at)

    n1, n3 = nodes.add("n1", [n2], env=times), nodes.add("n3", [n2], env=times)
    await nodes.start(n1, n3)
    await mesh(obs, n1, n2, n3)
    await asyncio.sleep(0.5)  # make the handoff happen measurably later than the fills

    assert await n2.stop(timeout=10.0) == 0
    assert "event=handoff_incomplete" not in n2.stderr()
    found = await get_all(obs, ids)
    now = time.monotonic()
    homes: dict[str, int] = {}
    for task_id, info in found.items():
        assert info is not None, f"{task_id} was lost in the handoff"
        assert info.node_id in {"n1", "n3"}, info
        assert info.type is BOMB and info.state is TaskState.PENDING, info
        elapsed = now - filled_at[task_id]
        # Remaining time carried over: not reset to 30, not fired (0).
        assert abs(info.seconds_to_run - (30 - elapsed)) < 1.0, (info, elapsed)
        assert abs(info.seconds_left - (60 - elapsed)) < 1.0, (info, elapsed)
        assert info.seconds_to_run < 29.3  # elapsed > 0.5 s (the sleep) + n1/n3's start
        homes[info.node_id] = homes.get(info.node_id, 0) + 1
    assert sum(homes.values()) == 50
    print(f"handoff from n2: {homes}")

    ledger = n2.ledger_states()
    assert {i: ledger.get(i) for i in ids} == {i: ["handed_off"] for i in ids}
    for node in (n1, n3):  # nothing ran or was rescued on the receivers
        assert not set(node.ledger_states()) & set(ids)


async def test_nodes_on_uvloop_fill_drain_and_hand_off(nodes: Nodes, observe: Observe) -> None:
    """``--loop uvloop`` (GOBUCKET_LOOP): the same node on uvloop's event loop
    -- probes, forwards, drains and the graceful handoff -- beside one on
    asyncio's own loop."""
    times = {"NODE_RUN_AFTER": 30, "NODE_LIFE": 60, "NODE_MAX": 100}
    n2 = nodes.add("n2", env={**times, "GOBUCKET_LOOP": "uvloop"})
    await nodes.start(n2)
    obs = await observe(n2)
    await until_state(obs, "n2", ALIVE)
    n1 = nodes.add("n1", [n2], env=times)
    await nodes.start(n1)
    await mesh(obs, n1, n2)
    assert "loop=uvloop" in n2.stdout() and "loop=asyncio" in n1.stdout()
    ids = [f"uv-{i}" for i in range(20)]
    for task_id in ids:
        placed = await obs.fill("jobs", task_id, {"id": task_id}, task_type=BOMB)
        assert placed.forwarded and placed.node_id in {"n1", "n2"}
    on_n2 = [t for t, info in (await get_all(obs, ids)).items()
             if info is not None and info.node_id == "n2"]
    assert on_n2, "no task reached the uvloop node"
    drained = on_n2[0]
    assert (await obs.drain("jobs", drained)).outcome is DrainOutcome.DRAINED
    assert await n2.stop(timeout=10.0) == 0
    found = await get_all(obs, ids)
    assert found[drained] is None
    assert all(found[t] is not None and found[t].node_id == "n1"  # type: ignore[union-attr]
               for t in ids if t != drained)


# -- 6. restart ---------------------------------------------------------------------------------


@over_plain_and_mtls
async def test_restart_on_same_port_has_a_new_boot_id(nodes: Nodes, observe: Observe) -> None:
    n1 = nodes.add("n1")
    n2 = nodes.add("n2", [n1])
    await nodes.start(n1, n2)
    obs = await observe(n1)
    await mesh(obs, n1, n2)
    old = peer(obs, "n2")
    assert old is not None

    assert await n2.stop() == 0
    await until_state(obs, "n2", LEFT, timeout=2.0)
    await n2.start()
    new = await until_state(obs, "n2", ALIVE, timeout=5.0, boot_not=old.boot_id)
    assert new.boot_id != old.boot_id and new.address == old.address == n2.addr
    seen = await until_view(obs, n1, knows("n2", new.boot_id), "n1 to see the new n2",
                            timeout=5.0)
    assert seen["n2"][1] != old.boot_id
    await until_view(obs, n2, sees_alive("n1", "obs"), "the new n2 to rejoin", timeout=5.0)


# -- 7. rolling restart ---------------------------------------------------------------------------


@over_plain_and_mtls
async def test_rolling_restart_loses_no_pending_task(nodes: Nodes, observe: Observe) -> None:
    times = {"NODE_RUN_AFTER": 30, "NODE_LIFE": 60}
    n1 = nodes.add("n1", env=times)
    n2, n3 = nodes.add("n2", [n1], env=times), nodes.add("n3", [n1], env=times)
    ring = [n1, n2, n3]
    await nodes.start(*ring)
    obs = await observe(n1)
    await mesh(obs, *ring)

    ids = [f"roll-{i:03d}" for i in range(150)]
    placed = await asyncio.gather(*(obs.fill("jobs", i, task_type=BOMB) for i in ids))
    spread: dict[str, int] = {}
    for result in placed:
        spread[result.node_id] = spread.get(result.node_id, 0) + 1
    assert set(spread) == {"n1", "n2", "n3"}, spread
    print(f"150 tasks placed: {spread}")

    for node in ring:
        old = peer(obs, node.node_id)
        assert old is not None
        assert await node.stop(timeout=10.0) == 0, node.stderr()[-3000:]
        log = node.stderr()  # every pending task moved: none kept back to be rescued
        assert "event=node_stopped" in log and "event=handoff_incomplete" not in log, log[-3000:]
        await node.start()
        new = await until_state(obs, node.node_id, ALIVE, timeout=5.0, boot_not=old.boot_id)
        for other in ring:  # everyone knows the new incarnation before the next stop
            if other is not node:
                await until_view(obs, other, knows(node.node_id, new.boot_id),
                                 f"{other.node_id} to see the new {node.node_id}")

    for node in ring:  # handed off, never run, drained or rescued
        for task_id, outcomes in node.ledger_states().items():
            assert set(outcomes) == {"handed_off"}, (node.node_id, task_id, outcomes)
    found = await get_all(obs, ids)
    lost = sorted(i for i, info in found.items() if info is None)
    assert not lost, f"{len(lost)} tasks lost: {lost[:10]}"
    assert all(info is not None and info.state is TaskState.PENDING
               and info.node_id in {"n1", "n2", "n3"} for info in found.values())


# -- a partitioned holder -----------------------------------------------------------------------


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[[], Awaitable[Proxy]]]:
    made: list[Proxy] = []

    async def make() -> Proxy:
        relay = Proxy(free_port())
        await relay.start()
        made.append(relay)
        return relay
    yield make
    for relay in made:
        await relay.close()


@over_plain_and_mtls
@pytest.mark.parametrize("op", ["drain", "get"])
async def test_unreachable_holder_is_not_reported_as_not_found(
        nodes: Nodes, observe: Observe, proxy: Callable[[], Awaitable[Proxy]], op: str) -> None:
    """Cut the way *to* the holder, drain (or get), heal: the task was alive all along.

    drain's contract: NOT_FOUND means "no node holds it (finished, never
    filled, or lost with a dead node)"; get's None means no live task. Here
    the holder is alive (it keeps pinging the observer) and holds the task;
    only the observer's request to it is lost. The caller must get an error
    (PeerUnavailableError) rather than an answer that lets a drained backup
    job run anyway. A SIGSTOPped holder does not show it on loopback: the
    kernel queues the request and the node serves it late. The relay moves
    TCP bytes, so over mutual TLS the handshake runs through it end to end.
    """
    relay = await proxy()
    n2 = nodes.add("n2", port=relay.target_port, advertise=relay.addr)
    await nodes.start(n2)
    obs = await observe(n2)
    await until_state(obs, "n2", ALIVE)
    placed = await obs.fill("jobs", "cut-off", task_type=BOMB, run_after=30, life_span=60)
    assert placed.node_id == "n2"

    relay.blackhole = True
    try:
        if op == "drain":
            answer: object = (await obs.drain("jobs", "cut-off")).outcome
        else:
            answer = await obs.get("jobs", "cut-off")
    except PeerUnavailableError:
        answer = "could not tell"  # the honest answer
    finally:
        relay.blackhole = False

    # Sanity: the request never arrived; n2 still has the task and would run it.
    info = await wait_for(lambda: obs.get("jobs", "cut-off"), 5.0, "n2 to answer again")
    assert info.node_id == "n2" and info.state is TaskState.PENDING
    assert "cut-off" not in n2.ledger_states()
    assert answer not in (DrainOutcome.NOT_FOUND, None), (
        f"{op} said {answer!r}, but the task is still pending on n2 and will run")
