"""/metrics with many workspaces: an exposition is reused while nothing changed, and any
change (a count, a gauge value, a workspace gone) shows in the next one."""

from __future__ import annotations

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
