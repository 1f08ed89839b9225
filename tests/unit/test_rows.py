"""A workspace row read back is the workspace written: every column, the JSON ones (read
with orjson, falling back to json for what json.dumps writes and orjson refuses), the
enums and the deploy peer."""

from __future__ import annotations

import math
import time

from berth.adapters.sql.rows import ws_from_row, ws_params
from berth.domain.deploy import Instance, Role
from berth.domain.lifecycle import WorkspaceState
from berth.domain.workspace import Runtime, Workspace


def _ws(**kw: object) -> Workspace:
    now = time.time()
    base: dict[str, object] = {
        "id": "w1", "name": "w1", "runtime": Runtime.PROCESS, "command": ["python", "-m", "x"],
        "env": {"A": "1"}, "limits": {"memory_mb": 512}, "capabilities": {"streaming": True},
        "allowed_callers": ["c1"], "agent_card": {"name": "x", "skills": [{"id": "s"}]},
        "state": WorkspaceState.ONLINE, "token_hash": "t", "created_at": now, "updated_at": now,
    }  # fmt: skip
    base.update(kw)
    return Workspace(**base)  # type: ignore[arg-type]


def test_a_workspace_survives_its_row() -> None:
    ws = _ws()
    assert ws_from_row(ws_params(ws)) == ws
    peer = Instance(version=2, role=Role.NEXT, run_token_hash="r2", env={"B": "2"}, canary=10)
    deploying = _ws(peer=peer, version=1, peer_run_token_hash="r2")
    assert ws_from_row(ws_params(deploying)) == deploying


def test_empty_json_columns_read_back_as_empty_values() -> None:
    row = ws_params(_ws())
    row.update(env=None, limits=None, capabilities=None, allowed_callers=None, agent_card=None)
    ws = ws_from_row(row)
    assert (ws.env, ws.limits, ws.capabilities, ws.allowed_callers, ws.agent_card) == (
        {}, {}, {}, [], None,
    )  # fmt: skip


def test_json_orjson_refuses_is_still_read() -> None:
    """json.dumps writes NaN and integers beyond 64 bits; orjson refuses both."""
    row = ws_params(_ws())
    row["agent_card"] = '{"x": NaN, "big": 123456789012345678901234567890}'
    card = ws_from_row(row).agent_card
    assert (
        card is not None and math.isnan(card["x"]) and card["big"] == 123456789012345678901234567890
    )
