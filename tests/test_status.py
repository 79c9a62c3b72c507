"""GetStatus, the batch RPC and the staleness bound, over a real channel."""

from __future__ import annotations

import time

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from book import codes, order, seed_account, wait_until
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    return redis_client


def test_status_reports_sync_state_lag_and_table_use(seeded, gateway, stub):
    assert stub.EvaluateOrder(order()).approved
    status = stub.GetStatus(pb.StatusRequest())
    assert status.sync_live
    assert 0 <= status.lag_ms <= status.max_lag_ms
    assert status.full_loads == 1 and status.last_full_load_unix_ms > 0
    assert status.accounts == 1 and status.instruments == 1
    assert status.orders == 1
    assert status.groups == 0 and status.max_groups == min(gateway.gateway.table.counts()[
        "max_accounts"], 4_096) > 0
    assert status.pid > 0
    # the full load re-read Redis in one batch or more; the approval was made durable
    assert status.sync_refreshes >= 1
    assert status.journal_written == 1 and status.journal_failures == 0
    assert status.automatic_halts_unwritten == 0 and status.automatic_halt_write_failures == 0


def test_a_batch_gets_one_decision_per_order_in_order(seeded, stub):
    batch = pb.OrderBatch(orders=[
        order(quantity=10), order(quantity=1_001), order(account=""), order(quantity=5)])
    reply = stub.EvaluateOrders(batch)
    assert [d.approved for d in reply.decisions] == [True, False, False, True]
    assert codes(reply.decisions[1]) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]
    assert codes(reply.decisions[2]) == [pb.REJECT_CODE_INVALID_REQUEST]
    assert "account_id is required" in reply.decisions[2].rejections[0].message
    assert [d.order_id for d in reply.decisions] == [o.order_id for o in batch.orders]
    assert reply.latency_ns > 0


def test_an_oversized_batch_is_invalid_argument(seeded, stub):
    with pytest.raises(grpc.RpcError) as raised:
        stub.EvaluateOrders(pb.OrderBatch(orders=[order() for _ in range(10_001)]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_silent_redis_past_the_lag_bound_fails_closed_then_recovers(seeded, start_gateway,
                                                                       redis_url):
    gateway = start_gateway(max_sync_lag_ms=300)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        assert stub.EvaluateOrder(order()).approved
        # Redis stays connected but answers nothing for 1.5 s.
        redis.Redis.from_url(redis_url).execute_command("CLIENT", "PAUSE", "1500", "ALL")
        time.sleep(0.6)  # past the 300 ms bound, well inside the pause
        decision = stub.EvaluateOrder(order(), timeout=5)
        assert codes(decision) == [pb.REJECT_CODE_STALE_DATA]
        status = stub.GetStatus(pb.StatusRequest())
        assert not status.sync_live and status.lag_ms > 300
        wait_until(lambda: health.Check(health_pb2.HealthCheckRequest()).status,
                   lambda s: s == health_pb2.HealthCheckResponse.NOT_SERVING)
        wait_until(lambda: stub.EvaluateOrder(order()), lambda d: d.approved, timeout=10)


@pytest.mark.parametrize("observed,limit,says", [
    (0, 0, "not in sync with Redis"),
    (3, 7, "version 3 of the account's state and the order asks for at least 7"),
    (-pb.HALT_SCOPE_ACCOUNT, 812, "a key of the account is in Redis Cluster slot 812"),
    (-pb.HALT_SCOPE_SYMBOL, 9, "a key of the symbol, or of a holding the order is valued "
                               "over, is in Redis Cluster slot 9"),
])
def test_a_stale_data_rejection_says_which_staleness(observed, limit, says):
    from pretrade.api.status import describe_rejection

    assert says in describe_rejection(pb.REJECT_CODE_STALE_DATA, observed, limit)
