"""The A2A proxy: sends are accepted into the delivery log before anything else and
answered when the agent's reply is in; other methods pass through, held while the
workspace restarts. A request berth cannot take raises a `BerthError` (RpcInvalid for
the envelope), which the API edge renders (`berth.api.errors`)."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from berth.domain.delivery import Delivery, DeliveryStatus, QueueLimit
from berth.domain.errors import (
    AgentUnreachable,
    Conflict,
    InvalidHeader,
    NotFound,
    RpcInvalid,
    Unavailable,
)
from berth.domain.lifecycle import WorkspaceState
from berth.domain.workspace import Workspace
from berth.ports import AgentClient, Bus, Subscription
from berth.services.agent_link import AgentLink
from berth.services.delivery_log import DeliveryLog
from berth.services.roster import Roster
from berth.services.streams import KEEP_ALIVE, sse, stream_topic
from berth.wire import (
    CANCEL_METHODS,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    SEND_METHODS,
    STREAM_METHODS,
    SUBSCRIBE_METHODS,
    rpc_error,
)

__all__ = ["A2A_HEADERS", "Proxy", "ProxyReply", "parse_envelope", "wait_seconds"]

A2A_HEADERS = ("a2a-version", "a2a-extensions", "x-a2a-extensions")
PASS_THROUGH_MAX_WAIT = 30.0
MAX_MESSAGE_ID = 256


@dataclass
class ProxyReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    stream: AsyncIterator[bytes] | None = None  # an SSE body, sent as it is produced


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
        self._default_wait = default_wait
        self._timeout = forward_timeout
        self.keep_alive = keep_alive

    # entry ----------------------------------------------------------------
    async def handle(self, ws: Workspace, raw: bytes, headers: dict[str, str]) -> ProxyReply:
        doc = parse_envelope(raw)
        wait = wait_seconds(headers.get("x-berth-wait"), self._default_wait)
        method = doc["method"]
        if method in SEND_METHODS or method in STREAM_METHODS:
            return await self.send(ws, doc, raw, headers, wait)
        if method in CANCEL_METHODS:
            canceled = await self.cancel_queued(ws, doc)
            if canceled is not None:
                return canceled
        return await self.pass_through(
            ws,
            raw,
            headers,
            min(wait, PASS_THROUGH_MAX_WAIT),
            stream=method in SUBSCRIBE_METHODS,
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
            message_id = str(uuid.uuid4())
            doc = copy.deepcopy(doc)
            doc["params"]["message"]["messageId"] = message_id
            raw = orjson.dumps(doc)
        elif not isinstance(message_id, str) or len(message_id) > MAX_MESSAGE_ID:
            raise RpcInvalid(
                INVALID_PARAMS,
                f"params.message.messageId must be a string of at most {MAX_MESSAGE_ID} characters",
                request_id=rid,
            )
        ttl = _ttl(headers.get("x-berth-ttl"))
        now = time.time()
        d = Delivery(
            id=str(uuid.uuid4()),
            workspace_id=ws.id,
            message_id=message_id,
            seq=0,
            method=doc["method"],
            request=raw,
            headers={k: v for k, v in headers.items() if k in A2A_HEADERS},
            created_at=now,
            updated_at=now,
            expires_at=None if ttl is None else now + ttl,
        )
        streaming = d.method in STREAM_METHODS
        sub = self._bus.subscribe(stream_topic(d.id)) if streaming else None
        try:
            stored, created = await self._log.accept(
                d, workspace_name=ws.name, limit=ws.queue_limit(self._queue_limit)
            )
        except BaseException:
            if sub is not None:
                await sub.aclose()
            raise
        if sub is not None:
            if not created:
                await sub.aclose()
                sub = self._bus.subscribe(stream_topic(stored.id))
            return ProxyReply(
                200, b"", _ids(stored), "text/event-stream", self._pipe(stored, sub, rid)
            )
        if not stored.status.final:
            got = await self._log.wait(stored.id, wait, fresh=created) if wait > 0 else None
            if got is None:
                return self._accepted(stored)
            stored = got
        return self._answer(stored, rid, original=created)

    def _accepted(self, d: Delivery) -> ProxyReply:
        body = json.dumps(
            {
                "delivery_id": d.id,
                "status": d.status.value,
                "status_url": f"/v1/deliveries/{d.id}",
            }
        ).encode()
        return ProxyReply(202, body, _ids(d))

    def _answer(self, d: Delivery, rid: Any, *, original: bool) -> ProxyReply:
        ids = _ids(d)
        if not original:
            ids["x-berth-replayed"] = "true"  # the reply of an earlier send of this messageId
        if d.status is DeliveryStatus.DONE and d.reply is not None:
            body = d.reply
            if not original and orjson.loads(d.request).get("id") != rid:
                reply = orjson.loads(body)
                reply["id"] = rid
                body = orjson.dumps(reply)
            return ProxyReply(d.reply_status or 200, body, ids)
        return ProxyReply(200, self._undelivered(d, rid), ids)

    @staticmethod
    def _undelivered(d: Delivery, rid: Any) -> bytes:
        """The caller's answer for a delivery berth gave up on (dead, canceled, expired):
        berth's own error, never the agent's, so data.berth says so."""
        why = f": {d.reason}" if d.reason else ""
        return rpc_error(
            rid,
            INTERNAL_ERROR,
            f"berth did not deliver this message: {d.status.value}{why}",
            {"berth": {"delivery_id": d.id, "status": d.status.value, "reason": d.reason}},
        )

    async def _pipe(self, d: Delivery, sub: Subscription, rid: Any) -> AsyncIterator[bytes]:
        """The caller's SSE stream: the agent's events as they come, across redeliveries,
        with keep-alive comments while the workspace restarts; ends after the final event."""
        last: bytes | None = None
        try:
            current = await self._log.get(d.id)
            while not current.status.final:
                try:
                    _, item = await asyncio.wait_for(sub.__anext__(), self.keep_alive)
                except TimeoutError:
                    current = await self._log.get(d.id)
                    if not current.status.final:
                        yield KEEP_ALIVE
                    continue
                if item.get("t") == "event":
                    last = item["data"].encode()
                    yield sse(last)
                elif item.get("t") == "final":
                    current = await self._log.get(d.id)
            if current.status is DeliveryStatus.DONE and current.reply is not None:
                if current.reply != last:
                    yield sse(current.reply)
            else:
                yield sse(self._undelivered(current, rid))
        finally:
            await sub.aclose()

    async def cancel_queued(self, ws: Workspace, doc: dict[str, Any]) -> ProxyReply | None:
        """A cancel naming a delivery still waiting in berth's queue (by delivery id or
        messageId) cancels it there, without forwarding anything; else None."""
        params = doc.get("params")
        target = params.get("id") if isinstance(params, dict) else None
        if not isinstance(target, str):
            return None
        d = await self._log.find(ws.id, target)
        if d is None:
            try:
                d = await self._log.get(target)
            except NotFound:
                return None
            if d.workspace_id != ws.id:
                return None
        if d.status is not DeliveryStatus.QUEUED:
            return None
        try:
            d = await self._log.cancel(d.id, "canceled by the caller before delivery")
        except Conflict:
            return None  # it was claimed meanwhile: the agent will get the cancel
        v03 = doc["method"] == "tasks/cancel"
        state = "canceled" if v03 else "TASK_STATE_CANCELED"
        task: dict[str, Any] = {
            "id": target,
            "contextId": "",
            "status": {"state": state},
            "metadata": {"berth": {"delivery_id": d.id, "canceled_in_queue": True}},
        }
        if v03:
            task["kind"] = "task"
        return ProxyReply(
            200, orjson.dumps({"jsonrpc": "2.0", "id": doc.get("id"), "result": task}), _ids(d)
        )

    # everything else ----------------------------------------------------------
    async def pass_through(
        self,
        ws: Workspace,
        raw: bytes,
        headers: dict[str, str],
        wait: float,
        *,
        stream: bool = False,
    ) -> ProxyReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        fwd = {k: v for k, v in headers.items() if k in A2A_HEADERS}
        fwd["content-type"] = "application/json"
        while True:
            current = self._roster.peek(ws.id) or ws
            if current.state is WorkspaceState.ONLINE and (url := self._link.target(current)):
                if stream:
                    return ProxyReply(200, b"", {}, "text/event-stream", self._relay(url, raw, fwd))
                try:
                    r = await self._client.post(url, raw, fwd, timeout=self._timeout)
                    return ProxyReply(r.status, r.body, content_type=r.content_type)
                except AgentUnreachable:
                    pass
            left = deadline - loop.time()
            if left <= 0:
                raise Unavailable(
                    f"workspace {ws.name} is {current.state.value}; try again",
                    code="workspace_unavailable",
                )
            await self._roster.wait_for(
                ws.id,
                lambda w: w is not None and w.state is WorkspaceState.ONLINE,
                min(left, 1.0),
            )

    async def _relay(self, url: str, raw: bytes, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """A subscription's SSE, straight from the agent (not logged: nothing to redeliver)."""
        try:
            async for kind, data in self._client.stream(url, raw, headers, self._timeout):
                yield sse(data)
                if kind == "reply":
                    return
        except AgentUnreachable as e:
            yield sse(rpc_error(None, INTERNAL_ERROR, f"the agent's stream broke: {e}"))

    def agent_card(self, ws: Workspace, proxy_url: str) -> dict[str, Any] | None:
        card = self._roster.peek(ws.id)
        src = (card or ws).agent_card
        if not src:
            return None
        out = copy.deepcopy(src)
        if "url" in out or "supportedInterfaces" not in out:
            out["url"] = proxy_url
        for iface in out.get("supportedInterfaces") or []:
            if isinstance(iface, dict):
                iface["url"] = proxy_url
        for iface in out.get("additionalInterfaces") or []:
            if isinstance(iface, dict):
                iface["url"] = proxy_url
        return out


def _ids(d: Delivery) -> dict[str, str]:
    return {"x-berth-delivery-id": d.id, "x-berth-message-id": d.message_id}


def parse_envelope(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RpcInvalid(PARSE_ERROR, "parse error: the body is not valid JSON") from None
    if isinstance(doc, list):
        raise RpcInvalid(INVALID_REQUEST, "batch requests are not supported; send one request")
    if (
        not isinstance(doc, dict)
        or doc.get("jsonrpc") != "2.0"
        or not isinstance(doc.get("method"), str)
    ):
        raise RpcInvalid(
            INVALID_REQUEST,
            "invalid request: a JSON-RPC 2.0 request object with "
            '"jsonrpc": "2.0" and a string "method" is required',
            request_id=doc.get("id") if isinstance(doc, dict) else None,
        )
    if "params" in doc and not isinstance(doc["params"], (dict, list)):
        raise RpcInvalid(INVALID_PARAMS, "params must be an object", request_id=doc.get("id"))
    return doc


def wait_seconds(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        w = float(value)
    except ValueError:
        w = -1.0
    if not 0 <= w <= 86400:
        raise InvalidHeader(
            INVALID_REQUEST, "X-Berth-Wait must be a number of seconds from 0 to 86400"
        )
    return w


def _ttl(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        t = float(value)
    except ValueError:
        t = -1.0
    if t <= 0:
        raise InvalidHeader(INVALID_REQUEST, "X-Berth-TTL must be a positive number of seconds")
    return t
