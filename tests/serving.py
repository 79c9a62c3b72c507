"""Real ``pretrade serve`` processes for the start-up, shutdown and load tests.

:class:`Serve` runs ``python -m pretrade serve`` in front of the session's
redis-server (``--redis-url``), reads its stdout for the banner in a thread
and keeps its stderr (the log) in a file, so a test can wait for the banner,
wait for an exit, or read every log line afterwards.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from test_serve import serve_environment

BANNER = re.compile(r"serving PreTradeRisk on (?P<target>\S+:\d+) \(Redis: ")
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Serve:
    """``pretrade serve --insecure --auth none ARGS`` as a child process."""

    def __init__(self, tmp_path: Path, name: str, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.stderr_path = tmp_path / f"{name}.stderr.log"
        self._stderr = self.stderr_path.open("w")
        environment = serve_environment(tmp_path / f"{name}-data", tmp_path / f"{name}.table")
        environment.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pretrade", "serve", "--insecure", "--auth", "none", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            cwd=tmp_path, env=environment, start_new_session=True)
        self.stdout: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.target = ""

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout.append(line)
            self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_banner(self) -> str:
        """The target the banner names; AssertionError with the log if none comes."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=remaining) if remaining > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"{self.name}: no banner (exit status "
                                     f"{self.process.poll()}).\nstderr:\n{self.log()}")
            found = BANNER.search(line)
            if found:
                self.target = found["target"]
                return self.target

    def wait_until_serving(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"{self.name} never SERVING:\n{self.log()}"
                time.sleep(0.05)

    def wait(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """The exit status, once the process has exited within ``timeout``."""
        status = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return status

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        """Teardown: SIGKILL the server and anything it left in its process group."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._reader.join(timeout=5)
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()
        self._stderr.close()

