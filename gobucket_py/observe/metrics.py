"""``GET /metrics``: the group's counters in the Prometheus text format.

A custom collector reads the counters the hot paths already keep (plain ints
and :class:`~.histogram.Histogram` arrays) at scrape time, so filling a task
costs nothing extra; prometheus-client does the exposition. Each group has
its own registry, so several nodes in one process never mix their figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from ..cluster.membership import MemberState
from .histogram import Histogram

if TYPE_CHECKING:
    from ..cluster.view import GroupView

__all__ = ["CONTENT_TYPE", "GroupCollector", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Terminal outcomes reported by ``gobucket_task_outcomes_total``.
OUTCOMES = ("finished", "failed", "exhausted", "drained", "cancelled", "rescued", "handed_off")
FILL_RESULTS = ("local", "forwarded", "rejected")


def _histogram(name: str, doc: str, labels: list[str],
               series: list[tuple[list[str], Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in series:
        family.add_metric(values, hist.cumulative(), hist.sum)
    return family


class GroupCollector(Collector):
    """Everything ``/metrics`` shows about one :class:`~gobucket_py.TaskBucketGroup`.

    Labels: ``node_id`` (not ``node``, which collides with Kubernetes' target
    label), ``bucket_name`` (not ``bucket``, ambiguous on ``_bucket`` series),
    ``peer`` for per-peer series.
    """

    def __init__(self, view: GroupView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view = self.view
        node = view.node_id
        per_bucket = ["node_id", "bucket_name"]
        live = GaugeMetricFamily("gobucket_bucket_live_tasks",
                                 "Live tasks (pending, running or in a terminal hook)",
                                 labels=per_bucket)
        capacity = GaugeMetricFamily("gobucket_bucket_capacity", "max_bucket of the bucket",
                                     labels=per_bucket)
        fills = CounterMetricFamily("gobucket_fills",
                                    "Fills made through this node, by where they went: local, "
                                    "forwarded to a peer, or rejected (ClusterFullError)",
                                    labels=[*per_bucket, "result"])
        accepted = CounterMetricFamily("gobucket_bucket_accepted",
                                       "Tasks taken into the local bucket (own fills, forwards "
                                       "from peers, handoffs and takeovers)", labels=per_bucket)
        fired = CounterMetricFamily("gobucket_tasks_started", "Tasks whose on_execute started",
                                    labels=per_bucket)
        outcomes = CounterMetricFamily("gobucket_task_outcomes",
                                       "Terminal outcomes by kind",
                                       labels=[*per_bucket, "outcome"])
        hook_errors = CounterMetricFamily("gobucket_hook_errors", "Lifecycle hooks that raised",
                                          labels=per_bucket)
        hook_timeouts = CounterMetricFamily("gobucket_hook_timeouts",
                                            "Lifecycle hooks cut off by hook_timeout",
                                            labels=per_bucket)
        lost = CounterMetricFamily("gobucket_tasks_lost",
                                   "Tasks this node filled elsewhere whose holder crashed or is "
                                   "presumed lost (each reported once to on_tasks_lost)",
                                   labels=per_bucket)
        backups = GaugeMetricFamily("gobucket_backups_held",
                                    "Backups this node holds for peers' pending time-bombs "
                                    "(replicas)", labels=per_bucket)
        lateness: list[tuple[list[str], Histogram]] = []
        for name in view.bucket_names():
            b = view.bucket(name)
            stats = b.stats
            live.add_metric([node, name], stats["live"])
            capacity.add_metric([node, name], b.capacity)
            for result, count in zip(FILL_RESULTS, b.fills, strict=True):
                fills.add_metric([node, name, result], count)
            accepted.add_metric([node, name], stats["filled"])
            fired.add_metric([node, name], stats["started"])
            for outcome in OUTCOMES:
                outcomes.add_metric([node, name, outcome], stats[outcome])
            hook_errors.add_metric([node, name], stats["hook_errors"])
            hook_timeouts.add_metric([node, name], stats["hook_timeouts"])
            lost.add_metric([node, name], b.lost)
            backups.add_metric([node, name], b.backups)
            lateness.append(([node, name], b.lateness))
        yield from (live, capacity, fills, accepted, fired, outcomes, hook_errors, hook_timeouts,
                    lost, backups)
        yield _histogram("gobucket_firing_lateness_seconds",
                         "How late time-bombs started after their due time",
                         per_bucket, lateness)
        lookups = CounterMetricFamily("gobucket_lookups",
                                      "drain and get calls made through this node, by answer "
                                      "(a DrainOutcome value, found/none for get, or "
                                      "unavailable: PeerUnavailableError)",
                                      labels=["node_id", "op", "result"])
        for (op, result), count in sorted(view.lookup_counts().items()):
            lookups.add_metric([node, op, result], count)
        yield lookups
        yield from self._peers(view, node)
        latency, rtt = view.forward_latency, view.probe_rtt
        if latency is not None:
            yield _histogram("gobucket_forward_latency_seconds",
                             "Round trip of each batch of forwarded tasks", ["node_id"],
                             [([node], latency)])
        if rtt is not None:
            yield _histogram("gobucket_probe_rtt_seconds",
                             "Round trip of each successful direct probe", ["node_id"],
                             [([node], rtt)])
        info = GaugeMetricFamily("gobucket_build_info", "The running gobucket_py version",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    @staticmethod
    def _peers(view: GroupView, node: str) -> Iterator[Metric]:
        peers = GaugeMetricFamily("gobucket_peers", "Known peers by state",
                                  labels=["node_id", "state"])
        up = GaugeMetricFamily("gobucket_peer_up", "1 while the peer is alive to this node",
                               labels=["node_id", "peer"])
        state = GaugeMetricFamily("gobucket_peer_state",
                                  "1 for the state this node sees the peer in",
                                  labels=["node_id", "peer", "state"])
        at_risk = GaugeMetricFamily("gobucket_peer_tasks_at_risk",
                                    "Tasks this node placed on a peer it cannot reach now "
                                    "(suspect or dead): they may be lost",
                                    labels=["node_id", "peer"])
        handed = CounterMetricFamily("gobucket_handoffs_received",
                                     "Tasks peers handed to this node as they stopped "
                                     "(counted here, as the stopping node may be gone before "
                                     "a scrape)", labels=["node_id", "peer"])
        infos = view.peers()
        unreachable = {p.node_id for p in infos
                       if p.state in (MemberState.SUSPECT, MemberState.DEAD)}
        risk = view.tasks_at_risk(unreachable)
        for each in MemberState:
            peers.add_metric([node, each.value], sum(p.state is each for p in infos))
        for p in infos:
            up.add_metric([node, p.node_id], 1 if p.state is MemberState.ALIVE else 0)
            state.add_metric([node, p.node_id, p.state.value], 1)
            if p.node_id in unreachable:
                at_risk.add_metric([node, p.node_id], risk.get(p.node_id, 0))
        for peer, count in sorted(view.handoffs_received().items()):
            handed.add_metric([node, peer], count)
        yield from (peers, up, state, at_risk, handed)


def registry_for(view: GroupView) -> CollectorRegistry:
    """A registry holding this group's collector, and the process and
    platform collectors (``process_*``, ``python_info``): restarts show as
    ``process_start_time_seconds``, not only as counter resets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GroupCollector(view))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry``."""
    return generate_latest(registry)
