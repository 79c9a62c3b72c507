"""Portfolio streams served apart from the processes that decide (pretrade serve --stream-listen).

A real ``pretrade serve`` with a stream address: orders are decided on
``listen`` only, StreamPortfolio is served on ``stream_listen`` only, by a
process of its own at a lower CPU priority, and each address refuses the
other's calls with FAILED_PRECONDITION naming where to go.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from book import order, seed_account, seed_lots, wait_until
from pretrade.app.lifetime import listener_pids
from pretrade.cli.commands import EXIT_WORKER_FAILED
from pretrade.state.schema import price_key
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve, free_port

STREAM_NICE = 7


@pytest.fixture
def apart(redis_client: redis.Redis, redis_url: str, tmp_path: Path
          ) -> Iterator[tuple[Serve, str]]:
    """``pretrade serve``, orders on one port and streams on another: (server, stream target)."""
    seed_account(redis_client)
    seed_lots(redis_client, "ACC-1", [("lot-1", "AAPL", 100, 650_000)])
    stream_target = f"127.0.0.1:{free_port()}"
    server = Serve(tmp_path, "apart", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   "--stream-listen", stream_target,
                   env={"PRETRADE_STREAM_NICE": str(STREAM_NICE)})
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        yield server, stream_target
    finally:
        server.kill()


def _stub(target: str) -> tuple[grpc.Channel, risk_pb2_grpc.PreTradeRiskStub]:
    channel = grpc.insecure_channel(target)
    return channel, risk_pb2_grpc.PreTradeRiskStub(channel)


def _refusal(error: grpc.RpcError) -> dict[str, str]:
    """The ErrorInfo of a refusal, as {reason, address, calls}."""
    status = rpc_status.from_call(error)
    assert status is not None, "the refusal carries no details"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return {"reason": info.reason, **info.metadata}
    raise AssertionError("no ErrorInfo in the refusal")


def _niceness(pid: int) -> int:
    # /proc/PID/stat: field 19 is the nice value (after the parenthesised name).
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[16])


def test_orders_are_decided_on_listen_and_streams_served_on_stream_listen(apart, redis_client):
    server, stream_target = apart
    orders_channel, orders = _stub(server.target)
    streams_channel, streams = _stub(stream_target)
    with orders_channel, streams_channel:
        decision = orders.EvaluateOrder(order(order_id="o-1"), timeout=10)
        assert decision.approved, decision
        updates = streams.StreamPortfolio(pb.PortfolioRequest(account_id="ACC-1"), timeout=20)
        snapshot = next(updates)
        assert snapshot.kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
        redis_client.set(price_key(b"AAPL"), 700_000)
        update = next(update for update in updates
                      if update.kind == pb.PORTFOLIO_UPDATE_KIND_UPDATE)
        assert [h.last_price for h in update.holdings if h.symbol == "AAPL"] == [700_000]
        updates.cancel()


def test_a_group_stream_in_a_stream_process_follows_a_member_joining(apart, redis_client):
    # The stream process learns of the group's new member through the change feed.
    _, stream_target = apart
    seed_lots(redis_client, "ACC-2", [("lot-2", "AAPL", 5, 650_000)])
    redis_client.sadd("groups:{ACC-1}", "DESK-1")
    redis_client.hset("group:DESK-1", "max_long_position", 1_000)
    streams_channel, streams = _stub(stream_target)
    with streams_channel:
        def first() -> tuple[object, pb.PortfolioUpdate | None]:
            updates = streams.StreamPortfolio(pb.PortfolioRequest(group_id="DESK-1"),
                                              timeout=20)
            try:
                return updates, next(updates)
            except grpc.RpcError:  # NOT_FOUND until the group reaches the table
                return updates, None

        updates, snapshot = wait_until(first, lambda found: found[1] is not None)
        assert snapshot is not None and snapshot.group_id == "DESK-1"
        assert [(h.symbol, h.quantity) for h in snapshot.holdings] == [("AAPL", 100)]
        redis_client.sadd("groups:{ACC-2}", "DESK-1")
        update = next(update for update in updates
                      if update.kind == pb.PORTFOLIO_UPDATE_KIND_UPDATE and update.holdings)
        assert [(h.symbol, h.quantity) for h in update.holdings] == [("AAPL", 105)]
        updates.cancel()


def test_each_address_refuses_the_others_calls_and_names_where_to_go(apart):
    server, stream_target = apart
    orders_channel, orders = _stub(server.target)
    streams_channel, streams = _stub(stream_target)
    with orders_channel, streams_channel:
        with pytest.raises(grpc.RpcError) as refused:
            next(orders.StreamPortfolio(pb.PortfolioRequest(account_id="ACC-1"), timeout=10))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert stream_target in refused.value.details()
        assert _refusal(refused.value) == {"reason": "SERVED_ELSEWHERE", "calls": "streams",
                                           "address": stream_target}
        with pytest.raises(grpc.RpcError) as refused:
            streams.EvaluateOrder(order(order_id="o-2"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _refusal(refused.value)["address"] == server.target
        with pytest.raises(grpc.RpcError) as refused:
            streams.EvaluateOrders(pb.OrderBatch(orders=[order(order_id="o-3")]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as refused:
            list(streams.OrderSession(iter([order(order_id="o-4")]), timeout=10))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _refusal(refused.value) == {"reason": "SERVED_ELSEWHERE", "calls": "sessions",
                                           "address": server.target}
        # Nothing refused was decided: the order id is still new on the order port.
        assert not orders.EvaluateOrder(order(order_id="o-2"), timeout=10).replayed
        # Both addresses answer the control calls and the reads.
        assert orders.GetStatus(pb.StatusRequest(), timeout=10).sync_live
        assert streams.GetStatus(pb.StatusRequest(), timeout=10).sync_live
        assert list(streams.ListAccounts(pb.AccountsRequest(), timeout=10).account_ids) == [
            "ACC-1"]


def test_the_stream_process_runs_at_a_lower_cpu_priority_than_the_deciding_one(apart):
    server, stream_target = apart
    stream_port = int(stream_target.rpartition(":")[2])
    order_port = int(server.target.rpartition(":")[2])
    stream_pids = set(listener_pids(stream_port))
    order_pids = set(listener_pids(order_port))
    assert len(stream_pids) == 1 and len(order_pids) == 1
    assert stream_pids.isdisjoint(order_pids)
    base = _niceness(server.pid)
    assert [_niceness(pid) for pid in order_pids] == [base]
    assert [_niceness(pid) for pid in stream_pids] == [min(19, base + STREAM_NICE)]
    assert f"Portfolio streams: on {stream_target} only" in "".join(server.stdout)


def test_a_killed_stream_process_stops_the_group_like_any_server_process(apart):
    server, stream_target = apart
    (stream_pid,) = listener_pids(int(stream_target.rpartition(":")[2]))
    os.kill(stream_pid, signal.SIGKILL)
    assert server.wait() == EXIT_WORKER_FAILED, server.log()
    assert f"server process {stream_pid} ended (killed by SIGKILL)" in server.log()


def test_a_taken_stream_address_is_refused_before_anything_starts(redis_url, tmp_path):
    with socket_held() as port:
        server = Serve(tmp_path, "taken", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                       "--stream-listen", f"127.0.0.1:{port}")
        try:
            status = server.wait()
        finally:
            server.kill()
    assert status != 0, server.log()
    assert f"cannot listen for portfolio streams on 127.0.0.1:{port}" in server.log()
    assert not list(tmp_path.glob("taken.table"))


class socket_held:
    """A listening socket on a free loopback port, for the duration of a ``with``."""

    def __enter__(self) -> int:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
