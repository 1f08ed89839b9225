"""The small interfaces the services depend on. Every port has an in-memory adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from berth.domain.credentials import Credential
from berth.domain.delivery import Delivery, DeliveryStatus
from berth.domain.errors import AgentUnreachable
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import RestartRecord
from berth.domain.workspace import Workspace

__all__ = [
    "AgentClient",
    "AgentReply",
    "BUS_GAP",
    "AgentUnreachable",
    "Bus",
    "Cache",
    "CredentialStore",
    "Database",
    "DeliveryStore",
    "Locks",
    "Pending",
    "Provisioner",
    "RestartStore",
    "RunInfo",
    "Settle",
    "StreamItem",
    "Store",
    "Subscription",
    "WorkspaceStore",
]


@dataclass(frozen=True)
class Settle:
    """How a claimed delivery ends an attempt (see DeliveryPolicy.judge)."""

    status: DeliveryStatus
    count_attempt: bool = False
    reply: bytes | None = None
    reply_status: int | None = None
    reason: str | None = None
    not_before: float = 0.0
    reply_type: str | None = None
    # the attempt this settles (the delivery's `forwards` when it was claimed): a forward
    # that outlived its lease (requeued, then claimed again by the same replica) must not
    # end the newer attempt. None: any attempt of this owner (operator tools, tests).
    forward: int | None = None


@dataclass(frozen=True)
class Pending:
    """A workspace's pending deliveries: queued, in flight, and the created_at of the
    queue's head (its oldest queued delivery by seq), None when nothing is queued."""

    queued: int
    in_flight: int
    head: float | None


class Database(Protocol):
    """The durable database's own life: schema, readiness, closing."""

    async def migrate(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...  # raises StoreUnavailable when it cannot be reached


class WorkspaceStore(Protocol):
    """Workspace records. A state change goes through `move_workspace` only, which enforces
    the table of `domain.lifecycle` atomically; `update_workspace` refuses `state`."""

    async def create_workspace(self, ws: Workspace) -> None: ...
    async def get_workspace(self, ref: str) -> Workspace: ...
    async def list_workspaces(self) -> list[Workspace]: ...

    # Where the store keeps a version of each row (one that every write of it changes):
    # (the version of every workspace, the workspaces whose version is not the one `seen`
    # gives, each with its version as read), so a replica's refresh reads and decodes only
    # what changed; None where it keeps none (then list_workspaces).
    async def changed_workspaces(
        self, seen: Mapping[str, str]
    ) -> tuple[dict[str, str], list[tuple[Workspace, str]]] | None: ...
    async def update_workspace(self, ws_id: str, **fields: Any) -> Workspace: ...

    # Moves to `to` only from `only_from` (default: any) that the state table allows;
    # None when the workspace is gone or not in `only_from`; IllegalTransition when it is
    # in a state from which the table forbids the move.
    async def move_workspace(
        self,
        ws_id: str,
        to: WorkspaceState,
        *,
        only_from: frozenset[WorkspaceState] | None = None,
        **fields: Any,
    ) -> Workspace | None: ...
    async def delete_workspace(self, ws_id: str) -> None: ...
    # the workspace whose current run credential has this hash (agents of process/Docker)
    async def workspace_by_run_token(self, token_hash: str) -> Workspace | None: ...
    # The last beat of many workspaces in one write (heartbeats are kept in memory and
    # flushed); a workspace gone meanwhile is skipped. Beats need not change the
    # workspace's record nor its version (SQL stores keep them in a table of their own).
    async def record_heartbeats(self, beats: dict[str, float]) -> None: ...
    # the last beat of every workspace that has one: the later of its record's
    # last_heartbeat and the last one recorded (liveness across replicas)
    async def last_heartbeats(self) -> dict[str, float]: ...


class CredentialStore(Protocol):
    """Caller and agent credentials (hashes only). A subject is unique; revoked ones stay
    listed until their workspace is removed."""

    async def add_credential(self, cred: Credential) -> None: ...  # Conflict if the subject exists
    async def credential_by_secret(self, secret_hash: str) -> Credential | None: ...
    async def get_credential(self, ref: str) -> Credential: ...  # by id or subject; NotFound
    async def list_credentials(self) -> list[Credential]: ...
    # secret_hash, rotated_at, revoked_at only; NotFound when it is gone
    async def update_credential(self, cred_id: str, **fields: Any) -> Credential: ...
    async def delete_credentials(self, workspace_id: str) -> None: ...
    # A number every write of a credential changes, whoever made it (a count kept by the
    # database); None where this process is the store's only writer (SQLite, memory): then
    # its own writes are all the changes there are (services.credential_cache).
    async def credentials_version(self) -> int | None: ...


class DeliveryStore(Protocol):
    """The delivery log's rows. Only `services.delivery_log.DeliveryLog` writes through it;
    every conditional write takes its allowed source statuses from `domain.delivery`."""

    async def accept(self, d: Delivery) -> tuple[Delivery, bool]: ...
    async def get_delivery(self, delivery_id: str) -> Delivery: ...
    # The accept key is (workspace, caller, messageId): a messageId of another caller is
    # another delivery. `find_delivery` without a caller returns the oldest of any caller.
    async def find_delivery(
        self, workspace_id: str, message_id: str, caller: str | None = None
    ) -> Delivery | None: ...
    async def list_deliveries(
        self,
        workspace_id: str,
        status: DeliveryStatus | None = None,
        limit: int = 100,
    ) -> list[Delivery]: ...
    # (queued, in flight) of one workspace: through the partial indexes only, so it stays
    # cheap however many finished deliveries the log holds (status pages, /metrics)
    async def pending(self, workspace_id: str) -> tuple[int, int]: ...
    # created_at of the queue's head (its oldest queued delivery by seq), or None: the age of
    # a queue for admission control, through the partial index of queued rows
    async def queue_head(self, workspace_id: str) -> float | None: ...
    # `pending` and `queue_head` of every workspace with a pending delivery, in one grouped
    # read over the same partial indexes (lists and /metrics of many workspaces)
    async def backlogs(self) -> dict[str, Pending]: ...

    async def claim(
        self,
        workspace_id: str,
        *,
        capacity: int | None,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> list[Delivery]: ...
    # accept, then (when it created the delivery) claim as `claim` does, in one transaction
    # where the backend can: a message to an idle workspace is accepted and claimed in one
    # commit. Returns (the delivery as stored, created, everything claimed).
    async def accept_claim(
        self,
        d: Delivery,
        *,
        capacity: int | None,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> tuple[Delivery, bool, list[Delivery]]: ...
    async def renew(self, owner: str, ids: list[str], lease_until: float) -> int: ...
    async def settle(
        self, delivery_id: str, owner: str, how: Settle, now: float
    ) -> Delivery | None: ...
    async def requeue_in_flight(self, workspace_id: str | None = None) -> list[str]: ...
    # every delivery in flight under `owner`'s lease back to the queue (attempts unchanged):
    # a replica that stops gives its leases back rather than let them run out
    async def release_leases(self, owner: str) -> list[Delivery]: ...
    async def requeue_expired(self, now: float) -> list[Delivery]: ...
    # the lease of a delivery in flight under `from_owner` moved to `to_owner` (the fast
    # lane hands an attempt it cannot finish to Python); None when `from_owner` does not
    # hold it (any more)
    async def take_lease(
        self, delivery_id: str, from_owner: str, to_owner: str
    ) -> Delivery | None: ...
    # ids of the workspace's deliveries in flight under `owner`'s lease, oldest first (what
    # the fast lane forwards to it: a restart's drain waits for them)
    async def leased(self, workspace_id: str, owner: str) -> list[str]: ...
    # A final status for one delivery / all of a workspace's, from `only_from`; None / []
    # when nothing matched.
    async def finish(
        self,
        delivery_id: str,
        to: DeliveryStatus,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> Delivery | None: ...
    async def finish_all(
        self,
        workspace_id: str,
        to: DeliveryStatus,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> list[Delivery]: ...
    # Back to the end of the queue (a new sequence number, attempts 0), from `only_from`.
    async def requeue(
        self,
        delivery_id: str,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> Delivery | None: ...
    async def expire_due(self, now: float) -> list[Delivery]: ...
    async def prune_finished(self, before: float) -> int: ...


class RestartStore(Protocol):
    """Restart records: one per cycle, saved at every phase."""

    async def save_restart(self, r: RestartRecord) -> None: ...
    async def get_restart(self, workspace_id: str, restart_id: str) -> RestartRecord: ...
    async def list_restarts(self, workspace_id: str, limit: int = 50) -> list[RestartRecord]: ...
    async def active_restart(self, workspace_id: str) -> RestartRecord | None: ...


class Store(Database, WorkspaceStore, CredentialStore, DeliveryStore, RestartStore, Protocol):
    """What one database adapter implements (memory, SQLite, PostgreSQL). Services take
    the narrow port they use, never this."""


class Cache(Protocol):
    """A small shared key-value cache (agent URLs)."""

    async def get(self, key: str) -> str | None: ...
    async def set(self, key: str, value: str, ttl: float | None = None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...


class Locks(Protocol):
    """Named leases shared by every replica (one restart per workspace)."""

    async def acquire(self, key: str, ttl: float) -> str | None: ...
    async def refresh(self, key: str, token: str, ttl: float) -> bool: ...
    async def release(self, key: str, token: str) -> None: ...
    async def close(self) -> None: ...


class Subscription(Protocol):
    def __aiter__(self) -> Subscription: ...
    async def __anext__(self) -> tuple[str, dict[str, Any]]: ...
    async def aclose(self) -> None: ...


# The topic a bus delivers to this replica's own subscribers (payload {}) when its
# connection came back after a loss: what other replicas published meanwhile was lost.
BUS_GAP = "bus.gap"


class Bus(Protocol):
    """Fan-out of small JSON messages to every replica (wake-ups and events). After a lost
    connection comes back, subscribers of BUS_GAP hear of it (an in-process bus has none).

    `subscribe` registers before it returns; topics ending in '*' match by prefix. Call
    `start` once before relying on that across replicas: it waits until the bus is connected
    (a no-op in one process).
    """

    async def start(self) -> None: ...
    async def publish(self, topic: str, payload: dict[str, Any]) -> None: ...
    def subscribe(self, *topics: str) -> Subscription: ...
    async def close(self) -> None: ...


@dataclass
class RunInfo:
    """Where a started workspace can be found."""

    url: str | None = None  # where berth reaches the agent, if known before it registers
    pid: int | None = None
    container_id: str | None = None
    state_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# (workspace id, exit code, version of the instance that exited; None: the serving one)
ExitCallback = Callable[[str, "int | None", "int | None"], None]


class Provisioner(Protocol):
    """Runs workspaces of one runtime. `identity` is the BERTH_* environment berth gives an agent
    (docs/sdk.md)."""

    runtime: str

    async def start(self, ws: Workspace, identity: dict[str, str]) -> RunInfo: ...
    async def stop(self, ws: Workspace, grace: float) -> None: ...
    async def is_running(self, ws: Workspace) -> bool: ...
    # is what answers at `url` this workspace's agent? None: cannot tell (the card counts)
    async def serves(self, ws: Workspace, url: str) -> bool | None: ...
    async def cleanup_orphans(self, known: dict[str, Workspace]) -> list[str]: ...
    async def logs(self, ws: Workspace, tail: int = 200) -> str: ...
    async def remove_state(self, ws: Workspace) -> bool: ...  # its BERTH_STATE_DIR, on removal
    def on_exit(self, callback: ExitCallback) -> None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class AgentReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names


@dataclass(frozen=True)
class StreamItem:
    """One item of an agent's stream: an SSE event's data (`kind` "event"), or the agent's
    plain answer instead of a stream (`kind` "reply", with its HTTP status and type)."""

    kind: str
    data: bytes
    status: int = 200
    content_type: str = "application/json"
    event: str | None = None  # the SSE event name, when the agent gave one


class AgentClient(Protocol):
    """HTTP to agents. `stream` yields an "event" item per SSE event, or one "reply" item
    when the agent answered without a stream; a broken stream raises AgentUnreachable.
    `request` is any method (the HTTP+JSON binding's GET and DELETE)."""

    def stream(
        self,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
        *,
        method: str = "POST",
    ) -> AsyncIterator[StreamItem]: ...

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
    ) -> AgentReply: ...

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
    ) -> AgentReply: ...
    async def get(self, url: str, headers: dict[str, str], timeout: float) -> AgentReply: ...
    async def close(self) -> None: ...
