"""The CredentialStore port and the caller-scoped accept key, on every store (issue 10)."""

from __future__ import annotations

import uuid

import pytest

from berth.domain.credentials import Credential, Role
from berth.domain.errors import Conflict, NotFound
from berth.ports import Store
from tests.contract.test_store import T0, make_d, make_ws


def cred(subject: str, secret_hash: str, role: Role = Role.CALLER, **kw: object) -> Credential:
    return Credential(
        id=uuid.uuid4().hex,
        subject=subject,
        role=role,
        secret_hash=secret_hash,
        created_at=T0,
        **kw,  # type: ignore[arg-type]
    )


async def test_run_token_finds_only_by_the_run_credential(store: Store) -> None:
    ws = make_ws("alpha", token_hash="t1", run_token_hash="r1")
    await store.create_workspace(ws)
    await store.create_workspace(make_ws("beta", token_hash="t2"))
    assert await store.workspace_by_run_token("r1") == ws
    # the creation token (a caller credential since issue 10) is not an agent's
    assert await store.workspace_by_run_token("t1") is None
    assert await store.workspace_by_run_token("t2") is None
    assert await store.workspace_by_run_token("zz") is None


async def test_credentials_add_find_list(store: Store) -> None:
    a = cred("workspace:alpha", "h-a", workspace_id="w1")
    b = cred("agent:alpha", "h-b", Role.AGENT, workspace_id="w1")
    c = cred("caller:ci", "h-c")
    for x in (a, b, c):
        await store.add_credential(x)
    assert await store.credential_by_secret("h-b") == b
    assert await store.credential_by_secret("nope") is None
    assert await store.get_credential(a.id) == a
    assert await store.get_credential("caller:ci") == c
    assert {x.id for x in await store.list_credentials()} == {a.id, b.id, c.id}
    with pytest.raises(Conflict):
        await store.add_credential(cred("caller:ci", "h-other"))
    with pytest.raises(NotFound):
        await store.get_credential("caller:nobody")


async def test_credentials_rotate_revoke_delete(store: Store) -> None:
    a = cred("workspace:alpha", "h-a", workspace_id="w1")
    keep = cred("workspace:beta", "h-k", workspace_id="w2")
    await store.add_credential(a)
    await store.add_credential(keep)
    rotated = await store.update_credential(a.id, secret_hash="h-a2", rotated_at=T0 + 1)
    assert rotated.secret_hash == "h-a2" and rotated.rotated_at == T0 + 1
    assert await store.credential_by_secret("h-a") is None
    assert (await store.credential_by_secret("h-a2")) == rotated
    revoked = await store.update_credential(a.id, revoked_at=T0 + 2)
    assert not revoked.active and (await store.get_credential(a.id)).revoked_at == T0 + 2
    with pytest.raises(AttributeError):
        await store.update_credential(a.id, subject="caller:x")
    with pytest.raises(NotFound):
        await store.update_credential("missing", revoked_at=T0)
    await store.delete_credentials("w1")
    assert [x.id for x in await store.list_credentials()] == [keep.id]
    await store.add_credential(cred("workspace:alpha", "h-new", workspace_id="w3"))  # free again


async def test_allowed_callers_round_trip(store: Store) -> None:
    ws = make_ws("alpha")
    await store.create_workspace(ws)
    assert (await store.get_workspace(ws.id)).allowed_callers == []
    got = await store.update_workspace(ws.id, allowed_callers=["workspace:beta", "*"])
    assert got.allowed_callers == ["workspace:beta", "*"]
    assert (await store.get_workspace("alpha")).allowed_callers == ["workspace:beta", "*"]


async def test_accept_key_is_scoped_to_the_caller(store: Store) -> None:
    first, created = await store.accept(make_d("w1", "m1", caller="workspace:a", fingerprint="f1"))
    assert created and first.caller == "workspace:a" and first.fingerprint == "f1"
    again, created = await store.accept(make_d("w1", "m1", caller="workspace:a", fingerprint="f2"))
    assert not created and again == first  # the store returns the first; the proxy compares
    other, created = await store.accept(make_d("w1", "m1", caller="workspace:b"))
    assert created and other.id != first.id and other.caller == "workspace:b"
    assert await store.find_delivery("w1", "m1", "workspace:a") == first
    assert await store.find_delivery("w1", "m1", "workspace:b") == other
    assert await store.find_delivery("w1", "m1", "caller:c") is None
    assert await store.find_delivery("w1", "m1") == first  # any caller: the oldest
    assert (await store.get_delivery(other.id)).caller == "workspace:b"


async def test_sqlite_migration_3_keeps_deliveries_and_turns_tokens_into_caller_credentials(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of migration 2 (workspace tokens, the old accept key, issue 11's reply
    types) upgraded: rows kept whole (reply_type too) with caller 'legacy', each
    workspace's token hash now its caller credential."""
    from berth.adapters.sql import schema
    from berth.adapters.sql.sqlite import SqliteStore

    path = str(tmp_path / "old.db")
    full = schema.migrations
    with monkeypatch.context() as mp:
        mp.setattr(schema, "migrations", lambda types: full(types)[:2])
        old = SqliteStore(path)
        await old.migrate()

        def seed(c: object) -> None:
            c.execute(  # type: ignore[attr-defined]
                "INSERT INTO workspaces (id, name, runtime, restart_policy, state, token_hash, "
                "created_at, updated_at) VALUES ('w1', 'alpha', 'external', 'never', 'offline', "
                "'hash-of-alpha', 1.0, 1.0)"
            )
            c.execute(  # type: ignore[attr-defined]
                "INSERT INTO deliveries (id, workspace_id, message_id, method, request, status, "
                "reply, reply_type, created_at, updated_at) VALUES ('d1', 'w1', 'm1', "
                "'SendMessage', x'7b7d', 'done', x'7b7d', 'application/a2a+json', 1.0, 1.0)"
            )

        await old._run(seed)
        await old.close()
    store = SqliteStore(path)
    try:
        await store.migrate()
        cred = await store.credential_by_secret("hash-of-alpha")
        assert cred is not None and cred.subject == "workspace:alpha" and cred.role is Role.CALLER
        assert cred.workspace_id == "w1" and cred.active
        d = await store.get_delivery("d1")
        assert d.caller == "legacy" and d.message_id == "m1" and d.fingerprint is None
        assert d.reply == b"{}" and d.reply_type == "application/a2a+json"
        # the new key: another caller's m1 is another delivery; the seq goes on after d1's
        other, created = await store.accept(make_d("w1", "m1", caller="operator"))
        assert created and other.seq > d.seq
        assert (await store.get_workspace("w1")).allowed_callers == []
    finally:
        await store.close()
