"""A workspace record and its other running instance (domain/deploy.Instance): the fields
they share go both ways, and each of Instance's own fields is either shared or the
instance's alone."""

from __future__ import annotations

import dataclasses

from berth.domain.deploy import INSTANCE_FIELDS, Instance, Role
from berth.domain.workspace import Runtime, Workspace


def test_a_workspace_as_its_instance_and_back_is_the_same_record() -> None:
    ws = Workspace(
        id="w1",
        name="a",
        runtime=Runtime.PROCESS,
        command=["agent", "--v1"],
        env={"A": "1"},
        agent_url="http://127.0.0.1:9001",
        agent_card={"name": "a"},
        capabilities={"streaming": True},
        pid=41,
        run_token_hash="h1",
        version=3,
        peer=Instance(4, Role.NEXT, "h2", command=["agent", "--v2"]),
    )
    old = ws.instance(Role.OLD)
    assert (old.version, old.role, old.run_token_hash, old.pid) == (3, Role.OLD, "h1", 41)
    assert ws.as_instance(old) == dataclasses.replace(ws, peer=None)
    nxt = ws.as_instance(ws.peer)  # type: ignore[arg-type]
    assert (nxt.version, nxt.command, nxt.run_token_hash, nxt.peer) == (
        4,
        ["agent", "--v2"],
        "h2",
        None,
    )
    # none of the serving version's own fields leak into the other's view
    assert (nxt.pid, nxt.agent_url, nxt.agent_card, nxt.env) == (None, None, None, {})
    assert (nxt.id, nxt.name) == ("w1", "a")


def test_every_field_of_an_instance_is_shared_or_its_own() -> None:
    own = {"version", "role", "run_token_hash", "started_at", "registered_at", "canary"}
    own.add("decision")
    fields = {f.name for f in dataclasses.fields(Instance)}
    assert fields - own == set(INSTANCE_FIELDS)
    workspace = {f.name for f in dataclasses.fields(Workspace)}
    assert set(INSTANCE_FIELDS) <= workspace
