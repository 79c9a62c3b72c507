"""No input can make an error message or a log line long.

20,000-character values, sent on the wire to each RPC and written to Redis
where the sync reads them, against a real ``pretrade serve``: every call ends
with its documented code and short details, every answer quotes a bounded
part of what it refuses, and no line of the server's log is long.
"""

from __future__ import annotations

import time

import grpc
import pytest
import redis

from book import order, seed_account, seed_lots, wait_until
from pretrade.state.prices import PRICE_STREAM
from pretrade.state.schema import halt_key, lot_keys
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve

LONG = "A" * 20_000
#: Longest a log line or a message may be, whatever it quotes.
SHORT = 600


@pytest.fixture
def server(redis_client: redis.Redis, redis_url: str, tmp_path):
    seed_account(redis_client)
    server = Serve(tmp_path, "echo", "--redis-url", redis_url, "--listen", "127.0.0.1:0")
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        yield server
    finally:
        server.kill()


def assert_log_lines_short(server: Serve) -> None:
    long_lines = [line[:120] for line in server.log().splitlines() if len(line) > SHORT]
    assert not long_lines, long_lines


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert len(raised.value.details() or "") <= SHORT, raised.value.details()[:200]
    return raised.value


def test_rpcs_with_20000_character_fields_end_invalid_argument_with_short_details(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        halts = [
            pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id=LONG,
                           mode=pb.HALT_MODE_HALTED, reason="x"),
            pb.HaltRequest(scope=pb.HALT_SCOPE_SYMBOL, symbol=LONG, mode=pb.HALT_MODE_HALTED,
                           reason="x"),
            pb.HaltRequest(scope=pb.HALT_SCOPE_GLOBAL, mode=pb.HALT_MODE_HALTED, reason=LONG),
            pb.HaltRequest(scope=pb.HALT_SCOPE_GLOBAL, mode=pb.HALT_MODE_HALTED, reason="x",
                           requested_by=LONG),
            pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id="ACC-1", symbol=LONG,
                           mode=pb.HALT_MODE_HALTED, reason="x"),
        ]
        for request in halts:
            error = refused(lambda request=request: stub.Halt(request, timeout=5))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        orders = [order(account=LONG), order(symbol=LONG), order(order_id=LONG),
                  order(venue=LONG), order(counterparty=LONG)]
        for request in orders:
            error = refused(lambda request=request: stub.EvaluateOrder(request, timeout=5))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        batch = stub.EvaluateOrders(pb.OrderBatch(orders=orders), timeout=5)
        for decision in batch.decisions:
            assert decision.rejections[0].code == pb.REJECT_CODE_INVALID_REQUEST
            assert len(decision.rejections[0].message) <= SHORT
            assert max(len(decision.order_id), len(decision.account_id),
                       len(decision.symbol)) <= 64
        error = refused(lambda: next(stub.StreamPortfolio(
            pb.PortfolioRequest(account_id=LONG), timeout=5)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        # Nothing was halted by any of it.
        assert stub.EvaluateOrder(order(), timeout=5).approved
    assert_log_lines_short(server)


def test_20000_character_values_in_redis_give_short_log_lines_and_messages(
        server, redis_client):
    redis_client.hset("limits:{ACC-1}", LONG, 5)                       # an unknown limit field
    redis_client.hset("limits:{ACC-2}", "max_order_quantity", LONG)   # a value, not a number
    redis_client.hset(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-3"),
                      mapping={"mode": LONG, "reason": "x"})          # an unreadable halt
    redis_client.hset(lot_keys(b"ACC-4")[0], LONG, "AAPL")           # a lot in one hash of 3
    # An operator's REDUCE_ONLY with a long reason, that a reject storm escalates.
    seed_account(redis_client, "ACC-5")
    seed_lots(redis_client, "ACC-5", [("L1", "AAPL", 100, 683_378)])
    redis_client.hset("limits:{ACC-5}", mapping={"max_rejects_per_window": 2,
                                                 "reject_window_ms": 60_000})
    redis_client.hset(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-5"),
                      mapping={"mode": "REDUCE_ONLY", "reason": LONG, "by": LONG})
    redis_client.xadd(PRICE_STREAM, {"symbol": LONG, "price": 1})
    redis_client.xadd(PRICE_STREAM, {"symbol": "AAPL", "price": LONG})
    with grpc.insecure_channel(server.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        wait_until(lambda: stub.GetStatus(pb.StatusRequest(), timeout=5).invalid_entities,
                   lambda invalid: invalid >= 4, 10)
        time.sleep(0.5)  # the price ticks too
        status = stub.GetStatus(pb.StatusRequest(), timeout=5)
        assert len(status.last_error) <= SHORT, status.last_error[:200]
        # The unreadable halt is a full halt, and what it says about itself is short.
        state = stub.Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_SYMBOL, symbol="MSFT",
                                         mode=pb.HALT_MODE_HALTED, reason="echo test"),
                          timeout=5)
        unreadable = [halt for halt in state.halts if halt.target == "ACC-3"]
        assert [halt.mode for halt in unreadable] == [pb.HALT_MODE_HALTED]
        assert len(unreadable[0].reason) <= SHORT, unreadable[0].reason[:200]
        decision = stub.EvaluateOrder(order(account="ACC-1"), timeout=5)
        assert not decision.approved
        assert all(len(rejection.message) <= SHORT for rejection in decision.rejections)
        for number in range(3):  # reducing sells far outside the collar: a reject storm
            decision = stub.EvaluateOrder(order(account="ACC-5", side=pb.SIDE_SELL, quantity=5,
                                                price=100, order_id=f"storm-{number}"),
                                          timeout=5)
            assert not decision.approved, decision
        fields = wait_until(lambda: redis_client.hgetall(halt_key(pb.HALT_SCOPE_ACCOUNT,
                                                                  b"ACC-5")),
                            lambda fields: fields.get(b"mode") == b"HALTED")
        assert b"escalated from HALT_MODE_REDUCE_ONLY" in fields[b"reason"]
        assert len(fields[b"reason"]) <= SHORT, fields[b"reason"][:200]
    assert_log_lines_short(server)
