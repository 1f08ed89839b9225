"""Use cases: the proxy, the dispatcher, the restart cycle, the registry and workspaces."""
