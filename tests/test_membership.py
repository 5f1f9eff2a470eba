"""Membership on the in-memory network, with a faked loop clock (no sleeps).

Most tests run bare :class:`Membership` instances behind a minimal server
(the PING, PING-REQ and LEAVE handling of ``serve.py``), so that the rules of
failure detection, presumed loss, pruning, node id clashes and self-aliases
are checked on their own; one test runs whole groups to check that a refused
clash is a clean 400 through the real server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gobucket_py import (
    BucketConfig,
    GroupConfig,
    MemberState,
    MemoryNetwork,
    ProtocolError,
    TaskBucket,
    TaskBucketGroup,
)
from gobucket_py.cluster.membership import CLASH_LOG_INTERVAL, CLASH_TEXT, Member, Membership
from gobucket_py.cluster.protocol import Kind, boot_started, check_gossip, field, new_boot_id

from .conftest import Recorder

pytestmark = pytest.mark.looptime

CFG = GroupConfig.local()
#: Detection bound of the local preset (see test_cluster.py).
DETECT = CFG.probe_interval + 2 * CFG.probe_timeout + CFG.suspicion_timeout + 0.1


class Node:
    """One Membership behind a minimal peer server, recording its callbacks."""

    def __init__(self, net: MemoryNetwork, addr: str, node_id: str, seeds: list[str],
                 config: GroupConfig) -> None:
        self.net = net
        self.addr = addr
        self.boot = new_boot_id()
        self.transport = net.transport(addr)
        self.m = Membership(node_id=node_id, boot=self.boot, transport=self.transport,
                            config=config, capacity=dict, seeds=seeds,
                            rng=random.Random(f"{node_id}@{addr}"))
        self.restarts: list[tuple[str, MemberState]] = []
        self.lost: list[str] = []
        self.returned: list[str] = []
        self.pruned: list[str] = []
        self.m.on_restart = lambda m, was: self.restarts.append((m.node_id, was))
        self.m.on_lost = lambda m: self.lost.append(m.node_id)
        self.m.on_returned = lambda m: self.returned.append(m.node_id)
        self.m.on_pruned = lambda m: self.pruned.append(m.node_id)

    async def handle(self, kind: Kind, message: dict[str, Any]) -> dict[str, Any]:
        m = self.m
        sender = message.get("from")
        if kind is Kind.PING:
            gossip = check_gossip(message.get("members"))
            m.heard(sender)
            m.merge_checked(gossip)
            return {"v": 1, "from": m.header(), "members": m.gossip()}
        if kind is Kind.PING_REQ:
            field(message, "target", str)
            m.heard(sender)
            return await m.handle_ping_req(message)
        if kind is Kind.LEAVE:
            m.heard(sender)
            return {"v": 1, "from": m.header()}
        raise ProtocolError(f"{kind.name} is not served here")

    async def start(self, aliases: tuple[str, ...] = ()) -> None:
        await self.transport.start(self.handle)
        for alias in aliases:  # the same node reachable under another address
            self.net._handlers[alias] = self.handle
            transports = getattr(self.net, "_transports", None)
            if transports is not None:
                transports[alias] = self.transport
        await self.m.start()

    async def stop(self, *, leave: bool = False) -> None:
        if leave:
            await self.m.announce_leave()
        await self.m.stop()
        await self.transport.close()

    def state(self, node_id: str) -> MemberState | None:
        member = self.m.members.get(node_id)
        return None if member is None else member.state


class Mesh:
    """Nodes on one MemoryNetwork; by default addressed by node id, seeded with n1."""

    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net
        self.nodes: dict[str, Node] = {}  # by address

    async def add(self, addr: str, *, node_id: str | None = None,
                  seeds: list[str] | None = None, aliases: tuple[str, ...] = (),
                  **cfg: Any) -> Node:
        config = GroupConfig.local(**cfg) if cfg else CFG
        node = Node(self.net, addr, node_id or addr, ["n1"] if seeds is None else seeds,
                    config)
        await node.start(aliases)
        self.nodes[addr] = node
        return node

    async def kill(self, addr: str) -> Node:
        """Stop a node without a word (its address is free again)."""
        node = self.nodes.pop(addr)
        await node.stop()
        return node

    def calls(self, src: str, dst: str) -> int:
        return sum(1 for s, d, _ in self.net.calls if s == src and d == dst)

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.stop()


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    made = Mesh(MemoryNetwork())
    yield made
    await made.close()


async def until(condition: Callable[[], bool], within: float) -> float:
    """Wait (fake time) until ``condition()``; return how long it took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not condition():
        assert loop.time() - t0 <= within, f"not within {within}s"
        await asyncio.sleep(0.01)
    return loop.time() - t0


def clash_lines(caplog: pytest.LogCaptureFixture, node: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "event=node_id_clash" in r.getMessage() and f" node={node} " in r.getMessage()
            and r.levelno == logging.ERROR]


# -- monotonic clock -------------------------------------------------------------------


async def test_wall_clock_step_back_does_not_hide_a_dead_peer(
        mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("n2")
    await mesh.add("n3")
    await asyncio.sleep(1)
    assert n1.state("n3") is MemberState.ALIVE
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # NTP steps back an hour
    mesh.net.down("n3")
    await until(lambda: n1.state("n3") is MemberState.DEAD, DETECT)
    # last_heard stays a wall-clock time for display; the age is monotonic.
    info = n1.m.members["n2"].info()
    assert info.last_heard is not None and info.heard_ago is not None
    assert abs(info.last_heard - time.time()) < 5 and 0 <= info.heard_ago < 1


# -- presumed lost ---------------------------------------------------------------------


async def test_dead_peer_is_presumed_lost_once_after_lost_after(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("n2")
    await mesh.add("n3")
    await asyncio.sleep(1)
    loop = asyncio.get_running_loop()
    mesh.net.down("n3")
    await until(lambda: n1.state("n3") is MemberState.DEAD, DETECT)
    dead_at = loop.time()
    await until(lambda: bool(n1.lost), CFG.lost_after + 0.1)
    assert loop.time() - dead_at >= CFG.lost_after - 0.01
    member = n1.m.members["n3"]
    assert member.lost and member.state is MemberState.DEAD and member.info().lost
    await asyncio.sleep(CFG.lost_after)
    assert n1.lost == ["n3"] and n1.returned == [] and n1.restarts == []


async def test_peer_back_before_lost_after_is_not_lost(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("n2")
    await asyncio.sleep(1)
    mesh.net.down("n2")
    await until(lambda: n1.state("n2") is MemberState.DEAD, DETECT)
    await asyncio.sleep(CFG.lost_after - 1)
    mesh.net.up("n2")
    await until(lambda: n1.state("n2") is MemberState.ALIVE, 1)
    await asyncio.sleep(CFG.lost_after * 2)
    assert n1.lost == [] and n1.returned == [] and not n1.m.members["n2"].lost


async def test_peer_back_after_lost_is_returned(mesh: Mesh,
                                                caplog: pytest.LogCaptureFixture) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("n2")
    await asyncio.sleep(1)
    mesh.net.down("n2")  # a long stall or partition, not a restart: same boot id
    await until(lambda: bool(n1.lost), DETECT + CFG.lost_after)
    with caplog.at_level("WARNING", logger="gobucket_py"):
        mesh.net.up("n2")
        await until(lambda: n1.state("n2") is MemberState.ALIVE, 1)
        await asyncio.sleep(1)
    assert n1.returned == ["n2"] and n1.lost == ["n2"] and n1.restarts == []
    assert not n1.m.members["n2"].lost
    returned = [r for r in caplog.records
                if "event=peer_returned_after_lost node=n1 peer=n2" in r.getMessage()]
    assert len(returned) == 1 and returned[0].levelno == logging.WARNING


async def test_restart_passes_the_state_it_had(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("n2")
    await mesh.add("n3")
    await asyncio.sleep(1)
    await mesh.nodes.pop("n2").stop(leave=True)
    await until(lambda: n1.state("n2") is MemberState.LEFT, 1)
    await mesh.add("n2")  # same id, same address, new boot
    await until(lambda: n1.state("n2") is MemberState.ALIVE, 1)
    await mesh.kill("n3")
    await until(lambda: n1.state("n3") is MemberState.DEAD, DETECT)
    await asyncio.sleep(CFG.lost_after + 1)
    assert n1.m.members["n3"].lost
    new = await mesh.add("n3")
    await until(lambda: n1.state("n3") is MemberState.ALIVE, 1)
    member = n1.m.members["n3"]
    assert member.boot == new.boot and not member.lost
    # A new life, not a return from silence (Member.was: routes to the old
    # boot are reported lost, not held for a grace).
    assert member.was is None
    assert n1.restarts == [("n2", MemberState.LEFT), ("n3", MemberState.DEAD)]
    assert n1.returned == []  # a restart is not a return


# -- pruning -----------------------------------------------------------------------------


async def test_dead_peer_is_pruned_and_no_longer_probed(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    n2 = await mesh.add("n2")
    dead = await mesh.add("n3")
    await asyncio.sleep(1)
    loop = asyncio.get_running_loop()
    mesh.net.down("n3")
    await until(lambda: n1.state("n3") is MemberState.DEAD, DETECT)
    dead_at = loop.time()
    await asyncio.sleep(CFG.lost_after + 1)
    assert "n3" in n1.m.members
    probes = mesh.calls("n1", "n3")
    await asyncio.sleep(5)
    assert mesh.calls("n1", "n3") > probes  # still probed while dead, until pruned
    await until(lambda: "n3" not in n1.m.members, CFG.prune_after)
    assert loop.time() - dead_at >= CFG.prune_after - 0.01
    assert n1.pruned == ["n3"] and n1.lost == ["n3"]
    await until(lambda: "n3" not in n2.m.members, DETECT)
    after = {src: mesh.calls(src, "n3") for src in ("n1", "n2")}
    await asyncio.sleep(10)
    assert {src: mesh.calls(src, "n3") for src in after} == after  # no probe, no rejoin
    assert all(e[0] != "n3" for e in n1.m.gossip())
    # Gossip about it as dead or left does not bring it back.
    n1.m.merge_checked([("n3", dead.boot, "n3", 5, "dead", "n2"),
                        ("n3", dead.boot, "n3", 5, "left", "n2")])
    await asyncio.sleep(1)
    assert "n3" not in n1.m.members and mesh.calls("n1", "n3") == after["n1"]


async def test_left_peer_is_pruned_and_no_longer_retried(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("n2")
    await asyncio.sleep(1)
    loop = asyncio.get_running_loop()
    await mesh.nodes.pop("n2").stop(leave=True)
    await until(lambda: n1.state("n2") is MemberState.LEFT, 1)
    left_at = loop.time()
    retries = mesh.calls("n1", "n2")
    await asyncio.sleep(5)
    assert mesh.calls("n1", "n2") > retries  # the rejoin loop looks for a restart
    await until(lambda: "n2" not in n1.m.members, CFG.prune_after)
    assert loop.time() - left_at >= CFG.prune_after - 0.01
    assert n1.pruned == ["n2"] and n1.lost == []  # it left: its tasks were handed off
    after = mesh.calls("n1", "n2")
    await asyncio.sleep(10)
    assert mesh.calls("n1", "n2") == after


async def test_pruned_seed_is_still_retried_and_found_again(mesh: Mesh) -> None:
    """Seeds are the configured cluster: a pruned seed's address is retried."""
    await mesh.add("n1", seeds=[])
    n2 = await mesh.add("n2")
    await asyncio.sleep(1)
    await mesh.kill("n1")
    await until(lambda: "n1" not in n2.m.members, DETECT + CFG.prune_after)
    calls = mesh.calls("n2", "n1")
    await asyncio.sleep(2)
    assert mesh.calls("n2", "n1") > calls
    await mesh.add("n1", seeds=[])  # came back, knowing nobody
    await until(lambda: n2.state("n1") is MemberState.ALIVE, 1)
    assert n2.restarts == []  # pruned, so simply a new member


async def test_table_stays_bounded_across_restarts_with_new_node_ids(mesh: Mesh) -> None:
    """20 restarts, each with a fresh node id, alternating between two
    addresses: the old ids die, are presumed lost and are pruned."""
    n1 = await mesh.add("n1", seeds=[])
    n2 = await mesh.add("n2")
    period = 10.0
    largest = 0
    for i in range(20):
        addr = f"s{i % 2}"
        if addr in mesh.nodes:
            await mesh.kill(addr)
        await mesh.add(addr, node_id=f"x{i}")
        for _ in range(int(period)):
            await asyncio.sleep(1)
            largest = max(largest, len(n1.m.members), len(n2.m.members))
    # Two live restarters, n2, and at most the ids that died in the last
    # prune_after (+ detection) seconds: one per period per address slot.
    assert largest <= 3 + int((CFG.prune_after + DETECT) / period) + 1
    await asyncio.sleep(CFG.prune_after + DETECT + 1)
    assert set(n1.m.members) == {"n2", "x18", "x19"}
    assert set(n2.m.members) == {"n1", "x18", "x19"}
    assert all(n1.state(x) is MemberState.ALIVE for x in ("n2", "x18", "x19"))
    assert len(n1.pruned) == 18 and len(n1.lost) == 18
    assert not n1.m._unreached and len(n1.m._learned) <= 2


async def test_an_address_taken_by_another_node_is_no_evidence(mesh: Mesh) -> None:
    """A node answering at a member's address with another node id does not
    keep that member alive."""
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("n2")
    await mesh.add("s", node_id="old")
    await asyncio.sleep(1)
    await mesh.kill("s")
    await mesh.add("s", node_id="new")
    await until(lambda: n1.state("old") is MemberState.DEAD, DETECT + 1)
    assert n1.state("new") is MemberState.ALIVE and n1.restarts == []


# -- node id clash -------------------------------------------------------------------------


async def test_node_id_clash_is_refused_on_both_sides(
        mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR", logger="gobucket_py")
    n1 = await mesh.add("n1", seeds=[])
    a = await mesh.add("a", node_id="dup")
    await asyncio.sleep(1)
    b = await mesh.add("b", node_id="dup", seeds=["n1", "a"])
    await asyncio.sleep(5)  # many probe and rejoin rounds
    member = n1.m.members["dup"]
    assert member.addr == "a" and member.boot == a.boot and member.state is MemberState.ALIVE
    assert n1.restarts == [] and a.restarts == []  # no "restart" flapping
    assert b.m.members == {}  # refused everywhere
    # The receiving side names both addresses; once per 10 s per address.
    (line,) = clash_lines(caplog, "n1")
    assert "addr=a" in line and "other_addr=b" in line
    (line,) = clash_lines(caplog, "dup addr=a")  # a hears its own id from b
    assert "other_addr=b" in line
    # The sender side logs the peers' refusals, with their reason.
    sent = clash_lines(caplog, "dup addr=b")
    assert len(sent) == 2
    assert any("peer_addr=n1" in s and f"node id dup {CLASH_TEXT} a (boot {a.boot})" in s
               for s in sent)
    assert any("peer_addr=a" in s and f"node id dup {CLASH_TEXT} a (boot {a.boot})" in s
               for s in sent)
    await asyncio.sleep(CLASH_LOG_INTERVAL + 0.5)
    assert len(clash_lines(caplog, "n1")) == 2  # still refused, still said (rate-limited)



async def test_clash_refusal_is_a_protocol_error_naming_the_holder(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    a = await mesh.add("a", node_id="dup")
    await asyncio.sleep(1)
    impostor = ["dup", "other-boot", "b", 0, False, {}]
    with pytest.raises(ProtocolError, match=f"node id dup {CLASH_TEXT} a \\(boot {a.boot}\\)"):
        n1.m.heard(impostor)
    with pytest.raises(ProtocolError, match=f"node id dup {CLASH_TEXT} a \\(boot {a.boot}\\)"):
        a.m.heard(impostor)  # our own id, another boot
    assert n1.m.members["dup"].boot == a.boot and n1.restarts == []


async def test_restart_on_a_new_address_after_the_old_one_died_is_a_restart(
        mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("n2")
    await mesh.add("a", node_id="x")
    await asyncio.sleep(1)
    await mesh.kill("a")  # kill -9, then started at once elsewhere
    b = await mesh.add("b", node_id="x")
    # Accepted as soon as the old instance has fallen silent (a few probe
    # intervals) -- by then it may already be dead: a dead node's first probe
    # comes within a probe interval, and a refused one is not retried.
    took = await until(lambda: n1.m.members["x"].boot == b.boot, 1)
    assert took < DETECT
    member = n1.m.members["x"]
    assert member.addr == "b" and member.state is MemberState.ALIVE
    # It died without a word: it was alive, suspect or dead, never LEFT.
    ((node_id, was),) = n1.restarts
    assert node_id == "x" and was in (MemberState.ALIVE, MemberState.SUSPECT,
                                      MemberState.DEAD)
    await asyncio.sleep(3)
    assert len(n1.restarts) == 1 and b.state("n1") is MemberState.ALIVE


async def test_restart_on_the_same_address_is_always_a_restart(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("a", node_id="x")
    await asyncio.sleep(1)
    await mesh.kill("a")
    b = await mesh.add("a", node_id="x")  # heard from a moment ago, same address
    assert n1.m.members["x"].boot == b.boot
    assert n1.restarts == [("x", MemberState.ALIVE)]


async def replaced(mesh: Mesh) -> tuple[Node, Node, Node, list[Any]]:
    """n1 meets node x (boot one, at "a"), which is killed -9 a second later
    and started again at once at "a" (boot two): n1, the two nodes, and a
    header boot one sent before it died, to be read late."""
    n1 = await mesh.add("n1", seeds=[])
    old = await mesh.add("a", node_id="x")
    await asyncio.sleep(1)
    late = old.m.header()
    await mesh.kill("a")
    return n1, old, await mesh.add("a", node_id="x"), late


async def test_a_late_message_from_an_earlier_boot_is_not_a_restart(mesh: Mesh) -> None:
    # A message the old process sent before it died (a reply in flight, a
    # request left in a socket buffer during a stall) read after its new boot
    # was heard: it must not be taken for a restart back to the old boot --
    # that would tell the replicas the live new boot is gone, and let them
    # take its tasks over while it runs them.
    n1, old, new, late = await replaced(mesh)
    assert n1.m.members["x"].boot == new.boot and n1.restarts == [("x", MemberState.ALIVE)]
    with pytest.raises(ProtocolError, match=f"earlier boot {old.boot}"):
        n1.m.heard(late)
    member = n1.m.members["x"]
    assert member.boot == new.boot and member.addr == "a"
    assert n1.restarts == [("x", MemberState.ALIVE)]  # one restart, not two
    await asyncio.sleep(3)  # the new boot is still taken for alive, and only once
    assert n1.state("x") is MemberState.ALIVE and len(n1.restarts) == 1
    # From another address, an earlier boot may be a live process (paused,
    # then resumed): while the current one speaks, a clash, as before.
    late[2] = "elsewhere"
    with pytest.raises(ProtocolError, match=CLASH_TEXT):
        n1.m.heard(late)
    assert n1.m.members["x"].boot == new.boot and len(n1.restarts) == 1
    # Once the current one is silent, the old one is back: a restart.
    await mesh.kill("a")
    await until(lambda: n1.state("x") is MemberState.DEAD, DETECT)
    assert n1.m.heard(late) is n1.m.members["x"]
    assert n1.m.members["x"].boot == old.boot and len(n1.restarts) == 2


async def test_a_late_message_from_a_replaced_boot_is_refused_while_its_successor_is_silent(
        mesh: Mesh) -> None:
    # The new boot falls silent too (a slow link, or a second kill -9): it is
    # suspected, then declared dead, but it may be alive, and the old boot
    # certainly is not. A late message from the old boot is refused all the
    # same (seed 1211 of the nemesis's late_boots profile: taken for a restart
    # back to it, the old boot's late backups were stored, and then taken over
    # after a drain had answered NOT_FOUND). Once the new boot is presumed
    # lost, the old one may come back (a wall clock set back may have ordered
    # the two the wrong way).
    n1, old, new, late = await replaced(mesh)
    await asyncio.sleep(1)
    await mesh.kill("a")
    await until(lambda: n1.state("x") is MemberState.SUSPECT, DETECT)
    with pytest.raises(ProtocolError, match=f"earlier boot {old.boot}"):
        n1.m.heard(late)
    await until(lambda: n1.state("x") is MemberState.DEAD, DETECT)
    with pytest.raises(ProtocolError, match=f"earlier boot {old.boot}"):
        n1.m.heard(late)
    member = n1.m.members["x"]
    assert member.boot == new.boot and len(n1.restarts) == 1 and not member.lost
    await until(lambda: member.lost, CFG.lost_after + 0.1)
    assert n1.m.heard(late) is member
    assert member.boot == old.boot and len(n1.restarts) == 2


async def test_a_late_message_from_a_replaced_boot_after_its_successor_left(
        mesh: Mesh) -> None:
    # A successor that left is never presumed lost: the old boot is refused
    # while the successor leaves and for lost_after of its silence, then may
    # come back (so a live boot wrongly taken for replaced is not locked out
    # until the record is pruned).
    n1, old, new, late = await replaced(mesh)
    await asyncio.sleep(1)
    await mesh.nodes.pop("a").stop(leave=True)
    await until(lambda: n1.state("x") is MemberState.LEFT, DETECT)
    left_at = asyncio.get_running_loop().time()
    with pytest.raises(ProtocolError, match=f"earlier boot {old.boot}"):
        n1.m.heard(late)
    await asyncio.sleep(CFG.lost_after - 0.5)
    with pytest.raises(ProtocolError, match=f"earlier boot {old.boot}"):
        n1.m.heard(late)
    member = n1.m.members["x"]
    assert member.boot == new.boot and member.state is MemberState.LEFT
    await asyncio.sleep(1.0)  # silent past lost_after
    assert asyncio.get_running_loop().time() - left_at > CFG.lost_after
    assert n1.m.heard(late) is member and member.boot == old.boot


async def test_a_late_message_from_an_earlier_boot_never_met_is_not_a_restart(
        mesh: Mesh) -> None:
    # This node met only the new boot (it restarted, or joined, since the old
    # one died); a late message from the old one carries an earlier start in
    # its boot id: refused, not a restart back to it (which would, worse,
    # then refuse the live boot as the earlier one).
    n1 = await mesh.add("n1", seeds=[])
    new = await mesh.add("a", node_id="x")
    await asyncio.sleep(1)
    started = boot_started(new.boot)
    assert started is not None
    older, later = f"{started - 1:016x}-{'0' * 16}", f"{started + 1:016x}-{'0' * 16}"
    with pytest.raises(ProtocolError, match=f"earlier boot {older}"):
        n1.m.heard(["x", older, "a", 0, False, {}])
    assert n1.m.members["x"].boot == new.boot and n1.restarts == []
    # A boot id of another form (an earlier version's) is not ordered: a restart.
    assert boot_started(uuid.uuid4().hex) is None
    # A later start is a restart, as ever.
    assert n1.m.heard(["x", later, "a", 0, False, {}]) is n1.m.members["x"]
    assert n1.m.members["x"].boot == later and n1.restarts == [("x", MemberState.ALIVE)]


async def test_restart_on_a_new_address_after_leaving_is_a_restart(mesh: Mesh) -> None:
    n1 = await mesh.add("n1", seeds=[])
    await mesh.add("a", node_id="x")
    await asyncio.sleep(1)
    await mesh.nodes.pop("a").stop(leave=True)
    b = await mesh.add("b", node_id="x")
    assert n1.m.members["x"].boot == b.boot and n1.m.members["x"].addr == "b"
    assert n1.restarts == [("x", MemberState.LEFT)]


async def test_clash_through_the_group_server_is_a_clean_400(
        caplog: pytest.LogCaptureFixture) -> None:
    net = MemoryNetwork()
    groups: list[TaskBucketGroup] = []

    async def add(addr: str, node_id: str, seeds: list[str]) -> TaskBucketGroup:
        bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=10), Recorder(),
                            name="jobs")
        group = TaskBucketGroup({"jobs": bucket}, seeds, node_id=node_id,
                                transport=net.transport(addr), config=CFG,
                                rng=random.Random(addr))
        await group.start()
        groups.append(group)
        return group

    caplog.set_level("ERROR", logger="gobucket_py")
    try:
        g1 = await add("n1", "n1", [])
        ga = await add("a", "dup", ["n1"])
        await asyncio.sleep(1)
        gb = await add("b", "dup", ["n1", "a"])
        await asyncio.sleep(3)
        assert [(p.node_id, p.address, p.state) for p in g1.peers] == [
            ("dup", "a", MemberState.ALIVE)]
        assert [p.boot_id for p in g1.peers] == [ga.boot_id] and gb.peers == []
        assert clash_lines(caplog, "n1") and clash_lines(caplog, "dup addr=b")
        for group in groups:  # every loop still runs: nothing crashed
            assert all(not t.done() for t in group._members._loops)
        assert "Traceback" not in caplog.text and "handler_error" not in caplog.text
    finally:
        for group in groups:
            await group.stop()


# -- self-alias among the seeds --------------------------------------------------------------


async def test_seed_that_is_ourselves_is_dropped(mesh: Mesh,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="gobucket_py"):
        n1 = await mesh.add("n1", seeds=["alias", "n2"], aliases=("alias",))
        await mesh.add("n2", seeds=["n1"])
        await asyncio.sleep(CFG.rejoin_interval * 10)
    assert mesh.calls("n1", "alias") == 1  # found out at the first attempt, never again
    assert "alias" not in n1.m._unreached and set(n1.m.members) == {"n2"}
    selfs = [r for r in caplog.records if "event=seed_is_self" in r.getMessage()]
    assert len(selfs) == 1 and "seed=alias" in selfs[0].getMessage()
    assert selfs[0].levelno == logging.INFO


async def test_seed_alias_of_a_peer_is_not_retried_once_reached(mesh: Mesh) -> None:
    await mesh.add("n1", seeds=[], aliases=("n1-alias",))
    await mesh.add("n2", seeds=["n1-alias"])
    await asyncio.sleep(CFG.rejoin_interval * 10)
    assert mesh.calls("n2", "n1-alias") == 1


async def test_member_info_outside_a_loop_has_no_age() -> None:
    member = Member("x", "a", "boot", last_heard=time.time(), heard_at=1.0)
    info = await asyncio.to_thread(member.info)  # no running loop there
    assert info.heard_ago is None and info.last_heard is not None
