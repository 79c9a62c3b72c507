"""Exclusive file locks: what keeps a second server off a table or a data directory.

A ``flock`` is released by the kernel when the last descriptor holding it
closes, however its processes ended (a ``kill -9`` too), so a lock file is
never stale. The table (``engine/table.py``) and the embedded servers' data
directories (``app/devredis.py``, ``app/devpostgres.py``) all take theirs here.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


def try_lock(path: Path) -> int | None:
    """A descriptor of ``path`` (created if missing, never truncated) holding an exclusive
    flock on it; None when another process holds it. Other errors are raised."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return None
    return fd


def holder_of(path: Path) -> str:
    """Who a lock file says holds it (its text), or ``"another process"``."""
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"
