"""Workspace states and the one table of moves between them."""

from __future__ import annotations

from enum import Enum

from berth.domain.errors import IllegalTransition


class WorkspaceState(str, Enum):
    PROVISIONING = "provisioning"  # being started; waiting for the agent to register
    ONLINE = "online"  # registered and heartbeating; deliveries flow
    DRAINING = "draining"  # restart in progress: new messages held, in-flight finishing
    STOPPING = "stopping"  # the runtime is being stopped
    OFFLINE = "offline"  # not running, will be started (restart pending / backoff)
    PAUSED = "paused"  # stopped by an operator; messages accepted and held
    FAILED = "failed"  # gave up (crash loop, start failure); messages kept
    REMOVED = "removed"  # deleted; terminal


S = WorkspaceState

_MOVES: dict[WorkspaceState, frozenset[WorkspaceState]] = {
    S.PROVISIONING: frozenset({S.ONLINE, S.OFFLINE, S.FAILED, S.STOPPING, S.DRAINING, S.REMOVED}),
    S.ONLINE: frozenset({S.DRAINING, S.STOPPING, S.OFFLINE, S.FAILED, S.REMOVED}),
    S.DRAINING: frozenset({S.STOPPING, S.ONLINE, S.OFFLINE, S.FAILED, S.REMOVED}),
    S.STOPPING: frozenset({S.OFFLINE, S.PAUSED, S.FAILED, S.REMOVED, S.PROVISIONING}),
    S.OFFLINE: frozenset({S.PROVISIONING, S.FAILED, S.PAUSED, S.REMOVED, S.STOPPING}),
    S.PAUSED: frozenset({S.PROVISIONING, S.REMOVED}),
    S.FAILED: frozenset({S.PROVISIONING, S.PAUSED, S.REMOVED, S.OFFLINE}),
    S.REMOVED: frozenset(),
}

# States in which the dispatcher may forward deliveries to the agent.
DELIVERABLE = frozenset({S.ONLINE})
# States in which the workspace is meant to be running (berth restarts it after a crash).
SHOULD_RUN = frozenset({S.PROVISIONING, S.ONLINE, S.DRAINING, S.STOPPING, S.OFFLINE})
# A restart, pause or crash explains a failed forward: not the message's fault.
PLANNED_INTERRUPTION = frozenset({S.DRAINING, S.STOPPING, S.PAUSED})


def can_move(src: WorkspaceState, dst: WorkspaceState) -> bool:
    return src == dst or dst in _MOVES[src]


def check_move(src: WorkspaceState, dst: WorkspaceState) -> WorkspaceState:
    """Return `dst` if `src -> dst` is allowed; raise IllegalTransition otherwise."""
    if not can_move(src, dst):
        raise IllegalTransition(f"workspace cannot go from {src.value} to {dst.value}")
    return dst
