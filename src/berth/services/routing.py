"""Which running instance a delivery goes to, and each version's figures during a canary.

Without a canary every delivery goes to the serving version (the workspace record), at the
cost of one attribute check. During a canary (docs/operations.md#canary):
- a continuation goes to the version that owns its task: a `taskId` or `contextId` berth saw
  in a reply of one version goes to that version; an unknown `taskId` is work started before
  the deploy, so it goes to the old (serving) version;
- any other message goes to the new version with the canary's percent, by a hash of its
  messageId (a redelivery goes where the first attempt went).
Ownership is learnt from replies on this replica while the canary runs, and forgotten when
it ends: a continuation whose version is gone goes to the serving one, which shares the
state directory (task store, dedupe) with it.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from typing import Any

from berth.domain.delivery import Delivery, DeliveryStatus, Outcome
from berth.domain.deploy import Role
from berth.domain.workspace import Workspace

__all__ = ["FIGURES", "Router"]

FIGURES = ("messages", "ok", "agent_errors", "crashes", "dead")
MAX_OWNED = 100_000  # task and context ids remembered per canary


class Router:
    def __init__(self) -> None:
        self._figures: dict[str, dict[str | None, Counter[str]]] = {}  # ws -> run -> figures
        self._owners: dict[str, dict[str, str | None]] = {}  # ws -> task/context id -> run

    # routing -------------------------------------------------------------
    def choose(self, ws: Workspace, d: Delivery) -> Workspace:
        """The workspace as the instance `d` goes to sees it (its url, card and run)."""
        peer = ws.peer
        if peer is None or peer.canary is None or peer.role is not Role.NEXT:
            return ws
        if peer.agent_url is None:
            return ws
        canary = ws.as_instance(peer)
        owners = self._owners.get(ws.id, {})
        task_id, context_id = _ids(d.request)
        if task_id is not None:  # a continuation: its owner, else work from before the deploy
            return canary if owners.get(task_id) == peer.run_token_hash else ws
        if context_id is not None and context_id in owners:
            return canary if owners[context_id] == peer.run_token_hash else ws
        share = zlib.crc32(d.message_id.encode()) % 100
        return canary if share < peer.canary else ws

    # figures -------------------------------------------------------------
    def watch(self, ws_id: str, runs: list[str | None]) -> None:
        """Count outcomes per run of this workspace, and learn task owners (a canary starts)."""
        self._figures[ws_id] = {r: Counter({k: 0 for k in FIGURES}) for r in runs}
        self._owners[ws_id] = {}

    def figures(self, ws_id: str) -> dict[str | None, dict[str, int]]:
        return {r: dict(c) for r, c in self._figures.get(ws_id, {}).items()}

    def unwatch(self, ws_id: str) -> dict[str | None, dict[str, int]]:
        out = self.figures(ws_id)
        self._figures.pop(ws_id, None)
        self._owners.pop(ws_id, None)
        return out

    def observe(
        self,
        ws: Workspace,
        d: Delivery,
        outcome: Outcome,
        status: DeliveryStatus,
        reply: bytes | None,
    ) -> None:
        """One settled attempt to the run `ws` describes (a no-op unless a canary watches)."""
        runs = self._figures.get(ws.id)
        if runs is None or ws.run_token_hash not in runs:
            return
        fig = runs[ws.run_token_hash]
        if outcome in (Outcome.TRANSPORT, Outcome.UNREACHED):
            fig["crashes"] += 1
        if status is DeliveryStatus.DEAD:
            fig["dead"] += 1
        if status is not DeliveryStatus.DONE:
            return
        fig["messages"] += 1
        doc = _json(reply)
        if _is_error(doc):
            fig["agent_errors"] += 1
        else:
            fig["ok"] += 1
        owners = self._owners.setdefault(ws.id, {})
        if len(owners) < MAX_OWNED:
            for key in _reply_ids(doc) + [i for i in _ids(d.request) if i is not None]:
                owners.setdefault(key, ws.run_token_hash)


def _json(raw: bytes | None) -> Any:
    if not raw:
        return None
    if raw.lstrip()[:1] != b"{":  # a stream's final event: `data: {...}`
        raw = raw.partition(b"data:")[2] or raw
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _ids(request: bytes) -> tuple[str | None, str | None]:
    """(taskId, contextId) of the message a send carries (both A2A vocabularies)."""
    doc = _json(request)
    params = doc.get("params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        params = doc if isinstance(doc, dict) else {}  # HTTP+JSON: the body is the params
    msg = params.get("message")
    if not isinstance(msg, dict):
        return None, None
    task, ctx = msg.get("taskId"), msg.get("contextId")
    return (task if isinstance(task, str) else None, ctx if isinstance(ctx, str) else None)


def _is_error(doc: Any) -> bool:
    """A JSON-RPC error, or a task that ended failed: the agent's own failure."""
    if not isinstance(doc, dict):
        return True
    if "error" in doc:
        return True
    res = doc.get("result", doc)
    task = res.get("task", res) if isinstance(res, dict) else None
    state = task.get("status", {}).get("state") if isinstance(task, dict) else None
    return state in ("TASK_STATE_FAILED", "failed", "TASK_STATE_REJECTED", "rejected")


def _reply_ids(doc: Any) -> list[str]:
    """The task id and context id a reply names (a Task, a Message, or a stream's event)."""
    res = doc.get("result", doc) if isinstance(doc, dict) else None
    if not isinstance(res, dict):
        return []
    for key in ("task", "message", "statusUpdate", "artifactUpdate"):
        if isinstance(res.get(key), dict):
            res = res[key]
            break
    out = []
    for key in ("id", "taskId", "contextId"):
        v = res.get(key)
        if isinstance(v, str) and not (key == "id" and "messageId" in res):
            out.append(v)
    return out
