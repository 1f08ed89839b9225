"""berth: a control plane for A2A agent workspaces that never loses a message."""

import os as _os

# a2a-sdk decides at import time whether to wrap every handler in OpenTelemetry spans
# (~25 % of an agent's throughput). Every berth module is imported after this package,
# so setting the default here turns them off for berth.sdk agents, whatever they import
# first; BERTH_OTEL=1 (or the variable itself) turns them back on.
_os.environ.setdefault(
    "OTEL_INSTRUMENTATION_A2A_SDK_ENABLED",
    "true" if _os.environ.get("BERTH_OTEL") == "1" else "false",
)

__version__ = "0.1.0"
__all__ = ["__version__"]
