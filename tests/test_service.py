"""EvaluateOrder and Halt over a real gRPC channel, against a real redis-server."""

from __future__ import annotations

import subprocess

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from book import (
    GENEROUS_LIMITS,
    codes,
    order,
    seed_account,
    seed_instrument,
    seed_limits,
    seed_lots,
    wait_until,
)
from pretrade.app.devredis import find_redis_cli
from pretrade.v1 import risk_pb2 as pb


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    return redis_client


def test_order_within_every_limit_is_approved(seeded, stub):
    decision = stub.EvaluateOrder(order(quantity=10, price=683_378))
    assert decision.approved, decision
    assert list(decision.rejections) == []
    assert decision.order_id.startswith("o-")
    assert decision.notional == 6_833_780
    assert decision.latency_ns > 0


def test_order_over_max_quantity_is_rejected_with_its_code_and_figures(seeded, stub):
    decision = stub.EvaluateOrder(order(quantity=1_001))
    assert not decision.approved
    assert codes(decision) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]
    rejection = decision.rejections[0]
    assert (rejection.observed, rejection.limit) == (1_001, 1_000)
    assert "1,001" in rejection.message and "1,000" in rejection.message  # as people read them


def test_order_at_exactly_max_quantity_is_approved(seeded, stub):
    assert stub.EvaluateOrder(order(quantity=1_000)).approved


def test_every_failed_check_is_listed_not_only_the_first(seeded, stub):
    # 5,000 x $68.3378 breaks quantity and notional at once
    decision = stub.EvaluateOrder(order(quantity=5_000))
    assert codes(decision) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY,
                               pb.REJECT_CODE_MAX_ORDER_NOTIONAL]


def test_unknown_account_is_rejected_not_approved(seeded, stub):
    decision = stub.EvaluateOrder(order(account="NOBODY"))
    assert not decision.approved
    assert pb.REJECT_CODE_UNKNOWN_ACCOUNT in codes(decision)


def test_unknown_symbol_is_rejected(seeded, stub):
    decision = stub.EvaluateOrder(order(symbol="NOSUCH"))
    assert codes(decision) == [pb.REJECT_CODE_UNKNOWN_SYMBOL]


def test_account_with_holdings_but_no_limits_is_rejected(redis_client, stub):
    seed_instrument(redis_client, "AAPL", price=683_378)
    seed_lots(redis_client, "ACC-9", [("L1", "AAPL", 5, 683_378)])
    decision = wait_until(lambda: stub.EvaluateOrder(order(account="ACC-9")),
                          lambda d: pb.REJECT_CODE_UNKNOWN_ACCOUNT not in codes(d))
    assert codes(decision) == [pb.REJECT_CODE_LIMITS_NOT_CONFIGURED]
    assert "max_order_quantity" in decision.rejections[0].message


def test_quantity_times_price_overflow_is_rejected_not_wrapped(seeded, stub):
    decision = stub.EvaluateOrder(order(quantity=2**62, price=683_378))
    assert not decision.approved
    assert pb.REJECT_CODE_ARITHMETIC_OVERFLOW in codes(decision)


@pytest.mark.parametrize(("quantity", "price", "code"), [
    (0, 683_378, pb.REJECT_CODE_INVALID_QUANTITY),
    (-5, 683_378, pb.REJECT_CODE_INVALID_QUANTITY),
    (10, 0, pb.REJECT_CODE_INVALID_PRICE),
    (10, -1, pb.REJECT_CODE_INVALID_PRICE),
])
def test_non_positive_quantity_or_price_gets_its_own_code(seeded, stub, quantity, price, code):
    decision = stub.EvaluateOrder(order(quantity=quantity, price=price))
    assert not decision.approved
    assert code in codes(decision)


def test_market_order_is_valued_at_the_last_price(seeded, stub):
    decision = stub.EvaluateOrder(order(order_type=pb.ORDER_TYPE_MARKET, price=0, quantity=3))
    assert decision.approved
    assert decision.notional == 3 * 683_378


@pytest.fixture
def unpriced(redis_client: redis.Redis) -> redis.Redis:
    seed_instrument(redis_client, "NOPX")
    seed_limits(redis_client, "ACC-1", **GENEROUS_LIMITS)
    return redis_client


def test_market_order_without_a_last_price_is_rejected(unpriced, stub):
    decision = stub.EvaluateOrder(order(symbol="NOPX", order_type=pb.ORDER_TYPE_MARKET))
    assert codes(decision) == [pb.REJECT_CODE_PRICE_UNAVAILABLE]


@pytest.mark.parametrize("bad", [
    {"order_id": ""},
    {"account_id": ""},
    {"symbol": ""},
    {"side": pb.SIDE_UNSPECIFIED},
    {"order_type": pb.ORDER_TYPE_UNSPECIFIED},
    {"side": 42},
    {"account_id": "x" * 40},
    {"symbol": "BAD SYMBOL"},
])
def test_malformed_order_is_invalid_argument_with_a_clear_message(seeded, stub, bad):
    request = order()
    for field, value in bad.items():
        setattr(request, field, value)
    with pytest.raises(grpc.RpcError) as raised:
        stub.EvaluateOrder(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert next(iter(bad)).split("_")[0] in raised.value.details()


@pytest.fixture
def holding_4990(redis_client: redis.Redis) -> redis.Redis:
    """Seeded before the gateway starts, so its first load already has it."""
    seed_account(redis_client)
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 4_000, 683_378),
                                      ("L2", "AAPL", 990, 688_200)])
    return redis_client


def test_position_limits_use_the_position_from_lots(holding_4990, stub):
    # 4,990 held; max long 5,000
    decision = stub.EvaluateOrder(order(quantity=11))
    assert codes(decision) == [pb.REJECT_CODE_MAX_NET_POSITION,
                               pb.REJECT_CODE_MAX_LONG_POSITION]
    assert stub.EvaluateOrder(order(quantity=10)).approved


def test_position_written_by_redis_cli_changes_the_next_decision(seeded, stub, redis_url):
    assert stub.EvaluateOrder(order(quantity=600)).approved
    # One redis-cli session, one MULTI/EXEC: the lot lands whole (docs/redis-schema.md)
    script = ("MULTI\nHSET tickers_by_lot:{ACC-1} L7 AAPL\n"
              "HSET quantities_by_lot:{ACC-1} L7 4500\n"
              "HSET prices_by_lot:{ACC-1} L7 683378\nEXEC\n")
    subprocess.run([find_redis_cli(), "-u", redis_url], input=script.encode(),
                   check=True, capture_output=True, timeout=10)
    # 4,500 held + 600 > 5,000 max long
    decision = wait_until(lambda: stub.EvaluateOrder(order(quantity=600)),
                          lambda d: not d.approved)
    assert pb.REJECT_CODE_MAX_LONG_POSITION in codes(decision)


def test_limit_change_in_redis_applies_without_restart(seeded, stub):
    assert stub.EvaluateOrder(order(quantity=500)).approved
    seeded.hset("limits:{ACC-1}", "max_order_quantity", 100)
    decision = wait_until(lambda: stub.EvaluateOrder(order(quantity=500)),
                          lambda d: not d.approved)
    assert codes(decision) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]


def test_per_symbol_override_wins_over_the_account_limit(seeded, stub):
    seeded.hset("limits:{ACC-1}", "max_order_quantity:AAPL", 5)
    decision = wait_until(lambda: stub.EvaluateOrder(order(quantity=6)),
                          lambda d: not d.approved)
    assert (decision.rejections[0].code, decision.rejections[0].limit) == (
        pb.REJECT_CODE_MAX_ORDER_QUANTITY, 5)
    seeded.hdel("limits:{ACC-1}", "max_order_quantity:AAPL")
    wait_until(lambda: stub.EvaluateOrder(order(quantity=6)), lambda d: d.approved)


def test_unparseable_lot_fails_closed_with_invalid_state(seeded, stub):
    seed_lots(seeded, "ACC-1", [("L1", "AAPL", 5, 683_378)])
    seeded.hset("quantities_by_lot:{ACC-1}", "L1", "5.5")
    decision = wait_until(lambda: stub.EvaluateOrder(order()), lambda d: not d.approved)
    assert codes(decision) == [pb.REJECT_CODE_INVALID_STATE]
    seeded.hset("quantities_by_lot:{ACC-1}", "L1", "5")
    wait_until(lambda: stub.EvaluateOrder(order()), lambda d: d.approved)


def test_health_is_serving_once_loaded_and_reflection_lists_the_service(seeded, gateway,
                                                                       channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "pretrade.v1.PreTradeRisk"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "pretrade.v1.PreTradeRisk" in services
    assert "grpc.health.v1.Health" in services


def test_a_client_without_the_proto_can_call_evaluate_order_through_reflection(seeded,
                                                                              channel):
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("pretrade.v1.PreTradeRisk").FindMethodByName(
        "EvaluateOrder")
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    request = json_format.ParseDict({
        "order_id": "r-1", "account_id": "ACC-1", "symbol": "AAPL", "side": "SIDE_BUY",
        "quantity": 10, "price": 683378, "order_type": "ORDER_TYPE_LIMIT"}, request_class())
    call = channel.unary_unary("/pretrade.v1.PreTradeRisk/EvaluateOrder",
                               request_serializer=request_class.SerializeToString,
                               response_deserializer=reply_class.FromString)
    reply = json_format.MessageToDict(call(request, timeout=5))
    assert reply["approved"] is True
    assert reply["orderId"] == "r-1"



def test_minimum_notional_written_by_redis_cli_rejects_small_orders_but_not_closing_ones(
        seeded, gateway, stub, redis_server):
    # Item 7 end to end: $1,000 per order for the account, $100 for AAPL, set
    # with redis-cli; a residual of 1 AAPL ($68.3378) stays sellable.
    seed_instrument(seeded, "MSFT", price=683_378)
    seed_lots(seeded, "ACC-1", [("L1", "AAPL", 1, 683_378)])
    script = "HSET limits:{ACC-1} min_order_notional 10000000 min_order_notional:AAPL 1000000\n"
    subprocess.run([find_redis_cli(), "-p", str(redis_server.port)], input=script.encode(),
                   check=True, capture_output=True, timeout=10)
    table = gateway.gateway.table
    wait_until(lambda: table.position(b"ACC-1", b"AAPL"), lambda p: p[0] == 1)
    # 1 x $68.3378 < $100 (the AAPL override)
    decision = wait_until(lambda: stub.EvaluateOrder(order(quantity=1)),
                          lambda d: not d.approved)
    assert [(r.code, r.observed, r.limit) for r in decision.rejections] == [
        (pb.REJECT_CODE_MIN_ORDER_NOTIONAL, 683_378, 1_000_000)]
    assert "below the minimum $100.00" in decision.rejections[0].message
    assert stub.EvaluateOrder(order(quantity=2)).approved                 # $136.6756
    assert stub.EvaluateOrder(order(side=pb.SIDE_SELL, quantity=1)).approved  # closes
    # MSFT has no override: the account's $1,000; 10 x $68.3378 is below it
    decision = stub.EvaluateOrder(order(symbol="MSFT", quantity=10))
    assert [(r.code, r.limit) for r in decision.rejections] == [
        (pb.REJECT_CODE_MIN_ORDER_NOTIONAL, 10_000_000)]
    assert stub.EvaluateOrder(order(symbol="MSFT", quantity=15)).approved  # $1,025.0670
