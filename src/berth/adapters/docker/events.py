"""How a Docker workspace's death reaches berth: the engine's event stream, followed in a
thread; stops berth asked for are not reported, like a process provisioner's watcher only
reporting what it did not cause."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from berth.ports import ExitCallback

log = logging.getLogger("berth.docker")
__all__ = ["DockerExits"]


class DockerExits:
    """The exit half of DockerProvisioner (its state is set up by DockerProvisioner)."""

    client: Any
    instance: str
    _callbacks: list[ExitCallback]
    _lock: threading.Lock
    _current: dict[str, str]
    _expected: dict[str, float]
    _loop: asyncio.AbstractEventLoop | None
    _events: Any
    _watch_lock: asyncio.Lock | None
    _watcher: threading.Thread | None
    _closed: threading.Event

    # exits ------------------------------------------------------------------
    def on_exit(self, callback: ExitCallback) -> None:
        self._callbacks.append(callback)
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    async def _watch(self) -> None:
        """Open the engine's event stream (before a container starts, so no exit is missed)
        and follow it in a thread."""
        self._loop = asyncio.get_running_loop()
        if self._watch_lock is None:
            self._watch_lock = asyncio.Lock()
        async with self._watch_lock:
            if self._watcher is not None or self._closed.is_set():
                return
            await asyncio.to_thread(self._open_events, None)
            self._watcher = threading.Thread(
                target=self._follow, name="berth-docker-events", daemon=True
            )
            self._watcher.start()

    def _open_events(self, since: int | None) -> None:
        filters = {
            "type": "container",
            "event": ["die"],
            "label": [f"berth.instance={self.instance}"],
        }
        self._events = self.client.api.events(decode=True, filters=filters, since=since)

    def _follow(self) -> None:
        last = time.time()
        while not self._closed.is_set():
            try:
                if self._events is None:
                    self._open_events(int(last) - 1)
                for ev in self._events:
                    last = float(ev.get("time") or last)
                    self._died(ev)
                    if self._closed.is_set():
                        return
            except Exception as e:
                if self._closed.is_set():
                    return
                log.warning("Docker event stream broke (%s); reconnecting", e)
            self._events = None
            self._closed.wait(1.0)

    def _died(self, ev: dict[str, Any]) -> None:
        cid = ev.get("id") or ev.get("Actor", {}).get("ID")
        attrs = ev.get("Actor", {}).get("Attributes", {}) or {}
        ws_id = attrs.get("berth.workspace")
        if not cid or not ws_id:
            return
        version = int(attrs.get("berth.version") or 1)
        key = f"{ws_id}/{version}"
        with self._lock:
            if self._expected.pop(cid, None) is not None:
                return  # a stop or removal berth asked for
            if self._current.get(key) != cid:
                return  # not a container this berth runs (an orphan, an older run)
            del self._current[key]
        try:
            code: int | None = int(attrs["exitCode"])
        except (KeyError, ValueError):
            code = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._report, ws_id, code, version)

    def _report(self, ws_id: str, code: int | None, version: int) -> None:
        for cb in self._callbacks:
            try:
                cb(ws_id, code, version)
            except Exception:
                log.exception("exit callback failed")

    def _expect(self, cid: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in [k for k, t in self._expected.items() if now - t > 300]:
                del self._expected[k]
            self._expected[cid] = now
            for key, current in list(self._current.items()):
                if current == cid:
                    del self._current[key]
