"""/metrics, /v1/status, the dashboard page and the structured logs, on real
aiohttp nodes on loopback (the browser test is test_dashboard.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import gobucket_py
from gobucket_py import (
    BucketConfig,
    ClusterFullError,
    Executor,
    GroupClient,
    GroupConfig,
    MemberState,
    Task,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
    serve_pages,
)
from gobucket_py.observe.events import EventFeed
from gobucket_py.observe.histogram import Histogram

from .procs import wait_for

BOMB = TaskType.TIME_BOMB
SECRET = "observe-secret"
PAYLOAD = "card-4111-1111-1111-1111"  # must never appear in any read endpoint


class Failing(Executor):
    """Fails tasks whose id starts with "fail"; hooks of "slowhook" time out."""

    async def on_execute(self, task: Task) -> None:
        if task.id.startswith("fail"):
            raise RuntimeError("boom")

    async def on_execute_error(self, task: Task, error: BaseException) -> None:
        await asyncio.sleep(10)  # longer than hook_timeout


async def node(node_id: str, peers: list[str], max_bucket: int) -> TaskBucketGroup:
    bucket = TaskBucket(BucketConfig(life_span=60, run_after=30, max_bucket=max_bucket,
                                     hook_timeout=0.05), Failing(), name="jobs")
    group = TaskBucketGroup({"jobs": bucket}, peers, port=0, node_id=node_id, secret=SECRET,
                            config=GroupConfig.local())
    serve_pages(group)  # what the node runner does
    await group.start()
    return group


@pytest.fixture
async def pair() -> AsyncIterator[tuple[TaskBucketGroup, TaskBucketGroup]]:
    a = await node("a", [], 3)
    b = await node("b", [a.address], 100)
    try:
        await wait_for(lambda: [p.state for p in a.peers] == [MemberState.ALIVE]
                       and a.peers[0].free.get("jobs") == 100, 5, "a to see b with room")
        yield a, b
    finally:
        await b.stop()
        await a.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, group: TaskBucketGroup, path: str
              ) -> tuple[int, str, str]:
    async with http.get(f"http://{group.address}{path}") as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition, keyed by name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return metrics[(name, frozenset(labels.items()))]


async def test_metrics_count_fills_outcomes_hooks_lateness_and_peers(
        pair: tuple[TaskBucketGroup, TaskBucketGroup], http: aiohttp.ClientSession) -> None:
    a, b = pair
    for i in range(3):  # a is full of long time-bombs: the next fills overflow
        await a.fill("jobs", f"hold-{i}", task_type=BOMB)
    forwarded = [await a.fill("jobs", f"over-{i}", PAYLOAD, task_type=BOMB) for i in range(4)]
    assert all(r.forwarded and r.node_id == "b" for r in forwarded)
    await a.drain("jobs", "over-0")  # drained on b, from a
    for i in range(3):
        await a.drain("jobs", f"hold-{i}")  # drained here
    await a.fill("jobs", "ok-1")
    await a.fill("jobs", "fail-1")  # on_execute raises, then its hook times out
    await a.fill("jobs", "bomb", task_type=BOMB, run_after=0.01)
    bucket = a.buckets["jobs"]
    await wait_for(lambda: bucket.stats()["finished"] == 2 and bucket.stats()["failed"] == 1
                   and bucket.stats()["hook_timeouts"] == 1 and len(bucket) == 0, 5,
                   "a's three tasks to end")
    for i in range(3):
        await a.fill("jobs", f"hold-again-{i}", task_type=BOMB)
    # b full too, so the next overflow has nowhere to go.
    await b.fill_many("jobs", [(f"own-{i}", None) for i in range(b.buckets["jobs"].free)],
                      task_type=BOMB)
    await wait_for(lambda: a.peers[0].free.get("jobs") == 0, 5, "a to learn b is full")
    with pytest.raises(ClusterFullError):
        await a.fill("jobs", "nowhere")
    # b joined through a, so a probes b on its own schedule: a slow run can get
    # here before the first probe's answer.
    membership = a._membership
    assert membership is not None
    await wait_for(lambda: membership.probe_rtt.count >= 1, 5, "a's first probe of b")

    status, ctype, text = await get(http, a, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    m = samples(text)
    jobs = {"node_id": "a", "bucket_name": "jobs"}
    assert value(m, "gobucket_fills_total", result="local", **jobs) == 9
    assert value(m, "gobucket_fills_total", result="forwarded", **jobs) == 4
    assert value(m, "gobucket_fills_total", result="rejected", **jobs) == 1
    assert value(m, "gobucket_task_outcomes_total", outcome="finished", **jobs) == 2
    assert value(m, "gobucket_task_outcomes_total", outcome="failed", **jobs) == 1
    assert value(m, "gobucket_task_outcomes_total", outcome="drained", **jobs) == 3
    assert value(m, "gobucket_task_outcomes_total", outcome="exhausted", **jobs) == 0
    assert value(m, "gobucket_hook_timeouts_total", **jobs) == 1
    assert value(m, "gobucket_hook_errors_total", **jobs) == 0
    assert value(m, "gobucket_tasks_started_total", **jobs) == 3
    assert value(m, "gobucket_bucket_live_tasks", **jobs) == 3
    assert value(m, "gobucket_bucket_capacity", **jobs) == 3
    assert value(m, "gobucket_firing_lateness_seconds_count", **jobs) == 1
    assert value(m, "gobucket_firing_lateness_seconds_bucket", le="+Inf", **jobs) == 1
    assert value(m, "gobucket_peers", node_id="a", state="alive") == 1
    assert value(m, "gobucket_peers", node_id="a", state="dead") == 0
    assert value(m, "gobucket_peer_up", node_id="a", peer="b") == 1
    assert value(m, "gobucket_peer_state", node_id="a", peer="b", state="alive") == 1
    assert value(m, "gobucket_forward_latency_seconds_count", node_id="a") >= 1
    assert value(m, "gobucket_probe_rtt_seconds_count", node_id="a") >= 1
    assert value(m, "gobucket_lookups_total", node_id="a", op="drain", result="drained") == 4
    assert value(m, "gobucket_firing_lateness_seconds_bucket", le="60.0", **jobs) == 1
    assert value(m, "gobucket_build_info", version=gobucket_py.__version__) == 1
    assert value(m, "process_start_time_seconds") > 0  # restarts are visible
    assert not any(label == "node" for _, labels in m for label, _ in labels)
    # b's own registry: the drain happened there, and nothing of a leaks in.
    mb = samples((await get(http, b, "/metrics"))[2])
    assert value(mb, "gobucket_task_outcomes_total", node_id="b", bucket_name="jobs",
                 outcome="drained") == 1
    assert value(mb, "gobucket_bucket_accepted_total", node_id="b", bucket_name="jobs") == 4 + 97
    assert not any(dict(labels).get("node_id") == "a" for _, labels in mb)


async def test_status_reports_node_buckets_peers_and_events_never_payloads(
        pair: tuple[TaskBucketGroup, TaskBucketGroup], http: aiohttp.ClientSession) -> None:
    a, b = pair
    for i in range(5):
        await a.fill("jobs", f"t{i}", PAYLOAD, task_type=BOMB)
    await a.drain("jobs", "t4")
    status, ctype, text = await get(http, a, "/v1/status")
    assert status == 200 and ctype.startswith("application/json")
    body = json.loads(text)
    assert body["node"] == "a" and body["boot_id"] == a.boot_id and body["state"] == "running"
    assert body["address"] == a.address and 0 <= body["uptime"] < 60
    jobs = body["buckets"]["jobs"]
    assert (jobs["size"], jobs["capacity"], jobs["free"], jobs["pending"]) == (3, 3, 0, 3)
    assert jobs["fills"] == {"local": 3, "forwarded": 2, "rejected": 0}
    [peer] = body["peers"]
    assert peer["node_id"] == "b" and peer["state"] == "alive" and peer["address"] == b.address
    assert peer["boot_id"] == b.boot_id and 0 <= peer["seconds_since_heard"] < 5
    assert "buckets" not in peer  # only with ?peers=1
    kinds = [e["kind"] for e in body["events"]]
    assert kinds[:2] == ["node_started", "peer_joined"] and "overflow" in kinds
    drain = next(e for e in body["events"] if e["kind"] == "drain")
    assert drain["task_id"] == "t4" and drain["peer"] == "b"
    # ?peers=1 fetches b's own figures in the background (signed STATS).
    async def peer_buckets() -> Any:
        _, _, text = await get(http, a, "/v1/status?peers=1")
        return json.loads(text)["peers"][0]["buckets"]
    seen = await wait_for(peer_buckets, 5, "b's figures in a's status", interval=0.2)
    assert seen["jobs"]["size"] == 1 and seen["jobs"]["capacity"] == 100
    # ?since returns only newer events; a bad value is a 400 and changes nothing.
    _, _, text = await get(http, a, f"/v1/status?since={body['seq']}")
    assert json.loads(text)["events"] == []
    status, _, text = await get(http, a, "/v1/status?since=-1")
    assert status == 400 and "since" in text
    for path in ("/", "/metrics", "/v1/status", "/v1/status?peers=1"):
        assert PAYLOAD not in (await get(http, a, path))[2], path
        assert PAYLOAD not in (await get(http, b, path))[2], path
    assert len(a.buckets["jobs"]) == 3 and (await a.fill("jobs", "after", task_type=BOMB))


async def test_read_endpoints_are_read_only_and_mutations_need_signatures(
        pair: tuple[TaskBucketGroup, TaskBucketGroup], http: aiohttp.ClientSession) -> None:
    a, _ = pair
    for path in ("/", "/metrics", "/v1/status"):
        async with http.post(f"http://{a.address}{path}", data=b"x") as resp:
            assert resp.status in (404, 405), path
    async with http.post(f"http://{a.address}/v1/fill", data=b"\x80") as resp:
        assert resp.status == 401  # unsigned
    async with GroupClient(a.address, secret=SECRET) as client:  # signed: works
        assert (await client.fill("jobs", "signed", task_type=BOMB)).node_id == "a"
    assert len(a.buckets["jobs"]) == 1


async def test_dashboard_page_is_self_contained(
        pair: tuple[TaskBucketGroup, TaskBucketGroup], http: aiohttp.ClientSession) -> None:
    a, _ = pair
    status, ctype, page = await get(http, a, "/")
    assert status == 200 and ctype.startswith("text/html")
    assert "fetch(`v1/status?peers=1" in page  # relative: it works mounted under a path
    # Nothing is fetched from elsewhere: no external URL, script or stylesheet (the
    # SVG namespace name of the inline plots is an identifier, never fetched).
    page = page.replace('"http://www.w3.org/2000/svg"', "SVG_NS")
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|<script[^>]+src=|<link[^>]+href=",
                         page, re.I)


async def test_one_structured_log_line_per_event_without_payloads(
        pair: tuple[TaskBucketGroup, TaskBucketGroup], caplog: pytest.LogCaptureFixture) -> None:
    a, _ = pair
    caplog.set_level(logging.DEBUG, logger="gobucket_py")
    await a.fill("jobs", "fail-x", PAYLOAD)
    await a.fill("jobs", "keep", PAYLOAD, task_type=BOMB)
    await a.drain("jobs", "keep")
    await wait_for(lambda: a.buckets["jobs"].stats()["failed"] == 1, 5, "fail-x to fail")
    await wait_for(lambda: a.buckets["jobs"].stats()["hook_timeouts"] == 1, 5, "hook timeout")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    for level, event, task_id in (("INFO", "failed", "fail-x"),
                                  ("ERROR", "hook_timeout", "fail-x"),
                                  ("DEBUG", "drained", "keep")):  # the bulk: DEBUG
        [line] = [ln for lv, ln in lines
                  if lv == level and f"event={event} " in ln and f"task_id={task_id}" in ln]
        assert "node=a " in line and "bucket=jobs " in line, line
    # ... and counted in one INFO line per bucket (the first at once, then every 10 s).
    [summary] = [ln for lv, ln in lines if lv == "INFO" and "event=tasks_ended" in ln]
    assert summary.endswith("node=a bucket=jobs drained=1"), summary
    assert all(PAYLOAD not in ln for _, ln in lines)
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="gobucket_py")
    await a.drain("jobs", "nothing-here")
    await a.fill("jobs", "quiet", task_type=BOMB)
    await a.drain("jobs", "quiet")
    assert not [r for r in caplog.records if "event=drained" in r.getMessage()]


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    h = Histogram((0.001, 0.01))
    for v in (0.0005, 0.001, 0.002, 0.5):
        h.observe(v)
    assert h.cumulative() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert h.count == 4 and h.sum == pytest.approx(0.5035)


def test_event_feed_is_bounded_and_merges_bursts_of_batches() -> None:
    feed = EventFeed(maxlen=5)
    feed.add("peer_joined", "b joined", peer="b")
    for _ in range(100):  # a busy second of overflow to b and c: two events, not 200
        feed.add_or_merge("overflow", "b", 250, 256)
        feed.add_or_merge("overflow", "c", 1, 1)
    feed.add_or_merge("overflow", "b", 1, 1)
    events = feed.since(0)
    assert [(e["kind"], e.get("peer")) for e in events] == [
        ("peer_joined", "b"), ("overflow", "c"), ("overflow", "b")]
    assert (events[2]["accepted"], events[2]["sent"]) == (25001, 25601)
    assert (events[1]["accepted"], events[1]["sent"]) == (100, 100)
    assert feed.since(events[1]["seq"]) == [events[2]]
    assert "25001/25601 tasks accepted by b" in events[2]["text"]
    for i in range(10):
        feed.add("drain", f"t{i} drained", task_id=f"t{i}")
    assert len(feed.since(0)) == 5 and feed.since(feed.seq) == []
    # A burst of drains is one line that counts them, so the rest stays in view.
    feed.add("peer_dead", "c: alive -> dead", peer="c")
    for i in range(42):
        feed.add_counted("drain", "drained on b", f"d{i}", peer="b")
    events = feed.since(0)
    assert [e["kind"] for e in events][-2:] == ["peer_dead", "drain"]
    assert events[-1]["count"] == 42 and events[-1]["text"] == "42 drained on b"
    assert events[-1]["task_id"] == "d41"


@pytest.mark.looptime
async def test_metrics_show_tasks_at_risk_per_unreachable_peer_and_handoffs_received() -> None:
    from gobucket_py import MemoryNetwork
    from gobucket_py.observe.metrics import registry_for, render

    from .test_cluster import Cluster

    cluster = Cluster(MemoryNetwork())
    try:
        n1 = await cluster.add("n1", max_bucket=1)
        await cluster.add("n2", max_bucket=10)
        n3 = await cluster.add("n3", max_bucket=10)
        await cluster.settle()
        await n1.fill("jobs", "mine", task_type=BOMB)
        placed = [await n1.fill("jobs", f"t{i}", task_type=BOMB) for i in range(6)]
        on_n2 = sum(p.node_id == "n2" for p in placed)
        assert on_n2 and on_n2 < 6
        stall = cluster.net.stall("n2")
        await asyncio.sleep(3)  # dead to n1 (maybe only stalled: at risk, not lost)
        m = samples(render(registry_for(n1.view)).decode())
        assert value(m, "gobucket_peer_up", node_id="n1", peer="n2") == 0
        assert value(m, "gobucket_peer_tasks_at_risk", node_id="n1", peer="n2") == on_n2
        stall.heal()
        await asyncio.sleep(3)
        n3_had = len(n3.buckets["jobs"])
        await n3.stop()  # hands its tasks to n2 (n1 is full)
        m2 = samples(render(registry_for(cluster.groups["n2"].view)).decode())
        assert value(m2, "gobucket_handoffs_received_total", node_id="n2", peer="n3") == n3_had
    finally:
        await cluster.close()


# `make test` takes promtool out of Debian's prometheus package into the venv.
PROMTOOL = shutil.which("promtool") or shutil.which(
    "promtool", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(PROMTOOL is None,
                    reason="promtool comes with Debian's prometheus package (not installed)")
async def test_promtool_accepts_the_metrics(
        pair: tuple[TaskBucketGroup, TaskBucketGroup], http: aiohttp.ClientSession) -> None:
    a, _ = pair
    await a.fill("jobs", "one", task_type=BOMB)
    await a.drain("jobs", "one")
    _, _, text = await get(http, a, "/metrics")
    checked = await asyncio.to_thread(subprocess.run, [PROMTOOL, "check", "metrics"],
                                      input=text.encode(), capture_output=True, timeout=60)
    assert checked.returncode == 0 and not checked.stdout.strip(), (
        checked.stdout.decode(), checked.stderr.decode())


@pytest.mark.looptime
async def test_metrics_count_lost_tasks_and_unavailable_drains() -> None:
    from gobucket_py import DrainOutcome, MemoryNetwork, PeerUnavailableError
    from gobucket_py.observe.metrics import registry_for, render

    from .test_cluster import Cluster

    cluster = Cluster(MemoryNetwork())
    try:
        n1 = await cluster.add("n1", max_bucket=1)
        n2 = await cluster.add("n2", max_bucket=10)
        await cluster.settle()
        await n1.fill("jobs", "mine", task_type=BOMB)
        placed = [await n1.fill("jobs", f"t{i}", task_type=BOMB) for i in range(3)]
        assert all(p.node_id == "n2" for p in placed)
        lost: list[tuple[str, str, list[str]]] = []
        n1.on_tasks_lost = lambda *args: lost.append(args)
        cluster.net.hang("n2")  # the holder does not answer: the drain cannot be settled
        with pytest.raises(PeerUnavailableError):
            await n1.drain("jobs", "t0")
        cluster.net.up("n2")
        await cluster.settle(3)
        cluster.net.down("n2")  # crash: its tasks are gone ...
        await n2.stop()
        cluster.net.up("n2")
        await cluster.add("n2")  # ... which its new incarnation (new boot id) shows
        await cluster.settle()
        assert [(p, b, sorted(ids)) for p, b, ids in lost] == [("n2", "jobs", ["t0", "t1", "t2"])]
        assert (await n1.drain("jobs", "t0")).outcome is DrainOutcome.LOST
        m = samples(render(registry_for(n1.view)).decode())  # what /metrics serves
        jobs = {"node_id": "n1", "bucket_name": "jobs"}
        assert value(m, "gobucket_tasks_lost_total", **jobs) == 3
        assert value(m, "gobucket_lookups_total", node_id="n1", op="drain",
                     result="unavailable") == 1
        assert value(m, "gobucket_lookups_total", node_id="n1", op="drain", result="lost") == 1
        # Nothing lost from the new incarnation's point of view.
        m2 = samples(render(registry_for(cluster.groups["n2"].view)).decode())
        assert value(m2, "gobucket_tasks_lost_total", node_id="n2", bucket_name="jobs") == 0
    finally:
        await cluster.close()


def test_readme_lists_every_log_event() -> None:
    """Every ``event=`` the library logs is a row of the README's event table."""
    from pathlib import Path

    from gobucket_py import MemberState

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    start = readme.index("Every `event=` the library writes:")
    table = readme[start:readme.index("\n\n", readme.index("| event |", start))]
    listed = set(re.findall(r"`([a-z0-9_]+)`", table))
    written = {name for path in (root / "gobucket_py").rglob("*.py")
               for name in re.findall(r"event=([a-z0-9_]+)\b(?!%)", path.read_text())}
    written |= {f"peer_{state.value}" for state in MemberState}  # "event=peer_%s"
    assert len(written) > 40  # the scan found them
    assert not written - listed, f"not in README's event table: {sorted(written - listed)}"
