"""berth's metrics: every metric is declared here once, with its labels; services count
through the small `Metrics` facade so they never import a client library.

Per workspace (label `workspace`): deliveries, redeliveries, failures, restarts, crashes,
admission refusals (counters); queue depth, in flight, queue age (gauges, read at scrape
time); and each duration (delivery, queue wait, forward, restart, drain) as a summary,
its count and sum, so a workspace's mean is `rate(x_sum) / rate(x_count)`. Latency
distributions are fleet-wide histograms, `berth_fleet_*_seconds`, without a workspace
label; the delivery one carries exemplars (the delivery id of a slow delivery) in
OpenMetrics.

Why not a histogram per workspace: with 17 buckets each, five of them made ~70 lines per
active workspace, 70,000 at 1,000 workspaces, and a scrape under traffic took ~1 s in
prometheus-client (issue 14; docs/benchmarks.md). The per-workspace series are plain
numbers here, rendered by `render` in one pass (~15 lines a workspace); prometheus-client
renders only the fleet histograms, from counts kept here (`_Hist`: an observation is a
bisect and two additions; prometheus-client's own `Histogram.observe`, its lock and
exemplar checks, was ~3 % of berth's CPU per message). An exposition is reused while
nothing changed.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Exemplar

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
    "berth_agents_resumed_total": (
        "Agents told to resume by a heartbeat answer: still draining for berth while their "
        "workspace was online with no restart running",
        _WS,
    ),
    "berth_admission_refused_total": (
        "New messages refused because the workspace's queue was over its limit",
        _WS,
    ),
    "berth_lane_deliveries_total": (
        "Sends the fast lane served itself, to done (docs/fast-lane.md)",
        _WS,
    ),
    "berth_lane_handoffs_total": (
        "Deliveries the fast lane handed to Python, by what came back from the agent",
        ("workspace", "outcome"),
    ),
}
_DURATIONS: dict[str, str] = {
    "berth_delivery_seconds": "From accepted to final",
    "berth_queue_wait_seconds": "From accepted to its first forward",
    "berth_forward_seconds": "One forward to the agent",
    "berth_restart_seconds": "Whole restart cycles",
    "berth_drain_seconds": "Drain phase of restart cycles",
}
# gauges of the server itself, without labels (shown once set)
_PLAIN_GAUGES: dict[str, str] = {
    "berth_lane_up": "1 while the fast lane serves berth's port, 0 while it is down (restarting)",
}
_GAUGES: dict[str, str] = {
    "berth_queue_depth": "Queued deliveries per workspace",
    "berth_in_flight": "In-flight deliveries per workspace",
    "berth_queue_age_seconds": "How long the oldest queued delivery has waited, per workspace",
}


def _fleet_name(name: str) -> str:
    return "berth_fleet_" + name.removeprefix("berth_")


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in zip(names, values, strict=True)) + "}"


class _Hist:
    """A fleet-wide histogram: a count per bucket (`le` inclusive, as Prometheus), their
    sum, and per bucket the last observation that came with an exemplar."""

    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, text
        self.counts = [0] * (len(_BUCKETS) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] = [None] * (len(_BUCKETS) + 1)

    def observe(self, value: float, exemplar: dict[str, str] | None = None) -> None:
        i = bisect_left(_BUCKETS, value)
        self.counts[i] += 1
        self.sum += value
        if exemplar is not None:
            self.exemplars[i] = Exemplar(exemplar, value, time.time())

    def keep_exemplars(self, observed: list[tuple[float, dict[str, str]]]) -> None:
        """Exemplars of values already observed, in their order: each bucket keeps its last."""
        last = {bisect_left(_BUCKETS, v): (v, ex) for v, ex in observed}
        now = time.time()
        for i, (v, ex) in last.items():
            self.exemplars[i] = Exemplar(ex, v, now)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        total = 0
        for i, le in enumerate((*(repr(float(b)) for b in _BUCKETS), "+Inf")):
            total += self.counts[i]
            ex = self.exemplars[i]
            buckets.append((le, total) if ex is None else (le, total, ex))
        yield HistogramMetricFamily(self.name, self.text, buckets=buckets, sum_value=self.sum)


class Metrics:
    def __init__(self) -> None:
        self._counts: dict[str, dict[tuple[str, ...], float]] = {n: {} for n in _COUNTERS}
        self._durations: dict[str, dict[str, list[float]]] = {n: {} for n in _DURATIONS}
        self._gauges: dict[str, dict[str, float]] = {n: {} for n in _GAUGES}
        self._plain: dict[str, float] = {}
        self._fleet = CollectorRegistry(auto_describe=True)
        self._hist = {
            n: _Hist(_fleet_name(n), f"{t}, all workspaces") for n, t in _DURATIONS.items()
        }
        for h in self._hist.values():
            self._fleet.register(h)
        self._label_text: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        self._version = 0  # bumped by every change: a scrape of no change reuses the last
        self._rendered: dict[str, tuple[int, bytes]] = {}

    def inc(self, name: str, n: float = 1.0, **labels: str) -> None:
        values = tuple(labels[k] for k in _COUNTERS[name][1])
        counts = self._counts[name]
        counts[values] = counts.get(values, 0.0) + n
        self._version += 1

    def observe(
        self, name: str, value: float, *, exemplar: dict[str, str] | None = None, **labels: str
    ) -> None:
        self.observe_many(name, labels["workspace"], [value])
        if exemplar is not None:
            self._hist[name].keep_exemplars([(max(0.0, value), exemplar)])

    def observe_many(self, name: str, workspace: str, values: list[float]) -> None:
        """`observe` of each value, for one workspace at once (the fast lane's feed); a
        value under 0 counts as 0. Exemplars: `exemplars`."""
        if not values:
            return
        got = self._durations[name].setdefault(workspace, [0.0, 0.0])
        hist = self._hist[name]
        for v in values:
            v = max(0.0, v)
            got[0] += 1
            got[1] += v
            hist.observe(v)
        self._version += 1

    def exemplars(self, name: str, observed: list[tuple[float, str]]) -> None:
        """The exemplars of values observed (with observe_many), in the order they were
        observed, whatever their workspace: each bucket of the fleet histogram keeps its
        last one, a delivery id, as `observe(..., exemplar=...)` one by one leaves it."""
        if observed:
            self._hist[name].keep_exemplars(
                [(max(0.0, v), {"delivery_id": d}) for v, d in observed]
            )
            self._version += 1

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (tests, status pages)."""
        names = _COUNTERS[name][1]
        if set(labels) != set(names):
            return 0.0
        return self._counts[name].get(tuple(labels[k] for k in names), 0.0)

    def set_value(self, name: str, value: float) -> None:
        """Set a gauge of the server itself (`_PLAIN_GAUGES`)."""
        if name not in _PLAIN_GAUGES:
            raise KeyError(name)
        if self._plain.get(name) != value:
            self._plain[name] = value
            self._version += 1

    def set_gauges(self, name: str, values: dict[str, float]) -> None:
        """Replace a per-workspace gauge's values (workspaces gone since drop out)."""
        if self._gauges[name] != values:
            self._gauges[name] = dict(values)
            self._version += 1

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition the scraper asked for (Accept): Prometheus text, or OpenMetrics
        with exemplars; and its content type. Rendered on the loop: with 1,000 busy
        workspaces it takes a few milliseconds (bench/scale.py)."""
        encoder, content_type = choose_encoder(accept or "")
        cached = self._rendered.get(content_type)
        if cached is None or cached[0] != self._version:
            version = self._version
            om = "openmetrics" in content_type
            fleet = encoder(self._fleet).decode()
            if om:
                fleet = fleet.removesuffix("# EOF\n")
            body = (self._render(om) + fleet + ("# EOF\n" if om else "")).encode()
            cached = self._rendered[content_type] = (version, body)
        return cached[1], content_type

    def _lab(self, names: tuple[str, ...], values: tuple[str, ...]) -> str:
        key = (names, values)
        got = self._label_text.get(key)
        if got is None:
            got = self._label_text[key] = _labels(names, values)
        return got

    def _render(self, om: bool) -> str:
        out: list[str] = []

        def head(family: str, kind: str, text: str) -> None:
            if om:
                out.append(f"# TYPE {family} {kind}\n# HELP {family} {text}\n")
            else:
                out.append(f"# HELP {family} {text}\n# TYPE {family} {kind}\n")

        for name, (text, names) in _COUNTERS.items():
            counts = self._counts[name]
            if counts:
                head(name.removesuffix("_total") if om else name, "counter", text)
                out.extend(f"{name}{self._lab(names, k)} {v!r}\n" for k, v in counts.items())
        for name, text in _DURATIONS.items():
            durations = self._durations[name]
            if durations:
                head(name, "summary", text + ", per workspace")
                for ws, (n, total) in durations.items():
                    lab = self._lab(_WS, (ws,))
                    out.append(f"{name}_count{lab} {n!r}\n{name}_sum{lab} {total!r}\n")
        for name, value in self._plain.items():
            head(name, "gauge", _PLAIN_GAUGES[name])
            out.append(f"{name} {float(value)!r}\n")
        for name, text in _GAUGES.items():
            gauges = self._gauges[name]
            if gauges:
                head(name, "gauge", text)
                out.extend(
                    f"{name}{self._lab(_WS, (ws,))} {float(v)!r}\n" for ws, v in gauges.items()
                )
        return "".join(out)
