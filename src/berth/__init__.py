"""berth: a control plane for A2A agent workspaces that never loses a message.

Importing berth changes nothing in the process (no environment, no logging setup): the
server reads its environment once, through `berth.settings.Settings`. The agent SDK
(`berth.sdk`) is the one place that sets a default in the environment, for a2a-sdk's
OpenTelemetry switch, which a2a reads at import (see berth/sdk/server.py).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
