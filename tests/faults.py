"""Fault-injection helpers: a stock redis-server to kill and restart, `pretrade serve` processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from pretrade.app.devredis import RedisServer

BANNER = re.compile(r"serving PreTradeRisk on ([\d.]+:\d+)")


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} is still alive after {timeout} s")


class RestartableRedis:
    """A stock redis-server on a fixed port, its data on disk, to kill and restart.

    Stock: no keyspace notification flags at start (``notify_keyspace_events``
    says which), as a production server that pretrade configures itself.
    """

    def __init__(self, data_dir: Path, notify_keyspace_events: str = "") -> None:
        self.data_dir = data_dir
        self.server = RedisServer(data_dir=data_dir, persistent=True,
                                  notify_keyspace_events=notify_keyspace_events).start()
        self.port = self.server.port
        self.url = self.server.url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill_and_restart(self, notify_keyspace_events: str = "") -> None:
        """kill -9 the server, then start a new one on the same port and data."""
        os.kill(self.server.pid, signal.SIGKILL)
        self.server.stop()  # reaps the killed process (it is our child)
        self.server = RedisServer(port=self.port, data_dir=self.data_dir, persistent=True,
                                  notify_keyspace_events=notify_keyspace_events).start()

    def stop(self) -> None:
        self.server.stop()


class ServeProcess:
    """One real `pretrade serve` process; its banner names the address."""

    def __init__(self, redis_url: str, table_path: Path, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PRETRADE_")}
        environment.update({"PRETRADE_INSECURE": "true", "PRETRADE_AUTH": "none"})
        environment.update(env or {})
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pretrade", "serve", "--listen", "127.0.0.1:0",
             "--redis-url", redis_url, "--table-path", str(table_path), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
        self.target = self._read_banner()

    def _read_banner(self, timeout: float = 30.0) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if match := BANNER.search(line):
                threading.Thread(target=self._drain, daemon=True).start()
                return match.group(1)
        raise AssertionError("the server printed no banner:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def kill(self) -> None:
        """kill -9 the sync process; its server processes end by themselves (waited for)."""
        if self.process.poll() is None:
            servers = child_pids(self.process.pid)
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            deadline = time.monotonic() + 20
            while any(_alive(pid) for pid in servers):
                assert time.monotonic() < deadline, f"server processes {servers} outlived kill -9"
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def child_pids(pid: int) -> list[int]:
    """The children of ``pid`` (a ``pretrade serve``'s server processes)."""
    try:
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
