"""berth's agent SDK: serve an a2a-sdk AgentExecutor so that it takes part in berth's drain.

    from berth.sdk import serve, tool_gate
    serve(MyExecutor(), card)

Imports nothing from berth's server side.
"""

from berth.sdk.drain import Drain, current_drain, tool, tool_gate
from berth.sdk.server import AgentRuntime, build_app, serve

__all__ = ["AgentRuntime", "Drain", "build_app", "current_drain", "serve", "tool", "tool_gate"]
