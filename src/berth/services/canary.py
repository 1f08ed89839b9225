"""The canary window: both versions serve (the new one a share of new messages) until the
window ends, a decision by hand arrives, or the new version exits; then judge."""

from __future__ import annotations

import asyncio
import time

from berth.domain.deploy import DeployFailed, judge_canary
from berth.domain.restart import RestartRecord
from berth.ports import RestartStore
from berth.services.events import Events
from berth.services.lifecycle import Runner
from berth.services.roster import Roster
from berth.services.routing import Router

__all__ = ["Canary"]

TICK = 1.0  # seconds between saves of the figures into the record


class Canary:
    def __init__(
        self,
        runner: Runner,
        roster: Roster,
        events: Events,
        router: Router,
        records: RestartStore,
    ) -> None:
        self._runner, self._roster, self._events = runner, roster, events
        self._router, self._records = router, records

    async def window(self, ws_id: str, percent: int, seconds: float, r: RestartRecord) -> str:
        """Run the canary; return "promote" or "rollback" (why and figures go into `r`)."""
        ws = await self._roster.get(ws_id)
        peer = ws.peer_copy()
        if peer is None or peer.agent_url is None:
            raise DeployFailed("the new version is gone")
        runs = {ws.run_token_hash: str(ws.version), peer.run_token_hash: str(peer.version)}
        self._router.watch(ws_id, list(runs))
        peer.canary = percent
        await self._runner.update(ws_id, peer=peer, tell=True)
        exited = self._runner.expect_peer_exit(ws_id, peer.version)
        deadline = time.monotonic() + seconds
        try:
            while True:
                figures = {runs[k]: v for k, v in self._router.figures(ws_id).items()}
                old, new = figures[str(ws.version)], figures[str(peer.version)]
                now = self._roster.peek(ws_id)
                by_hand = None if now is None or now.peer is None else now.peer.decision
                if exited.done():
                    result = ("rollback", f"version {peer.version} exited ({exited.result()})")
                elif by_hand is not None:
                    result = (by_hand, "by hand")
                elif time.monotonic() >= deadline:
                    result = judge_canary(old, new)
                else:
                    assert r.versions is not None
                    r.versions["figures"] = figures
                    await self._records.save_restart(r)
                    await self._tick(ws_id, exited, deadline)
                    continue
                break
        finally:
            self._router.unwatch(ws_id)
            self._runner.peer_exited(ws_id, peer.version, None)  # drops the waiter
        assert r.versions is not None
        r.versions["figures"] = figures
        r.versions["decision"] = {"result": result[0], "why": result[1]}
        await self._events.emit(
            "deploy.canary", workspace_id=ws_id, decision=result[0], why=result[1], figures=figures
        )
        return result[0]

    async def _tick(self, ws_id: str, exited: asyncio.Future[int | None], deadline: float) -> None:
        """Wait up to TICK for the window's end, a decision by hand, or the exit."""
        decided = asyncio.ensure_future(
            self._roster.wait_for(
                ws_id,
                lambda w: w is None or w.peer is None or w.peer.decision is not None,
                max(0.0, min(TICK, deadline - time.monotonic())),
            )
        )
        try:
            await asyncio.wait({decided, exited}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        finally:
            decided.cancel()
