"""Delivery ids: UUIDs of version 7's layout, ordered by time, unique."""

from __future__ import annotations

import time
import uuid

from berth.domain.ids import time_ordered_id


def test_ids_are_version_7_uuids_ordered_by_their_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    a = time_ordered_id()
    time.sleep(0.002)
    b = time_ordered_id()
    after = time.time_ns() // 1_000_000
    for x in (a, b):
        u = uuid.UUID(x)
        assert str(u) == x and u.version == 7 and u.variant == uuid.RFC_4122
        assert before <= u.int >> 80 <= after  # the 48-bit Unix milliseconds
    assert a < b  # a later millisecond sorts later, as text too


def test_ids_do_not_repeat_within_a_millisecond() -> None:
    ids = [time_ordered_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
