"""``GET /metrics``: the group's counters in the Prometheus text format.

A custom collector reads the counters the hot paths already keep (plain ints
and :class:`~.histogram.Histogram` arrays) at scrape time, so filling a task
costs nothing extra; prometheus-client does the exposition. Each group has
its own registry, so several nodes in one process never mix their figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..cluster.membership import MemberState
from .histogram import Histogram

if TYPE_CHECKING:
    from ..cluster.group import TaskBucketGroup

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
    """Everything ``/metrics`` shows about one :class:`~gobucket_py.TaskBucketGroup`."""

    def __init__(self, group: TaskBucketGroup) -> None:
        self.group = group

    def collect(self) -> Iterator[Metric]:
        group = self.group
        node = group.node_id
        live = GaugeMetricFamily("gobucket_bucket_live_tasks",
                                 "Live tasks (pending, running or in a terminal hook)",
                                 labels=["node", "bucket"])
        capacity = GaugeMetricFamily("gobucket_bucket_capacity", "max_bucket of the bucket",
                                     labels=["node", "bucket"])
        fills = CounterMetricFamily("gobucket_fills",
                                    "Fills by where they went: local, forwarded to a peer, or "
                                    "rejected (ClusterFullError)", labels=["node", "bucket",
                                                                           "result"])
        accepted = CounterMetricFamily("gobucket_bucket_filled",
                                       "Tasks accepted into the local bucket (own fills, "
                                       "forwards from peers and handoffs)",
                                       labels=["node", "bucket"])
        fired = CounterMetricFamily("gobucket_tasks_started", "Tasks whose on_execute started",
                                    labels=["node", "bucket"])
        outcomes = CounterMetricFamily("gobucket_task_outcomes",
                                       "Terminal outcomes by kind", labels=["node", "bucket",
                                                                            "outcome"])
        hook_errors = CounterMetricFamily("gobucket_hook_errors", "Lifecycle hooks that raised",
                                          labels=["node", "bucket"])
        hook_timeouts = CounterMetricFamily("gobucket_hook_timeouts",
                                            "Lifecycle hooks cut off by hook_timeout",
                                            labels=["node", "bucket"])
        lost = CounterMetricFamily("gobucket_tasks_lost",
                                   "Tasks this node forwarded whose holder crashed or is "
                                   "presumed lost (each reported once to on_tasks_lost)",
                                   labels=["node", "bucket"])
        lateness: list[tuple[list[str], Histogram]] = []
        for name, bucket in group.buckets.items():
            stats = bucket.stats()
            live.add_metric([node, name], stats["live"])
            capacity.add_metric([node, name], bucket.config.max_bucket)
            for result, count in zip(FILL_RESULTS, group.fill_counts[name], strict=True):
                fills.add_metric([node, name, result], count)
            accepted.add_metric([node, name], stats["filled"])
            fired.add_metric([node, name], stats["started"])
            for outcome in OUTCOMES:
                outcomes.add_metric([node, name, outcome], stats[outcome])
            hook_errors.add_metric([node, name], stats["hook_errors"])
            hook_timeouts.add_metric([node, name], stats["hook_timeouts"])
            lost.add_metric([node, name], group.lost_counts.get(name, 0))
            lateness.append(([node, name], bucket.lateness))
        yield from (live, capacity, fills, accepted, fired, outcomes, hook_errors, hook_timeouts,
                    lost)
        yield _histogram("gobucket_firing_lateness_seconds",
                         "How late time-bombs started after their due time",
                         ["node", "bucket"], lateness)
        peers = GaugeMetricFamily("gobucket_peers", "Known peers by state",
                                  labels=["node", "state"])
        states = [p.state for p in group.peers]
        for state in MemberState:
            peers.add_metric([node, state.value], states.count(state))
        yield peers
        forwarder, membership = group._forwarder, group._membership
        if forwarder is not None:
            yield _histogram("gobucket_forward_latency_seconds",
                             "Round trip of each batch of forwarded tasks", ["node"],
                             [([node], forwarder.latency)])
        if membership is not None:
            yield _histogram("gobucket_probe_rtt_seconds",
                             "Round trip of each successful direct probe", ["node"],
                             [([node], membership.probe_rtt)])


def registry_for(group: TaskBucketGroup) -> CollectorRegistry:
    """A registry holding only this group's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GroupCollector(group))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry``."""
    return generate_latest(registry)
