"""The process layout of ``pretrade serve``: one sync process writes the table, server
processes decide on it and follow the sync's change feed.

Real redis-server, real ``pretrade serve`` processes, real signals.
"""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
import redis

from book import codes, order, seed_account, seed_lots, wait_until
from faults import ServeProcess, child_pids
from pretrade.cli.commands import EXIT_WORKER_FAILED
from pretrade.state.schema import price_key
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc


@pytest.fixture
def serve(redis_client: redis.Redis, redis_url: str, tmp_path):
    started: list[ServeProcess] = []

    def start(*extra: str, **env: str) -> ServeProcess:
        server = ServeProcess(redis_url, tmp_path / f"s{len(started)}.table", *extra,
                              env={"PRETRADE_MAX_SYNC_LAG_MS": "500", **env})
        started.append(server)
        return server

    seed_account(redis_client)
    yield start
    for server in started:
        server.stop()


def _stub(target: str) -> tuple[grpc.Channel, risk_pb2_grpc.PreTradeRiskStub]:
    channel = grpc.insecure_channel(target)
    return channel, risk_pb2_grpc.PreTradeRiskStub(channel)


def _approved(stub: risk_pb2_grpc.PreTradeRiskStub) -> bool:
    return stub.EvaluateOrder(order(quantity=1), timeout=5).approved


def test_the_sync_process_serves_no_calls_and_the_server_processes_write_no_table(serve):
    server = serve("--workers", "2")
    channel, stub = _stub(server.target)
    with channel:
        wait_until(lambda: _approved(stub), bool, 10)
        pids = {stub.GetStatus(pb.StatusRequest(), timeout=5).pid for _ in range(40)}
    servers = child_pids(server.process.pid)
    assert len(servers) == 2
    assert server.process.pid not in pids and pids <= set(servers)


def test_a_frozen_sync_process_fails_closed_within_the_lag_bound_and_recovers(serve):
    # The writer stops renewing the table's deadline: every server process
    # must reject (STALE_DATA), not go on approving from a table nobody keeps.
    server = serve()
    channel, stub = _stub(server.target)
    with channel:
        wait_until(lambda: _approved(stub), bool, 10)
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(0.7)  # past max_sync_lag_ms (500)
            decision = stub.EvaluateOrder(order(quantity=1), timeout=5)
            assert codes(decision) == [pb.REJECT_CODE_STALE_DATA]
            assert not stub.GetStatus(pb.StatusRequest(), timeout=5).sync_live
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        wait_until(lambda: _approved(stub), bool, 10)


def test_a_server_process_that_dies_stops_the_group_with_its_own_status(serve):
    server = serve("--workers", "2")
    victim = child_pids(server.process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert server.process.wait(30) == EXIT_WORKER_FAILED
    time.sleep(0.2)
    last = "".join(server.output).strip().splitlines()[-1]
    assert last.startswith("pretrade: ") and f"server process {victim}" in last, last
    assert "Traceback" not in "".join(server.output)


def _next_update(stream, predicate, timeout: float = 10.0) -> pb.PortfolioUpdate:
    deadline = time.monotonic() + timeout
    for update in stream:
        if predicate(update):
            return update
        assert time.monotonic() < deadline, "no such update in time"
    raise AssertionError("the stream ended")


def test_streams_in_a_server_process_follow_prices_lots_and_halts_through_the_feed(
        serve, redis_client):
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 10, 680_000)])
    server = serve()
    channel, stub = _stub(server.target)
    with channel:
        wait_until(lambda: _approved(stub), bool, 10)
        stream = stub.StreamPortfolio(pb.PortfolioRequest(account_id="ACC-1"), timeout=30)
        snapshot = next(stream)
        assert [h.quantity for h in snapshot.holdings] == [10]
        redis_client.xadd("prices", {"symbol": "AAPL", "price": 700_000})
        update = _next_update(stream, lambda u: any(h.last_price == 700_000 for h in u.holdings))
        assert update.holdings[0].market_value == 10 * 700_000
        seed_lots(redis_client, "ACC-1", [("L2", "AAPL", 5, 690_000)])
        _next_update(stream, lambda u: any(h.quantity == 15 for h in u.holdings))
        redis_client.hset("halt:account:ACC-1", mapping={"mode": "HALTED", "reason": "desk",
                                                         "by": "ops", "at": 1})
        alert = _next_update(stream, lambda u: any("desk" in a.message for a in u.alerts))
        assert alert.alerts
        stream.cancel()


def test_a_change_made_while_the_feed_was_cut_reaches_the_streams(serve, redis_client):
    # Pub/sub drops what is published while a subscriber reconnects: the
    # server process must refresh from the table, not miss the change.
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 10, 680_000)])
    server = serve()
    channel, stub = _stub(server.target)
    with channel:
        wait_until(lambda: _approved(stub), bool, 10)
        stream = stub.StreamPortfolio(pb.PortfolioRequest(account_id="ACC-1"), timeout=30)
        next(stream)
        # The feed's subscriber connection is the one subscribed to a plain channel.
        feed_clients = [c for c in redis_client.client_list(_type="pubsub")
                        if int(c.get("sub", 0)) > 0]
        assert feed_clients, redis_client.client_list(_type="pubsub")
        for client in feed_clients:
            redis_client.client_kill_filter(_id=client["id"])
        # published while the feed reconnects: lost on the wire, found by the refresh
        redis_client.set(price_key(b"AAPL"), 710_000)
        _next_update(stream, lambda u: any(h.last_price == 710_000 for h in u.holdings))
        stream.cancel()
