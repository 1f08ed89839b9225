"""The SDK's files are private to the agent: its state directory 0700, its files 0600
(whatever the umask of the process that runs it; SQLite gives a database's -wal and -shm
files the database file's mode)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["private_dir", "private_file"]


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """`path`, made empty with mode 0600 if missing, else set to 0600."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        path.chmod(0o600)
    return path
