"""Restart records: one cycle, its phases with timings, and the drain report."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Phase(str, enum.Enum):
    REQUESTED = "requested"
    DRAINING = "draining"
    SIGNAL = "signal"
    STOPPING = "stopping"
    REQUEUE = "requeue"
    STARTING = "starting"
    CANARY = "canary"  # both versions serve: the new one a share of new messages
    SWITCH = "switch"  # replace mode: new claims go to the new version
    ROLLBACK = "rollback"  # a canary judged (or told) worse: it is drained and stopped
    REPLAY = "replay"
    DONE = "done"
    ROLLED_BACK = "rolled_back"  # a canary that was not promoted: the old version serves
    FAILED = "failed"


class Trigger(str, enum.Enum):
    API = "api"
    POLICY = "policy"  # restart policy after a crash
    RESUME = "resume"
    STARTUP = "startup"
    CONFIG = "config"
    WAKE = "wake"  # a message arrived for a suspended workspace
    DEPLOY = "deploy"  # a new version of the spec (command, image, env)


FINISHED = frozenset({Phase.DONE, Phase.ROLLED_BACK, Phase.FAILED})  # a cycle in these is over


@dataclass
class PhaseTiming:
    phase: Phase
    started_at: float
    ended_at: float | None = None
    detail: str | None = None

    def public(self) -> dict[str, Any]:
        dur = None if self.ended_at is None else round(self.ended_at - self.started_at, 4)
        return {
            "phase": self.phase.value,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "seconds": dur,
            "detail": self.detail,
        }


@dataclass
class RestartRecord:
    id: str
    workspace_id: str
    trigger: Trigger
    reason: str | None
    drain_seconds: float
    phase: Phase = Phase.REQUESTED
    phases: list[PhaseTiming] = field(default_factory=list)
    drain_report: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    mode: str = "stop-first"  # RestartMode
    versions: dict[str, Any] | None = None  # {"from": n, "to": m} of a deploy or replace

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workspace_id": self.workspace_id,
            "trigger": self.trigger.value,
            "reason": self.reason,
            "drain_seconds": self.drain_seconds,
            "phase": self.phase.value,
            "phases": [p.public() for p in self.phases],
            "drain_report": self.drain_report,
            "error": self.error,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "mode": self.mode,
            "versions": self.versions,
            "seconds": None
            if self.finished_at is None
            else round(self.finished_at - self.created_at, 4),
        }
