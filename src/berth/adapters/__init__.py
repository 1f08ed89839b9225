"""Adapters: the ports implemented on real things (and in memory, for fast tests)."""
