"""The active credentials this replica authenticated with, by secret hash (issue 14).

Every caller's send and every external agent's heartbeat presents a credential; reading it
from the store each time was one database round trip per request (on PostgreSQL the
largest part of an idle heartbeat's cost with 1,000 workspaces). A credential found active
is kept here, and the store is read again only when a credential may have changed:

- **a write on this replica** (issue, rotate, revoke, a removed workspace's credentials):
  `forget` empties the cache once the write is done. A read that began before the write
  and ends after it is not kept (the cache's generation moved on meanwhile);
- **a write on another replica**: the store counts every write of a credential, whoever
  made it (`CredentialStore.credentials_version`, a trigger on PostgreSQL). Before the
  cache answers, the count must have been read within the last `check_seconds`, by a read
  that began then; a new count empties the cache. So a change committed at T is honoured
  by every request that reaches any replica after T + check_seconds, and a rotation or
  revocation answers only after that long (`settled`): when its answer arrives, every
  replica refuses the old secret. One read of the count serves every request waiting
  for it, and an idle replica reads nothing.

A store that has one writer (SQLite, memory: `credentials_version` is None) is never
asked: this replica's own writes are all the changes there are, and `settled` waits for
nothing. Only active credentials are kept: an unknown or revoked secret is looked up
every time (at the store's cost, as before), so a stranger cannot fill the cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from berth.domain.credentials import Credential
from berth.ports import CredentialStore

__all__ = ["CHECK_SECONDS", "CredentialCache"]

CHECK_SECONDS = 1.0


class CredentialCache:
    def __init__(
        self,
        store: CredentialStore,
        *,
        check_seconds: float = CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.check_seconds = check_seconds
        self._clock = clock
        self._by_hash: dict[str, Credential] = {}
        self._generation = 0  # moves at every emptying: a read from before it is not kept
        self._version: int | None = None  # the store's count the kept entries agree with
        self._checked = float("-inf")  # when the last read of the count that confirmed it began
        self._check: asyncio.Task[None] | None = None
        self._sole: bool | None = None  # None: not known yet (the first check tells)
        self.reads = 0  # credential reads from the store (tests, /metrics)
        self.checks = 0  # reads of the count

    async def get(self, secret_hash: str) -> Credential | None:
        """The credential with this secret's hash as the store has it now (within
        `check_seconds` for another replica's writes); None when there is none."""
        fresh = await self._fresh()
        kept = self._by_hash.get(secret_hash) if fresh else None
        if kept is not None:
            return kept
        generation = self._generation
        self.reads += 1
        cred = await self._store.credential_by_secret(secret_hash)
        if fresh and cred is not None and cred.active and generation == self._generation:
            self._by_hash[secret_hash] = cred
        return cred

    def forget(self) -> None:
        """A credential was written here: nothing kept may be used again."""
        self._by_hash.clear()
        self._generation += 1

    async def settled(self) -> None:
        """Return once every replica's cache has let go of what a write here changed: at
        once with one writer, after `check_seconds` with several."""
        self.forget()
        if self._sole is None:
            await self._fresh()
        if not self._sole:
            await asyncio.sleep(self.check_seconds)

    def _valid(self) -> bool:
        return bool(self._sole) or self._clock() - self._checked < self.check_seconds

    async def _fresh(self) -> bool:
        """Whether what is kept may answer now: the count was confirmed by a read that
        began less than `check_seconds` ago. A check this request joined may have begun
        earlier than that (a slow answer): then one more, and if that is not recent enough
        either (the store answers slower than `check_seconds`), the store is read
        directly for this request."""
        if self._valid():
            return True
        if self._sole is None:  # the first use: inline, so that one writer never waits
            await self._read_version()
            return self._valid()
        for _ in range(2):
            if self._check is None:
                self._check = asyncio.create_task(self._shared_check())
                self._check.add_done_callback(_retrieve)
            await asyncio.shield(self._check)
            if self._valid():
                return True
        return False

    async def _shared_check(self) -> None:
        try:
            await self._read_version()
        finally:
            self._check = None

    async def _read_version(self) -> None:
        began = self._clock()
        self.checks += 1
        version = await self._store.credentials_version()
        if version is None:
            self._sole = True
            return
        self._sole = False
        if version != self._version:
            self.forget()
            self._version = version
        self._checked = began


def _retrieve(task: asyncio.Task[None]) -> None:
    """A check every waiter stopped waiting for: its failure is not an unretrieved one."""
    if not task.cancelled():
        task.exception()
