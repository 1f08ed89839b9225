"""berth: a control plane for A2A agent workspaces that never loses a message."""

__version__ = "0.1.0"
__all__ = ["__version__"]
