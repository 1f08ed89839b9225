"""Versions of a workspace: the second running instance during a deploy, and what a deploy
may change (the spec's command, image, env and restart mode)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from berth.domain.errors import InvalidInput, StartFailed

__all__ = [
    "CANARY_TOLERANCE",
    "DeployFailed",
    "INSTANCE_FIELDS",
    "Instance",
    "RestartMode",
    "Role",
    "failure_rate",
    "judge_canary",
    "validate_change",
]


class DeployFailed(StartFailed):
    """A deploy did not complete; the workspace keeps serving its version (no state move)."""


class RestartMode(str, enum.Enum):
    STOP_FIRST = "stop-first"  # drain, stop, start: the agent never runs twice at once
    REPLACE = "replace"  # start the new version beside the old, switch, then drain the old


class Role(str, enum.Enum):
    NEXT = "next"  # started by a deploy, not serving yet
    OLD = "old"  # replaced: finishing its in-flight work, then stopped


# What one running instance of a workspace has of its own, besides its version and run
# credential: the workspace record holds them for the serving version, an Instance for
# the other (Instance.record, Workspace.instance)
INSTANCE_FIELDS = ("command", "image", "env", "agent_url", "agent_card", "capabilities", "pid")


@dataclass
class Instance:
    """A running instance that is not the one the workspace record describes (at most one).

    The workspace record is always the serving version (its url, pid, run token, spec); a
    deploy adds the next version here, and at the switch the two swap places."""

    version: int
    role: Role
    run_token_hash: str
    command: list[str] | None = None
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    agent_url: str | None = None
    agent_card: dict[str, Any] | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    started_at: float = 0.0
    registered_at: float | None = None
    canary: int | None = None  # percent of new messages it takes while a canary runs
    decision: str | None = None  # "promote" or "rollback", by hand, during a canary

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "role": self.role.value}

    def record(self) -> dict[str, Any]:
        """The workspace record's fields as this instance has them (to see the workspace
        as this instance, or to make it the serving one)."""
        own = {f: getattr(self, f) for f in INSTANCE_FIELDS}
        return {"version": self.version, "run_token_hash": self.run_token_hash, **own}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(**{**d, "role": Role(d["role"])})

    def public(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "role": self.role.value,
            "url": self.agent_url,
            "command": self.command,
            "image": self.image,
            "env": sorted(self.env),
            "pid": self.pid,
            "started_at": self.started_at,
            "registered_at": self.registered_at,
            "canary": self.canary,
        }


CANARY_TOLERANCE = 0.1  # the new version may fail this much more often (absolute) and pass
CANARY_SECONDS = 60.0  # the default window


def failure_rate(fig: dict[str, int]) -> float:
    """Failures (agent errors, crashes, dead letters) per message tried."""
    failures = fig.get("agent_errors", 0) + fig.get("crashes", 0) + fig.get("dead", 0)
    tried = fig.get("messages", 0) + fig.get("crashes", 0)
    return failures / tried if tried else 0.0


def judge_canary(
    old: dict[str, int], new: dict[str, int], tolerance: float = CANARY_TOLERANCE
) -> tuple[str, str]:
    """("promote" | "rollback", why) from both versions' figures at the window's end. A
    canary that saw no message is promoted: nothing says it is worse."""
    ro, rn = failure_rate(old), failure_rate(new)
    why = f"failure rate {rn:.0%} (new) vs {ro:.0%} (old), tolerance {tolerance:.0%}"
    return ("rollback" if rn > ro + tolerance else "promote"), why


_CHANGE_KEYS = {
    "command",
    "image",
    "env",
    "restart_mode",
    "mode",
    "reason",
    "drain_seconds",
    "canary",
    "canary_seconds",
}


def validate_change(body: Any, runtime: str, env: dict[str, str]) -> dict[str, Any]:
    """Check a deploy request; return the spec fields it changes (env merged into `env`)
    plus `mode`, `reason` and `drain_seconds` when given. Raise InvalidInput otherwise."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = set(body) - _CHANGE_KEYS
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    command = body.get("command")
    if command is not None:
        if runtime != "process":
            raise InvalidInput("command: only a process workspace's command can be deployed")
        if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
            raise InvalidInput("command: a non-empty list of strings")
        out["command"] = command
    image = body.get("image")
    if image is not None:
        if runtime != "docker":
            raise InvalidInput("image: only a docker workspace's image can be deployed")
        if not (isinstance(image, str) and image):
            raise InvalidInput("image: a non-empty string")
        out["image"] = image
    new_env = body.get("env")
    if new_env is not None:
        if not isinstance(new_env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in new_env.items()
        ):
            raise InvalidInput("env: an object of string values")
        if any(k.startswith("BERTH_") and k not in USER_BERTH_ENV for k in new_env):
            raise InvalidInput("env: BERTH_* variables are set by berth")
        out["env"] = {**env, **new_env}
    for key in ("restart_mode", "mode"):
        if body.get(key) is not None:
            try:
                out[key] = RestartMode(body[key])
            except ValueError:
                raise InvalidInput(f"{key}: one of stop-first, replace") from None
    reason = body.get("reason")
    if reason is not None:
        if not isinstance(reason, str) or len(reason) > 500:
            raise InvalidInput("reason: a string of at most 500 characters")
        out["reason"] = reason
    canary = body.get("canary")
    if canary is not None:
        if not isinstance(canary, int) or isinstance(canary, bool) or not 1 <= canary <= 99:
            raise InvalidInput("canary: the percent of new messages, an integer from 1 to 99")
        if out.get("mode") is RestartMode.STOP_FIRST:
            raise InvalidInput("canary: runs two versions side by side; not with mode stop-first")
        out["canary"] = canary
    window = body.get("canary_seconds")
    if window is not None:
        if canary is None:
            raise InvalidInput("canary_seconds: only with canary")
        if (
            not isinstance(window, (int, float))
            or isinstance(window, bool)
            or not 0 < window <= 86400
        ):
            raise InvalidInput("canary_seconds: seconds from 0 (exclusive) to 86400")
        out["canary_seconds"] = float(window)
    ds = body.get("drain_seconds")
    if ds is not None:
        if not isinstance(ds, (int, float)) or isinstance(ds, bool) or not 0 <= ds <= 3600:
            raise InvalidInput("drain_seconds: a number from 0 to 3600")
        out["drain_seconds"] = float(ds)
    return out


USER_BERTH_ENV = {"BERTH_DRAIN_SECONDS", "BERTH_MAX_CONCURRENCY"}
