"""Automatic halts (circuit breakers) over a real channel, written through to Redis."""

from __future__ import annotations

import grpc
import pytest
import redis

from book import codes, order, seed_account, seed_lots, wait_until
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    return redis_client


def test_k_rejections_in_a_window_halt_the_account_like_an_operator_would(seeded, gateway,
                                                                          stub):
    seeded.hset("limits:{ACC-1}", mapping={"max_rejects_per_window": 3,
                                           "reject_window_ms": 60_000,
                                           "auto_halt_seconds": 120})
    wait_until(lambda: gateway.gateway.table.account_info(b"ACC-1")["limits"],
               lambda limits: len(limits) == 9)
    for _ in range(3):
        assert not stub.EvaluateOrder(order(quantity=5_000)).approved
    # the third rejection tripped the breaker: the next valid order is halted
    assert codes(stub.EvaluateOrder(order())) == [pb.REJECT_CODE_ACCOUNT_HALT]
    fields = wait_until(lambda: seeded.hgetall("halt:account:ACC-1"), bool)
    assert fields[b"mode"] == b"HALTED"
    assert fields[b"by"] == b"risk engine"
    assert b"3 rejections" in fields[b"reason"]
    assert 0 < seeded.ttl("halt:account:ACC-1") <= 120


def test_a_loss_limit_breach_moves_the_account_to_reduce_only(seeded, gateway, stub):
    # 100 AAPL bought at $70.0000, now $68.3378: P&L -$166.22
    seed_lots(seeded, "ACC-1", [("L1", "AAPL", 100, 700_000)])
    seeded.hset("limits:{ACC-1}", mapping={"loss_limit": 1_000_000})  # $100
    decision = wait_until(lambda: stub.EvaluateOrder(order()), lambda d: not d.approved)
    assert codes(decision) == [pb.REJECT_CODE_LOSS_LIMIT]
    fields = wait_until(lambda: seeded.hgetall("halt:account:ACC-1"), bool)
    assert fields[b"mode"] == b"REDUCE_ONLY"
    assert fields[b"by"] == b"risk engine"
    assert b"loss limit" in fields[b"reason"]
    # reducing orders still go
    assert stub.EvaluateOrder(order(side=pb.SIDE_SELL, quantity=50)).approved


def test_an_automatic_halt_redis_refuses_is_shown_retried_and_written_later(
        seeded, start_gateway):
    # Durable decisions and audit before answer off: with Redis refusing writes they
    # would fail the orders (UNAVAILABLE), and this is about the breaker.
    gateway = start_gateway(durable_decisions=False, audit_before_answer=False)
    channel = grpc.insecure_channel(gateway.target)
    stub = risk_pb2_grpc.PreTradeRiskStub(channel)
    seeded.hset("limits:{ACC-1}", mapping={"max_rejects_per_window": 2,
                                           "reject_window_ms": 60_000})
    wait_until(lambda: gateway.gateway.table.account_info(b"ACC-1")["limits"],
               lambda limits: len(limits) == 8)
    # Redis keeps answering reads but refuses every write (out of memory).
    seeded.config_set("maxmemory-policy", "noeviction")
    seeded.config_set("maxmemory", 1)
    try:
        for _ in range(2):
            assert not stub.EvaluateOrder(order(quantity=5_000)).approved
        # in force here at once, though Redis does not have it
        assert codes(stub.EvaluateOrder(order())) == [pb.REJECT_CODE_ACCOUNT_HALT]
        status = wait_until(lambda: stub.GetStatus(pb.StatusRequest()),
                            lambda s: s.automatic_halt_write_failures >= 1)
        assert status.automatic_halts_unwritten == 1
        assert not seeded.exists("halt:account:ACC-1")
    finally:
        seeded.config_set("maxmemory", 0)
    # retried until Redis takes it: every other server sees it now
    fields = wait_until(lambda: seeded.hgetall("halt:account:ACC-1"), bool, timeout=15)
    assert fields[b"mode"] == b"HALTED" and fields[b"by"] == b"risk engine"
    wait_until(lambda: stub.GetStatus(pb.StatusRequest()).automatic_halts_unwritten,
               lambda unwritten: unwritten == 0)
    channel.close()


def test_a_trapped_short_can_be_flattened_under_reduce_only_and_the_reject_storm_breaker(
        seeded, gateway, stub):
    # Issue 12, defect 1, end to end: short 10 @ $300.0000, last $350.0000,
    # $0.0100 of cash, a loss limit the short breaches and a reject-storm
    # breaker. The account goes REDUCE_ONLY; the buys that cover the short
    # must be approved, not refused BUYING_POWER until the breaker halts it.
    seeded.set("price:AAPL", 3_500_000)
    seed_lots(seeded, "ACC-1", [("S1", "AAPL", -10, 3_000_000)])
    seeded.hset("balances:{ACC-1}", mapping={"cash": 100})
    seeded.hset("limits:{ACC-1}", mapping={"loss_limit": 1_000_000,  # $100 < the $500 loss
                                           "max_rejects_per_window": 3,
                                           "reject_window_ms": 60_000})
    table = gateway.gateway.table
    wait_until(lambda: table.account_info(b"ACC-1"),
               lambda info: info["cash"] == 100 and len(info["limits"]) >= 3)
    wait_until(lambda: table.position(b"ACC-1", b"AAPL"), lambda p: p[0] == -10)
    wait_until(lambda: table.instrument_info(b"AAPL")["last_price"], lambda p: p == 3_500_000)
    # selling more short increases the loss exposure: refused, and the loss
    # limit moves the account to REDUCE_ONLY
    decision = stub.EvaluateOrder(order(side=pb.SIDE_SELL_SHORT, quantity=1, price=3_500_000))
    assert pb.REJECT_CODE_LOSS_LIMIT in codes(decision)
    fields = wait_until(lambda: seeded.hgetall("halt:account:ACC-1"), bool)
    assert fields[b"mode"] == b"REDUCE_ONLY"
    wait_until(lambda: table.account_info(b"ACC-1")["halt_mode"],
               lambda mode: mode == pb.HALT_MODE_REDUCE_ONLY)
    for _ in range(2):  # the short, flattened in two covering buys, however little cash
        covering = order(quantity=5, price=3_500_000)
        assert stub.EvaluateOrder(covering).approved, covering
    assert seeded.hget("halt:account:ACC-1", "mode") == b"REDUCE_ONLY"  # never HALTED
