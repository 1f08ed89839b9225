"""berth's metrics on prometheus-client: every metric is declared here once, with its
labels; services count through the small `Metrics` facade so they never import the
client. Per workspace: deliveries, queue wait, forward time, redeliveries, failures,
restarts, crashes, admission refusals; the queue gauges are read at scrape time.

`render` speaks the Prometheus text format, or OpenMetrics (with exemplars: the delivery
id of a slow delivery) when the scraper asks for it. Each workspace's series live in a
registry of their own, so a scrape renders again only the workspaces whose series changed
since the last one and reuses the rest (with 1,000 workspaces a full render took ~0.5 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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


Encoder = Callable[[CollectorRegistry], bytes]


def _declare(name: str, registry: CollectorRegistry) -> Counter | Histogram | Gauge:
    if name in _COUNTERS:
        text, labels = _COUNTERS[name]
        return Counter(name, text, labels, registry=registry)
    if name in _HISTOGRAMS:
        return Histogram(name, _HISTOGRAMS[name], _WS, buckets=_BUCKETS, registry=registry)
    if name in _GAUGES:
        return Gauge(name, _GAUGES[name], _WS, registry=registry)
    raise KeyError(f"no metric {name!r} is declared")


def _families(text: str) -> dict[str, tuple[str, str]]:
    """An exposition split by metric family: name -> (its header lines, its sample lines)."""
    heads: dict[str, list[str]] = {}
    lines: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            heads[name], lines[name] = [line], []
        elif line.startswith(("# TYPE ", "# UNIT ")):
            heads[name].append(line)
        elif not line.startswith("#"):
            lines[name].append(line)
    return {n: ("".join(heads[n]), "".join(lines[n])) for n in heads}


class _Series:
    """One workspace's series, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Counter | Histogram | Gauge] = {}  # only those it has used
        self.version = 0
        self.rendered: dict[str, tuple[int, dict[str, tuple[str, str]]]] = {}  # by content type

    def metric(self, name: str) -> Counter | Histogram | Gauge:
        m = self._metrics.get(name)
        if m is None:
            m = self._metrics[name] = _declare(name, self.registry)
        return m

    def families(self, encoder: Encoder, content_type: str) -> dict[str, tuple[str, str]]:
        got = self.rendered.get(content_type)
        if got is None or got[0] != self.version:
            version = self.version
            got = self.rendered[content_type] = (
                version,
                _families(encoder(self.registry).decode()),
            )
        return got[1]


class Metrics:
    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}
        self._gauge_values: dict[str, dict[str, float]] = {}
        self._version = 0  # bumped by every change: a scrape of no change reuses the last
        self._rendered: dict[str, tuple[int, bytes]] = {}

    def _of(self, workspace: str) -> _Series:
        s = self._series.get(workspace)
        if s is None:
            s = self._series[workspace] = _Series()
        return s

    def _changed(self, s: _Series) -> None:
        s.version += 1
        self._version += 1

    def inc(self, name: str, n: float = 1.0, **labels: str) -> None:
        s = self._of(labels["workspace"])
        s.metric(name).labels(**labels).inc(n)  # type: ignore[union-attr]
        self._changed(s)

    def observe(
        self, name: str, value: float, *, exemplar: dict[str, str] | None = None, **labels: str
    ) -> None:
        s = self._of(labels["workspace"])
        s.metric(name).labels(**labels).observe(max(0.0, value), exemplar=exemplar)  # type: ignore[union-attr]
        self._changed(s)

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (tests, status pages)."""
        s = self._series.get(labels.get("workspace", ""))
        got = None if s is None else s.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    def set_gauges(self, name: str, values: dict[str, float]) -> None:
        """Replace a per-workspace gauge's values (workspaces gone since drop out)."""
        before = self._gauge_values.get(name, {})
        if before == values:
            return
        for workspace in before.keys() - values.keys():
            s = self._of(workspace)
            s.metric(name).remove(workspace)
            self._changed(s)
        for workspace, v in values.items():
            if before.get(workspace) != v:
                s = self._of(workspace)
                s.metric(name).labels(workspace=workspace).set(v)  # type: ignore[union-attr]
                self._changed(s)
        self._gauge_values[name] = dict(values)

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition the scraper asked for (Accept), and its content type. Rendered on
        a worker thread (prometheus-client is thread-safe), so even a long render never
        stalls the event loop and every message with it."""
        encoder, content_type = choose_encoder(accept or "")
        cached = self._rendered.get(content_type)
        if cached is None or cached[0] != self._version:
            version = self._version
            body = await asyncio.to_thread(self._render, encoder, content_type)
            cached = self._rendered[content_type] = (version, body)
        return cached[1], content_type

    def _render(self, encoder: Encoder, content_type: str) -> bytes:
        parts: dict[str, list[str]] = {}  # family -> its header, then each workspace's lines
        for series in list(self._series.values()):
            for name, (head, lines) in series.families(encoder, content_type).items():
                parts.setdefault(name, [head]).append(lines)
        text = "".join("".join(p) for p in parts.values())
        if "openmetrics" in content_type:
            text += "# EOF\n"
        return text.encode()
