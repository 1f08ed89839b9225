"""The fast lane's statements on PostgreSQL (docs/fast-lane.md, src/berth/lane/lane.c).

On SQLite the lane reads the credential and the workspace itself, then writes the row in
its group commit. On PostgreSQL a read is a round trip, so the accept reads them itself:
`berth_lane_accept` takes the plain send as the caller sent it (the workspace's name or id,
the SHA-256 of the bearer secret) and, in the transaction that writes the row, checks every
rule the SQLite lane checks in two places:

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
flush and a Python flush never wait for each other's locks in a cycle.

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

_ACCEPT = f"""
CREATE OR REPLACE FUNCTION berth_lane_accept(
    p_id text, p_ref text, p_cred text, p_message_id text, p_fingerprint text, p_method text,
    p_request bytea, p_headers text, p_owner text, p_until double precision,
    p_now double precision, p_max_queue bigint, p_docker boolean)
RETURNS TABLE (l_ws text, l_url text, l_cap integer, l_run text, l_crashes integer, l_caller text)
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE who text; w record; cap integer; got bigint;
BEGIN
    IF p_cred IS NULL THEN
        who := 'operator';
    ELSE
        SELECT c.subject INTO who FROM credentials AS c
        WHERE c.secret_hash = p_cred AND c.revoked_at IS NULL AND c.role = 'caller';
        -- a name the lane can write as it is into JSON and a header (lane.c's plain_value)
        IF who IS NULL OR who !~ '^[\\x20-\\x7e]*$' OR who ~ '["\\\\]' THEN RETURN; END IF;
    END IF;
    SELECT x.id, x.agent_url, x.max_concurrency, x.capabilities, x.run_token_hash, x.crash_count
    INTO w FROM workspaces AS x
    WHERE (x.id = p_ref OR x.name = p_ref) AND x.state = 'online' AND x.peer IS NULL
        AND NOT (p_docker AND x.runtime = 'docker')
        AND (who = 'operator' OR x.allowed_callers::jsonb ?| ARRAY['*', who])
        AND COALESCE(
            CASE WHEN jsonb_typeof(x.limits::jsonb -> 'max_queue') = 'number'
                THEN (x.limits::jsonb ->> 'max_queue')::numeric END,
            p_max_queue) > 0
        AND x.agent_url ~ '{_LOOPBACK}'
    ORDER BY x.id = p_ref DESC LIMIT 1;
    IF NOT FOUND THEN RETURN; END IF;
    cap := CASE WHEN berth_truthy(w.capabilities::jsonb -> 'native_session') THEN NULL
        ELSE w.max_concurrency END;
    IF cap IS NOT NULL THEN
        -- held already (berth_lane_lock); taken again here for a call without it
        PERFORM pg_advisory_xact_lock({_CLAIM_LOCK_CLASS}, hashtext(w.id));
        IF (SELECT count(*) FROM deliveries WHERE workspace_id = w.id AND status = '{_IN_FLIGHT}') >= cap THEN
            RETURN;
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM deliveries WHERE workspace_id = w.id AND status = '{_QUEUED}') THEN
        RETURN;
    END IF;
    INSERT INTO deliveries (id, workspace_id, caller, message_id, fingerprint, method, request,
        headers, status, attempts, forwards, lease_owner, lease_until, not_before, created_at,
        first_forwarded_at, updated_at)
    VALUES (p_id, w.id, who, p_message_id, p_fingerprint, p_method, p_request,
        p_headers || '"x-berth-caller":' || to_json(who)::text || '}}', '{_IN_FLIGHT}', 0, 1,
        p_owner, p_until, 0, p_now, p_now, p_now)
    ON CONFLICT (workspace_id, caller, message_id) DO NOTHING
    RETURNING seq INTO got;
    IF got IS NULL THEN RETURN; END IF;
    RETURN QUERY SELECT w.id, w.agent_url, cap, w.run_token_hash, w.crash_count, who;
END $$
"""

LANE_FUNCTIONS = (_TRUTHY, _LOCK, _ACCEPT)
