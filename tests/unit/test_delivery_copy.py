"""Delivery.copy: a shallow copy, as copy.copy made it, for the hot path."""

from __future__ import annotations

import copy
import time

from berth.domain.delivery import Delivery, DeliveryStatus


def test_a_copy_is_equal_independent_at_the_top_and_shares_what_it_holds() -> None:
    now = time.time()
    d = Delivery(
        id="d", workspace_id="w", message_id="m", seq=3, method="SendMessage",
        request=b"{}", headers={"a": "b"}, created_at=now, updated_at=now, caller="c",
    )  # fmt: skip
    c = d.copy()
    assert c == d == copy.copy(d) and c is not d and type(c) is Delivery
    c.status, c.forwards = DeliveryStatus.IN_FLIGHT, 1
    assert d.status is DeliveryStatus.QUEUED and d.forwards == 0
    assert c.headers is d.headers  # shallow, as copy.copy
