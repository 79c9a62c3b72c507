"""Several server processes on one port and one shared table (pretrade serve --workers)."""

from __future__ import annotations

import os
import random
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
import redis

from book import codes, order, seed_account
from pretrade.engine.table import MappedTable
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

BANNER = re.compile(r"serving PreTradeRisk on ([\d.]+:\d+)")


@pytest.fixture
def two_workers(redis_client: redis.Redis, redis_url: str, tmp_path: Path
                ) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    seed_account(redis_client)
    redis_client.hset("limits:{ACC-1}", "max_long_position", 3_000)
    table = tmp_path / "shared.table"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETRADE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pretrade", "serve", "--workers", "2", "--listen",
         "127.0.0.1:0", "--redis-url", redis_url, "--table-path", str(table),
         "--insecure", "--auth", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        target = None
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        while target is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            match = BANNER.search(line)
            target = match.group(1) if match else None
        assert target, "no banner"
        threading.Thread(target=process.stdout.read, daemon=True).start()  # drain logs
        yield target, table, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def _stub(target: str) -> tuple[grpc.Channel, risk_pb2_grpc.PreTradeRiskStub]:
    # A local subchannel pool gives each channel its own connection.
    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, risk_pb2_grpc.PreTradeRiskStub(channel)


def _wait_live(stub: risk_pb2_grpc.PreTradeRiskStub) -> None:
    deadline = time.monotonic() + 20
    while not stub.GetStatus(pb.StatusRequest(), timeout=5).sync_live:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_workers_share_one_port_and_one_table(two_workers):
    target, table_path, _ = two_workers
    pids = set()
    channels = [_stub(target) for _ in range(16)]
    try:
        for _, stub in channels:
            _wait_live(stub)
            pids.add(stub.GetStatus(pb.StatusRequest(), timeout=5).pid)
        assert len(pids) == 2, "connections should spread over both processes"
    finally:
        for channel, _ in channels:
            channel.close()


def test_orders_on_several_processes_never_jointly_breach_a_limit(two_workers):
    target, table_path, _ = two_workers
    approved: list[int] = []
    lock = threading.Lock()

    def fire(worker: int) -> None:
        rng = random.Random(worker)
        channel, stub = _stub(target)
        mine = 0
        with channel:
            _wait_live(stub)
            for _ in range(250):
                quantity = rng.randint(1, 40)
                if stub.EvaluateOrder(order(quantity=quantity), timeout=10).approved:
                    mine += quantity
        with lock:
            approved.append(mine)

    threads = [threading.Thread(target=fire, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(approved) == 8
    mapped = MappedTable.attach(table_path)
    try:
        working = mapped.table.working(b"ACC-1", b"AAPL")[0]
    finally:
        mapped.close()
    assert sum(approved) <= 3_000
    assert sum(approved) == working
    assert sum(approved) > 3_000 - 40


def test_a_halt_through_one_process_stops_orders_on_every_process(two_workers):
    target, _, _ = two_workers
    channels = [_stub(target) for _ in range(8)]
    try:
        for _, stub in channels:
            _wait_live(stub)
        channels[0][1].Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id="ACC-1",
                                           mode=pb.HALT_MODE_HALTED, reason="test"))
        for _, stub in channels:
            assert codes(stub.EvaluateOrder(order(), timeout=5)) == [
                pb.REJECT_CODE_ACCOUNT_HALT]
    finally:
        for channel, _ in channels:
            channel.close()


def test_sigterm_stops_every_process(two_workers):
    target, table_path, process = two_workers
    channel, stub = _stub(target)
    with channel:
        _wait_live(stub)
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    assert not table_path.exists()
