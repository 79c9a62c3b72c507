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
