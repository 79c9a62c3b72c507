"""Reconciliation of a running server's table with Redis: `pretrade reconcile` and the schedule.

A real ``pretrade serve`` subprocess decides real orders; drift is made by
writing the shared table file directly (what a bug in the sync, or anything
else that writes the table, would leave), never through Redis. The command
maps the same file; the scheduled reconciliation runs inside the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from book import order, seed_account, wait_until
from pretrade.engine.table import MappedTable
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve
from test_serve import serve_environment


def reconcile(tmp_path: Path, redis_url: str, table: Path, *args: str
              ) -> subprocess.CompletedProcess[str]:
    env = serve_environment(tmp_path / "cli-data", table)
    return subprocess.run(
        [sys.executable, "-m", "pretrade", "reconcile", "--redis-url", redis_url,
         "--table-path", str(table), "--confirm", "0.2", *args],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)


def drift(table: Path) -> None:
    """Change the table behind the sync's back: ACC-1's cash and a halt on AAPL."""
    mapped = MappedTable.attach(table)
    try:
        mapped.table.set_balances(b"ACC-1", 123_4567, 0)
        mapped.table.set_halt(pb.HALT_SCOPE_SYMBOL, b"AAPL", pb.HALT_MODE_HALTED)
    finally:
        mapped.close()


@pytest.fixture
def trading(redis_client: redis.Redis, redis_url: str, tmp_path: Path
            ) -> Iterator[tuple[Serve, Path]]:
    seed_account(redis_client)
    redis_client.hset("balances:{ACC-1}", mapping={"cash": 10_000_000_000, "credit_line": 0})
    server = Serve(tmp_path, "reconciled", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   "--reconcile-interval", "1")
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        with grpc.insecure_channel(server.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            for quantity in (10, 20, 30):
                assert stub.EvaluateOrder(order(quantity=quantity), timeout=5).approved
            assert not stub.EvaluateOrder(order(quantity=10**6), timeout=5).approved
        yield server, tmp_path / "reconciled.table"
    finally:
        server.kill()


def status(server: Serve) -> pb.ServerStatus:
    with grpc.insecure_channel(server.target) as channel:
        return risk_pb2_grpc.PreTradeRiskStub(channel).GetStatus(pb.StatusRequest(), timeout=5)


def test_reconcile_of_a_clean_server_finds_no_difference_and_exits_0(trading, redis_url,
                                                                      tmp_path):
    _, table = trading
    result = reconcile(tmp_path, redis_url, table)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no differences" in result.stdout


def test_drift_written_into_the_table_is_reported_with_exit_1(trading, redis_url, tmp_path):
    _, table = trading
    drift(table)
    result = reconcile(tmp_path, redis_url, table)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ENTITY", "FIELD", "TABLE", "REDIS"]
    assert any(line.split()[:4] == ["account", "ACC-1", "cash", "1234567"] for line in lines)
    assert any(line.split()[:5] == ["instrument", "AAPL", "halt_mode", "HALTED", "NONE"]
               for line in lines)
    assert lines[-1] == "2 differences."
    as_json = reconcile(tmp_path, redis_url, table, "--json")
    assert as_json.returncode == 1
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {"entity": "account ACC-1", "field": "cash", "table": 1234567,
            "redis": 10_000_000_000} in rows


def test_reconcile_without_a_running_server_says_so_and_exits_2(redis_url, tmp_path):
    result = reconcile(tmp_path, redis_url, tmp_path / "nobody.table")
    assert result.returncode == 2
    assert "no table at" in result.stderr and "pretrade serve" in result.stderr


def test_the_scheduled_reconciliation_reports_drift_in_status_and_an_alert(trading):
    server, table = trading
    clean = wait_until(lambda: status(server), lambda s: s.reconcile_runs >= 1, timeout=20)
    assert clean.reconcile_differences == 0
    assert clean.last_reconcile_unix_ms > 0
    assert "ALERT" not in server.log()
    drift(table)
    found = wait_until(lambda: status(server), lambda s: s.reconcile_differences > 0,
                       timeout=20)
    assert found.reconcile_differences == 2
    assert found.reconcile_runs > clean.reconcile_runs
    log = server.log()
    assert "ALERT reconciliation: the table differs from Redis in 2 fields" in log
    assert "account ACC-1: cash is 1234567 in the table" in log
