"""Settings: the one place that reads the environment. Every option is also `BERTH_<NAME>`."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["ClientSettings", "Settings", "env_name"]


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = ".berth"
    database_url: str | None = None  # sqlite:///path or postgresql://…; default: SQLite in data_dir
    redis_url: str | None = None
    redis_prefix: str = (
        "berth:"  # keys and channels; one prefix per berth deployment sharing a Redis
    )
    admin_token: str | None = None
    public_url: str | None = None  # how agents reach berth; default http://<host>:<port>
    replica_id: str | None = None
    sqlite_synchronous: str = "FULL"  # NORMAL: survives a crash of berth, not of the OS
    max_body_bytes: int = 1024 * 1024
    default_wait_seconds: float = 300.0
    forward_timeout: float = 600.0
    stream_keep_alive: float = 10.0
    lease_seconds: float = 30.0
    # agents beat every heartbeat_seconds, or less often when more workspaces than
    # heartbeat_rate beats per second can cover (silent after heartbeat_timeout, or three
    # of their intervals if longer): docs/operations.md
    heartbeat_seconds: float = 2.0
    heartbeat_timeout: float = 10.0
    heartbeat_rate: float = 50.0
    start_timeout: float = 30.0
    stop_grace_seconds: float = 10.0
    # berth stopping: how long forwards still running may finish before they are cut and
    # their deliveries go back to the queue (docs/operations.md)
    shutdown_grace_seconds: float = 10.0
    max_attempts: int = 3
    # the first retry of a failed forward waits this long, doubling (capped at 30 s): a
    # network blip of a few seconds must not use up max_attempts (bench/chaos found 0.2 s did)
    retry_backoff_seconds: float = 1.0
    # admission control: a workspace refuses new messages (429) while this many are queued,
    # or while its oldest queued message has waited this long (0: no age limit); per
    # workspace: max_queue / max_queue_age in its spec
    max_queue: int = 10_000
    max_queue_age: float = 3600.0
    crash_loop_limit: int = 5
    crash_loop_window: float = 120.0
    retention_hours: float = 24.0
    housekeeping_seconds: float = 60.0  # how often retention pruning and orphan cleanup run
    agent_client: str = "aiohttp"  # outbound HTTP to agents: aiohttp (measured faster) or httpx
    docker_network: str = "berth"
    # process agents, when berth runs as root: run as this user (made if missing);
    # "inherit" runs them as berth's own user (root), which docs/security.md warns against
    agent_user: str = "berth-agent"
    # where process agents' folders live; default <data dir>/workspaces, or, when they run
    # as agent_user, <data dir>-agents next to it (the data dir itself stays 0700)
    agent_dir: str = ""
    # CIDRs agent URLs may point into besides loopback, comma-separated (docs/security.md)
    agent_networks: str = ""
    metrics_token: str | None = None  # set: /metrics needs it (or the admin token)
    metrics_address: str = ""  # HOST:PORT: /metrics is served there (and not on berth's port)
    openapi: str = "open"  # /openapi.json: open, admin (the admin token) or off
    in_docker: bool | None = None  # None: detect from /.dockerenv
    demo: bool = False
    log_level: str = "info"
    log_format: str = "text"  # text or json (one JSON object per line)
    # a compiled front serves plain sends on berth's port (SQLite only; docs/fast-lane.md):
    # auto, where it builds and the store is SQLite; on (the same, and a warning when it
    # cannot); off
    fast_lane: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fast_lane not in ("auto", "on", "off"):
            raise ValueError(f"BERTH_FAST_LANE: auto, on or off, not {self.fast_lane!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        return cls(**_read(cls, environ, overrides))

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'berth.db'}"

    @property
    def advertised_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def instance(self) -> str:
        """Stable id of this data directory: marks the agent processes this berth started."""
        return hashlib.sha256(str(self.data_path).encode()).hexdigest()[:16]

    @property
    def replica(self) -> str:
        return self.replica_id or f"{socket.gethostname()}-{self.instance[:8]}"

    def running_in_docker(self) -> bool:
        if self.in_docker is not None:
            return self.in_docker
        return os.path.exists("/.dockerenv")


@dataclass
class ClientSettings:
    """What the `berth` CLI reads from the environment: which server, and the operator's token
    (BERTH_ADMIN_TOKEN, else `<data_dir>/admin_token`)."""

    server: str = "http://127.0.0.1:8080"
    admin_token: str | None = None
    data_dir: str = ".berth"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientSettings:
        return cls(**_read(cls, environ, overrides))

    @property
    def token_file(self) -> Path:
        return Path(self.data_dir).expanduser() / "admin_token"


def env_name(name: str) -> str:
    """The environment variable of a setting: `log_level` -> `BERTH_LOG_LEVEL`."""
    return f"BERTH_{name.upper()}"


def _read(cls: Any, environ: Mapping[str, str] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    kw: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "extra":
            continue
        raw = env.get(env_name(f.name))
        if raw is not None and raw != "":
            kw[f.name] = _coerce(f.type, raw)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return kw


def _coerce(type_name: Any, raw: str) -> Any:
    t = str(type_name)
    if "bool" in t:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if t.startswith("int"):
        return int(raw)
    if t.startswith("float"):
        return float(raw)
    return raw
