"""Check a chaos history against what the agents did (see history.py for the records).

`check(records, executions)` returns a Report: counts, and the violations of berth's
promise, each naming the message and what the caller was told and what the logs show.

What is a violation (each has a kind):

- `lost`: the caller was told the message was accepted (a reply, a 202, an open stream,
  or berth's own "gave up"), or the agent ran it, and berth has no delivery for it;
- `unfinished`: its delivery is not final (done, dead, canceled, expired) after the run
  settled;
- `gave_up`: it ended `expired`/`canceled` (the chaos tool sets no TTL and cancels
  nothing), or `dead` with fewer counted attempts than `max_attempts` (dead by the poison
  rule is allowed, and reported);
- `phantom`: a caller was told "done" (or the delivery is done) for a message whose agent
  log has no `start`: it never ran;
- `wrong_reply`: a reply that is not `echo: <the message's text>`;
- `told_done_not_done` / `told_gave_up_but_done`: what the caller heard disagrees with the
  final state of the log;
- `duplicate`: the agent ran the message to its end (`done`) more than once, except when
  the agent was killed (`kill -9`) after that end and before it could record the reply:
  the log shows the end, then a new agent process (`boot`), then the message again, and
  an agent kill of that workspace falls in the message's life. That window (the executor
  has returned, the SDK's record of the reply is not committed yet) is inherent to
  at-least-once delivery with a dedupe record; such ends are counted and listed as
  "ended, unrecorded" (docs/delivery-guarantee.md), never silently;
- `cut_without_fault`: an execution was cut (a `start` with no `done`) while no fault
  touched that workspace during the message's life;
- `split`: attempts of one messageId were given different delivery ids (the dedupe by
  messageId failed);
- `error`: a caller was given an error no rule explains (the echo agent never answers
  with an error; berth's refusals and give-ups are their own outcomes);
- `two_agents`: one workspace's agent ran in more than one place (the state dirs of two
  replicas), which berth's ownership rule forbids (docs/operations.md);
- `unknown_execution`: the agent ran a messageId no caller ever sent;
- `order`: on a workspace with max_concurrency 1, message A was accepted (the caller was
  told so) before message B was sent, yet B started before A. Not a violation when A was
  forwarded more than once (a failed forward waits out a backoff, and berth's order rule
  lets the deliveries behind it pass: docs/delivery-guarantee.md); those are counted as
  `order_excused`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.history import FINAL_STATUSES
from bench.chaos.overload import check_queues

__all__ = ["Message", "Report", "Violation", "check", "parse_executions"]

ACCEPTED = ("done", "accepted", "gave_up")
# faults that may cut an execution of a workspace's agent ("*" = every workspace)
CUTTING = ("restart", "agent_kill", "berth_kill", "replica_kill", "replica_stop")
# faults that kill an agent without letting it record what it finished
KILLING = ("agent_kill",)


@dataclass
class Violation:
    kind: str
    ws: str
    mid: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:<22} {self.ws}/{self.mid}: {self.detail}"


@dataclass
class Message:
    ws: str
    mid: str
    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    final_read: bool = False

    @property
    def expected(self) -> str:
        return f"echo: {self.text}"

    def told(self, outcome: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["outcome"] == outcome]

    @property
    def ack_time(self) -> float | None:
        # a stream is acknowledged when its headers come (`acked`), before its last event
        ts = [c.get("acked") or c["t1"] for c in self.calls if c["outcome"] in ACCEPTED]
        return min(ts) if ts else None

    @property
    def first_invoke(self) -> float:
        return min(c["t0"] for c in self.calls)

    def story(self) -> str:
        """What the callers were told, attempt by attempt."""
        return "; ".join(
            f"#{c.get('attempt', '?')} {c.get('op', '?')} {c['outcome']}"
            + (f" ({c['detail']})" if c.get("detail") else "")
            for c in self.calls
        )


@dataclass
class Report:
    messages: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    final_status: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    faults_failed: Counter[str] = field(default_factory=Counter)
    cut: list[tuple[str, str, int]] = field(default_factory=list)  # (ws, mid, executions cut)
    # (ws, mid, ends the agent was killed before recording)
    unrecorded: list[tuple[str, str, int]] = field(default_factory=list)
    dead: list[tuple[str, str, str]] = field(default_factory=list)  # (ws, mid, reason)
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)  # overload mode
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_kind(self) -> Counter[str]:
        return Counter(v.kind for v in self.violations)


def parse_executions(text: str) -> list[tuple[str, str]]:
    """The (kind, messageId) lines of an echo agent's executions.log (`boot <pid>`: an agent
    process started)."""
    out = []
    for line in text.splitlines():
        kind, _, mid = line.partition(" ")
        if kind in ("start", "done", "cancel", "boot") and mid:
            out.append((kind, mid))
    return out


def check(
    records: list[dict[str, Any]],
    executions: dict[str, list[tuple[str, str]]],
    *,
    concurrency: dict[str, int] | None = None,
    max_attempts: int = 3,
) -> Report:
    """Check a history. `executions[ws]` are its agent's log lines in the order written;
    `concurrency[ws]` its max_concurrency (also taken from `workspace` records)."""
    conc = dict(concurrency or {})
    msgs: dict[tuple[str, str], Message] = {}
    faults: list[dict[str, Any]] = []
    rep = Report()
    for r in records:
        t = r.get("type")
        if t == "call":
            m = msgs.setdefault((r["ws"], r["mid"]), Message(r["ws"], r["mid"]))
            m.text = r.get("text", m.text)
            m.calls.append(r)
            rep.outcomes[r["outcome"]] += 1
        elif t == "final":
            m = msgs.setdefault((r["ws"], r["mid"]), Message(r["ws"], r["mid"]))
            m.final, m.final_read = r.get("delivery"), True
        elif t == "fault":
            faults.append(r)
            (rep.faults if r.get("ok", True) else rep.faults_failed)[r["kind"]] += 1
        elif t == "agents" and len(r.get("logs") or []) > 1:
            rep.violations.append(
                Violation(
                    "two_agents",
                    r["ws"],
                    "-",
                    f"agents ran in {len(r['logs'])} places: {r['logs']}",
                )
            )
        elif t == "workspace":
            conc.setdefault(r["ws"], int(r.get("max_concurrency", 1)))
    rep.messages = len(msgs)

    def bad(kind: str, m: Message, detail: str) -> None:
        rep.violations.append(Violation(kind, m.ws, m.mid, detail))

    starts: dict[str, Counter[str]] = {}
    dones: dict[str, Counter[str]] = {}
    unrecorded: dict[str, Counter[str]] = {}
    first_start: dict[str, dict[str, int]] = {}
    for ws, lines in executions.items():
        s, d, u, f = Counter[str](), Counter[str](), Counter[str](), {}
        ended: dict[str, bool] = {}  # mid -> it ended and no agent process started since
        for i, (kind, mid) in enumerate(lines):
            if kind == "boot":
                ended = dict.fromkeys(ended, False)
            elif kind == "start":
                if ended.get(mid) is False:
                    u[mid] += 1  # ended, then a new process, then run again
                ended.pop(mid, None)
                s[mid] += 1
                f.setdefault(mid, i)
            elif kind == "done":
                d[mid] += 1
                ended[mid] = True
        starts[ws], dones[ws], unrecorded[ws], first_start[ws] = s, d, u, f
        for mid in s:
            if (ws, mid) not in msgs:
                rep.violations.append(
                    Violation("unknown_execution", ws, mid, f"started {s[mid]}x, never sent")
                )

    for m in msgs.values():
        _check_message(m, rep, bad, starts, dones, unrecorded, faults, max_attempts)
    rep.queues = check_queues(records, lambda *v: rep.violations.append(Violation(*v)), rep.counts)
    for ws, c in conc.items():
        if c == 1:
            _check_order(ws, [m for m in msgs.values() if m.ws == ws], first_start.get(ws, {}), rep)
    return rep


def _check_message(m, rep, bad, starts, dones, unrecorded, faults, max_attempts) -> None:  # type: ignore[no-untyped-def]
    s = starts.get(m.ws, Counter()).get(m.mid, 0)
    d = dones.get(m.ws, Counter()).get(m.mid, 0)
    u = unrecorded.get(m.ws, Counter()).get(m.mid, 0)
    told_done = m.told("done")
    told_gave_up = m.told("gave_up")
    accepted = m.ack_time is not None
    f = m.final
    if accepted:
        rep.counts["accepted (caller told)"] += 1
    ids = sorted({c["delivery_id"] for c in m.calls if c.get("delivery_id")})
    if len(ids) > 1:
        bad("split", m, f"one messageId, {len(ids)} deliveries: {ids}")
    for c in m.told("error"):
        bad("error", m, f"attempt {c.get('attempt')} ({c.get('op')}): {c.get('detail')}")
    if f is None:
        if accepted or s:
            what = "told accepted" if accepted else f"never told accepted, yet started {s}x"
            bad("lost", m, f"{what}; berth has no delivery ({m.story()})")
        else:
            rep.counts["never accepted"] += 1
            if any(c.get("status_code") == 429 for c in m.calls):
                rep.counts["gave up refused"] += 1
        return
    status = f.get("status", "?")
    rep.final_status[status] += 1
    if status not in FINAL_STATUSES:
        bad("unfinished", m, f"delivery still {status} after the run settled ({m.story()})")
    for c in told_done:
        if c.get("reply") != m.expected:
            bad("wrong_reply", m, f"caller got {c.get('reply')!r}, expected {m.expected!r}")
    if status == "done":
        rep.counts["done"] += 1
        reply = f.get("reply_text")
        if reply is not None and reply != m.expected:
            bad("wrong_reply", m, f"the log's reply is {reply!r}, expected {m.expected!r}")
        if told_gave_up:
            bad("told_gave_up_but_done", m, f"caller told {told_gave_up[0].get('status')}")
    elif status in FINAL_STATUSES:
        reason = f.get("reason") or ""
        rep.dead.append((m.ws, m.mid, f"{status}: {reason}"))
        if told_done:
            bad("told_done_not_done", m, f"caller told done, delivery is {status} ({reason})")
        if status != "dead" or int(f.get("attempts") or 0) < max_attempts:
            bad("gave_up", m, f"{status} after {f.get('attempts')} attempts: {reason}")
    if (told_done or status == "done") and s == 0:
        who = "caller told done" if told_done else "delivery done"
        bad("phantom", m, f"{who}, but the agent never started it")
    if d > 1:
        t_end = (f.get("finished_at") if f else None) or float("inf")
        killed = any(
            x["kind"] in KILLING
            and x.get("target") in (m.ws, "*")
            and x["t0"] <= t_end
            and x["t1"] >= m.first_invoke
            for x in faults
        )
        excused = min(u, d - 1) if killed else 0
        if excused:
            rep.unrecorded.append((m.ws, m.mid, excused))
            rep.counts["ended, unrecorded (agent killed)"] += excused
        if d - 1 > excused:
            bad("duplicate", m, f"ran to its end {d}x (started {s}x)")
    cut = max(0, s - d)  # starts that never reached their done
    if cut > 0:
        rep.cut.append((m.ws, m.mid, cut))
        rep.counts["executions cut"] += cut
        t_end = f.get("finished_at") or float("inf")
        touched = [
            x
            for x in faults
            if x["kind"] in CUTTING
            and x.get("target") in (m.ws, "*")
            and x["t0"] <= t_end
            and x["t1"] >= m.first_invoke
        ]
        if not touched:
            bad("cut_without_fault", m, f"{cut} execution(s) cut, no fault on {m.ws} meanwhile")


def _check_order(ws: str, msgs: list[Message], first: dict[str, int], rep: Report) -> None:
    """For A acked before B was sent: A's first start comes before B's first start."""
    started = [m for m in msgs if m.mid in first]
    acked = sorted((m for m in started if m.ack_time is not None), key=lambda m: m.ack_time or 0)
    invoked = sorted(started, key=lambda m: m.first_invoke)
    i = 0
    latest: Message | None = None  # the acked-before message that started last (not excused)
    for b in invoked:
        while i < len(acked) and (acked[i].ack_time or 0) < b.first_invoke:
            a = acked[i]
            i += 1
            if a.final is not None and int(a.final.get("forwards") or 0) > 1:
                continue  # retried after a failed forward: may be passed (order_excused below)
            if latest is None or first[a.mid] > first[latest.mid]:
                latest = a
        if latest is not None and first[latest.mid] > first[b.mid]:
            rep.violations.append(
                Violation(
                    "order",
                    ws,
                    b.mid,
                    f"started before {latest.mid}, which was accepted "
                    f"{b.first_invoke - (latest.ack_time or 0):.3f}s before {b.mid} was sent",
                )
            )
    # inversions the backoff rule allows, for the report
    pos = {m.mid: first[m.mid] for m in started}
    for a in acked:
        if a.final is not None and int(a.final.get("forwards") or 0) > 1:
            if any(pos[b.mid] < pos[a.mid] for b in invoked if b.first_invoke > (a.ack_time or 0)):
                rep.counts["order_excused"] += 1
