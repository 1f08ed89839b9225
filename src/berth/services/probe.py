"""Any A2A agent behind berth, unchanged: an agent that neither registers nor heartbeats
(a stock a2a-sdk server, or any A2A server) is found and watched by its card.

Every `period` seconds the prober fetches `<agent origin>/.well-known/agent-card.json`
for each workspace of this replica that is waiting for its agent (`provisioning`, or an
`external` one `offline`) and whose agent URL berth knows (an external workspace's `--url`,
a started process's `http://127.0.0.1:$BERTH_PORT`): a card brings it online, as a
registration would, with the card as its agent card and `capabilities.probed = true`. For
an online probed workspace each answered probe is its heartbeat (it is probed as often as
berth asks agents to beat: services/heartbeats.py), so the registry's
liveness check treats a silent agent exactly as one that stopped heartbeating. An agent
that registers itself (berth's SDK) replaces `capabilities` and is not probed any more.

All requests go through the AgentClient port, the one place agent URLs are reached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from berth.domain.errors import AgentUnreachable
from berth.domain.lifecycle import WorkspaceState
from berth.domain.workspace import Runtime, Workspace
from berth.ports import AgentClient
from berth.services.agent_link import AgentLink
from berth.services.card import with_origin
from berth.services.dispatcher import Dispatcher
from berth.services.events import Events
from berth.services.heartbeats import Heartbeats
from berth.services.lifecycle import Runner
from berth.services.roster import Roster

log = logging.getLogger("berth.probe")
__all__ = ["PROBED", "Prober"]

S = WorkspaceState
PROBED = "probed"  # the capabilities flag of a workspace whose agent berth watches itself
CARD_PATH = "/.well-known/agent-card.json"


class Prober:
    def __init__(
        self,
        roster: Roster,
        client: AgentClient,
        runner: Runner,
        link: AgentLink,
        dispatcher: Dispatcher,
        events: Events,
        heartbeats: Heartbeats,
        *,
        timeout: float = 3.0,
    ) -> None:
        self._roster, self._client, self._runner, self._link = roster, client, runner, link
        self._dispatcher, self._events, self._timeout = dispatcher, events, timeout
        self._beats = heartbeats
        self._foreign: dict[str, str | None] = {}  # warned of once per run

    async def run(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            await self.tick(period)

    async def tick(self, period: float) -> None:
        # an online agent is probed as often as an agent that beats itself would beat
        due = time.time() - (self._beats.interval() - period)
        todo = [w for w in self._roster.all() if self._wanted(w, due)]
        await asyncio.gather(*(self._probe(w) for w in todo), return_exceptions=True)

    def _wanted(self, ws: Workspace, due: float) -> bool:
        if ws.owner not in (None, self._runner.owner) or not ws.agent_url:
            return False
        if ws.state is S.PROVISIONING:
            return True
        if ws.state is S.OFFLINE:
            return ws.runtime is Runtime.EXTERNAL and bool(ws.url)
        return (
            ws.state is S.ONLINE
            and bool(ws.capabilities.get(PROBED))
            and (ws.last_heartbeat or 0.0) <= due
        )

    async def card(self, url: str) -> dict[str, Any] | None:
        """The agent's card, or None when it does not answer with one."""
        try:
            r = await self._client.get(with_origin(CARD_PATH, url), {}, self._timeout)
        except AgentUnreachable:
            return None
        if r.status != 200:
            return None
        try:
            doc = orjson.loads(r.body)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None

    async def _probe(self, ws: Workspace) -> None:
        url = self._link.target(ws)
        if url is None:
            return
        card = await self.card(url)
        if card is None:
            return
        current = self._roster.peek(ws.id)
        if current is None or current.run_token_hash != ws.run_token_hash:
            return  # restarted meanwhile: the next tick probes the new run
        now = time.time()
        try:
            if current.state is S.ONLINE:
                if not current.capabilities.get(PROBED):
                    return
                if card != current.agent_card:
                    await self._runner.update(ws.id, last_heartbeat=now, agent_card=card)
                else:
                    self._beats.beat(ws.id, now)
                self._beats.told(ws.id)
                return
            if not await self._ours(current, url):
                return
            await self._online(current, card, now)
        except Exception:
            log.exception("probe of %s could not record its answer", ws.name)

    async def _ours(self, ws: Workspace, url: str) -> bool:
        """A started agent's card counts unless its provisioner says another program answers
        there (a process agent's port was free when berth chose it, and another program may
        have taken it first; that program must not get the workspace's messages). The
        agent, unable to bind, exits and is restarted as a crash."""
        p = self._runner.provisioner(ws)  # None: an external agent, berth started nothing
        if p is not None and await p.serves(ws, url) is False:
            if self._foreign.get(ws.id) != ws.run_token_hash:
                self._foreign[ws.id] = ws.run_token_hash
                log.warning(
                    "workspace %s: what answers at %s is not its agent process (another "
                    "program holds the port); not online",
                    ws.name,
                    url,
                )
            return False
        return True

    async def _online(self, ws: Workspace, card: dict[str, Any], now: float) -> None:
        if ws.state is S.OFFLINE:  # an external agent back: offline -> provisioning -> online
            ws = await self._runner.move(ws, S.PROVISIONING, only_from=frozenset({S.OFFLINE})) or ws
        moved = await self._runner.move(
            ws,
            S.ONLINE,
            only_from=frozenset({S.PROVISIONING}),
            agent_card=card,
            capabilities={PROBED: True},
            last_heartbeat=now,
        )
        if moved is None:
            return  # it registered itself meanwhile, or it is being stopped
        await self._link.remember(moved)
        await self._events.emit(
            "workspace.registered", workspace_id=ws.id, name=ws.name, url=moved.agent_url
        )
        log.info("workspace %s is online (its agent answered a card probe)", ws.name)
        self._dispatcher.wake(ws.id)
