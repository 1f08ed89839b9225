"""The schema as numbered migrations, one list per dialect, kept in step.

Types differ only where the dialects do: the sequence column, blobs and floats.
A migration test checks that replaying every migration gives the schema of a fresh install.
"""

from __future__ import annotations

import re

_COMMON = """
CREATE TABLE workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    runtime TEXT NOT NULL,
    command TEXT,
    image TEXT,
    url TEXT,
    env TEXT NOT NULL DEFAULT '{{}}',
    max_concurrency INTEGER NOT NULL DEFAULT 1,
    drain_seconds {real} NOT NULL DEFAULT 30,
    restart_policy TEXT NOT NULL,
    limits TEXT NOT NULL DEFAULT '{{}}',
    state TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    run_token_hash TEXT,
    agent_url TEXT,
    agent_card TEXT,
    capabilities TEXT NOT NULL DEFAULT '{{}}',
    last_heartbeat {real},
    active_tasks INTEGER NOT NULL DEFAULT 0,
    restart_count INTEGER NOT NULL DEFAULT 0,
    crash_count INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    state_dir TEXT,
    owner TEXT,
    last_error TEXT,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL
);
CREATE INDEX workspaces_token ON workspaces (token_hash);
CREATE INDEX workspaces_run_token ON workspaces (run_token_hash);

CREATE TABLE deliveries (
    seq {serial},
    id TEXT NOT NULL UNIQUE,
    workspace_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    method TEXT NOT NULL,
    request {blob} NOT NULL,
    headers TEXT NOT NULL DEFAULT '{{}}',
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    forwards INTEGER NOT NULL DEFAULT 0,
    reply {blob},
    reply_status INTEGER,
    reason TEXT,
    lease_owner TEXT,
    lease_until {real},
    not_before {real} NOT NULL DEFAULT 0,
    expires_at {real},
    created_at {real} NOT NULL,
    first_forwarded_at {real},
    finished_at {real},
    updated_at {real} NOT NULL,
    UNIQUE (workspace_id, message_id)
);
CREATE INDEX deliveries_queued ON deliveries (workspace_id, seq) WHERE status = 'queued';
CREATE INDEX deliveries_in_flight ON deliveries (workspace_id) WHERE status = 'in_flight';
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'in_flight';
CREATE INDEX deliveries_finished ON deliveries (finished_at)
    WHERE status IN ('done', 'dead', 'canceled', 'expired');
CREATE INDEX deliveries_by_ws ON deliveries (workspace_id, seq);

CREATE TABLE restarts (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    trigger TEXT NOT NULL,
    reason TEXT,
    drain_seconds {real} NOT NULL,
    phase TEXT NOT NULL,
    phases TEXT NOT NULL DEFAULT '[]',
    drain_report TEXT,
    error TEXT,
    created_at {real} NOT NULL,
    finished_at {real}
);
CREATE INDEX restarts_by_ws ON restarts (workspace_id, created_at);
"""

# issue 11: who may read a workspace's agent card without a token, and the content type
# of the agent's reply (an HTTP+JSON reply is application/a2a+json, not application/json)
_A2A_TRANSPARENCY = """
ALTER TABLE workspaces ADD COLUMN card_access TEXT NOT NULL DEFAULT 'callers';
ALTER TABLE deliveries ADD COLUMN reply_type TEXT
"""

SQLITE = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB", "real": "REAL"}
POSTGRES = {"serial": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA", "real": "DOUBLE PRECISION"}


# 3: credentials by role (issue 10), each workspace's allow-list of callers, and the
# delivery log's accept key scoped to the caller, with the request's fingerprint.
_CREDENTIALS = """
CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    workspace_id TEXT,
    secret_hash TEXT NOT NULL,
    created_at {real} NOT NULL,
    rotated_at {real},
    revoked_at {real}
);
CREATE UNIQUE INDEX credentials_secret ON credentials (secret_hash);
CREATE INDEX credentials_by_ws ON credentials (workspace_id);
ALTER TABLE workspaces ADD COLUMN allowed_callers TEXT NOT NULL DEFAULT '[]';
INSERT INTO credentials (id, subject, role, workspace_id, secret_hash, created_at)
    SELECT id, 'workspace:' || name, 'caller', id, token_hash, created_at FROM workspaces
    WHERE token_hash <> '';
"""

# SQLite cannot drop a table's UNIQUE constraint: the deliveries table is rebuilt.
_SQLITE_ACCEPT_KEY = """
CREATE TABLE deliveries_v2 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    workspace_id TEXT NOT NULL,
    caller TEXT NOT NULL DEFAULT 'legacy',
    message_id TEXT NOT NULL,
    fingerprint TEXT,
    method TEXT NOT NULL,
    request BLOB NOT NULL,
    headers TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    forwards INTEGER NOT NULL DEFAULT 0,
    reply BLOB,
    reply_status INTEGER,
    reason TEXT,
    lease_owner TEXT,
    lease_until REAL,
    not_before REAL NOT NULL DEFAULT 0,
    expires_at REAL,
    created_at REAL NOT NULL,
    first_forwarded_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    reply_type TEXT,
    UNIQUE (workspace_id, caller, message_id)
);
INSERT INTO deliveries_v2 (seq, id, workspace_id, message_id, method, request, headers, status,
    attempts, forwards, reply, reply_status, reason, lease_owner, lease_until, not_before,
    expires_at, created_at, first_forwarded_at, finished_at, updated_at, reply_type)
    SELECT seq, id, workspace_id, message_id, method, request, headers, status,
    attempts, forwards, reply, reply_status, reason, lease_owner, lease_until, not_before,
    expires_at, created_at, first_forwarded_at, finished_at, updated_at, reply_type
    FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
CREATE INDEX deliveries_queued ON deliveries (workspace_id, seq) WHERE status = 'queued';
CREATE INDEX deliveries_in_flight ON deliveries (workspace_id) WHERE status = 'in_flight';
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'in_flight';
CREATE INDEX deliveries_finished ON deliveries (finished_at)
    WHERE status IN ('done', 'dead', 'canceled', 'expired');
CREATE INDEX deliveries_by_ws ON deliveries (workspace_id, seq)
"""

_POSTGRES_ACCEPT_KEY = """
ALTER TABLE deliveries ADD COLUMN caller TEXT NOT NULL DEFAULT 'legacy';
ALTER TABLE deliveries ADD COLUMN fingerprint TEXT;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_workspace_id_message_id_key;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_accept_key UNIQUE (workspace_id, caller, message_id)
"""


# 4: versions (issue 13). The workspace record is the serving instance (`version`); `peer` is the
# second running instance during a deploy (JSON), its run token beside it for the lookup;
# a restart record says how it ran and between which versions.
_VERSIONS = """
ALTER TABLE workspaces ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE workspaces ADD COLUMN peer TEXT;
ALTER TABLE workspaces ADD COLUMN peer_run_token_hash TEXT;
CREATE INDEX workspaces_peer_run_token ON workspaces (peer_run_token_hash);
ALTER TABLE restarts ADD COLUMN mode TEXT NOT NULL DEFAULT 'stop-first';
ALTER TABLE restarts ADD COLUMN versions TEXT
"""


# 5: a count of the writes to `credentials` (issue 14), so that a replica may keep the
# credentials it authenticated with and learn of another replica's rotation or revocation
# by reading one row (services.credential_cache). Triggers count, whoever writes. (On
# SQLite nobody reads it: one berth process writes a SQLite database, and its own writes
# empty its cache.)
_COUNTERS = """
CREATE TABLE berth_counters (name TEXT PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO berth_counters (name, n) VALUES ('credentials', 0)
"""
_SQLITE_CREDENTIALS_COUNT = "".join(
    f"""
CREATE TRIGGER credentials_counted_{event.lower()} AFTER {event} ON credentials BEGIN
    UPDATE berth_counters SET n = n + 1 WHERE name = 'credentials';
END;"""
    for event in ("INSERT", "UPDATE", "DELETE")
)
_POSTGRES_CREDENTIALS_COUNT = """
CREATE FUNCTION berth_count_credentials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE berth_counters SET n = n + 1 WHERE name = 'credentials';
    RETURN NULL;
END
$$;
CREATE TRIGGER credentials_counted
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION berth_count_credentials()
"""


# 6: heartbeats in a table of their own (issue 14). A flush of many beats rewrote each
# workspace's row (wide: its card, its spec), and so changed its version: every other
# replica's roster read those rows again at its next refresh (a list of 1,000 workspaces
# on PostgreSQL spent most of its time there). A workspace's row keeps the beat written
# with it (a registration, a probe); `last_heartbeats` gives the later of the two.
_HEARTBEATS = """
CREATE TABLE heartbeats (workspace_id TEXT PRIMARY KEY, at {real} NOT NULL);
INSERT INTO heartbeats (workspace_id, at)
    SELECT id, last_heartbeat FROM workspaces WHERE last_heartbeat IS NOT NULL
"""


def migrations(types: dict[str, str]) -> list[tuple[int, str]]:
    """(version, script) pairs in order; a script may hold several statements."""
    sqlite = types["blob"] == "BLOB"
    key = _SQLITE_ACCEPT_KEY if sqlite else _POSTGRES_ACCEPT_KEY
    return [
        (1, _COMMON.format(**types)),
        (2, _A2A_TRANSPARENCY),
        (3, _CREDENTIALS.format(**types) + ";" + key),
        (4, _VERSIONS),
        (
            5,
            _COUNTERS
            + ";"
            + (_SQLITE_CREDENTIALS_COUNT if sqlite else _POSTGRES_CREDENTIALS_COUNT),
        ),
        (6, _HEARTBEATS.format(**types)),
    ]


def migrations_table(types: dict[str, str]) -> str:
    """The bookkeeping table: one row per applied migration version (made before any migration)."""
    return (
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        f"(version INTEGER PRIMARY KEY, applied_at {types['real']})"
    )


# a CREATE TRIGGER whose BEGIN … END has not ended yet
_OPEN_TRIGGER = re.compile(r"\s*CREATE TRIGGER\b(?!.*\bEND\s*$).*\bBEGIN\b", re.I | re.S)


def statements(script: str) -> list[str]:
    """The script's statements: split at each ';' outside a $$-quoted function body and
    outside a SQLite trigger's BEGIN … END."""
    out: list[str] = []
    part = ""
    for piece in script.split(";"):
        part = piece if not part else f"{part};{piece}"
        if part.count("$$") % 2 == 0 and not _OPEN_TRIGGER.match(part):
            if part.strip():
                out.append(part.strip())
            part = ""
    if part.strip():
        out.append(part.strip())
    return out
