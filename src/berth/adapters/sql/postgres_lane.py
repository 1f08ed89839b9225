"""The fast lane's statements on PostgreSQL (docs/fast-lane.md, src/berth/lane/lane.c).

On SQLite the lane reads the credential and the workspace itself, then writes the row in
its group commit. On PostgreSQL a read is a round trip, so the accept reads them itself:
`berth_lane_write` (one call a flush: every write waiting, as arrays) takes each plain send
as the caller sent it (the workspace's name or id, the SHA-256 of the bearer secret) and,
in the transaction that writes the row, checks every rule the SQLite lane checks in two
places:

* the credential: an active `caller` credential (the operator is known by the lane);
* the workspace: online, no deploy peer, not a Docker workspace when berth itself runs in
  a container of its engine, the caller on its allow-list (or `*`, or the operator), a
  queue limit above 0, an agent URL on loopback with a port;
* the in-flight accept's guard, under the workspace's claim lock (the key berth_claim
  takes, so the count sees every claim committed before, and a claim after sees this row):
  nothing queued for the workspace, a free slot (none counted when it has native
  sessions), and no delivery of that (workspace, caller, messageId) yet.

When a rule fails nothing is written and no row comes back: the lane relays the request,
and Python answers it as it always has (401, 403, 404, a replay, a queued send).

`berth_lane_lock` takes the claim locks of every workspace a flush's accepts name, in
berth's lock order (hashtext of the id, as berth_claim_many), before any accept: a lane
flush and a Python flush never wait for each other's locks in a cycle. (One exception, as
between two Python flushes: the same message sent through both at once, whose insert
waits for the other's; PostgreSQL ends such a deadlock after deadlock_timeout, the flush
fails whole, and the lane relays its sends to Python, which answers them.)

What it costs, measured (2026-12-04): each SQL statement a plpgsql function runs pays an
executor start, so an accept is three statements (credential, workspace, the guarded
insert) and a settle one plain UPDATE by id; a single UPDATE ... FROM unnest(...) for all
the settles cost twice as much here.

The headers the row keeps are the caller's (as the lane read them) and `x-berth-caller`,
which only the accept knows: the lane sends the JSON object unfinished and the accept
ends it, as json.dumps writes a plain string.
"""

from __future__ import annotations

from berth.adapters.sql import rows
from berth.adapters.sql.postgres_base import _CLAIM_LOCK_CLASS

__all__ = ["LANE_FUNCTIONS"]

_IN_FLIGHT, _QUEUED = rows.IN_FLIGHT, rows.QUEUED

# Python's bool() of a JSON value (Workspace.native_session)
_TRUTHY = """
CREATE OR REPLACE FUNCTION berth_truthy(v jsonb) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'boolean' THEN v = 'true'::jsonb
        WHEN 'number' THEN (v #>> '{}')::numeric <> 0
        WHEN 'string' THEN (v #>> '{}') <> ''
        WHEN 'array' THEN jsonb_array_length(v) > 0
        WHEN 'object' THEN v <> '{}'::jsonb
        ELSE false END
$$
"""

_LOCK = f"""
CREATE OR REPLACE FUNCTION berth_lane_lock(p_refs text[]) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({_CLAIM_LOCK_CLASS}, s.h) FROM (
        SELECT DISTINCT hashtext(id) AS h FROM workspaces WHERE id = ANY (p_refs) OR name = ANY (p_refs)
        ORDER BY 1
    ) AS s;
END $$
"""

# The agent URLs the lane forwards to (lane.c's agent_target: loopback, a port, a path
# without spaces, quotes, backslashes or a fragment). What this lets through and
# agent_target does not is handed to Python before any forward.
_LOOPBACK = r"^http://(127\.0\.0\.1|localhost|\[::1\]):[0-9]{1,5}(/[^\s#\"\\]*)?$"

# One flush of the lane: every write waiting, as arrays, in one statement (one round trip,
# one transaction, one commit): the settles of replied forwards (done, the reply kept; only
# the lane's own in-flight rows of one forward), the renewal of the leases of the forwards
# it is still working on (a JSON array of ids, or NULL), then the accepts, under the claim
# locks of every workspace they name, taken first in berth's order. Rows come back as
# (k, ...): -n for the nth settle that took its row, n for the nth accept that wrote one.
_WRITE = f"""
CREATE OR REPLACE FUNCTION berth_lane_write(
    s_id text[], s_reply bytea[], s_status integer[], s_type text[], s_now double precision,
    r_ids text, r_until double precision,
    a_id text[], a_ref text[], a_cred text[], a_mid text[], a_fp text[], a_method text[],
    a_request bytea[], a_headers text[], a_until double precision[], a_now double precision[],
    p_owner text, p_max_queue bigint, p_docker boolean)
RETURNS TABLE (k integer, l_ws text, l_url text, l_cap integer, l_run text, l_crashes integer,
               l_caller text)
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off
-- planned once per connection: a custom plan of the accepts' statement for each flush cost
-- 41 % of the lane's backend in a profile (2026-12-04)
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE i integer;
BEGIN
    IF cardinality(s_id) > 0 THEN
        RETURN QUERY
        WITH moved AS (
            UPDATE deliveries AS x
            SET status = 'done', reason = NULL, not_before = 0, lease_owner = NULL,
                lease_until = NULL, updated_at = s_now, finished_at = s_now, reply = u.reply,
                reply_status = u.status, reply_type = u.type
            FROM unnest(s_id, s_reply, s_status, s_type) WITH ORDINALITY
                AS u(id, reply, status, type, n)
            WHERE x.id = u.id AND x.status = '{_IN_FLIGHT}' AND x.lease_owner = p_owner
                AND x.forwards = 1
            RETURNING u.n
        )
        SELECT -moved.n::integer, NULL::text, NULL::text, NULL::integer, NULL::text,
            NULL::integer, NULL::text
        FROM moved;
    END IF;
    IF r_ids IS NOT NULL THEN
        UPDATE deliveries SET lease_until = r_until
        WHERE status = '{_IN_FLIGHT}' AND lease_owner = p_owner
            AND id IN (SELECT jsonb_array_elements_text(r_ids::jsonb));
    END IF;
    IF cardinality(a_id) > 0 THEN
        PERFORM berth_lane_lock(a_ref);
        -- every accept in one statement (a fresh snapshot, taken under the claim locks; it
        -- sees the settles above): the caller, the workspace and the guard per workspace,
        -- then the first accepts of each workspace that fit in its free slots are inserted
        RETURN QUERY
        WITH a AS (
            SELECT * FROM unnest(a_id, a_ref, a_cred, a_mid, a_fp, a_method, a_request,
                                 a_headers, a_until, a_now)
                WITH ORDINALITY AS a(id, ref, cred, mid, fp, method, request, headers, until,
                                     now, n)
        ), who AS (  -- the operator (known by the lane), else an active caller credential
            SELECT a.*, CASE WHEN a.cred IS NULL THEN 'operator' ELSE (
                SELECT c.subject FROM credentials AS c
                WHERE c.secret_hash = a.cred AND c.revoked_at IS NULL AND c.role = 'caller'
            ) END AS who
            FROM a
        ), w AS (  -- the workspace, if the lane may serve it
            SELECT who.*, x.id AS ws, x.agent_url AS url, x.run_token_hash AS run,
                x.crash_count AS crashes,
                CASE WHEN berth_truthy(x.capabilities::jsonb -> 'native_session') THEN NULL
                    ELSE x.max_concurrency END AS cap
            FROM who CROSS JOIN LATERAL (
                -- the one workspace the name or id means, as get_workspace picks it (an
                -- id before a name), and then its rules. A move of its state or its peer
                -- takes its claim lock first (PostgresStore._update_ws), so it waits for
                -- this flush's commit (a drain after it reads this flush's rows), and a
                -- flush after it waits for its commit and sees it
                SELECT * FROM (
                    SELECT * FROM workspaces AS y WHERE y.id = who.ref OR y.name = who.ref
                    ORDER BY y.id = who.ref DESC LIMIT 1
                ) AS x
                WHERE x.state = 'online'
                    AND x.peer IS NULL AND NOT (p_docker AND x.runtime = 'docker')
                    AND (who.who = 'operator' OR x.allowed_callers::jsonb ?| ARRAY['*', who.who])
                    AND COALESCE(
                        CASE WHEN jsonb_typeof(x.limits::jsonb -> 'max_queue') = 'number'
                            THEN (x.limits::jsonb ->> 'max_queue')::numeric END,
                        p_max_queue) > 0
                    AND x.agent_url ~ '{_LOOPBACK}'
            ) AS x
            -- a name the lane can write as it is into JSON and a header (plain_value)
            WHERE who.who IS NOT NULL AND who.who ~ '^[\\x20-\\x7e]*$' AND who.who !~ '["\\\\]'
        ), g AS (  -- the guard of each workspace: nothing queued there, its slots taken
            SELECT s.ws,
                NOT EXISTS (
                    SELECT 1 FROM deliveries AS d WHERE d.workspace_id = s.ws AND d.status = '{_QUEUED}'
                ) AS clear,
                (SELECT count(*) FROM deliveries AS d
                 WHERE d.workspace_id = s.ws AND d.status = '{_IN_FLIGHT}') AS busy
            FROM (SELECT DISTINCT w.ws FROM w) AS s
        ), fit AS (  -- the first accepts of each workspace, as many as its free slots
            SELECT w.*, g.busy, row_number() OVER (PARTITION BY w.ws ORDER BY w.n) AS r
            FROM w JOIN g ON g.ws = w.ws
            WHERE g.clear
        ), ins AS (
            INSERT INTO deliveries AS x (id, workspace_id, caller, message_id, fingerprint,
                method, request, headers, status, attempts, forwards, lease_owner, lease_until,
                not_before, created_at, first_forwarded_at, updated_at)
            SELECT f.id, f.ws, f.who, f.mid, f.fp, f.method, f.request,
                f.headers || '"x-berth-caller":' || to_json(f.who)::text || '}}',
                '{_IN_FLIGHT}', 0, 1, p_owner, f.until, 0, f.now, f.now, f.now
            FROM fit AS f
            WHERE f.cap IS NULL OR f.busy + f.r <= f.cap
            -- in key order: two flushes sharing messages wait for each other in one order
            ORDER BY f.ws, f.who, f.mid
            ON CONFLICT (workspace_id, caller, message_id) DO NOTHING
            RETURNING x.id
        )
        SELECT w.n::integer, w.ws, w.url, w.cap, w.run, w.crashes, w.who
        FROM w JOIN ins ON ins.id = w.id;
    END IF;
END $$
"""

LANE_FUNCTIONS = (_TRUTHY, _LOCK, _WRITE)
