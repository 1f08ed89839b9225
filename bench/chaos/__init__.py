"""berth's chaos tool: load and faults from outside, a history, and a checker.

Run it as `python -m bench.chaos --help` from the repository root; see docs/reliability.md.
"""
