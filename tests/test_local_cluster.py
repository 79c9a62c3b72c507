"""``pretrade cluster`` (``make cluster``): a Redis Cluster, two owners and a standby, for real.

The command runs as a child process, as a user runs it; the orders go over
gRPC through :class:`pretrade.client.RiskClient`; an owner is killed with
SIGKILL and the launcher with SIGTERM.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from book import codes, order, wait_until
from pretrade.app.lifetime import listener_pids
from pretrade.client import CallFailed, RiskClient
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import free_port
from test_ownership import refusal

READY = "pretrade local cluster is up"
# The demo book's accounts and a price inside their collar: DEMO-1 is in
# shard 11 (node-b's half of 16), DEMO-2 in shard 7 (node-a's).
DEMO_1 = dict(account="DEMO-1", symbol="AAPL", quantity=10, price=689_100)
DEMO_2 = dict(account="DEMO-2", symbol="BRK.B", quantity=10, price=4_551_000)


class Launcher:
    def __init__(self, tmp_path: Path) -> None:
        self.ports = (free_port(), free_port(), free_port())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pretrade", "cluster",
             "--ports", ",".join(map(str, self.ports)), "--data-dir", str(tmp_path / "cluster"),
             "--lease-ttl-ms", "1500"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, "".join(self.output[-40:])
                continue
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n" + "".join(self.output[-40:]))

    def target(self, number: int) -> str:
        return f"127.0.0.1:{self.ports[number]}"


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    yield started
    if started.process.poll() is None:
        os.killpg(started.process.pid, signal.SIGKILL)
        started.process.wait()


def test_make_cluster_serves_every_shard_through_its_owner_and_fails_over_to_the_standby(
        launcher: Launcher) -> None:
    launcher.wait_for(READY, timeout=120)
    redis_url = launcher.wait_for(r"Redis Cluster\s+redis\+cluster://", timeout=5).split()[2]
    node_a, node_b, standby = (launcher.target(n) for n in range(3))

    # Any node is an entry point: the client follows the owner's address.
    with RiskClient([node_a]) as client:
        for fields in (DEMO_1, DEMO_2):
            decision = client.evaluate(order(**fields))  # type: ignore[arg-type]
            assert decision.approved, decision
    # A non-owner and the standby refuse, naming the owner.
    for target, fields, owner in ((node_a, DEMO_1, "node-b"), (node_b, DEMO_2, "node-a"),
                                  (standby, DEMO_1, "node-b"), (standby, DEMO_2, "node-a")):
        with pytest.raises(grpc.RpcError) as refused:
            stub_of_target(target).EvaluateOrder(order(**fields), timeout=5)  # type: ignore[arg-type]
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refusal(refused.value).metadata["owner"] == owner

    # node-b dies: the launcher says so, and the standby takes DEMO-1's shard.
    for pid in listener_pids(launcher.ports[1]):
        os.kill(pid, signal.SIGKILL)
    launcher.wait_for(r"node-b ended", timeout=10)
    with RiskClient([standby, node_a], timeout=2) as client:
        decision = wait_until(lambda: _try(client, order(**DEMO_1)),  # type: ignore[arg-type]
                              lambda found: found is not None and found.approved, timeout=30)
        assert decision is not None and codes(decision) == []

    # SIGTERM stops the nodes, then the Redis Cluster: nothing is left listening.
    redis_ports = [int(address.rpartition(":")[2])
                   for address in redis_url.removeprefix("redis+cluster://").split(",")]
    launcher.process.send_signal(signal.SIGTERM)
    assert launcher.process.wait(timeout=60) == 0, "".join(launcher.output[-40:])
    for port in (*launcher.ports, *redis_ports):
        assert listener_pids(port) == [], port


def stub_of_target(target: str) -> risk_pb2_grpc.PreTradeRiskStub:
    return risk_pb2_grpc.PreTradeRiskStub(grpc.insecure_channel(target))


def _try(client: RiskClient, request: pb.Order) -> pb.Decision | None:
    try:
        return client.evaluate(request)
    except CallFailed as failed:  # refused or unavailable while the standby takes over
        assert failed.code in (grpc.StatusCode.UNAVAILABLE,
                               grpc.StatusCode.FAILED_PRECONDITION), failed
        return None
