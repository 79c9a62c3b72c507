"""Child processes that die with their parent, and the listeners of a port.

``pretrade serve`` starts children (an embedded redis-server, forked worker
processes). None of them may outlive it after a ``kill -9``: a worker would
keep deciding on a table nobody syncs, a redis-server would keep its data
directory for itself. :func:`die_with_parent` asks Linux to signal a child
when its parent dies (``PR_SET_PDEATHSIG``); elsewhere it does nothing.

:func:`listener_pids` names the processes listening on a TCP port (from
``/proc``), so a refused start can say who holds the port.

A :class:`KeptChild` (the archiver and the risk desk beside ``pretrade serve``)
is started again when it ends on its own, after a delay that doubles with
each quick failure; the sync process checks them on its supervision round
(:func:`check_kept_children`), so no thread exists when it forks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["KeptChild", "check_kept_children", "die_with_parent", "exit_text", "listener_pids",
           "process_name", "returncode_text", "start_child", "stop_child"]

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


def exit_text(status: int) -> str:
    """A ``waitpid`` status as words: "killed by SIGKILL", "exit status 3"."""
    return returncode_text(os.waitstatus_to_exitcode(status))


def returncode_text(returncode: int) -> str:
    """A ``Popen.returncode`` (negative: the signal that ended it) as words."""
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


#: The kept children of this process, checked by :func:`check_kept_children`.
_KEPT: list[KeptChild] = []


class KeptChild:
    """A child of :func:`start_child` that is started again whenever it ends on its own.

    The first restart comes ``first_delay`` seconds after the end; each end
    within ``healthy_after`` seconds of its start doubles the delay, up to
    ``longest_delay``; a child that ran longer starts over at ``first_delay``.
    Every end and restart is logged as an error with the exit status.
    """

    def __init__(self, command: list[str], env: dict[str, str], what: str, *,
                 first_delay: float = 1.0, longest_delay: float = 30.0,
                 healthy_after: float = 60.0) -> None:
        self.command = command
        self.env = env
        self.what = what
        self.first_delay = first_delay
        self.longest_delay = longest_delay
        self.healthy_after = healthy_after
        self.restarts = 0
        self._delay = first_delay
        self._due: float | None = None
        self.process = start_child(command, env, what)
        self._started = time.monotonic()
        _KEPT.append(self)

    @property
    def restart_due(self) -> float | None:
        """When (``time.monotonic``) the ended child starts again; None while it runs."""
        return self._due

    def check(self) -> None:
        """Start the child again if it ended and its delay is over (never blocks)."""
        now = time.monotonic()
        if self._due is not None:
            if now >= self._due:
                self._due = None
                self.restarts += 1
                self.process = start_child(self.command, self.env, self.what)
                self._started = now
            return
        if self.process.poll() is None:
            return
        if now - self._started >= self.healthy_after:
            self._delay = self.first_delay
        log.error("the %s (pid %d) ended on its own (%s) after %.1f s; starting it again in "
                  "%.1f s", self.what, self.process.pid, returncode_text(self.process.returncode),
                  now - self._started, self._delay)
        self._due = now + self._delay
        self._delay = min(self._delay * 2, self.longest_delay)

    def stop(self, seconds: float, ended_early: str = "") -> None:
        """No more restarts; stop the child as :func:`stop_child` does."""
        if self in _KEPT:
            _KEPT.remove(self)
        if self._due is not None:
            log.error("the %s had ended and was waiting to start again%s", self.what,
                      f"; {ended_early}" if ended_early else "")
            return
        stop_child(self.process, self.what, seconds, ended_early)


def check_kept_children() -> None:
    """:meth:`KeptChild.check` for each kept child of this process."""
    for child in list(_KEPT):
        child.check()
