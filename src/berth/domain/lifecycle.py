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
    SUSPENDED = "suspended"  # stopped after idling; a message to it starts it again
    FAILED = "failed"  # gave up (crash loop, start failure); messages kept
    REMOVED = "removed"  # deleted; terminal


S = WorkspaceState

# Every move the code makes, and only those; `check_move` raises on any other. Why each
# exists (the service that makes it):
#   -> provisioning   a start: the restart cycle's `starting` step (after a stop, a crash,
#                     a failed start, or from online/draining when the runtime had already
#                     died unnoticed)
#   -> online         the agent registered (an external agent back from offline goes
#                     offline -> provisioning -> online)
#   -> draining       a restart, pause, removal or berth's shutdown of a running runtime
#   -> stopping       after the drain
#   -> offline        a crash (policy restart pending), berth's shutdown or start, a resume
#                     (paused -> offline -> provisioning), an external agent gone silent
#   -> paused         an operator's pause, once stopped (or if it was not running)
#   -> suspended      idle for idle_suspend_seconds: drained and stopped; a message wakes
#                     it (suspended -> offline -> provisioning, the restart cycle)
#   -> failed         a crash loop, policy `never`, a failed restart cycle
#   -> removed        deletion (the record is deleted with it)
# A deploy or restart in replace mode moves nothing: the workspace stays online while its
# second instance (`peer`) starts, takes over and the old one stops (services/deploy.py).
_MOVES: dict[WorkspaceState, frozenset[WorkspaceState]] = {
    S.PROVISIONING: frozenset({S.ONLINE, S.DRAINING, S.OFFLINE, S.PAUSED, S.FAILED, S.REMOVED}),
    S.ONLINE: frozenset({S.PROVISIONING, S.DRAINING, S.OFFLINE, S.PAUSED, S.FAILED, S.REMOVED}),
    S.DRAINING: frozenset({S.STOPPING, S.PROVISIONING, S.OFFLINE, S.PAUSED, S.FAILED, S.REMOVED}),
    S.STOPPING: frozenset({S.PROVISIONING, S.OFFLINE, S.PAUSED, S.SUSPENDED, S.FAILED, S.REMOVED}),
    S.OFFLINE: frozenset({S.PROVISIONING, S.DRAINING, S.PAUSED, S.FAILED, S.REMOVED}),
    S.PAUSED: frozenset({S.OFFLINE, S.REMOVED}),
    S.SUSPENDED: frozenset({S.OFFLINE, S.PAUSED, S.REMOVED}),
    S.FAILED: frozenset({S.PROVISIONING, S.PAUSED, S.REMOVED}),
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


def sources(dst: WorkspaceState) -> frozenset[WorkspaceState]:
    """The states a workspace may be in to move to `dst` (staying put is always allowed)."""
    return frozenset(s for s in WorkspaceState if can_move(s, dst))


def check_move(src: WorkspaceState, dst: WorkspaceState) -> WorkspaceState:
    """Return `dst` if `src -> dst` is allowed; raise IllegalTransition otherwise."""
    if not can_move(src, dst):
        raise IllegalTransition(f"workspace cannot go from {src.value} to {dst.value}")
    return dst


def move_guard(
    to: WorkspaceState, only_from: frozenset[WorkspaceState] | None
) -> frozenset[WorkspaceState]:
    """The states a store may move a workspace to `to` from: the caller's condition (any
    state when None) within what the table allows. Stores apply it in the same atomic
    update as the move, then `check_missed_move` tells a lost race from an illegal move."""
    allowed = sources(to)
    return allowed if only_from is None else allowed & only_from


def check_missed_move(
    current: WorkspaceState | None,
    to: WorkspaceState,
    only_from: frozenset[WorkspaceState] | None,
) -> None:
    """After a guarded move matched nothing: raise IllegalTransition if the workspace was
    in a state the caller accepted but the table forbids; return for a lost race (gone,
    or no longer in `only_from`)."""
    if current is not None and (only_from is None or current in only_from):
        check_move(current, to)
