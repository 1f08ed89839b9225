"""The callers: messages sent at a steady rate, each retried with the same messageId until
berth gives it a definite answer, every attempt recorded in the history.

Kinds of message (`op`): `send` (SendMessage, A2A v1.0), `send03` (message/send, v0.3),
`stream` (SendStreamingMessage), `async` (X-Berth-Wait: 0, then polling the delivery),
`long` (`sleep:<s> …`, sent or streamed), and `dup` (a message already answered, sent
again — twice at once — with its messageId: it must get the same reply and not run again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.chaos.history import FINAL_STATUSES, History

__all__ = ["Load", "Msg", "reply_text"]

OPS = {"send": 40, "send03": 10, "stream": 20, "async": 15, "long": 10, "dup": 5}
RETRY_PAUSE = 0.3


@dataclass
class Msg:
    ws: str
    mid: str
    text: str
    op: str
    attempts: int = 0
    delivery_id: str | None = None
    definite: bool = False
    refusals: int = 0  # 429s: overload mode gives up after `refusals_max` of them
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self, method: str) -> dict[str, Any]:
        if method == "message/send" or method == "message/stream":
            msg: dict[str, Any] = {
                "kind": "message",
                "role": "user",
                "messageId": self.mid,
                "parts": [{"kind": "text", "text": self.text}],
            }
        else:
            msg = {"role": "ROLE_USER", "messageId": self.mid, "parts": [{"text": self.text}]}
        return {"jsonrpc": "2.0", "id": self.attempts, "method": method, "params": {"message": msg}}


def reply_text(doc: Any) -> str | None:
    """The text of an echo reply (v1.0 or v0.3, message, task or final stream event)."""
    if not isinstance(doc, dict) or "result" not in doc:
        return None
    res = doc["result"]
    for key in ("message", "task", "statusUpdate", "artifactUpdate"):
        if isinstance(res, dict) and key in res:
            res = res[key]
    texts: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if isinstance(x.get("text"), str):
                texts.append(x["text"])
            for k, v in x.items():
                if k != "history":
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(res)
    echoes = [t for t in texts if t.startswith("echo: ")]
    return echoes[0] if echoes else (texts[0] if texts else "")


def _gave_up(doc: Any) -> str | None:
    try:
        status = doc["error"]["data"]["berth"]["status"]
    except (KeyError, TypeError):
        return None
    return status if status in FINAL_STATUSES else None


class Load:
    def __init__(
        self,
        history: History,
        clients: list[httpx.AsyncClient],
        workspaces: list[str],
        *,
        rate: float,
        long_max: float = 4.0,
        seed: int | None = None,
        alive: Any = None,
        work: float | None = None,
        refusals_max: int | None = None,
    ) -> None:
        self.h = history
        self.clients = clients
        self.workspaces = workspaces
        self.rate = rate
        self.long_max = long_max
        self.rng = random.Random(seed)
        self.alive = alive or (lambda i: True)  # which clients' berths are up (a hint only)
        self.work, self.refusals_max = work, refusals_max  # overload mode (overload.py)
        self.tasks: set[asyncio.Task[None]] = set()
        self.answered: list[Msg] = []
        self.sent = 0
        self.give_up_at = float("inf")
        self.n = 0

    def _client(self) -> httpx.AsyncClient:
        up = [i for i in range(len(self.clients)) if self.alive(i)] or list(
            range(len(self.clients))
        )
        return self.clients[self.rng.choice(up)]

    async def run(self, until: asyncio.Event) -> None:
        """Start one message every 1/rate seconds until `until` is set."""
        period = 1.0 / self.rate
        nxt = time.monotonic()
        while not until.is_set():
            self._spawn(self._one(self._next_msg()))
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    async def settle(self, give_up_at: float) -> None:
        """Wait for every caller to have its definite answer (or for the give-up time)."""
        self.give_up_at = give_up_at
        while self.tasks and time.time() < give_up_at + 5:
            await asyncio.wait(list(self.tasks), timeout=1)
        for t in list(self.tasks):
            t.cancel()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _next_msg(self) -> Msg:
        self.n += 1
        ws = self.workspaces[self.n % len(self.workspaces)]
        op = self.rng.choices(list(OPS), weights=list(OPS.values()))[0]
        if op == "dup" and self.answered:
            m = self.rng.choice(self.answered[-500:])
            # the same request again (a messageId sent with another request is refused,
            # so a v0.3 message is repeated in v0.3's vocabulary)
            return Msg(m.ws, m.mid, m.text, "dup", extra={"v03": m.op == "send03"})
        op = "send" if op == "dup" else op
        mid = f"{ws}-{self.n:07d}-{op}"
        text = mid
        if op == "long":
            text = f"sleep:{self.rng.uniform(0.5, self.long_max):.1f} {mid}"
        elif self.work:  # overload: every message makes the agent work a while
            text = f"sleep:{self.rng.uniform(0.5, 1.5) * self.work:.2f} {mid}"
        return Msg(ws, mid, text, op)

    async def _one(self, m: Msg) -> None:
        self.sent += 1
        if m.op == "dup":
            await asyncio.gather(self._until_definite(m), self._until_definite(Msg(**vars(m))))
            return
        await self._until_definite(m)
        if m.definite:
            self.answered.append(m)

    async def _until_definite(self, m: Msg) -> None:
        stream = m.op == "stream" or (m.op == "long" and self.rng.random() < 0.5)
        while not m.definite and time.time() < self.give_up_at:
            m.attempts += 1
            if m.delivery_id and m.op == "async":
                outcome = await self._poll(m)
            elif stream:
                outcome = await self._stream(m)
            else:
                outcome = await self._send(m)
            m.definite = outcome in ("done", "gave_up", "error")
            if m.retry_after is not None:  # a 429: wait as told, or give up like a real caller
                m.refusals += 1
                if self.refusals_max is not None and m.refusals >= self.refusals_max:
                    return
                await asyncio.sleep(min(5.0, m.retry_after) * self.rng.uniform(1.0, 1.5))
                m.retry_after = None
            elif not m.definite:
                pause = min(2.0, RETRY_PAUSE * m.attempts)
                await asyncio.sleep(pause * self.rng.uniform(0.5, 1.5))

    def _record(self, m: Msg, t0: float, outcome: str, **kw: Any) -> str:
        if kw.get("delivery_id"):
            m.delivery_id = kw["delivery_id"]
        self.h.call(
            mid=m.mid,
            ws=m.ws,
            op=m.op,
            text=m.text,
            attempt=m.attempts,
            t0=t0,
            t1=time.time(),
            outcome=outcome,
            **{k: v for k, v in kw.items() if v is not None},
        )
        return outcome

    async def _send(self, m: Msg) -> str:
        v03 = m.op == "send03" or bool(m.extra.get("v03"))
        headers = {} if v03 else {"a2a-version": "1.0"}
        headers["x-berth-wait"] = "0" if m.op == "async" else "60"
        t0 = time.time()
        try:
            r = await self._client().post(
                f"/v1/workspaces/{m.ws}/a2a",
                json=m.body("message/send" if v03 else "SendMessage"),
                headers=headers,
            )
        except httpx.HTTPError as e:
            return self._record(m, t0, "unknown", detail=type(e).__name__)
        did = r.headers.get("x-berth-delivery-id")
        if r.status_code == 202:
            return self._record(m, t0, "accepted", delivery_id=r.json().get("delivery_id"))
        try:
            doc = r.json()
        except ValueError:
            return self._record(m, t0, "unknown", detail=f"HTTP {r.status_code}, not JSON")
        return self._answer(m, t0, r.status_code, doc, did, r.headers)

    def _answer(
        self, m: Msg, t0: float, code: int, doc: Any, did: str | None, headers: Any = None
    ) -> str:
        if code == 200 and isinstance(doc, dict) and "result" in doc:
            return self._record(m, t0, "done", reply=reply_text(doc), delivery_id=did)
        if (status := _gave_up(doc)) is not None:
            return self._record(m, t0, "gave_up", status=status, delivery_id=did)
        err = doc.get("error", {}) if isinstance(doc, dict) else {}
        reason = (err.get("data") or {}).get("reason") if isinstance(err, dict) else None
        detail = f"HTTP {code}: {str(err.get('message', doc))[:120]}"
        if code == 429:  # admission control: not accepted, try again after Retry-After
            after = (headers or {}).get("retry-after")
            with contextlib.suppress(TypeError, ValueError):
                m.retry_after = float(after)
            m.retry_after = 1.0 if m.retry_after is None else m.retry_after
            return self._record(
                m,
                t0,
                "refused",
                detail=f"HTTP 429 {reason or ''}".strip(),
                status_code=429,
                retry_after=after,
                reason=reason,
            )
        if code == 503 and reason:  # not accepted: try again later
            return self._record(m, t0, "refused", detail=f"HTTP {code} {reason}")
        if code >= 500:
            return self._record(m, t0, "unknown", detail=detail)
        return self._record(m, t0, "error", detail=detail, delivery_id=did)

    async def _poll(self, m: Msg) -> str:
        t0 = time.time()
        while time.time() < self.give_up_at:
            code, d = 0, None
            try:
                r = await self._client().get(f"/v1/deliveries/{m.delivery_id}")
                code = r.status_code
                d = r.json() if code == 200 else None
            except (httpx.HTTPError, ValueError):
                pass
            if d is not None and d["status"] == "done":
                return self._record(m, t0, "done", reply=reply_text(d["reply"]), poll=True)
            if d is not None and d["status"] in FINAL_STATUSES:
                return self._record(m, t0, "gave_up", status=d["status"], poll=True)
            if code == 404:
                return self._record(m, t0, "error", detail="delivery 404")
            await asyncio.sleep(0.5)
        return self._record(m, t0, "unknown", detail="still not final")

    async def _stream(self, m: Msg) -> str:
        t0 = time.time()
        acked = did = None
        last: Any = None
        try:
            async with self._client().stream(
                "POST",
                f"/v1/workspaces/{m.ws}/a2a",
                json=m.body("SendStreamingMessage"),
                headers={"a2a-version": "1.0", "x-berth-wait": "60"},
            ) as r:
                if not r.headers.get("content-type", "").startswith("text/event-stream"):
                    await r.aread()
                    try:
                        doc = json.loads(r.text)
                    except ValueError:
                        return self._record(m, t0, "unknown", detail=f"HTTP {r.status_code}")
                    return self._answer(m, t0, r.status_code, doc, None, r.headers)
                acked, did = time.time(), r.headers.get("x-berth-delivery-id")
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        last = json.loads(line[5:])
        except httpx.HTTPError as e:
            out = "accepted" if acked else "unknown"
            return self._record(m, t0, out, detail=type(e).__name__, acked=acked, delivery_id=did)
        if last is None:
            return self._record(m, t0, "accepted", detail="no event", acked=acked, delivery_id=did)
        if isinstance(last, dict) and "error" in last:
            if (status := _gave_up(last)) is not None:
                return self._record(m, t0, "gave_up", status=status, acked=acked, delivery_id=did)
            return self._record(
                m, t0, "error", detail=str(last["error"])[:160], acked=acked, delivery_id=did
            )
        text = reply_text(last)
        if text is not None and text.startswith("echo: "):
            return self._record(m, t0, "done", reply=text, acked=acked, delivery_id=did)
        return self._record(
            m, t0, "accepted", detail="stream ended early", acked=acked, delivery_id=did
        )
