"""The history of a chaos run: what every caller was told, and every fault injected.

A history is a list of records kept in memory and appended, one JSON object a line, to
`history.jsonl` as they happen, so a run that dies still leaves what it saw. The checker
(`checker.py`) reads it together with the agents' execution logs.

Caller records (`"type": "call"`), one per attempt of one message (a retry with the same
messageId is a new attempt of the same message):

    {"type": "call", "mid", "ws", "op", "text", "attempt", "t0", "t1", "outcome", ...}

`outcome` is what the caller was told:

- `done`: the agent's reply (`reply` holds its text), on the open request or stream;
- `accepted`: the message is in the log (202 with a delivery id, or a stream that opened)
  but the final answer did not come on this attempt;
- `gave_up`: berth answered that it ended the message (`status` dead, expired or canceled);
- `refused`: berth answered that it did not accept it (e.g. 503 store_unavailable);
- `error`: any other definite answer (a JSON-RPC error, an unexpected HTTP status);
- `unknown`: no answer (connection refused or reset, timeout): it may or may not have
  been accepted — the Jepsen "info" outcome.

Fault records (`"type": "fault"`): `{"kind", "target", "t0", "t1", "ok", "detail"}`.
The final read (`"type": "final"`), after the faults stop: per message, the delivery as
`GET /v1/deliveries/{id}` shows it (`status`, `attempts`, `forwards`, `reason`, `reply`),
or `null` when berth has no such delivery.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["FINAL_STATUSES", "History", "OUTCOMES", "load"]

OUTCOMES = ("done", "accepted", "gave_up", "refused", "error", "unknown")
FINAL_STATUSES = ("done", "dead", "canceled", "expired")


class History:
    """Records in memory, mirrored line by line to a file (if given)."""

    def __init__(self, path: Path | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._file = open(path, "a", buffering=1) if path is not None else None  # noqa: SIM115

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.records.append(record)
            if self._file is not None:
                self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        return record

    def call(self, **fields: Any) -> dict[str, Any]:
        assert fields.get("outcome") in OUTCOMES, fields
        return self.add({"type": "call", **fields})

    def fault(
        self, kind: str, target: str, t0: float, ok: bool = True, detail: str = ""
    ) -> dict[str, Any]:
        return self.add(
            {
                "type": "fault",
                "kind": kind,
                "target": target,
                "t0": t0,
                "t1": time.time(),
                "ok": ok,
                "detail": detail,
            }
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def load(path: Path) -> list[dict[str, Any]]:
    """The records of a history file (a torn last line, from a killed run, is skipped)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
