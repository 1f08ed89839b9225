"""Credentials and who may call whom (issue 10): issuing, authenticating, listing,
rotating and revoking credentials, and each workspace's allow-list of callers.

See berth.domain.credentials for the roles. Every check here answers with a domain error
(Unauthorized: no or an unknown credential; Forbidden: a credential of the wrong role or
a caller the workspace does not allow), which the API edge renders."""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any

from berth.domain.credentials import (
    OPERATOR,
    Caller,
    Credential,
    Role,
    check_name,
    hash_secret,
    new_secret,
    normalise_callers,
)
from berth.domain.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from berth.domain.workspace import Runtime, Workspace
from berth.ports import CredentialStore, WorkspaceStore
from berth.services.credential_cache import CHECK_SECONDS, CredentialCache
from berth.services.events import WS_TOPIC, Events
from berth.services.lifecycle import Runner
from berth.services.roster import Roster
from berth.services.url_policy import AgentUrlPolicy

__all__ = ["Access"]


class Access:
    def __init__(
        self,
        creds: CredentialStore,
        workspaces: WorkspaceStore,
        roster: Roster,
        runner: Runner,
        events: Events,
        *,
        admin_token: str,
        url_policy: AgentUrlPolicy | None = None,
        cache_check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.url_policy = url_policy or AgentUrlPolicy([])
        self._creds, self._ws, self._roster, self._runner = creds, workspaces, roster, runner
        self._events = events
        self._admin = admin_token.encode()
        # active credentials by secret hash; every write below empties it (credential_cache)
        self.cache = CredentialCache(creds, check_seconds=cache_check_seconds)

    # issuing -----------------------------------------------------------------
    async def _issue(self, subject: str, role: Role, workspace_id: str | None) -> str:
        secret = new_secret(role.value)
        await self._creds.add_credential(
            Credential(
                id=str(uuid.uuid4()),
                subject=subject,
                role=role,
                secret_hash=hash_secret(secret),
                created_at=time.time(),
                workspace_id=workspace_id,
            )
        )
        return secret

    async def issue_for(self, ws: Workspace) -> dict[str, str]:
        """A new workspace's credentials, shown once: its caller credential (`token`) and,
        for an external agent, the agent credential it registers with (`agent_token`)."""
        out = {"token": await self._issue(f"workspace:{ws.name}", Role.CALLER, ws.id)}
        if ws.runtime is Runtime.EXTERNAL:
            out["agent_token"] = await self._issue(f"agent:{ws.name}", Role.AGENT, ws.id)
        return out

    async def create(self, body: Any) -> dict[str, Any]:
        """A named caller credential (`caller:<name>`), or an external workspace's agent
        credential (`{"agent": "<workspace>"}`) when it has none."""
        if not isinstance(body, dict) or set(body) - {"name", "agent"} or len(body) != 1:
            raise InvalidInput('the body is {"name": "<caller name>"} or {"agent": "<workspace>"}')
        if "agent" in body:
            if not isinstance(body["agent"], str):
                raise InvalidInput("agent: the name of an external workspace")
            ws = await self._roster.get(body["agent"])
            if ws.runtime is not Runtime.EXTERNAL:
                raise InvalidInput(
                    f"workspace {ws.name} is {ws.runtime.value}: its agent gets a run "
                    "credential at each start"
                )
            subject, role, ws_id = f"agent:{ws.name}", Role.AGENT, ws.id
        else:
            subject, role, ws_id = f"caller:{check_name(body['name'])}", Role.CALLER, None
        secret = await self._issue(subject, role, ws_id)
        return {**(await self._creds.get_credential(subject)).public(), "secret": secret}

    async def all(self) -> list[dict[str, Any]]:
        return [c.public() for c in await self._creds.list_credentials()]

    async def rotate(self, ref: str) -> dict[str, Any]:
        """A new secret; the old one is refused from now on. Revoked stays revoked."""
        cred = await self._creds.get_credential(ref)
        if not cred.active:
            raise Conflict(f"credential {cred.subject} is revoked", code="credential_revoked")
        secret = new_secret(cred.role.value)
        cred = await self._creds.update_credential(
            cred.id, secret_hash=hash_secret(secret), rotated_at=time.time()
        )
        await self.cache.settled()  # answered once no replica takes the old secret
        return {**cred.public(), "secret": secret}

    async def revoke(self, ref: str) -> dict[str, Any]:
        cred = await self._creds.get_credential(ref)
        if cred.active:
            cred = await self._creds.update_credential(cred.id, revoked_at=time.time())
        # answered once no replica takes it: also when revoked already (a retry, or another
        # operator while the first revocation waits), which must not answer sooner
        await self.cache.settled()
        return cred.public()

    async def forget(self, ws: Workspace) -> None:
        """A removed workspace's credentials go, and so do the grants naming it."""
        await self._creds.delete_credentials(ws.id)
        gone = f"workspace:{ws.name}"
        for other in self._roster.all():
            if gone in other.allowed_callers:
                await self._set(other, [c for c in other.allowed_callers if c != gone])
        await self.cache.settled()  # last: the grants go at once

    # who may call whom ---------------------------------------------------------
    async def allow(self, ref: str, callers: Any) -> Workspace:
        ws = await self._roster.get(ref)
        allowed = list(ws.allowed_callers)
        for c in normalise_callers(callers):
            if c not in allowed:
                allowed.append(c)
        return await self._set(ws, allowed)

    async def _set(self, ws: Workspace, allowed: list[str]) -> Workspace:
        ws = await self._runner.update(ws.id, allowed_callers=allowed)
        await self._events.signal(WS_TOPIC, workspace_id=ws.id)  # other replicas' rosters
        return ws

    async def deny(self, ref: str, callers: Any) -> Workspace:
        ws = await self._roster.get(ref)
        drop = set(normalise_callers(callers))
        return await self._set(ws, [c for c in ws.allowed_callers if c not in drop])

    # authentication --------------------------------------------------------------
    def is_admin(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._admin)

    async def caller(self, token: str | None) -> Caller:
        """Who calls the A2A proxy: the operator or an active caller credential."""
        if token is None:
            raise Unauthorized(
                "the admin token or a caller credential is required (Authorization: Bearer …)"
            )
        if self.is_admin(token):
            return Caller(OPERATOR)
        cred = await self.cache.get(hash_secret(token))
        if cred is None or not cred.active:
            if await self._ws.workspace_by_run_token(hash_secret(token)) is not None:
                raise Forbidden(
                    "an agent's run credential cannot call workspaces; use a caller credential",
                    code="wrong_role",
                )
            raise Unauthorized("unknown, rotated or revoked credential", code="invalid_token")
        if cred.role is not Role.CALLER:
            raise Forbidden(
                "an agent credential cannot call workspaces; use a caller credential",
                code="wrong_role",
            )
        return Caller(cred.subject)

    def authorize(self, ws: Workspace, caller: Caller) -> None:
        if not caller.may_call(ws.allowed_callers):
            raise Forbidden(
                f"{caller.subject} is not allowed to call workspace {ws.name} "
                f"(berth ws allow {ws.name} --from …)",
                code="caller_not_allowed",
            )

    async def agent(self, token: str | None) -> Workspace:
        """The workspace an agent speaks for: by its current run credential, or an active
        agent credential of an external workspace. Caller credentials are refused."""
        if not token:
            raise Unauthorized("an agent credential is required (Authorization: Bearer …)")
        h = hash_secret(token)
        ws = self._roster.by_token(h)  # a run's heartbeats: no database read
        if ws is not None and h in (ws.run_token_hash, ws.peer_run_token_hash):
            return ws
        # an external agent's credential (every beat of one: read first), else a run token
        # this replica's view does not hold yet (a start elsewhere, moments ago)
        cred = await self.cache.get(h)
        if cred is None or not cred.active:
            # through the roster: a record it was given while this read ran is newer
            ws = await self._roster.read(lambda: self._ws.workspace_by_run_token(h))
            if ws is not None and h in (ws.run_token_hash, ws.peer_run_token_hash):
                return ws
        if cred is not None and cred.active and cred.role is not Role.AGENT:
            raise Forbidden(
                "a caller credential cannot register or heartbeat an agent", code="wrong_role"
            )
        if self.is_admin(token):
            raise Forbidden(
                "the admin token cannot register or heartbeat an agent", code="wrong_role"
            )
        if cred is None or not cred.active or cred.workspace_id is None:
            raise Unauthorized(
                "unknown, outdated or revoked agent credential", code="invalid_token"
            )
        return await self._roster.get(cred.workspace_id)
