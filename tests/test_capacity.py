"""Capacity: what does not fit in the table fails closed on its own; nobody takes another's room.

Real gateways over the real redis-server: an account, instrument or position
past the table's capacity, or more decided orders in Redis than the table
holds, must not stop the sync (every other account keeps trading), and one
trader sending order ids by the thousand must not use up the order table for
the others. An order id whose record left the table still replays its
original decision, read back from its durable copy in ``orders:{ACC}``.
"""

from __future__ import annotations

import grpc
import pytest
import redis

from book import codes, order, seed_account, seed_instrument, seed_limits, seed_lots, wait_until
from pretrade.state.journal import DecidedOrder
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc


def stub_of(gateway) -> tuple[grpc.Channel, risk_pb2_grpc.PreTradeRiskStub]:
    channel = grpc.insecure_channel(gateway.target)
    return channel, risk_pb2_grpc.PreTradeRiskStub(channel)


def status(stub: risk_pb2_grpc.PreTradeRiskStub) -> pb.ServerStatus:
    return stub.GetStatus(pb.StatusRequest(), timeout=5)


def capacity_rejection(decision: pb.Decision) -> pb.Rejection:
    found = [r for r in decision.rejections if r.code == pb.REJECT_CODE_CAPACITY_EXHAUSTED]
    assert found, f"no CAPACITY_EXHAUSTED in {list(decision.rejections)}"
    return found[0]


# -- item 6: one entity over capacity fails closed alone --


def test_an_account_whose_positions_do_not_fit_fails_closed_alone(redis_client, start_gateway,
                                                                 caplog):
    seed_account(redis_client)
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 10, 683_378)])
    for n in range(12):
        seed_instrument(redis_client, f"S{n}", price=10_000)
    seed_limits(redis_client, "BIG")
    seed_lots(redis_client, "BIG", [(f"L{n}", f"S{n}", 10, 10_000) for n in range(12)])
    # 8 position slots: ACC-1's one fits, BIG's twelve do not
    gateway = start_gateway(max_positions=8)
    channel, stub = stub_of(gateway)
    with channel:
        assert stub.EvaluateOrder(order()).approved
        rejected = stub.EvaluateOrder(order(account="BIG", symbol="S0", price=10_000))
        assert not rejected.approved
        rejection = capacity_rejection(rejected)
        assert (rejection.observed, rejection.limit) == (pb.CAPACITY_POSITIONS, 8)
        assert "position" in rejection.message and "8" in rejection.message
        state = status(stub)
        assert state.sync_live and state.capacity_exhausted == 1
        # the sync follows Redis: not a crash loop (a change to ACC-1 takes effect)
        redis_client.hset("limits:{ACC-1}", "max_order_quantity", 5)
        wait_until(lambda: codes(stub.EvaluateOrder(order())),
                   lambda c: c == [pb.REJECT_CODE_MAX_ORDER_QUANTITY])
        # BIG's lots change again (re-read, still too many): refused, counted
        # and logged once
        refreshes = status(stub).sync_refreshes
        redis_client.hset("quantities_by_lot:{BIG}", "L0", 20)
        wait_until(lambda: status(stub).sync_refreshes, lambda n: n > refreshes)
        assert capacity_rejection(stub.EvaluateOrder(order(account="BIG", symbol="S1",
                                                           price=10_000)))
        assert status(stub).capacity_exhausted == 1
        logged = [r for r in caplog.records if "does not fit" in r.getMessage()]
        assert len(logged) == 1 and "BIG" in logged[0].getMessage()


def test_accounts_and_instruments_past_capacity_fail_closed_alone(redis_client, start_gateway):
    seed_account(redis_client)
    for name in ("ACC-2", "ZZ-OVER-1", "ZZ-OVER-2"):
        seed_limits(redis_client, name)
    for symbol in ("MSFT", "ZZZ"):
        seed_instrument(redis_client, symbol, price=683_378)
    # three account records, two instrument records
    gateway = start_gateway(max_accounts=3, max_instruments=2)
    channel, stub = stub_of(gateway)
    with channel:
        assert stub.EvaluateOrder(order()).approved
        assert stub.EvaluateOrder(order(account="ACC-2", symbol="MSFT")).approved
        over = stub.EvaluateOrder(order(account="ZZ-OVER-2"))
        rejection = capacity_rejection(over)
        assert (rejection.observed, rejection.limit) == (pb.CAPACITY_ACCOUNTS, 3)
        assert "account" in rejection.message
        over = stub.EvaluateOrder(order(symbol="ZZZ"))
        rejection = capacity_rejection(over)
        assert (rejection.observed, rejection.limit) == (pb.CAPACITY_INSTRUMENTS, 2)
        assert "instrument" in rejection.message or "symbol" in rejection.message
        assert status(stub).capacity_exhausted >= 2


def write_decided(client: redis.Redis, account: str, count: int, *, approved: bool,
                  prefix: str = "W") -> None:
    """Decided orders as the journal writes them: approved ones of one unit, or rejected."""
    fields = {}
    for n in range(count):
        record = DecidedOrder(
            account.encode(), f"{prefix}{n}".encode(), b"AAPL", pb.SIDE_BUY,
            pb.ORDER_TYPE_LIMIT, 1, 683_378, 683_378, 683_378 if approved else 0, b"XNAS", b"",
            approved, () if approved else ((pb.REJECT_CODE_MAX_ORDER_QUANTITY, 1, 0),))
        fields[record.order_id] = record.encode()
    client.hset(f"orders:{{{account}}}", mapping=fields)


def test_a_restart_with_fewer_max_orders_than_redis_holds_goes_live(redis_client,
                                                                    start_gateway):
    seed_account(redis_client)
    seed_limits(redis_client, "BIG")
    write_decided(redis_client, "BIG", 40, approved=True)
    gateway = start_gateway(max_orders=16)
    channel, stub = stub_of(gateway)
    with channel:
        state = status(stub)
        assert state.sync_live and state.capacity_exhausted == 1
        assert stub.EvaluateOrder(order()).approved
        rejected = stub.EvaluateOrder(order(account="BIG"))
        rejection = capacity_rejection(rejected)
        assert rejection.observed in (pb.CAPACITY_ORDER_TABLE, pb.CAPACITY_ACCOUNT_ORDERS)
        assert "order" in rejection.message


# -- item 7: a bounded share of the order table per account --


def flood(stub: risk_pb2_grpc.PreTradeRiskStub, batches: int, size: int) -> list[pb.Decision]:
    """Batches of orders that are all rejected (over max_order_quantity) and remembered."""
    decisions = []
    for batch in range(batches):
        reply = stub.EvaluateOrders(pb.OrderBatch(orders=[
            order(account="FLOOD", quantity=1_001, order_id=f"F{batch}-{n}")
            for n in range(size)]), timeout=60)
        assert not any(d.approved for d in reply.decisions)
        decisions.extend(reply.decisions)
    return decisions


def test_a_trader_flooding_rejected_ids_cannot_exhaust_another_accounts_capacity(
        redis_client, start_gateway):
    seed_account(redis_client)
    seed_limits(redis_client, "FLOOD")
    gateway = start_gateway(max_orders=4_000)
    channel, stub = stub_of(gateway)
    with channel:
        decisions = flood(stub, 5, 1_000)
        # others still trade: the flood took no more than its share
        assert stub.EvaluateOrder(order()).approved
        assert status(stub).orders <= 4_000
        # every flooded id was answered with its rejection; those the share
        # could not remember also say what is full
        for decision in decisions:
            assert pb.REJECT_CODE_MAX_ORDER_QUANTITY in codes(decision)
        unremembered = [d for d in decisions
                        if pb.REJECT_CODE_CAPACITY_EXHAUSTED in codes(d)]
        for decision in unremembered:
            rejection = capacity_rejection(decision)
            assert rejection.observed == pb.CAPACITY_ACCOUNT_ORDERS
            assert "share" in rejection.message
        # the first flooded id left the table long ago: it replays from Redis
        first = decisions[0]
        assert pb.REJECT_CODE_CAPACITY_EXHAUSTED not in codes(first)
        again = stub.EvaluateOrder(order(account="FLOOD", quantity=1_001, order_id="F0-0"))
        assert again.replayed and codes(again) == codes(first)
    gateway.stop()
    # the remembered rejections survive a restart without filling the table
    restarted = start_gateway("restarted", max_orders=4_000)
    channel, stub = stub_of(restarted)
    with channel:
        assert status(stub).sync_live
        assert stub.EvaluateOrder(order()).approved
        again = stub.EvaluateOrder(order(account="FLOOD", quantity=1_001, order_id="F0-0"))
        assert again.replayed and codes(again) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]


def test_an_expired_rejected_order_id_replays_its_original_decision(redis_client,
                                                                    start_gateway):
    seed_account(redis_client)
    gateway = start_gateway(order_expiry_ms=100)
    table = gateway.gateway.table
    channel, stub = stub_of(gateway)
    with channel:
        first = stub.EvaluateOrder(order(quantity=1_001, order_id="R1"))
        assert codes(first) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]
        approved = stub.EvaluateOrder(order(quantity=100, order_id="A1"))
        assert approved.approved
        # the order system reports A1 filled: it stops working, and expires too
        with redis_client.pipeline(transaction=True) as pipe:
            pipe.hset("tickers_by_lot:{ACC-1}", "L1", "AAPL")
            pipe.hset("quantities_by_lot:{ACC-1}", "L1", 100)
            pipe.hset("prices_by_lot:{ACC-1}", "L1", 683_378)
            pipe.hset("orders_by_lot:{ACC-1}", "L1", "A1")
            pipe.execute()
        wait_until(lambda: (table.order_info(b"ACC-1", b"R1"), table.order_info(b"ACC-1", b"A1")),
                   lambda infos: infos == (None, None))
        assert table.position_and_working(b"ACC-1", b"AAPL") == (100, 0, 0)
        # re-sent: the original decisions, from their durable records
        again = stub.EvaluateOrder(order(quantity=1_001, order_id="R1"))
        assert again.replayed and not again.approved
        assert [(r.code, r.observed, r.limit) for r in again.rejections] == [
            (r.code, r.observed, r.limit) for r in first.rejections]
        again = stub.EvaluateOrder(order(quantity=100, order_id="A1"))
        assert again.replayed and again.approved and again.notional == approved.notional
        # nothing was reserved again
        assert table.position_and_working(b"ACC-1", b"AAPL") == (100, 0, 0)
        # the same id for a different order is still a duplicate
        assert codes(stub.EvaluateOrder(order(quantity=5, order_id="R1"))) == [
            pb.REJECT_CODE_DUPLICATE_ORDER_ID]
        # and a batch replays expired ids too
        batch = stub.EvaluateOrders(pb.OrderBatch(orders=[
            order(quantity=1_001, order_id="R1"), order(quantity=3, order_id="N1")]))
        assert [d.replayed for d in batch.decisions] == [True, False]
        assert [d.approved for d in batch.decisions] == [False, True]


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "durable-off"])
def test_the_account_share_is_a_setting_and_says_what_is_full(redis_client, start_gateway,
                                                              durable):
    seed_account(redis_client)
    gateway = start_gateway(max_orders_per_account=3, durable_decisions=durable)
    channel, stub = stub_of(gateway)
    with channel:
        for n in range(3):
            assert stub.EvaluateOrder(order(quantity=10, order_id=f"K{n}")).approved
        # three working orders fill the share: nothing can leave the table
        over = stub.EvaluateOrder(order(quantity=10, order_id="K3"))
        rejection = capacity_rejection(over)
        assert (rejection.observed, rejection.limit) == (pb.CAPACITY_ACCOUNT_ORDERS, 3)
        assert "max_orders_per_account" in rejection.message
        # not remembered: the same id gets a real decision once there is room.
        # K0 is cancelled; with its durable copy in Redis its record may leave
        # the table for K3, without one it may not (fail closed)
        redis_client.hset("cancels:{ACC-1}", "K0", 1)
        wait_until(lambda: (gateway.gateway.table.order_info(b"ACC-1", b"K0") or {}).get("status"),
                   lambda state: state == "done")
        again = stub.EvaluateOrder(order(quantity=10, order_id="K3"))
        if durable:
            assert again.approved and not again.replayed
        else:
            assert capacity_rejection(again).observed == pb.CAPACITY_ACCOUNT_ORDERS


def test_a_false_alarm_of_the_evicted_id_filter_is_read_once_and_decided(redis_client,
                                                                        start_gateway):
    seed_account(redis_client)
    gateway = start_gateway(max_orders_per_account=50)
    table = gateway.gateway.table
    channel, stub = stub_of(gateway)
    with channel:
        # 2,000 rejected ids through a share of 50: about 1,950 leave the table
        for batch in range(40):
            reply = stub.EvaluateOrders(pb.OrderBatch(orders=[
                order(quantity=1_001, order_id=f"X{batch}-{n}") for n in range(50)]))
            assert not any(d.approved for d in reply.decisions)
        assert status(stub).orders_evicted >= 1_900
        # a fresh id the filter claims (a false positive): no durable copy exists
        fresh = next(candidate for n in range(100_000)
                     if table.order_id_may_have_expired(
                         b"ACC-1", (candidate := f"fresh-{n}").encode()))
        assert not redis_client.hexists("orders:{ACC-1}", fresh)
        decision = stub.EvaluateOrder(order(order_id=fresh))
        assert decision.approved and not decision.replayed
        assert redis_client.hexists("orders:{ACC-1}", fresh)
        # and an id that truly left replays its rejection
        again = stub.EvaluateOrder(order(quantity=1_001, order_id="X0-0"))
        assert again.replayed and codes(again) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]
