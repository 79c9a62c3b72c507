"""Time in force over a real gRPC channel, with state in a real redis-server.

GTD orders whose expiry has passed are refused; working orders of a DAY or
GTD time in force stop counting when it ends (the table writer's sweep), also
after a restart restored them from ``orders:{ACC}``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import grpc
import pytest
import redis

from book import codes, order, seed_account, wait_until
from pretrade.engine.sessions import next_session_end_unix_ms, parse_time_of_day
from pretrade.state.journal import decode
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

DAY, IOC, GTC, GTD = (pb.TIME_IN_FORCE_DAY, pb.TIME_IN_FORCE_IOC, pb.TIME_IN_FORCE_GTC,
                      pb.TIME_IN_FORCE_GTD)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timed(time_in_force: int, expire_at_unix_ms: int = 0, **fields: object) -> pb.Order:
    request = order(**fields)  # type: ignore[arg-type]
    request.time_in_force = time_in_force
    request.expire_at_unix_ms = expire_at_unix_ms
    return request


@pytest.fixture
def limited(redis_client: redis.Redis) -> redis.Redis:
    """At most 100 AAPL long, so one working order of 100 holds the whole limit."""
    seed_account(redis_client)
    redis_client.hset("limits:{ACC-1}", mapping={"max_long_position": 100,
                                                 "max_net_position": 100})
    return redis_client


def test_sessions_end_at_the_first_time_of_day_strictly_after_now():
    noon = 1_767_268_800_000                      # 2026-01-01 12:00 UTC
    assert next_session_end_unix_ms(noon, parse_time_of_day("20:00")) == noon + 8 * 3_600_000
    assert next_session_end_unix_ms(noon, parse_time_of_day("12:00")) == noon + 86_400_000
    assert next_session_end_unix_ms(noon - 1, parse_time_of_day("12:00")) == noon
    assert next_session_end_unix_ms(noon, parse_time_of_day("00:00:01")) == (
        noon + 12 * 3_600_000 + 1_000)


def test_a_gtd_order_whose_expiry_has_passed_is_rejected_and_a_future_one_approved(limited,
                                                                                    stub):
    decision = stub.EvaluateOrder(timed(GTD, now_ms() - 1))
    assert codes(decision) == [pb.REJECT_CODE_ORDER_EXPIRED]
    assert decision.rejections[0].limit >= decision.rejections[0].observed + 1
    assert "expires at" in decision.rejections[0].message
    missing = stub.EvaluateOrder(timed(GTD))
    assert [(r.code, r.observed) for r in missing.rejections] == [
        (pb.REJECT_CODE_ORDER_EXPIRED, 0)]
    assert stub.EvaluateOrder(timed(GTD, now_ms() + 60_000)).approved
    for tif in (DAY, IOC, GTC):
        assert stub.EvaluateOrder(timed(tif, quantity=1)).approved


@pytest.mark.parametrize(("time_in_force", "expire_at", "field"), [
    (DAY, 1_767_268_800_000, "expire_at_unix_ms"),     # an expiry is for GTD only
    (pb.TIME_IN_FORCE_UNSPECIFIED, 1, "expire_at_unix_ms"),
    (GTD, -5, "expire_at_unix_ms"),
    (9, 0, "time_in_force"),
])
def test_a_malformed_time_in_force_is_invalid_argument(limited, stub, time_in_force, expire_at,
                                                       field):
    with pytest.raises(grpc.RpcError) as raised:
        stub.EvaluateOrder(timed(time_in_force, expire_at))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()
    batch = stub.EvaluateOrders(pb.OrderBatch(orders=[timed(time_in_force, expire_at)]))
    assert codes(batch.decisions[0]) == [pb.REJECT_CODE_INVALID_REQUEST]


def test_a_working_gtd_order_stops_counting_once_it_expired(limited, stub):
    assert stub.EvaluateOrder(timed(GTD, now_ms() + 1_500, quantity=100)).approved
    assert stub.EvaluateOrder(timed(GTC, quantity=1)).approved is False
    decision = wait_until(lambda: stub.EvaluateOrder(timed(GTC, quantity=100)),
                          lambda d: d.approved, timeout=6)
    assert decision.approved
    # the GTC order holds the limit now: nothing ends it but its fill or cancel
    time.sleep(0.6)
    assert codes(stub.EvaluateOrder(order(quantity=1))) == [
        pb.REJECT_CODE_MAX_NET_POSITION, pb.REJECT_CODE_MAX_LONG_POSITION]


def test_day_orders_stop_counting_at_the_configured_session_end(limited, start_gateway):
    # the session ends two to three seconds from now (UTC, whole seconds)
    end = (now_ms() // 1000 + 3) * 1000
    gateway = start_gateway(day_session_end_utc=f"{datetime.fromtimestamp(end / 1000, UTC):%T}")
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        wait_until(lambda: stub.EvaluateOrder(timed(DAY, quantity=60, order_id="day-60")),
                   lambda d: d.approved)
        assert stub.EvaluateOrder(timed(IOC, quantity=40)).approved
        assert not stub.EvaluateOrder(order(quantity=1)).approved
        record = decode(b"ACC-1", b"day-60",
                        wait_until(lambda: limited.hget("orders:{ACC-1}", "day-60"), bool))
        assert (record.time_in_force, record.working_until_unix_ms) == (DAY, end)
        assert now_ms() < end
        decision = wait_until(lambda: stub.EvaluateOrder(order(quantity=100)),
                              lambda d: d.approved, timeout=8)
        assert now_ms() >= end and decision.approved


def test_a_restored_gtd_order_counts_until_its_expiry_and_a_lapsed_one_not_at_all(
        limited, start_gateway):
    first = start_gateway("first")
    with grpc.insecure_channel(first.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        expiry = now_ms() + 5_000
        assert wait_until(lambda: stub.EvaluateOrder(timed(GTD, expiry, quantity=60,
                                                           order_id="gtd-60")),
                          lambda d: d.approved).approved
        short_expiry = now_ms() + 300
        assert stub.EvaluateOrder(timed(GTD, short_expiry, quantity=40,
                                        order_id="gtd-40")).approved
    first.stop()
    time.sleep(0.4)                                   # gtd-40 lapsed while no gateway ran
    restarted = start_gateway("restarted")
    with grpc.insecure_channel(restarted.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        # gtd-60 works again for its 60; gtd-40 is only remembered (its id replays)
        assert restarted.gateway.table.working(b"ACC-1", b"AAPL") == (60, 0)
        assert stub.EvaluateOrder(order(quantity=40)).approved
        assert not stub.EvaluateOrder(order(quantity=1)).approved
        wait_until(lambda: restarted.gateway.table.working(b"ACC-1", b"AAPL"),
                   lambda working: working == (40, 0), timeout=8)
        assert now_ms() >= expiry
        # re-sent ids: the same order replays from its durable copy, another
        # expiry or time in force is another order
        replay = stub.EvaluateOrder(timed(GTD, short_expiry, quantity=40, order_id="gtd-40"))
        assert replay.replayed and replay.approved
        assert codes(stub.EvaluateOrder(timed(GTC, quantity=40, order_id="gtd-40"))) == [
            pb.REJECT_CODE_DUPLICATE_ORDER_ID]
        decision = stub.EvaluateOrder(timed(GTD, expiry + 1, quantity=60, order_id="gtd-60"))
        assert codes(decision) == [pb.REJECT_CODE_DUPLICATE_ORDER_ID,
                                   pb.REJECT_CODE_ORDER_EXPIRED]   # and it is past, too


def test_working_orders_written_back_to_a_replaced_database_keep_their_time_in_force(
        limited, stub):
    expiry = now_ms() + 60_000
    assert stub.EvaluateOrder(timed(GTD, expiry, quantity=60, order_id="gtd-60")).approved
    wait_until(lambda: limited.hget("orders:{ACC-1}", "gtd-60"), bool)
    limited.flushall()
    seed_account(limited)
    # the gateway writes its working orders back: with their end, or a
    # restart from this database would keep gtd-60 working past its expiry
    raw = wait_until(lambda: limited.hget("orders:{ACC-1}", "gtd-60"), bool, timeout=10)
    record = decode(b"ACC-1", b"gtd-60", raw)
    assert (record.time_in_force, record.expire_at_unix_ms, record.working_until_unix_ms) == (
        GTD, expiry, expiry)
