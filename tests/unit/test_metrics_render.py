"""/metrics with many workspaces: an exposition is reused while nothing changed, and any
change (a count, a gauge value, a workspace gone) shows in the next one."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from berth.metrics import Metrics


def samples(body: bytes) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("workspace", "")): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def test_an_exposition_is_reused_until_something_changes() -> None:
    m = Metrics()
    m.set_gauges("berth_queue_depth", {f"w{i}": 0.0 for i in range(1000)})
    first, _ = await m.render()
    again, _ = await m.render()
    assert again is first  # nothing changed: not rendered again
    m.set_gauges("berth_queue_depth", {f"w{i}": 0.0 for i in range(1000)})
    assert (await m.render())[0] is first  # the same gauge values are no change
    m.inc("berth_deliveries_accepted_total", workspace="w7")
    body, _ = await m.render()
    assert body is not first
    assert samples(body)[("berth_deliveries_accepted_total", "w7")] == 1
    m.set_gauges("berth_queue_depth", {"w1": 3.0})  # the other 999 are gone
    got = samples((await m.render())[0])
    assert got[("berth_queue_depth", "w1")] == 3.0
    assert ("berth_queue_depth", "w2") not in got
    om, content_type = await m.render("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text") and om.endswith(b"# EOF\n")


async def test_durations_are_per_workspace_summaries_and_fleet_histograms() -> None:
    """A workspace's durations are its count and sum; their distribution is fleet-wide,
    with the slow delivery's id as an exemplar in OpenMetrics. Both formats parse."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    m = Metrics()
    m.observe("berth_delivery_seconds", 0.2, workspace="a", exemplar={"delivery_id": "d-1"})
    m.observe("berth_delivery_seconds", 0.4, workspace="a")
    m.observe("berth_delivery_seconds", 3.0, workspace='b "odd" \\ one')
    m.observe("berth_forward_seconds", -1.0, workspace="a")  # a clock step: counted as 0
    m.inc("berth_deliveries_total", workspace="a", outcome="done")
    text = (await m.render())[0].decode()
    got = samples(text.encode())
    assert got[("berth_delivery_seconds_count", "a")] == 2
    assert abs(got[("berth_delivery_seconds_sum", "a")] - 0.6) < 1e-9
    assert got[("berth_delivery_seconds_count", 'b "odd" \\ one')] == 1  # label escaped
    assert got[("berth_forward_seconds_sum", "a")] == 0
    assert ("berth_delivery_seconds_bucket", "a") not in got  # no per-workspace buckets
    fleet = {
        s.labels["le"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "berth_fleet_delivery_seconds"
        for s in f.samples
        if s.name.endswith("_bucket")
    }
    assert fleet["0.25"] == 1 and fleet["0.5"] == 2 and fleet["2.5"] == 2 and fleet["+Inf"] == 3
    assert m.value("berth_deliveries_total", workspace="a", outcome="done") == 1
    assert m.value("berth_deliveries_total", workspace="a") == 0  # not a series of its own

    om = (await m.render("application/openmetrics-text; version=1.0.0"))[0].decode()
    families = {f.name: f for f in om_parse(om)}  # raises on anything OpenMetrics refuses
    assert families["berth_deliveries"].type == "counter"
    assert families["berth_delivery_seconds"].type == "summary"
    exemplars = [
        s.exemplar.labels
        for s in families["berth_fleet_delivery_seconds"].samples
        if s.exemplar is not None
    ]
    assert exemplars == [{"delivery_id": "d-1"}]


async def test_a_scrape_of_a_thousand_busy_workspaces_stays_small() -> None:
    """Lines per active workspace stay in the tens (a histogram each made it ~70)."""
    m = Metrics()
    for i in range(1000):
        ws = f"w{i}"
        m.inc("berth_deliveries_accepted_total", workspace=ws)
        m.inc("berth_deliveries_total", workspace=ws, outcome="done")
        for name in ("berth_delivery_seconds", "berth_queue_wait_seconds", "berth_forward_seconds"):
            m.observe(name, 0.01, workspace=ws)
    m.set_gauges("berth_queue_depth", {f"w{i}": 0.0 for i in range(1000)})
    body, _ = await m.render()
    assert body.count(b"\n") < 12 * 1000 + 200


async def test_a_fleet_histogram_counts_a_bound_in_its_own_bucket_and_keeps_the_last_exemplar() -> (
    None
):
    """Buckets are `le`: a value equal to a bound is in that bucket; the counts are
    cumulative; a bucket's exemplar is its latest observation that carried one."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    m = Metrics()
    for v in (0.25, 0.25000001, 0.0, 400.0):
        m.observe("berth_forward_seconds", v, workspace="a")
    m.observe("berth_forward_seconds", 0.3, workspace="a", exemplar={"delivery_id": "old"})
    m.observe("berth_forward_seconds", 0.4, workspace="a", exemplar={"delivery_id": "new"})
    om = (await m.render("application/openmetrics-text; version=1.0.0"))[0].decode()
    fam = {f.name: f for f in om_parse(om)}["berth_fleet_forward_seconds"]
    buckets = {s.labels["le"]: s for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets["0.001"].value == 1  # the 0.0
    assert buckets["0.25"].value == 2  # and 0.25, on the bound
    assert buckets["0.5"].value == 5  # 0.25000001, 0.3, 0.4
    assert buckets["300.0"].value == 5 and buckets["+Inf"].value == 6  # 400 only in +Inf
    assert buckets["0.5"].exemplar.labels == {"delivery_id": "new"}
    assert buckets["0.5"].exemplar.value == 0.4
    total = {s.name: s.value for s in fam.samples}
    assert total["berth_fleet_forward_seconds_count"] == 6
    assert abs(total["berth_fleet_forward_seconds_sum"] - 401.20000001) < 1e-6


async def test_observing_many_at_once_leaves_what_observing_one_by_one_leaves() -> None:
    """observe_many and exemplars (the fast lane's feed, a batch at a time, grouped by
    workspace) against observe, value by value in the lane's order: the same per-workspace
    summaries, fleet buckets and sums, and each bucket's exemplar the last delivery observed
    in it, whichever workspace it was for; a negative value counts as 0, as observe's."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    # (workspace, seconds, delivery) in the order the lane settled them
    seen = [
        ("a", 0.1, "d0"), ("b", 0.3, "d1"), ("a", 0.2, "d2"), ("b", 400.0, "d3"),
        ("a", 0.4, "d4"), ("b", -1.0, "d5"), ("a", 0.0009, "d6"), ("b", 0.26, "d7"),
        ("a", 0.3, "d8"),
    ]  # fmt: skip
    one, many = Metrics(), Metrics()
    for ws, v, d in seen:
        one.observe("berth_delivery_seconds", v, workspace=ws, exemplar={"delivery_id": d})
        one.observe("berth_queue_wait_seconds", v, workspace=ws)
    for ws in ("b", "a"):  # grouped by workspace, as a batch applies them
        mine = [v for w, v, _ in seen if w == ws]
        many.observe_many("berth_delivery_seconds", ws, mine[:2])
        many.observe_many("berth_delivery_seconds", ws, mine[2:])
        many.observe_many("berth_queue_wait_seconds", ws, mine)
    many.observe_many("berth_queue_wait_seconds", "a", [])  # nothing, no error
    many.exemplars("berth_delivery_seconds", [(v, d) for _, v, d in seen])
    assert many._durations == one._durations  # the same additions, in the same order
    fmt = "application/openmetrics-text; version=1.0.0"

    def fleet(m_text: bytes) -> dict[tuple[str, str], tuple[float, object]]:
        out = {}
        for fam in om_parse(m_text.decode()):
            for s in fam.samples:
                if s.name.startswith("berth_fleet_"):
                    ex = None if s.exemplar is None else (s.exemplar.labels, s.exemplar.value)
                    out[(s.name, s.labels.get("le", ""))] = (s.value, ex)
        return out

    got, want = fleet((await many.render(fmt))[0]), fleet((await one.render(fmt))[0])
    sums = [k for k in want if k[0].endswith("_sum")]  # added across workspaces in another order
    assert {k: got.pop(k)[0] for k in sums} == pytest.approx({k: want.pop(k)[0] for k in sums})
    assert got == want
    # the 0.5 bucket's last: d8 (workspace a), after d7 (workspace b)
    assert want[("berth_fleet_delivery_seconds_bucket", "0.5")][1] == ({"delivery_id": "d8"}, 0.3)
