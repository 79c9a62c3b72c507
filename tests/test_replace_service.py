"""ReplaceOrder end to end: a real gRPC channel, state written to a real redis-server.

The order system's side of cancel/replace: the replacement's decision, its
durable record in ``orders:{ACC}``, its audit record, and the fill and cancel
contract (docs/redis-schema.md) for a replaced order and its replacement.
"""

from __future__ import annotations

import time

import grpc
import pytest
import redis

from book import codes, order, seed_account, wait_until
from pretrade.audit.entries import AUDIT_STREAM, rows_of
from pretrade.state.journal import decode
from pretrade.v1 import risk_pb2 as pb
from test_fills import PRICE, report_fill


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    redis_client.hset("limits:{ACC-1}", "max_long_position", 100)
    return redis_client


def replace(original: str, new_id: str, quantity: int = 0, price: int = 0,
            account: str = "ACC-1") -> pb.ReplaceRequest:
    return pb.ReplaceRequest(account_id=account, original_order_id=original, order_id=new_id,
                             quantity=quantity, price=price)


def position_and_working(gateway) -> tuple[int, int, int]:
    return gateway.gateway.table.position_and_working(b"ACC-1", b"AAPL")


def test_a_replace_over_grpc_moves_the_reservation_and_is_durable_and_audited(
        seeded, gateway, stub):
    assert stub.EvaluateOrder(order(quantity=60, order_id="A")).approved
    decision = stub.ReplaceOrder(replace("A", "B", quantity=100, price=PRICE - 100))
    assert decision.approved, decision
    assert (decision.order_id, decision.symbol, decision.notional, decision.currency) == (
        "B", "AAPL", 100 * (PRICE - 100), "USD")
    # 100 working, not 160: at the limit of 100 exactly, one more is over
    assert position_and_working(gateway) == (0, 100, 0)
    assert codes(stub.EvaluateOrder(order(quantity=1))) == [pb.REJECT_CODE_MAX_LONG_POSITION]
    # durable before the answer: the replacement's record names its original
    record = decode(b"ACC-1", b"B", seeded.hget("orders:{ACC-1}", "B"))
    assert (record.replaces, record.quantity, record.price, record.approved) == (
        b"A", 100, PRICE - 100, True)
    # the audit record says it is a replace, and of what
    rows = wait_until(lambda: [fields for entry_id, raw in seeded.xrange(AUDIT_STREAM)
                               for _, fields in rows_of(entry_id, raw)
                               if fields.get("order_id") == "B"], lambda found: found)
    assert (rows[0]["replaces"], rows[0]["verdict"], rows[0]["quantity"]) == (
        "A", "APPROVED", "100")
    # re-sent: the same decision, replayed, nothing reserved again
    again = stub.ReplaceOrder(replace("A", "B", quantity=100, price=PRICE - 100))
    assert again.replayed and again.approved
    assert position_and_working(gateway) == (0, 100, 0)


def test_a_rejected_replace_over_grpc_leaves_the_original_working(seeded, gateway, stub):
    assert stub.EvaluateOrder(order(quantity=60, order_id="A")).approved
    decision = stub.ReplaceOrder(replace("A", "B", quantity=101))
    assert [(r.code, r.observed, r.limit) for r in decision.rejections] == [
        (pb.REJECT_CODE_MAX_LONG_POSITION, 101, 100)]
    assert decision.rejections[0].message == (
        "long position would be 101, over the max long position 100")
    assert position_and_working(gateway) == (0, 60, 0)
    report_fill(seeded, "L1", "A", 60)
    wait_until(lambda: position_and_working(gateway), lambda state: state == (60, 0, 0))


def test_replaces_of_unknown_done_and_replaced_orders_get_their_own_codes(seeded, gateway,
                                                                          stub):
    assert codes(stub.ReplaceOrder(replace("nothing", "X1"))) == [
        pb.REJECT_CODE_UNKNOWN_ORIGINAL_ORDER]
    assert stub.EvaluateOrder(order(quantity=10, order_id="A")).approved
    seeded.hset("cancels:{ACC-1}", "A", 1)
    wait_until(lambda: position_and_working(gateway), lambda state: state == (0, 0, 0))
    rejected = stub.ReplaceOrder(replace("A", "X2"))
    assert [(r.code, r.observed) for r in rejected.rejections] == [
        (pb.REJECT_CODE_ORIGINAL_NOT_WORKING, 3)]
    assert "filled or cancelled" in rejected.rejections[0].message
    assert stub.EvaluateOrder(order(quantity=10, order_id="C")).approved
    assert stub.ReplaceOrder(replace("C", "D", quantity=12)).approved
    assert [(r.code, r.observed) for r in stub.ReplaceOrder(replace("C", "E")).rejections] == [
        (pb.REJECT_CODE_ORIGINAL_NOT_WORKING, 4)]


def test_the_fill_contract_covers_a_replaced_order_and_its_replacement(seeded, gateway, stub):
    assert stub.EvaluateOrder(order(quantity=50, order_id="A")).approved
    report_fill(seeded, "L1", "A", 20)
    wait_until(lambda: position_and_working(gateway), lambda state: state == (20, 30, 0))
    # FIX OrderQty: 80 in all, 20 of them filled, so the replacement reserves 60
    assert stub.ReplaceOrder(replace("A", "B", quantity=80)).approved
    assert position_and_working(gateway) == (20, 60, 0)
    # a fill of the original that arrives after the replace counts against B
    report_fill(seeded, "L2", "A", 5)
    wait_until(lambda: position_and_working(gateway), lambda state: state == (25, 55, 0))
    report_fill(seeded, "L3", "B", 15)
    wait_until(lambda: position_and_working(gateway), lambda state: state == (40, 40, 0))
    # a cancel of the replacement releases the rest; the original's id cancels nothing now
    seeded.hset("cancels:{ACC-1}", "A", 1)
    report_fill(seeded, "L4", "B", 1)   # seen after the cancel: B still works
    wait_until(lambda: position_and_working(gateway), lambda state: state == (41, 39, 0))
    seeded.hset("cancels:{ACC-1}", "B", 1)
    wait_until(lambda: position_and_working(gateway), lambda state: state == (41, 0, 0))
    assert below_filled(stub) == [(pb.REJECT_CODE_ORIGINAL_NOT_WORKING, 3)]


def below_filled(stub) -> list[tuple[int, int]]:
    decision = stub.ReplaceOrder(replace("B", "C", quantity=30))
    return [(r.code, r.observed) for r in decision.rejections]


def test_a_replace_below_what_was_filled_is_refused_over_grpc(seeded, gateway, stub):
    assert stub.EvaluateOrder(order(quantity=50, order_id="A")).approved
    report_fill(seeded, "L1", "A", 20)
    wait_until(lambda: position_and_working(gateway), lambda state: state == (20, 30, 0))
    decision = stub.ReplaceOrder(replace("A", "B", quantity=20))
    assert [(r.code, r.observed, r.limit) for r in decision.rejections] == [
        (pb.REJECT_CODE_REPLACE_BELOW_FILLED, 20, 20)]
    assert position_and_working(gateway) == (20, 30, 0)
    assert stub.ReplaceOrder(replace("A", "B", quantity=21)).approved
    assert position_and_working(gateway) == (20, 1, 0)


@pytest.mark.parametrize("request_fields, field", [
    ({"original_order_id": "A", "order_id": ""}, "order_id"),
    ({"original_order_id": "", "order_id": "B"}, "original_order_id"),
    ({"original_order_id": "A", "order_id": "B", "quantity": -1}, "quantity"),
    ({"original_order_id": "A", "order_id": "B", "price": -1}, "price"),
    ({"account_id": "", "original_order_id": "A", "order_id": "B"}, "account_id"),
])
def test_a_malformed_replace_is_invalid_argument_naming_its_field(seeded, gateway, stub,
                                                                  request_fields, field):
    request = pb.ReplaceRequest(**{"account_id": "ACC-1", **request_fields})
    with pytest.raises(grpc.RpcError) as raised:
        stub.ReplaceOrder(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()


def test_a_replacement_over_grpc_keeps_its_originals_time_in_force_until_it_lapses(
        seeded, gateway, stub):
    expiry = time.time_ns() // 1_000_000 + 2_000
    gtd = order(quantity=60, order_id="A")
    gtd.time_in_force, gtd.expire_at_unix_ms = pb.TIME_IN_FORCE_GTD, expiry
    assert stub.EvaluateOrder(gtd).approved
    assert stub.ReplaceOrder(replace("A", "B", quantity=100)).approved
    # durable with the original's time in force and end, so a restart keeps them
    record = decode(b"ACC-1", b"B", seeded.hget("orders:{ACC-1}", "B"))
    assert (record.replaces, record.time_in_force, record.expire_at_unix_ms,
            record.working_until_unix_ms) == (b"A", pb.TIME_IN_FORCE_GTD, expiry, expiry)
    assert position_and_working(gateway) == (0, 100, 0)
    # at A's expiry the replacement stops counting, and can be replaced no more
    wait_until(lambda: position_and_working(gateway), lambda state: state == (0, 0, 0),
               timeout=8)
    assert time.time_ns() // 1_000_000 >= expiry
    assert codes(stub.ReplaceOrder(replace("B", "C", quantity=10))) == [
        pb.REJECT_CODE_ORIGINAL_NOT_WORKING]
