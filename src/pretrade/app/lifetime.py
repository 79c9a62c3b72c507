"""Child processes that die with their parent, and the listeners of a port.

``pretrade serve`` starts children (an embedded redis-server, forked worker
processes). None of them may outlive it after a ``kill -9``: a worker would
keep deciding on a table nobody syncs, a redis-server would keep its data
directory for itself. :func:`die_with_parent` asks Linux to signal a child
when its parent dies (``PR_SET_PDEATHSIG``); elsewhere it does nothing.

:func:`listener_pids` names the processes listening on a TCP port (from
``/proc``), so a refused start can say who holds the port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["die_with_parent", "listener_pids", "process_name", "start_child", "stop_child"]

log = logging.getLogger("pretrade.lifetime")

_PR_SET_PDEATHSIG = 1
_TCP_LISTEN = "0A"

if sys.platform.startswith("linux"):
    # Looked up here, in the parent: a child between fork and exec only calls it.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
else:  # pragma: no cover - pretrade runs on Linux; elsewhere children may outlive it
    _prctl = None


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Have this process receive ``signum`` when its parent ``parent`` dies.

    Call it in the child, right after the fork (a ``preexec_fn`` for
    :class:`subprocess.Popen`). The signal follows the *thread* that forked,
    so fork from a thread that lives as long as the parent (the main thread).
    If ``parent`` is already gone, the signal is sent at once.
    """
    if _prctl is None:
        return
    if _prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)


def listener_pids(port: int) -> list[int]:
    """Processes with a TCP socket listening on ``port`` (any address), as far as visible.

    Reads ``/proc/net/tcp{,6}`` and each process's open descriptors; a process
    of another user is not seen. Empty when nothing is found (or not on Linux).
    """
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            if target in sockets:
                found.append(int(entry.name))
                break
    return sorted(found)


def process_name(pid: int) -> str:
    """The command name of ``pid`` (``/proc/PID/comm``), or ``""``."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def serving_group(pid: int) -> int:
    """The ``pretrade serve`` process that ``pid`` serves for (its parent), else ``pid``.

    The server processes of a group are forked children of its sync process,
    which is the one a user started and would stop.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        command = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return pid
    is_serve = b"serve" in command and any(b"pretrade" in part for part in command)
    return parent if is_serve else pid


def start_child(command: list[str], env: dict[str, str], what: str) -> subprocess.Popen[bytes]:
    """``python -m pretrade COMMAND...`` beside this process, dying with it.

    In a session of its own, so Ctrl-C reaches the server only, which stops
    its children in order (:func:`stop_child`).
    """
    parent = os.getpid()
    process = subprocess.Popen(
        [sys.executable, "-m", "pretrade", *command], stdin=subprocess.DEVNULL, env=env,
        start_new_session=True, preexec_fn=lambda: die_with_parent(parent))
    log.info("%s pid %d started", what, process.pid)
    return process


def stop_child(process: subprocess.Popen[bytes], what: str, seconds: float,
               ended_early: str = "") -> None:
    """SIGTERM a child of :func:`start_child`, SIGKILL it after ``seconds``; reap it.

    A child that had ended already is logged as an error (``ended_early``
    says what that left undone).
    """
    if process.poll() is not None:
        log.error("the %s (pid %d) had ended with status %s%s", what, process.pid,
                  process.returncode, f"; {ended_early}" if ended_early else "")
        return
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        log.warning("the %s (pid %d) did not stop within %.0f s; killing it", what,
                    process.pid, seconds)
        process.kill()
        process.wait()
