"""Workspaces: what a user asks for (spec) and what berth knows of them (record)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from typing import Any

from berth.domain.credentials import normalise_callers
from berth.domain.delivery import QueueLimit
from berth.domain.deploy import INSTANCE_FIELDS, USER_BERTH_ENV, Instance, RestartMode, Role
from berth.domain.errors import InvalidInput
from berth.domain.lifecycle import WorkspaceState
from berth.wire import container_name


class Runtime(str, enum.Enum):
    PROCESS = "process"
    DOCKER = "docker"
    EXTERNAL = "external"


class CardAccess(str, enum.Enum):
    """Who may read a workspace's agent card: anyone (`public`) or callers with a token."""

    PUBLIC = "public"
    CALLERS = "callers"


class RestartPolicy(str, enum.Enum):
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    NEVER = "never"


NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass
class Workspace:
    id: str
    name: str
    runtime: Runtime
    command: list[str] | None = None
    image: str | None = None
    url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    max_concurrency: int = 1
    drain_seconds: float = 30.0
    restart_policy: RestartPolicy = RestartPolicy.ON_FAILURE
    limits: dict[str, Any] = field(default_factory=dict)
    state: WorkspaceState = WorkspaceState.PROVISIONING
    token_hash: str = ""
    run_token_hash: str | None = None
    agent_url: str | None = None
    agent_card: dict[str, Any] | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)
    last_heartbeat: float | None = None
    active_tasks: int = 0
    restart_count: int = 0
    crash_count: int = 0
    pid: int | None = None
    state_dir: str | None = None
    owner: str | None = None
    last_error: str | None = None
    allowed_callers: list[str] = field(default_factory=list)  # besides the operator
    created_at: float = 0.0
    updated_at: float = 0.0
    card_access: str = "callers"  # CardAccess: who may read the agent card without a token
    version: int = 1  # of the serving instance, which this record describes
    peer: Instance | None = None  # the other running instance during a deploy
    peer_run_token_hash: str | None = None  # the peer's run token (kept beside it, indexed)

    def peer_copy(self) -> Instance | None:
        """The deploy's other instance as a copy, to change and then write: the roster's
        record changes by a write only (a failed write must leave it as it was)."""
        return None if self.peer is None else replace(self.peer)

    def as_instance(self, inst: Instance) -> Workspace:
        """This workspace as its other instance `inst` sees it (to start, reach, signal or
        stop it)."""
        return replace(self, **inst.record(), peer=None)

    def instance(self, role: Role) -> Instance:
        """The serving version as an Instance: the inverse of `as_instance` (at a switch,
        the serving version becomes the peer)."""
        own = {f: getattr(self, f) for f in INSTANCE_FIELDS}
        return Instance(self.version, role, self.run_token_hash or "", **own)

    @property
    def restart_mode(self) -> RestartMode:
        """How a restart or deploy runs unless it says otherwise (the spec's default)."""
        return RestartMode(self.limits.get("restart_mode", RestartMode.STOP_FIRST.value))

    @property
    def native_session(self) -> bool:
        return bool(self.capabilities.get("native_session"))

    @property
    def idle_suspend_seconds(self) -> float | None:
        """Suspend after this long without messages (None: never)."""
        v = self.limits.get("idle_suspend_seconds")
        return None if v is None else float(v)

    def queue_limit(self, default: QueueLimit) -> QueueLimit:
        """This workspace's admission limits: its own, else the server's."""
        return QueueLimit(
            int(self.limits.get("max_queue", default.depth)),
            float(self.limits.get("max_queue_age", default.age)),
        )

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def public(
        self,
        queue_depth: int | None = None,
        in_flight: int | None = None,
        queue_age: float | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "runtime": self.runtime.value,
            "status": self.state.value,
            "url": self.agent_url,
            "command": self.command,
            "image": self.image,
            "env": sorted(self.env),
            "max_concurrency": self.max_concurrency,
            "drain_seconds": self.drain_seconds,
            "restart_policy": self.restart_policy.value,
            "card": self.card_access,
            "active_tasks": self.active_tasks,
            "capabilities": self.capabilities,
            "last_heartbeat": self.last_heartbeat,
            "restart_count": self.restart_count,
            "crash_count": self.crash_count,
            "last_error": self.last_error,
            "allowed_callers": self.allowed_callers,
            "created_at": self.created_at,
            "version": self.version,
            "restart_mode": self.restart_mode.value,
            "peer": None if self.peer is None else self.peer.public(),
        }
        if queue_depth is not None:
            out["queue_depth"] = queue_depth
        if in_flight is not None:
            out["in_flight"] = in_flight
        if queue_depth is not None:  # seconds the oldest queued message has waited
            out["queue_age_seconds"] = None if queue_age is None else round(queue_age, 3)
        if self.idle_suspend_seconds is not None:
            out["idle_suspend_seconds"] = self.idle_suspend_seconds
        if self.limits.get("max_queue") is not None:
            out["max_queue"] = self.limits["max_queue"]
        if self.limits.get("max_queue_age") is not None:
            out["max_queue_age"] = self.limits["max_queue_age"]
        if self.runtime is not Runtime.EXTERNAL:  # the replica that runs it
            out["owner"] = self.owner
        if self.runtime is Runtime.PROCESS:
            out["pid"] = self.pid
            out["state_dir"] = self.state_dir
        if self.runtime is Runtime.DOCKER:
            out["container"] = container_name(self.id, self.version)
            out["state_dir"] = self.state_dir
        return out


def validate_spec(body: dict[str, Any]) -> dict[str, Any]:
    """Check a create request; return normalised fields or raise InvalidInput."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(
            "name: 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
        )
    try:
        runtime = Runtime(body.get("runtime", "process"))
    except ValueError:
        raise InvalidInput("runtime: one of process, docker, external") from None
    command = body.get("command")
    if runtime is Runtime.PROCESS:
        if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
            raise InvalidInput(
                "command: a non-empty list of strings is required for runtime process"
            )
    elif command is not None and not (
        isinstance(command, list) and all(isinstance(c, str) for c in command)
    ):
        raise InvalidInput("command: a list of strings")
    image = body.get("image")
    if runtime is Runtime.DOCKER and not (isinstance(image, str) and image):
        raise InvalidInput("image: required for runtime docker")
    url = body.get("url")
    if (
        runtime is Runtime.EXTERNAL
        and url is not None
        and not (isinstance(url, str) and url.startswith(("http://", "https://")))
    ):
        raise InvalidInput("url: an http(s) URL")
    env = body.get("env", {}) or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise InvalidInput("env: an object of string values")
    if any(k.startswith("BERTH_") and k not in USER_BERTH_ENV for k in env):
        raise InvalidInput("env: BERTH_* variables are set by berth")
    mc = body.get("max_concurrency", 1)
    if not isinstance(mc, int) or isinstance(mc, bool) or not 1 <= mc <= 1000:
        raise InvalidInput("max_concurrency: an integer from 1 to 1000")
    ds = body.get("drain_seconds", 30)
    if not isinstance(ds, (int, float)) or isinstance(ds, bool) or not 0 <= ds <= 3600:
        raise InvalidInput("drain_seconds: a number from 0 to 3600")
    try:
        policy = RestartPolicy(body.get("restart_policy", "on-failure"))
    except ValueError:
        raise InvalidInput("restart_policy: one of on-failure, always, never") from None
    limits = {k: body[k] for k in ("memory", "cpus") if body.get(k) is not None}
    try:
        card = CardAccess(body.get("card", "callers")).value
    except ValueError:
        raise InvalidInput("card: one of public, callers") from None
    mq = body.get("max_queue")
    if mq is not None:
        if not isinstance(mq, int) or isinstance(mq, bool) or not 1 <= mq <= 10_000_000:
            raise InvalidInput("max_queue: an integer from 1 to 10000000")
        limits["max_queue"] = mq
    idle = body.get("idle_suspend_seconds")
    if idle is not None:
        if (
            not isinstance(idle, (int, float))
            or isinstance(idle, bool)
            or not 0 < idle <= 30 * 86400
        ):
            raise InvalidInput("idle_suspend_seconds: seconds from 0 (exclusive) to 2592000")
        if runtime is Runtime.EXTERNAL:
            raise InvalidInput("idle_suspend_seconds: berth can only suspend what it runs")
        limits["idle_suspend_seconds"] = float(idle)
    mode = body.get("restart_mode")
    if mode is not None:
        try:
            limits["restart_mode"] = RestartMode(mode).value
        except ValueError:
            raise InvalidInput("restart_mode: one of stop-first, replace") from None
        if mode == RestartMode.REPLACE.value and runtime is Runtime.EXTERNAL:
            raise InvalidInput("restart_mode: replace needs a runtime berth runs (process, docker)")
    mqa = body.get("max_queue_age")
    if mqa is not None:
        if not isinstance(mqa, (int, float)) or isinstance(mqa, bool) or not 0 <= mqa <= 30 * 86400:
            raise InvalidInput("max_queue_age: seconds from 0 (no limit) to 2592000")
        limits["max_queue_age"] = float(mqa)
    allowed = normalise_callers(body.get("allowed_callers") or [])
    unknown = set(body) - _SPEC_KEYS
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    return {
        "name": name,
        "runtime": runtime,
        "command": command,
        "image": image,
        "url": url,
        "env": env,
        "max_concurrency": mc,
        "drain_seconds": float(ds),
        "restart_policy": policy,
        "limits": limits,
        "card_access": card,
        "allowed_callers": allowed,
    }


_SPEC_KEYS = {
    "name",
    "runtime",
    "command",
    "image",
    "url",
    "env",
    "max_concurrency",
    "drain_seconds",
    "restart_policy",
    "memory",
    "cpus",
    "card",
    "max_queue",
    "max_queue_age",
    "idle_suspend_seconds",
    "allowed_callers",
    "restart_mode",
}
