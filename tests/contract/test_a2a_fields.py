"""Issue 11's two stored fields, on every adapter: a workspace's `card_access` and the
content type of a delivery's reply (`reply_type`, kept so a replay answers with the
agent's own type, e.g. application/a2a+json for the HTTP+JSON binding)."""

from __future__ import annotations

from berth.domain.delivery import DeliveryStatus
from berth.ports import Settle, Store
from tests.contract.test_store import T0, accept_many, claim, make_ws


async def test_card_access_is_stored_and_defaults_to_callers(store: Store) -> None:
    await store.create_workspace(make_ws("open", card_access="public"))
    await store.create_workspace(make_ws("closed"))
    assert (await store.get_workspace("open")).card_access == "public"
    assert (await store.get_workspace("closed")).card_access == "callers"
    ws = await store.get_workspace("closed")
    assert (await store.update_workspace(ws.id, card_access="public")).card_access == "public"
    assert (await store.get_workspace("closed")).card_access == "public"


async def test_reply_type_is_stored_with_the_reply(store: Store) -> None:
    d1, d2, d3 = await accept_many(store, "w1", 3)
    assert d1.reply_type is None
    await claim(store, "w1", capacity=3)
    how = Settle(
        DeliveryStatus.DONE,
        reply=b'{"task": {}}',
        reply_status=200,
        reply_type="application/a2a+json",
    )
    got = await store.settle(d1.id, "a", how, T0 + 1)
    assert got is not None and got.reply_type == "application/a2a+json"
    assert (await store.get_delivery(d1.id)).reply_type == "application/a2a+json"
    plain = Settle(DeliveryStatus.DONE, reply=b"{}", reply_status=404)
    got = await store.settle(d2.id, "a", plain, T0 + 1)
    assert got is not None and got.reply_type is None and got.reply_status == 404
    back = Settle(DeliveryStatus.QUEUED, reply_type="ignored")  # no reply: nothing stored
    got = await store.settle(d3.id, "a", back, T0 + 1)
    assert got is not None and got.reply_type is None
