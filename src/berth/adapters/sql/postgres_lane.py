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
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE i integer; who text;
BEGIN
    -- one UPDATE by id each: half the cost of one UPDATE ... FROM unnest(...) here
    FOR i IN 1 .. coalesce(cardinality(s_id), 0) LOOP
        UPDATE deliveries
        SET status = 'done', reason = NULL, not_before = 0, lease_owner = NULL,
            lease_until = NULL, updated_at = s_now, finished_at = s_now, reply = s_reply[i],
            reply_status = s_status[i], reply_type = s_type[i]
        WHERE id = s_id[i] AND status = '{_IN_FLIGHT}' AND lease_owner = p_owner AND forwards = 1;
        IF FOUND THEN
            k := -i;
            RETURN NEXT;
        END IF;
    END LOOP;
    IF r_ids IS NOT NULL THEN
        UPDATE deliveries SET lease_until = r_until
        WHERE status = '{_IN_FLIGHT}' AND lease_owner = p_owner
            AND id IN (SELECT jsonb_array_elements_text(r_ids::jsonb));
    END IF;
    IF cardinality(a_id) > 0 THEN
        PERFORM berth_lane_lock(a_ref);
        FOR i IN 1 .. cardinality(a_id) LOOP
            -- the caller: the operator (known by the lane), else an active caller credential
            -- whose name the lane can write as it is into JSON and a header (plain_value)
            IF a_cred[i] IS NULL THEN
                who := 'operator';
            ELSE
                SELECT c.subject INTO who FROM credentials AS c
                WHERE c.secret_hash = a_cred[i] AND c.revoked_at IS NULL AND c.role = 'caller';
                CONTINUE WHEN who IS NULL OR who !~ '^[\\x20-\\x7e]*$' OR who ~ '["\\\\]';
            END IF;
            -- the workspace, if the lane may serve it
            SELECT x.id, x.agent_url, x.run_token_hash, x.crash_count,
                CASE WHEN berth_truthy(x.capabilities::jsonb -> 'native_session') THEN NULL
                    ELSE x.max_concurrency END
            INTO l_ws, l_url, l_run, l_crashes, l_cap
            FROM workspaces AS x
            WHERE (x.id = a_ref[i] OR x.name = a_ref[i]) AND x.state = 'online' AND x.peer IS NULL
                AND NOT (p_docker AND x.runtime = 'docker')
                AND (who = 'operator' OR x.allowed_callers::jsonb ?| ARRAY['*', who])
                AND COALESCE(
                    CASE WHEN jsonb_typeof(x.limits::jsonb -> 'max_queue') = 'number'
                        THEN (x.limits::jsonb ->> 'max_queue')::numeric END,
                    p_max_queue) > 0
                AND x.agent_url ~ '{_LOOPBACK}'
            ORDER BY x.id = a_ref[i] DESC LIMIT 1;
            CONTINUE WHEN NOT FOUND;
            -- the guard, in the statement that writes the row (a fresh snapshot, taken under
            -- the claim locks): nothing queued there, a free slot, no such messageId yet
            INSERT INTO deliveries (id, workspace_id, caller, message_id, fingerprint, method,
                request, headers, status, attempts, forwards, lease_owner, lease_until,
                not_before, created_at, first_forwarded_at, updated_at)
            SELECT a_id[i], l_ws, who, a_mid[i], a_fp[i], a_method[i], a_request[i],
                a_headers[i] || '"x-berth-caller":' || to_json(who)::text || '}}',
                '{_IN_FLIGHT}', 0, 1, p_owner, a_until[i], 0, a_now[i], a_now[i], a_now[i]
            WHERE NOT EXISTS (
                    SELECT 1 FROM deliveries WHERE workspace_id = l_ws AND status = '{_QUEUED}'
                ) AND (l_cap IS NULL OR (
                    SELECT count(*) FROM deliveries
                    WHERE workspace_id = l_ws AND status = '{_IN_FLIGHT}'
                ) < l_cap)
            ON CONFLICT (workspace_id, caller, message_id) DO NOTHING;
            CONTINUE WHEN NOT FOUND;
            k := i;
            l_caller := who;
            RETURN NEXT;
        END LOOP;
    END IF;
END $$
"""

LANE_FUNCTIONS = (_TRUTHY, _LOCK, _WRITE)
