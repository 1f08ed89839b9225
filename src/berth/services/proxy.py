"""The A2A proxy: sends are accepted into the delivery log before anything else and
answered when the agent's reply is in; other methods pass through, held while the
workspace restarts. A request berth cannot take raises a `BerthError` (RpcInvalid for
the envelope), which the API edge renders (`berth.api.errors`)."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from berth.domain.credentials import OPERATOR
from berth.domain.delivery import Delivery, DeliveryStatus, QueueLimit
from berth.domain.errors import (
    Conflict,
    MessageIdReused,
    NotFound,
    RpcInvalid,
    StoreUnavailable,
)
from berth.domain.ids import time_ordered_id
from berth.domain.workspace import Workspace
from berth.ports import AgentClient, Bus, Subscription
from berth.services.agent_link import AgentLink
from berth.services.bindings import (
    A2A_HEADERS,
    CALLER_HEADER,
    FORWARDED_HEADERS,
    Binding,
    JsonRpc,
    ProxyReply,
    canceled_task,
)
from berth.services.bindings import is_plain as _plain
from berth.services.card import HTTP_JSON, JSONRPC, ServedCard
from berth.services.delivery_log import DeliveryLog
from berth.services.envelope import (
    MAX_MESSAGE_ID,
    check_message_id,
    parse_envelope,
    ttl_seconds,
    wait_seconds,
)
from berth.services.proxy_keys import fingerprint, ids
from berth.services.relay import Relay
from berth.services.roster import Roster
from berth.services.streams import KEEP_ALIVE, sse, stream_topic
from berth.wire import (
    CANCEL_METHODS,
    INVALID_PARAMS,
    SEND_METHODS,
    STREAM_METHODS,
    SUBSCRIBE_METHODS,
)

__all__ = [
    "A2A_HEADERS",
    "CALLER_HEADER",
    "MAX_MESSAGE_ID",
    "PASS_THROUGH_MAX_WAIT",
    "Proxy",
    "ProxyReply",
    "check_message_id",
    "parse_envelope",
    "wait_seconds",
]

PASS_THROUGH_MAX_WAIT = 30.0


class Proxy:
    def __init__(
        self,
        deliveries: DeliveryLog,
        roster: Roster,
        client: AgentClient,
        link: AgentLink,
        bus: Bus,
        *,
        default_wait: float,
        forward_timeout: float,
        keep_alive: float = 10.0,
        queue_limit: QueueLimit | None = None,
    ) -> None:
        self._queue_limit = queue_limit or QueueLimit()
        self._log, self._roster, self._client, self._link, self._bus = (
            deliveries,
            roster,
            client,
            link,
            bus,
        )
        self._default_wait = self.default_wait = default_wait
        self._timeout = forward_timeout
        self.keep_alive = keep_alive
        self._relay = Relay(roster, client, link, timeout=forward_timeout)

    # entry ----------------------------------------------------------------
    async def handle(
        self, ws: Workspace, raw: bytes, headers: dict[str, str], caller: str = OPERATOR
    ) -> ProxyReply:
        """One JSON-RPC request of `caller` (already authorised for `ws`: services.access)."""
        headers = {**headers, CALLER_HEADER: caller}  # berth's word, never the caller's
        doc = parse_envelope(raw)
        wait = wait_seconds(headers.get("x-berth-wait"), self._default_wait)
        method = doc["method"]
        if method in SEND_METHODS or method in STREAM_METHODS:
            return await self.send(ws, doc, raw, headers, wait)
        if method in CANCEL_METHODS:
            canceled = await self._rpc_cancel_queued(ws, doc, caller)
            if canceled is not None:
                return canceled
        return await self.pass_through(
            ws,
            raw,
            headers,
            min(wait, PASS_THROUGH_MAX_WAIT),
            stream=method in SUBSCRIBE_METHODS,
            how=JsonRpc(doc.get("id")),
        )

    # sends ----------------------------------------------------------------
    async def send(
        self, ws: Workspace, doc: dict[str, Any], raw: bytes, headers: dict[str, str], wait: float
    ) -> ProxyReply:
        rid = doc.get("id")
        params = doc.get("params")
        message = params.get("message") if isinstance(params, dict) else None
        if not isinstance(message, dict):
            raise RpcInvalid(
                INVALID_PARAMS,
                "params.message is required for a send (an A2A Message object)",
                request_id=rid,
            )
        message_id = message.get("messageId")
        if message_id is None or message_id == "":
            message_id = time_ordered_id()
            doc = copy.deepcopy(doc)
            doc["params"]["message"]["messageId"] = message_id
            raw = orjson.dumps(doc)
        else:
            check_message_id(message_id, "params.message.messageId", rid)
        streaming = doc["method"] in STREAM_METHODS
        return await self.accept(
            ws,
            doc["method"],
            message_id,
            raw,
            headers,
            wait,
            JsonRpc(rid),
            streaming=streaming,
            fingerprint=fingerprint(doc.get("params")),
        )

    async def accept(
        self,
        ws: Workspace,
        method: str,
        message_id: str,
        raw: bytes,
        headers: dict[str, str],
        wait: float,
        how: Binding,
        *,
        streaming: bool,
        fingerprint: str | None = None,
    ) -> ProxyReply:
        """Accept a send into the log and answer it (either binding). The accept key is
        (workspace, caller, messageId); a reused messageId must repeat its request
        (`fingerprint`), else MessageIdReused and nothing is accepted."""
        ttl = ttl_seconds(headers.get("x-berth-ttl"))
        now = time.time()
        d = Delivery(
            id=time_ordered_id(),
            workspace_id=ws.id,
            message_id=message_id,
            seq=0,
            method=method,
            request=raw,
            headers={k: v for k, v in headers.items() if k in FORWARDED_HEADERS},
            created_at=now,
            updated_at=now,
            expires_at=None if ttl is None else now + ttl,
            caller=headers.get(CALLER_HEADER, OPERATOR),
            fingerprint=fingerprint,
        )
        sub = self._bus.subscribe(stream_topic(d.id)) if streaming else None
        # the wait is registered before the accept: the message may be forwarded and
        # settled by another task before the accept returns here
        first = self._log.expect(d.id) if sub is None and wait > 0 else None
        try:
            stored, created = await self._log.accept(
                d, workspace_name=ws.name, limit=ws.queue_limit(self._queue_limit)
            )
        except BaseException:
            if first is not None:
                self._log.drop(d.id, first)
            if sub is not None:
                await sub.aclose()
            raise
        if first is not None and (not created or stored.status.final):
            self._log.drop(d.id, first)  # no wait takes it (a duplicate's is for the first's id)
            first = None
        if not created and stored.fingerprint not in (None, d.fingerprint):
            if sub is not None:
                await sub.aclose()
            raise MessageIdReused(
                INVALID_PARAMS,
                f"messageId {message_id!r} was already used for another message "
                "(a retry must repeat the same request; a new message needs a new messageId)",
                request_id=how.request_id,
            )
        if sub is not None:
            if not created:
                await sub.aclose()
                sub = self._bus.subscribe(stream_topic(stored.id))
            return await self._stream_reply(stored, sub, how, original=created)
        return await self.answer(stored, how, wait, first=first, original=created)

    async def answer(
        self,
        d: Delivery,
        how: Binding,
        wait: float,
        *,
        first: asyncio.Future[Delivery | None] | None = None,
        original: bool,
    ) -> ProxyReply:
        """What the caller of a plain send gets: its answer once `d` is final, waiting up to
        `wait` seconds (`first`: a wait registered before, DeliveryLog.expect), else 202
        with where to look. `original`: the send that made `d` (not a replay)."""
        if not d.status.final:
            got = await self._log.wait(d.id, wait, first=first) if wait > 0 else None
            if got is None:
                return self._accepted(d)
            d = got
        elif first is not None:
            self._log.drop(d.id, first)
        return self._answer(d, how, original=original)

    def _accepted(self, d: Delivery) -> ProxyReply:
        body = json.dumps(
            {
                "delivery_id": d.id,
                "status": d.status.value,
                "status_url": f"/v1/deliveries/{d.id}",
            }
        ).encode()
        return ProxyReply(202, body, ids(d))

    def _answer(self, d: Delivery, how: Binding, *, original: bool) -> ProxyReply:
        hdrs = ids(d)
        if not original:
            hdrs["x-berth-replayed"] = "true"  # the reply of an earlier send of this messageId
        if d.status is DeliveryStatus.DONE and d.reply is not None:
            body = d.reply if original else how.for_caller(d.reply, d.request)
            ctype = d.reply_type or "application/json"
            if ctype.startswith("text/event-stream"):  # a stream's last event, answered plain
                ctype = "application/json"
            return ProxyReply(d.reply_status or 200, body, hdrs, ctype)
        status, body = how.undelivered(d)
        return ProxyReply(status, body, hdrs)

    async def _stream_reply(
        self, d: Delivery, sub: Subscription, how: Binding, *, original: bool
    ) -> ProxyReply:
        """A streaming send's answer follows the agent's first answer: a stream if it
        streamed, its plain reply (an up-front error) with its status and type if not.
        Waits up to `keep_alive` seconds for that answer, then commits to a stream."""
        first: bytes | None = None
        name: str | None = None  # the first event's SSE name
        # a replay subscribed after the accept: what it may have missed is in the log
        current = d if original else await self._log.get(d.id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.keep_alive
        while not current.status.final and first is None:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                _, item = await asyncio.wait_for(sub.__anext__(), left)
            except TimeoutError:
                break
            if item.get("t") == "event":
                first, name = item["data"].encode(), item.get("event")
            elif item.get("t") == "final":
                current = await self._log.get(d.id)
        if first is None and _plain(current):
            await sub.aclose()
            return self._answer(current, how, original=original)
        hdrs = ids(d) if original else {**ids(d), "x-berth-replayed": "true"}
        return ProxyReply(
            200, b"", hdrs, "text/event-stream", self._pipe(d, sub, how, (first, name), current)
        )

    async def _pipe(
        self,
        d: Delivery,
        sub: Subscription,
        how: Binding,
        head: tuple[bytes | None, str | None],
        current: Delivery,
    ) -> AsyncIterator[bytes]:
        """The caller's SSE stream: the agent's events as they come, across redeliveries,
        with keep-alive comments while the workspace restarts; ends after the final event.
        Events are read from the subscription until its final notice (they may all be
        queued there already); the log is read only when the bus stays silent."""
        first, name = head
        last: bytes | None = first
        try:
            if first is not None:
                yield sse(first, name)
            while not current.status.final:
                try:
                    _, item = await asyncio.wait_for(sub.__anext__(), self.keep_alive)
                except TimeoutError:
                    current = await self._reread(current)
                    if not current.status.final:
                        yield KEEP_ALIVE
                    continue
                if item.get("t") == "event":
                    last = item["data"].encode()
                    yield sse(last, item.get("event"))
                elif item.get("t") == "final":
                    current = await self._reread(current)
            if current.status is DeliveryStatus.DONE and current.reply is not None:
                if current.reply != last:
                    yield sse(current.reply)
            else:
                yield sse(how.undelivered(current)[1])
        finally:
            await sub.aclose()

    async def _reread(self, d: Delivery) -> Delivery:
        """The delivery as the log has it now; as it was while the store cannot be read (the
        stream has started: it keeps waiting, with keep-alives, rather than end in an error)."""
        try:
            return await self._log.get(d.id)
        except StoreUnavailable:
            return d

    async def cancel_queued(
        self, ws: Workspace, target: Any, caller: str = OPERATOR
    ) -> Delivery | None:
        """A cancel naming a delivery still waiting in berth's queue (by delivery id or
        messageId) cancels it there, without forwarding anything: the canceled delivery;
        else None (the cancel goes to the agent). A caller cancels only its own
        deliveries (the operator, any)."""
        if not isinstance(target, str):
            return None
        mine = None if caller == OPERATOR else caller
        d = await self._log.find(ws.id, target, mine)
        if d is None:
            try:
                d = await self._log.get(target)
            except NotFound:
                return None
            if d.workspace_id != ws.id or mine not in (None, d.caller):
                return None
        if d.status is not DeliveryStatus.QUEUED:
            return None
        try:
            return await self._log.cancel(d.id, "canceled by the caller before delivery")
        except Conflict:
            return None  # it was claimed meanwhile: the agent will get the cancel

    async def _rpc_cancel_queued(
        self, ws: Workspace, doc: dict[str, Any], caller: str
    ) -> ProxyReply | None:
        params = doc.get("params")
        target = params.get("id") if isinstance(params, dict) else None
        d = await self.cancel_queued(ws, target, caller)
        if d is None:
            return None
        v03 = doc["method"] == "tasks/cancel"
        task = canceled_task(str(target), d, v03=v03)
        return ProxyReply(
            200, orjson.dumps({"jsonrpc": "2.0", "id": doc.get("id"), "result": task}), ids(d)
        )

    # everything else ----------------------------------------------------------
    async def pass_through(
        self,
        ws: Workspace,
        raw: bytes | None,
        headers: dict[str, str],
        wait: float,
        *,
        stream: bool = False,
        method: str = "POST",
        path: str | None = None,
        how: Binding | None = None,
    ) -> ProxyReply:
        """Forward a request that is not a send, held while the workspace restarts (up to
        `wait`). `path` set: an HTTP+JSON request under the agent's HTTP+JSON URL."""
        return await self._relay.forward(
            ws,
            raw,
            headers,
            wait,
            stream=stream,
            method=method,
            path=path,
            how=how or JsonRpc(None),
        )

    async def agent_card(
        self, ws: Workspace, jsonrpc_url: str, rest_url: str, if_none_match: str | None = None
    ) -> ServedCard | None:
        return await self._relay.card(
            ws, {JSONRPC: jsonrpc_url, HTTP_JSON: rest_url}, if_none_match
        )
