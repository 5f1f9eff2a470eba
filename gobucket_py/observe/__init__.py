"""Observability: Prometheus metrics, the status API, the dashboard and the event feed.

Counters live where the events happen (plain ints and :class:`Histogram`
arrays, cheap enough for hot paths); prometheus-client only formats them at
scrape time.
"""
