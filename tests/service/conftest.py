"""Service tests: berth's real services on in-memory adapters; seconds, not minutes."""
