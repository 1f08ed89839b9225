"""berth's metrics on prometheus-client: every metric is declared here once, with its
labels; services count through the small `Metrics` facade so they never import the
client. Per workspace: deliveries, queue wait, forward time, redeliveries, failures,
restarts, crashes, admission refusals; the queue gauges are read at scrape time.

`render` speaks the Prometheus text format, or OpenMetrics (with exemplars: the delivery
id of a slow delivery) when the scraper asks for it.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

__all__ = ["Metrics"]

_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
_WS = ("workspace",)

_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "berth_deliveries_accepted_total": ("Deliveries accepted into the log", _WS),
    "berth_deliveries_total": (
        "Deliveries that reached a final status, by outcome",
        ("workspace", "outcome"),
    ),
    "berth_redeliveries_total": ("Forwards of a delivery after its first", _WS),
    "berth_forward_failures_total": ("Failed forward attempts, by kind", ("workspace", "kind")),
    "berth_restarts_total": (
        "Restart cycles, by trigger and result",
        ("workspace", "trigger", "result"),
    ),
    "berth_crashes_total": ("Unplanned workspace exits", _WS),
    "berth_admission_refused_total": (
        "New messages refused because the workspace's queue was over its limit",
        _WS,
    ),
}
_HISTOGRAMS: dict[str, str] = {
    "berth_delivery_seconds": "From accepted to final",
    "berth_queue_wait_seconds": "From accepted to its first forward",
    "berth_forward_seconds": "One forward to the agent",
    "berth_restart_seconds": "Whole restart cycles",
    "berth_drain_seconds": "Drain phase of restart cycles",
}
_GAUGES: dict[str, str] = {
    "berth_queue_depth": "Queued deliveries per workspace",
    "berth_in_flight": "In-flight deliveries per workspace",
    "berth_queue_age_seconds": "How long the oldest queued delivery has waited, per workspace",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {
            name: Counter(name, text, labels, registry=self.registry)
            for name, (text, labels) in _COUNTERS.items()
        }
        self._histograms = {
            name: Histogram(name, text, _WS, buckets=_BUCKETS, registry=self.registry)
            for name, text in _HISTOGRAMS.items()
        }
        self._gauges = {
            name: Gauge(name, text, _WS, registry=self.registry) for name, text in _GAUGES.items()
        }
        self._gauge_values: dict[str, dict[str, float]] = {}
        # bumped by every change: a scrape when nothing changed reuses the last exposition
        # (rendering every workspace's series took ~0.5 s with 1,000 workspaces)
        self._version = 0
        self._rendered: dict[str, tuple[int, bytes]] = {}

    def inc(self, name: str, n: float = 1.0, **labels: str) -> None:
        self._counters[name].labels(**labels).inc(n)
        self._version += 1

    def observe(
        self, name: str, value: float, *, exemplar: dict[str, str] | None = None, **labels: str
    ) -> None:
        self._histograms[name].labels(**labels).observe(max(0.0, value), exemplar=exemplar)
        self._version += 1

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (tests, status pages)."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    def set_gauges(self, name: str, values: dict[str, float]) -> None:
        """Replace a per-workspace gauge's values (workspaces gone since drop out)."""
        before = self._gauge_values.get(name, {})
        if before == values:
            return
        g = self._gauges[name]
        for workspace in before.keys() - values.keys():  # no clear(): a render may be running
            g.remove(workspace)
        for workspace, v in values.items():
            g.labels(workspace=workspace).set(v)
        self._gauge_values[name] = dict(values)
        self._version += 1

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition the scraper asked for (Accept), and its content type. Rendered on
        a worker thread (prometheus-client is thread-safe): with 1,000 workspaces it takes
        long enough that the event loop, and every message with it, would stall."""
        encoder, content_type = choose_encoder(accept or "")
        cached = self._rendered.get(content_type)
        if cached is None or cached[0] != self._version:
            version = self._version
            body = await asyncio.to_thread(encoder, self.registry)
            cached = self._rendered[content_type] = (version, body)
        return cached[1], content_type
