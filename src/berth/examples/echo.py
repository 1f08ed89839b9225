"""The echo agent: replies `echo: <text>` (`$ECHO_PREFIX: <text>` when that is set, so
that a test can tell two deployed versions apart; with `ECHO_BROKEN=1` every execution
fails, a broken version for canary tests).

A text beginning `sleep:<seconds> ` works that long first, passing the tool gate every
100 ms; a text beginning `crash` kills the process mid-execution (for poison tests). A
leading word `task` makes the reply a Task (working, then completed with the echo as its
status message and artifact) instead of a Message, for the task methods.
Each execution appends `start <messageId>` and `done <messageId>` to
$BERTH_STATE_DIR/executions.log (and `cancel <messageId>` when its task is canceled);
with ECHO_LOG_BOOT=1 each agent process also appends `boot <pid>` when it starts (the chaos
tool's checker tells a process boundary by it).

    python -m berth.examples.echo [--port 8000] [--host 127.0.0.1] [--drain-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

# isort: off
# berth.sdk first: it sets a2a-sdk's OpenTelemetry default before a2a is imported
from berth.sdk import serve, tool_gate

# isort: on
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Part,
    Role,
    Task,
    TaskState,
    TaskStatus,
)

__all__ = ["EchoExecutor", "card", "main"]


class EchoExecutor(AgentExecutor):
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state_dir / "executions.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._log = open(fd, "a", buffering=1)  # noqa: SIM115 - lives with the process
        self._prefix = os.environ.get("ECHO_PREFIX") or "echo"
        if os.environ.get("ECHO_LOG_BOOT") == "1":
            self._record("boot", str(os.getpid()))

    def _record(self, kind: str, message_id: str) -> None:
        # flushed, not fsynced: a killed process loses nothing it wrote (the kernel has it);
        # only a power cut would, and no test or user of the example needs that
        self._log.write(f"{kind} {message_id}\n")
        self._log.flush()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        mid = context.message.message_id if context.message else "?"
        self._record("start", mid)
        if text.startswith("crash"):
            os._exit(3)
        if os.environ.get("ECHO_BROKEN") == "1":
            raise RuntimeError("this version is broken (ECHO_BROKEN=1)")
        as_task, seconds = _options(text)
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        if as_task:
            await event_queue.enqueue_event(
                Task(
                    id=context.task_id,
                    context_id=context.context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_WORKING),
                    history=[context.message] if context.message else [],
                )
            )
        for _ in range(max(0, round(seconds * 10))):
            async with tool_gate():
                await asyncio.sleep(0.1)
        if as_task:
            await updater.add_artifact([Part(text=f"{self._prefix}: {text}")], name="echo")
            await updater.complete(
                updater.new_agent_message([Part(text=f"{self._prefix}: {text}")])
            )
        else:
            reply = new_text_message(
                f"{self._prefix}: {text}", context_id=context.context_id, role=Role.ROLE_AGENT
            )
            await event_queue.enqueue_event(reply)
        self._record("done", mid)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Cancel a running task: a2a-sdk then cancels the execution itself."""
        task = context.current_task
        mid = (
            task.history[0].message_id
            if task is not None and task.history
            else (context.task_id or "?")
        )
        self._record("cancel", mid)
        await TaskUpdater(event_queue, context.task_id or "", context.context_id or "").cancel()


def _options(text: str) -> tuple[bool, float]:
    """The leading words `task` and `sleep:<seconds>`, in any order."""
    as_task, seconds = False, 0.0
    for word in text.split(" "):
        if word == "task":
            as_task = True
        elif word.startswith("sleep:"):
            try:
                seconds = float(word[len("sleep:") :])
            except ValueError:
                seconds = 0.0
        else:
            break
    return as_task, seconds


def card(url: str) -> AgentCard:
    return AgentCard(
        name="echo",
        description="Replies echo: <text>; 'sleep:<s> ...' works that long first.",
        version="1.0.0",
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        capabilities=AgentCapabilities(streaming=True),
        # one endpoint, both vocabularies (the SDK serves v0.3 through a2a-sdk's compat layer)
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="0.3"),
        ],
        skills=[
            AgentSkill(id="echo", name="echo", description="echo the text back", tags=["echo"])
        ],
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m berth.examples.echo")
    ap.add_argument("--port", type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--drain-seconds", type=float)
    args = ap.parse_args(argv)
    port = int(os.environ.get("BERTH_PORT") or args.port or 8000)
    state = Path(os.environ.get("BERTH_STATE_DIR") or ".berth-state")
    host = os.environ.get("BERTH_HOST") or args.host
    url = os.environ.get("BERTH_ADVERTISE_URL") or f"http://{host}:{port}/"
    serve(EchoExecutor(state), card(url), port=port, host=host, drain_seconds=args.drain_seconds)


if __name__ == "__main__":
    main()
