"""`berth serve` tunes Python's cyclic collector (server.tune_gc): what exists once berth is
up is frozen out of every collection, and young collections run every GC_YOUNG
allocations instead of 700. Run in a fresh interpreter: it changes process-wide state."""

from __future__ import annotations

import subprocess
import sys

from berth.server import GC_YOUNG

PROBE = """
import gc
from berth.server import tune_gc
before = gc.get_threshold()
assert gc.get_freeze_count() == 0
tune_gc()
after = gc.get_threshold()
assert after == (GC_YOUNG, before[1], before[2]), (before, after)
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
class Cycle:
    pass
c = Cycle(); c.me = c
del c
assert gc.collect() >= 1  # cycles are still collected
"""


def test_tune_gc_freezes_what_exists_and_collects_in_larger_steps():
    code = f"GC_YOUNG = {GC_YOUNG}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
