"""Identifiers of records written at a message's rate (deliveries): UUIDs laid out as
version 7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits (os.urandom).

Time-ordered ids keep the store's unique index on them growing at its right edge: with
random (version 4) ids each insert lands on a random leaf of that index, and with a
million rows in the table that is a page read, written and (PostgreSQL) logged whole
after every checkpoint, per message. They stay unguessable (74 random bits); what they
reveal is when the delivery was accepted, which its record shows anyway.
"""

from __future__ import annotations

import os
import time

__all__ = ["time_ordered_id"]

_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62


def time_ordered_id() -> str:
    ms = time.time_ns() // 1_000_000
    r = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 used
    v = (ms & 0xFFFF_FFFF_FFFF) << 80 | _VERSION | (r >> 68) << 64 | _VARIANT | r & (1 << 62) - 1
    h = f"{v:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
