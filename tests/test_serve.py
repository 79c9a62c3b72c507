"""``make serve`` without make: ``python -m pretrade serve --demo`` as a real process.

No Redis URL is configured, so the server starts its embedded redis-server
with its data under ``data_dir``; the tests talk to it over a real gRPC
channel, stop it with SIGTERM as a terminal or a supervisor would, and start
it again over the same data to see the halts survive.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from book import codes
from pretrade.app.config import CONFIG_FILE_ENV, Settings, environment_variable
from pretrade.cli.commands import EXIT_DATA_DIR_IN_USE
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
RPC_TIMEOUT_SECONDS = 5.0

BANNER = re.compile(r"serving PreTradeRisk on (?P<target>\S+:\d+) \(Redis: (?P<redis>\S+)\)")
EMBEDDED_REDIS_PID = re.compile(r"embedded redis-server pid (\d+)")


def serve_environment(data_dir: Path, table_path: Path) -> dict[str, str]:
    """This environment without any Redis URL or pretrade setting, plus our data_dir."""
    dropped = {"REDIS_URL", CONFIG_FILE_ENV}
    dropped |= {environment_variable(field.name) for field in dataclasses.fields(Settings)}
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env[environment_variable("data_dir")] = str(data_dir)
    env[environment_variable("table_path")] = str(table_path)
    env[environment_variable("log_level")] = "INFO"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class ServeProcess:
    """``python -m pretrade serve --demo --listen 127.0.0.1:0`` in a child process."""

    def __init__(self, tmp_path: Path, data_dir: Path, name: str) -> None:
        self.stderr_path = tmp_path / f"{name}.stderr.log"
        self.table_path = tmp_path / f"{name}.table"
        self._stderr = self.stderr_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pretrade", "serve", "--demo", "--listen", "127.0.0.1:0",
             "--insecure", "--auth", "none"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            cwd=tmp_path, env=serve_environment(data_dir, self.table_path))
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.target = ""
        self.redis_url = ""
        self.redis_port = 0
        self.redis_pid: int | None = None

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_banner(self) -> None:
        """Read stdout until the banner names the address; fail with the log if it never does."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=remaining) if remaining > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                why = (f"exited with status {self.process.poll()}"
                       if self.process.poll() is not None
                       else f"printed no banner within {START_TIMEOUT_SECONDS} s")
                pytest.fail(f"pretrade serve {why}.\nstdout: {''.join(seen)}\n"
                            f"stderr:\n{self.log()}")
            seen.append(line)
            found = BANNER.search(line)
            if found:
                self.target, self.redis_url = found["target"], found["redis"]
                break
        self.redis_port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        pid = EMBEDDED_REDIS_PID.search(self.log())
        assert pid is not None, self.log()
        self.redis_pid = int(pid[1])

    def wait_until_serving(self, channel: grpc.Channel) -> None:
        """The banner comes before the first load; health says when orders can be decided."""
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        status = None
        while time.monotonic() < deadline:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""),
                                      timeout=RPC_TIMEOUT_SECONDS).status
            except grpc.RpcError as error:
                status = error.code()
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.05)
        pytest.fail(f"health is {status}, not SERVING, after {START_TIMEOUT_SECONDS} s."
                    f"\nstderr:\n{self.log()}")

    def terminate(self) -> int:
        """SIGTERM, as a supervisor stops it; the exit status, within the bound."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pretrade serve did not exit within {STOP_TIMEOUT_SECONDS} s of "
                        f"SIGTERM.\nstderr:\n{self.log()}")

    def kill(self) -> None:
        """Last resort for a failed test: kill the server and the redis-server it started."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        if self.redis_pid is not None and process_alive(self.redis_pid):
            os.kill(self.redis_pid, signal.SIGKILL)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start ``pretrade serve`` processes; any still running is killed at teardown."""
    started: list[ServeProcess] = []

    def start(data_dir: Path, name: str = "serve") -> ServeProcess:
        server = ServeProcess(tmp_path, data_dir, name)
        started.append(server)
        server.wait_for_banner()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()


def demo_order(order_id: str, quantity: int = 100) -> pb.Order:
    """DEMO-1 buys AAPL at $68.91, well inside the demo limits."""
    return pb.Order(order_id=order_id, account_id="DEMO-1", symbol="AAPL", side=pb.SIDE_BUY,
                    quantity=quantity, price=689_100, order_type=pb.ORDER_TYPE_LIMIT)


def halt_demo_1(mode: int, reason: str = "") -> pb.HaltRequest:
    return pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id="DEMO-1", mode=mode,
                          reason=reason, requested_by="pytest")


def test_serve_demo_decides_orders_halts_and_stops_cleanly_on_sigterm(serve, tmp_path):
    server = serve(tmp_path / "data")
    assert server.redis_url.startswith("redis://127.0.0.1:")
    assert port_accepts(server.redis_port)
    with grpc.insecure_channel(server.target) as channel:
        server.wait_until_serving(channel)
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)

        decision = stub.EvaluateOrder(demo_order("serve-1"), timeout=RPC_TIMEOUT_SECONDS)
        assert decision.approved, decision
        assert decision.notional == 100 * 689_100

        state = stub.Halt(halt_demo_1(pb.HALT_MODE_HALTED, "serve test"),
                          timeout=RPC_TIMEOUT_SECONDS)
        assert [(h.target, h.mode) for h in state.halts] == [("DEMO-1", pb.HALT_MODE_HALTED)]
        decision = stub.EvaluateOrder(demo_order("serve-2"), timeout=RPC_TIMEOUT_SECONDS)
        assert codes(decision) == [pb.REJECT_CODE_ACCOUNT_HALT]

        state = stub.Halt(halt_demo_1(pb.HALT_MODE_ACTIVE), timeout=RPC_TIMEOUT_SECONDS)
        assert list(state.halts) == []
        decision = stub.EvaluateOrder(demo_order("serve-3"), timeout=RPC_TIMEOUT_SECONDS)
        assert decision.approved, decision

    assert server.terminate() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()
    assert not port_accepts(server.redis_port), "the embedded redis-server still listens"
    assert server.redis_pid is not None and not process_alive(server.redis_pid)
    assert not server.table_path.exists(), "the shared table file was left behind"
    assert (tmp_path / "data" / "redis").is_dir()


def test_a_restart_over_the_same_data_dir_keeps_halts_and_operator_changes(serve, tmp_path):
    data_dir = tmp_path / "data"
    first = serve(data_dir, "first")
    with grpc.insecure_channel(first.target) as channel:
        first.wait_until_serving(channel)
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        stub.Halt(halt_demo_1(pb.HALT_MODE_HALTED, "kept across restarts"),
                  timeout=RPC_TIMEOUT_SECONDS)
        assert codes(stub.EvaluateOrder(demo_order("before-1"), timeout=RPC_TIMEOUT_SECONDS)
                     ) == [pb.REJECT_CODE_ACCOUNT_HALT]
    # An operator tightens a demo limit; the demo marker must keep a restart from undoing it.
    client = redis.Redis.from_url(first.redis_url, socket_timeout=RPC_TIMEOUT_SECONDS)
    try:
        client.hset("limits:{DEMO-2}", "max_order_quantity", 5)
    finally:
        client.close()
    assert first.terminate() == 0, first.log()

    second = serve(data_dir, "second")
    with grpc.insecure_channel(second.target) as channel:
        second.wait_until_serving(channel)
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        decision = stub.EvaluateOrder(demo_order("after-1"), timeout=RPC_TIMEOUT_SECONDS)
        assert codes(decision) == [pb.REJECT_CODE_ACCOUNT_HALT]

        # DEMO-2 is short 40 BRK.B; buying 10 back is fine except for the tightened limit.
        cover = pb.Order(order_id="after-2", account_id="DEMO-2", symbol="BRK.B",
                         side=pb.SIDE_BUY, quantity=10, price=4_551_000,
                         order_type=pb.ORDER_TYPE_LIMIT)
        decision = stub.EvaluateOrder(cover, timeout=RPC_TIMEOUT_SECONDS)
        assert codes(decision) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]
        assert decision.rejections[0].limit == 5

        stub.Halt(halt_demo_1(pb.HALT_MODE_ACTIVE), timeout=RPC_TIMEOUT_SECONDS)
        assert stub.EvaluateOrder(demo_order("after-3"), timeout=RPC_TIMEOUT_SECONDS).approved
    assert second.terminate() == 0, second.log()


def test_kill_9_of_serve_takes_its_embedded_redis_server_with_it(serve, tmp_path):
    server = serve(tmp_path / "data")
    assert server.redis_pid is not None and process_alive(server.redis_pid)
    server.process.kill()  # kill -9: no chance to stop its redis-server
    server.process.wait(timeout=STOP_TIMEOUT_SECONDS)
    deadline = time.monotonic() + 10
    while process_alive(server.redis_pid):
        assert time.monotonic() < deadline, "the embedded redis-server outlived its parent"
        time.sleep(0.05)
    assert not port_accepts(server.redis_port)
    # Its data directory is free again: the next start gets it, with the data kept.
    again = serve(tmp_path / "data", "again")
    with grpc.insecure_channel(again.target) as channel:
        again.wait_until_serving(channel)
    assert again.terminate() == 0, again.log()


def test_a_second_serve_on_the_same_data_dir_is_refused_in_one_line(serve, tmp_path):
    data_dir = tmp_path / "data"
    first = serve(data_dir, "first")
    second = ServeProcess(tmp_path, data_dir, "second")
    try:
        assert second.process.wait(timeout=START_TIMEOUT_SECONDS) == EXIT_DATA_DIR_IN_USE, \
            second.log()
        lines = second.log().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pretrade: "), lines
        assert str(data_dir / "redis") in lines[0]
        assert f"redis-server pid {first.redis_pid}" in lines[0], lines
        assert not second.table_path.exists()
    finally:
        second.kill()
    with grpc.insecure_channel(first.target) as channel:
        first.wait_until_serving(channel)
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert stub.EvaluateOrder(demo_order("still-1"), timeout=RPC_TIMEOUT_SECONDS).approved
    assert first.terminate() == 0, first.log()
