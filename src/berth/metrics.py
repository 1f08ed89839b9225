"""A small Prometheus text-format registry: counters, gauges and histograms with labels."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable

__all__ = ["Metrics"]

Labels = tuple[tuple[str, str], ...]
_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)


class Metrics:
    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._gauges: dict[str, Callable[[], dict[Labels, float]]] = {}
        self.declare()

    def declare(self) -> None:
        self._help.update(
            {
                "berth_deliveries_accepted_total": ("counter", "Deliveries accepted into the log"),
                "berth_deliveries_total": (
                    "counter",
                    "Deliveries that reached a final status, by outcome",
                ),
                "berth_redeliveries_total": ("counter", "Forwards of a delivery after its first"),
                "berth_forward_failures_total": ("counter", "Failed forward attempts, by kind"),
                "berth_delivery_seconds": ("histogram", "From accepted to final"),
                "berth_forward_seconds": ("histogram", "One forward to the agent"),
                "berth_restarts_total": ("counter", "Restart cycles, by trigger and result"),
                "berth_drain_seconds": ("histogram", "Drain phase of restart cycles"),
                "berth_restart_seconds": ("histogram", "Whole restart cycles"),
                "berth_crashes_total": ("counter", "Unplanned workspace exits"),
                "berth_queue_depth": ("gauge", "Queued deliveries per workspace"),
                "berth_in_flight": ("gauge", "In-flight deliveries per workspace"),
                "berth_queue_age_seconds": (
                    "gauge",
                    "How long the oldest queued delivery has waited, per workspace",
                ),
                "berth_admission_refused_total": (
                    "counter",
                    "New messages refused because the workspace's queue was over its limit",
                ),
            }
        )

    def inc(self, name: str, n: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        bucket = self._values[name]
        bucket[key] = bucket.get(key, 0.0) + n

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self._hist[name].setdefault(key, [0.0] * (len(_BUCKETS) + 2))
        counts[bisect.bisect_left(_BUCKETS, value)] += 1
        counts[-1] += value

    def gauge(self, name: str, fn: Callable[[], dict[Labels, float]]) -> None:
        self._gauges[name] = fn

    def value(self, name: str, **labels: str) -> float:
        return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self, gauges: dict[str, dict[Labels, float]] | None = None) -> str:
        out: list[str] = []
        snap = dict(gauges or {})
        for name, fn in self._gauges.items():
            snap.setdefault(name, fn())
        for name, (kind, text) in self._help.items():
            out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}")
            if kind == "histogram":
                for key, counts in self._hist.get(name, {}).items():
                    acc = 0.0
                    for i, le in enumerate((*_BUCKETS, "+Inf")):
                        acc += counts[i]
                        out.append(f"{name}_bucket{_fmt(key + (('le', str(le)),))} {acc:g}")
                    out.append(f"{name}_count{_fmt(key)} {acc:g}")
                    out.append(f"{name}_sum{_fmt(key)} {counts[-1]:g}")
                continue
            for key, v in {**self._values.get(name, {}), **snap.get(name, {})}.items():
                out.append(f"{name}{_fmt(key)} {v:g}")
        return "\n".join(out) + "\n"


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v!s}"' for k, v in labels)
    return "{" + inner + "}"
