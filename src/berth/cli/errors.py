"""Exit codes by class, and the one exception commands raise to end with one of them."""

from __future__ import annotations

import enum

__all__ = ["EXIT_HELP", "CliError", "Exit"]


class Exit(enum.IntEnum):
    OK = 0
    FAILED = 1  # berth refused or the operation failed: conflict, restart failed, message dead
    USAGE = 2  # a bad command line, or input berth rejected as invalid
    NOT_FOUND = 3  # no such workspace, delivery or restart
    AUTH = 4  # no admin token, or a wrong one
    UNREACHABLE = 5  # berth (or its database) cannot be reached
    PENDING = 6  # gave up waiting: the message is accepted and still delivering, or timed out
    INTERRUPTED = 130  # Ctrl-C


EXIT_HELP = """exit codes:
  0  success
  1  failed: berth refused (conflict) or the operation failed (restart failed, message dead,
     the agent answered with an error)
  2  usage: a bad command line, or input berth rejected as invalid
  3  not found: no such workspace, delivery or restart
  4  auth: no admin token, or a wrong one
  5  unreachable: berth, or its database, cannot be reached
  6  still delivering / timed out: gave up waiting; the message is accepted and will be
     delivered (see `berth deliveries show ID`), or a restart is still running
130  interrupted (Ctrl-C)"""


class CliError(Exception):
    def __init__(self, message: str, code: Exit = Exit.FAILED, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint
