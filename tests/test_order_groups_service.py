"""OCO order groups end to end: a real gRPC channel, state written by redis-cli.

A long of 100 AAPL and a reduce-only halt are written with redis-cli; the
order system sends a take-profit and a stop-loss that each close the long,
as one OCO group. Both are closing orders, the pair reserves 100 units, and
the other leg stops counting when its cancel is reported (the fill of one
leg, a lot written with redis-cli, ends no other).
"""

from __future__ import annotations

import grpc
import pytest
import redis

from book import codes, differences_from_a_fresh_load, order, redis_cli, seed_account, wait_until
from pretrade.state.journal import decode
from pretrade.v1 import risk_pb2 as pb

PRICE = 683_378
OCO = pb.CONTINGENCY_ONE_CANCELS_OTHER


@pytest.fixture
def long_and_reduce_only(redis_client: redis.Redis, redis_url: str) -> redis.Redis:
    """100 AAPL long (one lot), and the account halted REDUCE_ONLY, with redis-cli."""
    seed_account(redis_client)
    redis_cli(redis_url,
              "HSET tickers_by_lot:{ACC-1} L1 AAPL\n"
              "HSET quantities_by_lot:{ACC-1} L1 100\n"
              f"HSET prices_by_lot:{{ACC-1}} L1 {PRICE}\n"
              "HSET halt:account:ACC-1 mode REDUCE_ONLY reason 'risk review' by alice\n")
    return redis_client


def exit_leg(order_id: str, price: int, group: str = "EXIT-1", **fields: object) -> pb.Order:
    leg = order(side=pb.SIDE_SELL, quantity=100, price=price, order_id=order_id)
    leg.group_id, leg.contingency = group, OCO
    for name, value in fields.items():
        setattr(leg, name, value)
    return leg


def working(gateway) -> tuple[int, int, int]:
    return gateway.gateway.table.position_and_working(b"ACC-1", b"AAPL")


def test_a_take_profit_and_a_stop_loss_of_one_oco_group_both_close_the_long(
        long_and_reduce_only, gateway, stub):
    wait_until(lambda: working(gateway), lambda state: state == (100, 0, 0))
    wait_until(lambda: gateway.gateway.table.halt_mode(pb.HALT_SCOPE_ACCOUNT, b"ACC-1"),
               lambda mode: mode == pb.HALT_MODE_REDUCE_ONLY)
    take_profit = stub.EvaluateOrder(exit_leg("TP", PRICE + 50_000))
    stop_loss = stub.EvaluateOrder(exit_leg("SL", PRICE - 50_000))
    assert take_profit.approved and stop_loss.approved, (take_profit, stop_loss)
    assert working(gateway) == (100, 0, 100)
    # the same exit outside the group sells 200 of a long 100
    assert codes(stub.EvaluateOrder(order(side=pb.SIDE_SELL, quantity=100,
                                          price=PRICE - 40_000, order_id="PLAIN"))) == [
        pb.REJECT_CODE_SHORT_SALE_NOT_MARKED, pb.REJECT_CODE_REDUCE_ONLY]
    # each leg is durable with its group
    record = decode(b"ACC-1", b"SL", long_and_reduce_only.hget("orders:{ACC-1}", "SL"))
    assert (record.group, record.approved) == (b"EXIT-1", True)
    # re-sent: replayed; the same id in another group is another order
    assert stub.EvaluateOrder(exit_leg("SL", PRICE - 50_000)).replayed
    assert codes(stub.EvaluateOrder(exit_leg("SL", PRICE - 50_000, group="EXIT-2")))[0] == (
        pb.REJECT_CODE_DUPLICATE_ORDER_ID)


def test_the_fill_of_one_leg_leaves_the_other_working_until_its_cancel_is_reported(
        long_and_reduce_only, redis_url, gateway, stub):
    wait_until(lambda: working(gateway), lambda state: state == (100, 0, 0))
    assert stub.EvaluateOrder(exit_leg("TP", PRICE + 50_000)).approved
    assert stub.EvaluateOrder(exit_leg("SL", PRICE - 50_000)).approved
    # the take-profit fills whole: a lot of -100, written with redis-cli
    redis_cli(redis_url,
              "MULTI\n"
              "HSET tickers_by_lot:{ACC-1} L2 AAPL\n"
              "HSET quantities_by_lot:{ACC-1} L2 -100\n"
              f"HSET prices_by_lot:{{ACC-1}} L2 {PRICE + 50_000}\n"
              "HSET orders_by_lot:{ACC-1} L2 TP\n"
              "EXEC\n")
    wait_until(lambda: working(gateway), lambda state: state == (0, 0, 100))
    assert gateway.gateway.table.order_info(b"ACC-1", b"SL")["status"] == "working"
    # Found by review: the live table ended SL at TP's fill, a fresh load of
    # the same Redis (a restart, the reconciliation) kept it: the scheduled
    # reconciliation alarmed on every such group. Now they agree.
    live = gateway.gateway.table
    assert differences_from_a_fresh_load(redis_url, live) == []
    # the venue's cancel of the stop-loss, reported: it stops counting
    redis_cli(redis_url, "HSET cancels:{ACC-1} SL 1\n")
    wait_until(lambda: working(gateway), lambda state: state == (0, 0, 0))
    assert gateway.gateway.table.order_info(b"ACC-1", b"SL")["status"] == "done"
    assert differences_from_a_fresh_load(redis_url, live) == []


def test_a_leg_on_another_venue_is_a_group_mismatch(long_and_reduce_only, gateway, stub):
    wait_until(lambda: working(gateway), lambda state: state == (100, 0, 0))
    assert stub.EvaluateOrder(exit_leg("TP", PRICE + 50_000)).approved
    decision = stub.EvaluateOrder(exit_leg("SL", PRICE - 50_000, venue="XNYS"))
    # not a leg of the group, so also the plain sell of 200 of a long 100 it would be
    assert [(r.code, r.observed) for r in decision.rejections] == [
        (pb.REJECT_CODE_GROUP_MISMATCH, 2), (pb.REJECT_CODE_SHORT_SALE_NOT_MARKED, -100),
        (pb.REJECT_CODE_REDUCE_ONLY, pb.HALT_SCOPE_ACCOUNT)]
    assert decision.rejections[0].message == (
        "a working order of the same group_id has another venue: the legs of an order group "
        "are of one symbol, venue and counterparty")
    assert working(gateway) == (100, 0, 100)


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"group_id": "G", "contingency": 0}, "contingency", "group_id needs a contingency"),
    ({"group_id": "", "contingency": OCO}, "group_id", "needs the group_id"),
    ({"group_id": "G\n", "contingency": OCO}, "group_id", "group_id"),
    ({"group_id": "G" * 64, "contingency": OCO}, "group_id", "group_id"),
    ({"group_id": "G", "contingency": 7}, "contingency", "contingency must be"),
])
def test_a_group_without_its_contingency_or_a_bad_group_id_is_invalid_argument(
        long_and_reduce_only, gateway, stub, fields, field, words):
    request = order(side=pb.SIDE_SELL, quantity=1)
    for name, value in fields.items():
        setattr(request, name, value)
    with pytest.raises(grpc.RpcError) as refused:
        stub.EvaluateOrder(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in refused.value.details() and field in refused.value.details()
