"""A stock a2a-sdk 1.3.0 agent, written only against a2a-sdk (nothing of berth's SDK): it
does not register, heartbeat or drain. It serves JSON-RPC at `/` and HTTP+JSON at
`/a2a/rest` (each for A2A 1.0 and 0.3 callers), and its card at
`/.well-known/agent-card.json` with `Cache-Control`; the card also declares a gRPC
interface it does not serve, as a real card might.

Replies `echo: <text>`. A text beginning `task` answers with a Task (submitted, working,
then completed with an artifact); `sleep:<seconds>` after it works that long first;
`wait` leaves the task working until canceled.

    python -m berth.examples.stock_echo [--port 8000] [--host 127.0.0.1]

The port is $BERTH_PORT when set, so the same command runs as a `process` workspace.
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")

import uvicorn  # noqa: E402
from a2a.helpers.proto_helpers import new_text_message  # noqa: E402
from a2a.server.agent_execution import AgentExecutor, RequestContext  # noqa: E402
from a2a.server.events import EventQueue  # noqa: E402
from a2a.server.request_handlers import DefaultRequestHandler  # noqa: E402
from a2a.server.routes import (  # noqa: E402
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import (  # noqa: E402
    InMemoryPushNotificationConfigStore,
    InMemoryTaskStore,
    TaskUpdater,
)
from a2a.types import (  # noqa: E402
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
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import BaseRoute  # noqa: E402

__all__ = ["StockEcho", "build", "card", "main"]


class StockEcho(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        words = text.split(" ")
        if words[0] != "task":
            await event_queue.enqueue_event(
                new_text_message(
                    f"echo: {text}", context_id=context.context_id, role=Role.ROLE_AGENT
                )
            )
            return
        task = context.current_task
        context_id = task.context_id if task is not None else context.context_id
        updater = TaskUpdater(event_queue, context.task_id or "", context_id or "")
        if task is None:
            await event_queue.enqueue_event(
                Task(
                    id=context.task_id,
                    context_id=context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                    history=[context.message] if context.message else [],
                )
            )
        await updater.start_work()
        if len(words) > 1 and words[1].startswith("sleep:"):
            await asyncio.sleep(float(words[1][len("sleep:") :]))
        if len(words) > 1 and words[1] == "wait":
            await asyncio.sleep(3600)  # until canceled
        await updater.add_artifact([Part(text=f"echo: {text}")], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        updater = TaskUpdater(
            event_queue, context.task_id or "", (task.context_id if task else "") or ""
        )
        await updater.cancel()


def card(base: str) -> AgentCard:
    base = base.rstrip("/")
    return AgentCard(
        name="stock-echo",
        description="A stock a2a-sdk agent: replies echo: <text>.",
        version="1.0.0",
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        capabilities=AgentCapabilities(streaming=True, push_notifications=True),
        supported_interfaces=[
            AgentInterface(url=f"{base}/", protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(
                url=f"{base}/a2a/rest", protocol_binding="HTTP+JSON", protocol_version="1.0"
            ),
            AgentInterface(url=f"{base}/", protocol_binding="JSONRPC", protocol_version="0.3"),
            AgentInterface(
                url=f"{base}/a2a/rest", protocol_binding="HTTP+JSON", protocol_version="0.3"
            ),
            AgentInterface(url="127.0.0.1:50051", protocol_binding="GRPC", protocol_version="1.0"),
        ],
        skills=[AgentSkill(id="echo", name="echo", description="echo the text", tags=["echo"])],
    )


def build(base: str) -> Starlette:
    agent_card = card(base)
    handler = DefaultRequestHandler(
        agent_executor=StockEcho(),
        task_store=InMemoryTaskStore(),
        agent_card=agent_card,
        push_config_store=InMemoryPushNotificationConfigStore(),
    )
    routes: list[BaseRoute] = []
    routes += create_agent_card_routes(agent_card, cache_control="public, max-age=60")
    routes += create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True)
    routes += create_rest_routes(handler, path_prefix="/a2a/rest", enable_v0_3_compat=True)
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m berth.examples.stock_echo")
    ap.add_argument("--port", type=int)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)
    port = int(os.environ.get("BERTH_PORT") or args.port or 8000)
    base = f"http://{args.host}:{port}"
    uvicorn.run(build(base), host=args.host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
