"""Example agents built on berth.sdk."""
