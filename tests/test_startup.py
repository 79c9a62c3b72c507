"""Starting ``pretrade serve`` next to a running one, and every way a start can fail.

A start that cannot go ahead must leave a running server alone (its table
is never truncated), say in one line what to do, exit with its own status
and leave no table file behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis

from book import codes, order, seed_account, wait_until
from pretrade.app.config import environment_variable
from pretrade.audit.entries import AUDIT_STREAM
from pretrade.cli.commands import (
    CLIENT_ENVIRONMENT,
    EXIT_BROKEN_PIPE,
    EXIT_CANNOT_LISTEN,
    EXIT_CAPACITY_REFUSED,
    EXIT_FAILED,
    EXIT_REDIS_UNREACHABLE,
    EXIT_TABLE_IN_USE,
)
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve, free_port
from test_cli import pretrade_command


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Serve:
        server = Serve(tmp_path, name, *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def refusal(server: Serve) -> str:
    """The one line a refused start printed (and nothing else on stderr)."""
    lines = server.log().strip().splitlines()
    assert len(lines) == 1, server.log()
    assert lines[0].startswith("pretrade: "), lines
    return lines[0]


def halt_acc_1(stub: risk_pb2_grpc.PreTradeRiskStub) -> None:
    stub.Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id="ACC-1",
                             mode=pb.HALT_MODE_HALTED, reason="startup test"), timeout=5)


def assert_still_enforcing(server: Serve, redis_client: redis.Redis) -> None:
    """The running server still has its account and its halt, after ordinary Redis writes."""
    with grpc.insecure_channel(server.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert stub.GetStatus(pb.StatusRequest(), timeout=5).accounts == 1
        for quantity in (900, 950, 1_000):
            redis_client.hset("limits:{ACC-1}", "max_order_quantity", quantity)
        wait_until(lambda: stub.GetStatus(pb.StatusRequest(), timeout=5).events_applied,
                   lambda applied: applied >= 3)
        for number in range(5):
            decision = stub.EvaluateOrder(order(order_id=f"after-{number}"), timeout=5)
            assert codes(decision) == [pb.REJECT_CODE_ACCOUNT_HALT], decision
        assert stub.GetStatus(pb.StatusRequest(), timeout=5).accounts == 1


def test_a_second_serve_on_the_same_port_is_refused_and_the_running_table_is_kept(
        serve, redis_client, redis_url, tmp_path):
    seed_account(redis_client)
    listen = f"127.0.0.1:{free_port()}"
    table = tmp_path / "live.table"
    first = serve("first", "--redis-url", redis_url, "--listen", listen,
                  "--table-path", str(table))
    first.wait_for_banner()
    first.wait_until_serving()
    with grpc.insecure_channel(first.target) as channel:
        halt_acc_1(risk_pb2_grpc.PreTradeRiskStub(channel))

    second = serve("second", "--redis-url", redis_url, "--listen", listen,
                   "--table-path", str(table))
    assert second.wait() == EXIT_CANNOT_LISTEN, second.log()
    line = refusal(second)
    assert listen in line and f"pid {first.pid}" in line, line
    assert table.exists()
    assert_still_enforcing(first, redis_client)


def test_a_second_serve_on_the_same_table_is_refused_naming_the_owner(
        serve, redis_client, redis_url, tmp_path):
    seed_account(redis_client)
    table = tmp_path / "live.table"
    first = serve("first", "--redis-url", redis_url, "--listen", f"127.0.0.1:{free_port()}",
                  "--table-path", str(table))
    first.wait_for_banner()
    first.wait_until_serving()
    with grpc.insecure_channel(first.target) as channel:
        halt_acc_1(risk_pb2_grpc.PreTradeRiskStub(channel))

    for workers in ("1", "2"):
        second = serve(f"second-{workers}", "--redis-url", redis_url, "--listen",
                       f"127.0.0.1:{free_port()}", "--table-path", str(table),
                       "--workers", workers)
        assert second.wait() == EXIT_TABLE_IN_USE, second.log()
        line = refusal(second)
        assert str(table) in line and f"pid {first.pid}" in line, line
    assert_still_enforcing(first, redis_client)


# -- a start that cannot go ahead: one line, its own exit status, no table file --


def test_a_port_held_by_any_process_is_one_line_naming_it_and_no_table(serve, redis_url,
                                                                        tmp_path):
    table = tmp_path / "refused.table"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        for workers in ("1", "2"):
            server = serve(f"busy-{workers}", "--redis-url", redis_url, "--listen", listen,
                           "--table-path", str(table), "--workers", workers)
            assert server.wait() == EXIT_CANNOT_LISTEN, server.log()
            line = refusal(server)
            assert listen in line and f"pid {os.getpid()}" in line, line
            assert not table.exists()


def test_an_unreachable_redis_is_one_line_and_no_table(serve, tmp_path):
    table = tmp_path / "refused.table"
    server = serve("no-redis", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                   "--listen", "127.0.0.1:0", "--table-path", str(table))
    assert server.wait() == EXIT_REDIS_UNREACHABLE, server.log()
    line = refusal(server)
    assert "cannot reach Redis" in line and "--redis-url" in line, line
    assert not table.exists()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:port/0", "redis://127.0.0.1:99999/0",
                                 "redis://[::1/0", "unix://"])
def test_a_malformed_redis_url_is_one_line_and_no_table(serve, tmp_path, url):
    table = tmp_path / "refused.table"
    server = serve("bad-url", "--redis-url", url, "--listen", "127.0.0.1:0",
                   "--table-path", str(table))
    assert server.wait() == EXIT_FAILED, server.log()
    line = refusal(server)
    assert line.startswith("pretrade: bad settings: redis_url="), line
    assert not table.exists()


def test_a_table_larger_than_its_filesystem_is_refused_and_no_table(serve, redis_client,
                                                                   redis_url, tmp_path):
    # 2**30 - 1 accounts: a sparse table of terabytes, which would SIGBUS once written.
    table = tmp_path / "huge.table"
    server = serve("huge", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   "--table-path", str(table),
                   env={environment_variable("max_accounts"): str(2**30 - 1)})
    assert server.wait() == EXIT_CAPACITY_REFUSED, server.log()
    line = refusal(server)
    assert "free" in line and "max_accounts" in line, line
    assert not table.exists() and not table.with_name("huge.table.owner").exists()


def test_audit_into_a_pipe_closed_early_exits_quietly_with_its_own_status(redis_client,
                                                                          redis_url):
    with redis_client.pipeline(transaction=False) as pipe:
        for number in range(3_000):
            pipe.xadd(AUDIT_STREAM, {"event": "decision", "ts": 1_700_000_000_000 + number,
                                     "order_id": f"o-{number}", "account": "ACC-1",
                                     "symbol": "AAPL", "verdict": "APPROVED"})
        pipe.execute()
    env = {name: value for name, value in os.environ.items() if name not in CLIENT_ENVIRONMENT}
    reader = subprocess.Popen(
        [*pretrade_command(), "audit", "--redis-url", redis_url, "--json", "--limit", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline().startswith(b"{")
    reader.stdout.close()  # as `| head -1` does
    status = reader.wait(timeout=30)
    errors = reader.stderr.read().decode()
    assert status == EXIT_BROKEN_PIPE, errors
    assert "Traceback" not in errors
    assert len(errors.strip().splitlines()) == 1 and errors.startswith("pretrade: "), errors
