"""Credentials by role, and who may call whom (issue 10). Pure rules, no I/O.

Three roles, never shared:

* the operator: the admin token (BERTH_ADMIN_TOKEN or <data dir>/admin_token); everything;
* callers: a workspace's caller credential (shown once at its creation; the caller is then
  `workspace:<name>`) or a named caller credential (`caller:<name>`); they may use the A2A
  proxy of the workspaces whose allow-list names them, and nothing else;
* agents: the run credential berth issues for each start of a process or Docker workspace,
  or an external workspace's agent credential (`agent:<name>`); they may register and
  heartbeat for their own workspace, and nothing else.

Secrets are 32 random bytes; only their SHA-256 is stored.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from berth.domain.errors import InvalidInput

__all__ = [
    "ANY_CALLER",
    "OPERATOR",
    "Caller",
    "Credential",
    "Role",
    "hash_secret",
    "new_secret",
    "normalise_callers",
]

OPERATOR = "operator"
ANY_CALLER = "*"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
PREFIX = {"caller": "bwc_", "agent": "bwa_", "run": "bwr_"}


class Role(str, enum.Enum):
    CALLER = "caller"
    AGENT = "agent"


def new_secret(kind: str) -> str:
    return PREFIX[kind] + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who sent an A2A request: `operator`, `workspace:<name>` or `caller:<name>`."""

    subject: str

    @property
    def operator(self) -> bool:
        return self.subject == OPERATOR

    def may_call(self, allowed: list[str]) -> bool:
        return self.operator or ANY_CALLER in allowed or self.subject in allowed


@dataclass
class Credential:
    id: str
    subject: str  # workspace:<ws>, caller:<name> (role caller) or agent:<ws> (role agent)
    role: Role
    secret_hash: str
    created_at: float
    workspace_id: str | None = None  # the workspace it speaks as (caller) or serves (agent)
    rotated_at: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "role": self.role.value,
            "workspace_id": self.workspace_id,
            "created_at": self.created_at,
            "rotated_at": self.rotated_at,
            "revoked_at": self.revoked_at,
            "status": "active" if self.active else "revoked",
        }


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            "name: 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending "
            "with a letter or digit"
        )
    return name


def normalise_callers(value: Any) -> list[str]:
    """An allow-list as given (a list of `*`, a workspace name, `workspace:<name>` or
    `caller:<name>`) in its stored form."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput("callers: a list of strings ('*', a workspace name, caller:<name>)")
    out: list[str] = []
    for v in value:
        if v == ANY_CALLER:
            entry = v
        elif v.startswith(("workspace:", "caller:")):
            kind, _, name = v.partition(":")
            entry = f"{kind}:{check_name(name)}"
        elif v == OPERATOR:
            continue  # the operator may always call
        else:
            entry = f"workspace:{check_name(v)}"
        if entry not in out:
            out.append(entry)
    return out
