"""SQL adapters of the Store port: one schema, SQLite (embedded) and PostgreSQL."""
