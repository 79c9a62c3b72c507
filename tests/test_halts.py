"""The kill switch over a real channel: scopes, modes, expiry, write-through to Redis."""

from __future__ import annotations

import time

import grpc
import pytest
import redis

from book import codes, order, seed_account, seed_instrument, seed_lots, wait_until
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client, "ACC-1")
    seed_account(redis_client, "ACC-2")
    seed_instrument(redis_client, "MSFT", price=4_123_300)
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 100, 683_378)])
    return redis_client


def halt(scope: int, mode: int, *, account: str = "", symbol: str = "", reason: str = "test",
         ttl: int = 0) -> pb.HaltRequest:
    return pb.HaltRequest(scope=scope, account_id=account, symbol=symbol, mode=mode,
                          reason=reason, ttl_seconds=ttl, requested_by="alice")


def test_account_halt_rejects_its_next_order_and_lifting_it_approves_again(seeded, stub):
    assert stub.EvaluateOrder(order(account="ACC-1")).approved
    state = stub.Halt(halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_HALTED, account="ACC-1",
                           reason="suspicious flow"))
    assert [(h.scope, h.target, h.mode, h.reason, h.halted_by) for h in state.halts] == [
        (pb.HALT_SCOPE_ACCOUNT, "ACC-1", pb.HALT_MODE_HALTED, "suspicious flow", "alice")]
    decision = stub.EvaluateOrder(order(account="ACC-1"))
    assert codes(decision) == [pb.REJECT_CODE_ACCOUNT_HALT]
    # other accounts keep trading
    assert stub.EvaluateOrder(order(account="ACC-2")).approved
    state = stub.Halt(halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_ACTIVE, account="ACC-1"))
    assert list(state.halts) == []
    assert stub.EvaluateOrder(order(account="ACC-1")).approved


def test_halt_is_written_through_to_redis_with_who_why_and_when(seeded, stub):
    before_ms = time.time_ns() // 1_000_000
    stub.Halt(halt(pb.HALT_SCOPE_SYMBOL, pb.HALT_MODE_HALTED, symbol="AAPL", reason="news"))
    fields = seeded.hgetall("halt:symbol:AAPL")
    assert fields[b"mode"] == b"HALTED"
    assert fields[b"reason"] == b"news"
    assert fields[b"by"] == b"alice"
    assert int(fields[b"at"]) >= before_ms
    assert seeded.ttl("halt:symbol:AAPL") == -1
    stub.Halt(halt(pb.HALT_SCOPE_SYMBOL, pb.HALT_MODE_ACTIVE, symbol="AAPL"))
    assert not seeded.exists("halt:symbol:AAPL")


def test_global_halt_stops_every_account_and_symbol(seeded, stub):
    stub.Halt(halt(pb.HALT_SCOPE_GLOBAL, pb.HALT_MODE_HALTED, reason="market-wide"))
    for account, symbol, price in (("ACC-1", "AAPL", 683_378), ("ACC-2", "MSFT", 4_123_300)):
        decision = stub.EvaluateOrder(order(account=account, symbol=symbol, price=price))
        assert codes(decision) == [pb.REJECT_CODE_GLOBAL_HALT]
    stub.Halt(halt(pb.HALT_SCOPE_GLOBAL, pb.HALT_MODE_ACTIVE))
    assert stub.EvaluateOrder(order(account="ACC-2", symbol="MSFT", price=4_123_300)).approved


def test_symbol_halt_stops_only_that_symbol(seeded, stub):
    stub.Halt(halt(pb.HALT_SCOPE_SYMBOL, pb.HALT_MODE_HALTED, symbol="MSFT"))
    assert codes(stub.EvaluateOrder(order(symbol="MSFT", price=4_123_300))) == [
        pb.REJECT_CODE_SYMBOL_HALT]
    assert stub.EvaluateOrder(order(symbol="AAPL")).approved


def test_reduce_only_lets_only_orders_that_shrink_the_position_through(seeded, stub):
    # ACC-1 holds 100 AAPL
    stub.Halt(halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_REDUCE_ONLY, account="ACC-1"))
    buy = stub.EvaluateOrder(order(side=pb.SIDE_BUY, quantity=1))
    assert codes(buy) == [pb.REJECT_CODE_REDUCE_ONLY]
    assert "account" in buy.rejections[0].message
    assert stub.EvaluateOrder(order(side=pb.SIDE_SELL, quantity=100)).approved
    flip = stub.EvaluateOrder(order(side=pb.SIDE_SELL, quantity=101))
    assert codes(flip) == [pb.REJECT_CODE_SHORT_SALE_NOT_MARKED, pb.REJECT_CODE_REDUCE_ONLY]
    # no position at all: nothing to reduce (and a sale from flat must be marked short)
    assert codes(stub.EvaluateOrder(order(symbol="MSFT", side=pb.SIDE_SELL,
                                          price=4_123_300))) == [
        pb.REJECT_CODE_SHORT_SALE_NOT_MARKED, pb.REJECT_CODE_REDUCE_ONLY]


def test_halt_with_ttl_expires_by_itself(seeded, stub):
    state = stub.Halt(halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_HALTED, account="ACC-1", ttl=1))
    assert state.halts[0].expires_at_unix_ms > state.halts[0].halted_at_unix_ms
    assert 0 < seeded.ttl("halt:account:ACC-1") <= 1
    assert codes(stub.EvaluateOrder(order())) == [pb.REJECT_CODE_ACCOUNT_HALT]
    wait_until(lambda: stub.EvaluateOrder(order()), lambda d: d.approved, timeout=5)


def test_halt_written_to_redis_by_another_client_is_enforced(seeded, stub):
    seeded.hset("halt:account:ACC-2", mapping={"mode": "HALTED", "reason": "ops console",
                                               "by": "bob", "at": 1})
    decision = wait_until(lambda: stub.EvaluateOrder(order(account="ACC-2")),
                          lambda d: not d.approved)
    assert codes(decision) == [pb.REJECT_CODE_ACCOUNT_HALT]


def test_unreadable_halt_record_is_treated_as_a_full_halt(seeded, stub):
    seeded.hset("halt:symbol:AAPL", mapping={"mode": "PAUSE-ISH"})
    decision = wait_until(lambda: stub.EvaluateOrder(order()), lambda d: not d.approved)
    assert codes(decision) == [pb.REJECT_CODE_SYMBOL_HALT]


def test_halt_reaches_every_server_process_and_survives_a_restart(seeded, start_gateway):
    first, second = start_gateway("first"), start_gateway("second")
    with grpc.insecure_channel(first.target) as a, grpc.insecure_channel(second.target) as b:
        risk_pb2_grpc.PreTradeRiskStub(a).Halt(
            halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_HALTED, account="ACC-1"))
        other = risk_pb2_grpc.PreTradeRiskStub(b)
        decision = wait_until(lambda: other.EvaluateOrder(order()), lambda d: not d.approved)
        assert codes(decision) == [pb.REJECT_CODE_ACCOUNT_HALT]
    first.stop()
    second.stop()
    restarted = start_gateway("restarted")
    with grpc.insecure_channel(restarted.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert codes(stub.EvaluateOrder(order())) == [pb.REJECT_CODE_ACCOUNT_HALT]
        halts = stub.Halt(halt(pb.HALT_SCOPE_SYMBOL, pb.HALT_MODE_ACTIVE, symbol="AAPL")).halts
        assert [(h.target, h.halted_by) for h in halts] == [("ACC-1", "alice")]


@pytest.mark.parametrize(("request_", "words"), [
    (halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_HALTED), "account_id"),
    (halt(pb.HALT_SCOPE_SYMBOL, pb.HALT_MODE_HALTED, account="ACC-1"), "SYMBOL"),
    (halt(pb.HALT_SCOPE_UNSPECIFIED, pb.HALT_MODE_HALTED), "scope"),
    (halt(pb.HALT_SCOPE_GLOBAL, pb.HALT_MODE_UNSPECIFIED), "mode"),
    (halt(pb.HALT_SCOPE_GLOBAL, pb.HALT_MODE_HALTED, reason="  "), "reason"),
    (halt(pb.HALT_SCOPE_GLOBAL, pb.HALT_MODE_HALTED, ttl=-1), "ttl_seconds"),
])
def test_malformed_halt_request_is_invalid_argument_and_changes_nothing(seeded, stub, request_,
                                                                        words):
    with pytest.raises(grpc.RpcError) as raised:
        stub.Halt(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in raised.value.details()
    assert seeded.keys("halt:*") == []
    assert stub.EvaluateOrder(order()).approved
