"""Margin over a real gRPC channel, with its rates written to a real redis-server.

The pre-trade check (MARGIN_SHORTFALL) and StreamPortfolio's equity, margin
used and excess, and its MARGIN_CALL alert raised and cleared.
"""

from __future__ import annotations

import subprocess

import pytest
import redis

from book import codes, order, seed_account, seed_lots, wait_until
from pretrade.app.devredis import find_redis_cli
from pretrade.stream.portfolio import value_margin
from pretrade.v1 import risk_pb2 as pb
from test_portfolio import next_change, next_matching, subscribe, tick

PRICE = 1_000_000                           # $100.0000


@pytest.fixture
def margined(redis_client: redis.Redis, redis_server) -> redis.Redis:
    """100 AAPL bought at $100, last $100; 50% initial and 25% maintenance margin
    long, written with redis-cli; $5,000 of cash: equity $5,000 = margin used."""
    seed_account(redis_client, price=PRICE)
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 100, PRICE)])
    script = ("HSET instrument:AAPL initial_margin_long_bps 5000 initial_margin_short_bps 15000"
              " maintenance_margin_long_bps 2500 maintenance_margin_short_bps 7500\n"
              "HSET balances:{ACC-1} cash 50000000\n")
    subprocess.run([find_redis_cli(), "-p", str(redis_server.port)], input=script.encode(),
                   check=True, capture_output=True, timeout=10)
    return redis_client


def wait_for_margin(gateway) -> None:
    table = gateway.gateway.table
    wait_until(lambda: table.instrument_info(b"AAPL"),
               lambda info: info is not None and info["margin_bps"] == (5000, 15000, 2500, 7500))
    wait_until(lambda: table.account_info(b"ACC-1"),
               lambda info: info is not None and info["cash"] == 50_000_000)
    wait_until(lambda: table.position(b"ACC-1", b"AAPL"), lambda p: p[0] == 100)


def test_stream_margin_is_never_guessed_from_an_unpriced_or_unmargined_book():
    rates = {b"AAPL": (5_000, 15_000, 2_500, 7_500), b"MSFT": (0, 0, 0, 0)}
    held = {b"AAPL": (-10, -10 * PRICE)}
    # a short of 10 at $100: 150% initial, 75% maintenance; $2,000 of balance
    assert value_margin(held, {b"AAPL": PRICE}, rates, 20_000_000) == (
        20_000_000, 15_000_000, 7_500_000)
    assert value_margin(held, {}, rates, 20_000_000) is None                  # no price
    assert value_margin({b"MSFT": (10, PRICE)}, {b"MSFT": PRICE}, rates, 0) is None
    assert value_margin({b"AAPL": (1, 1)}, {b"AAPL": 3}, rates, 0) == (2, 2, 1)  # rounded up


def test_an_order_past_the_equity_is_a_margin_shortfall_and_a_reducing_one_goes(
        margined, gateway, stub):
    wait_for_margin(gateway)
    decision = stub.EvaluateOrder(order(quantity=1, price=PRICE))
    assert [(r.code, r.observed, r.limit) for r in decision.rejections] == [
        (pb.REJECT_CODE_MARGIN_SHORTFALL, 50_500_000, 50_000_000)]
    assert "initial margin would be $5,050.00, over the equity $5,000.00" in (
        decision.rejections[0].message)
    assert stub.EvaluateOrder(order(side=pb.SIDE_SELL, quantity=50, price=PRICE)).approved
    # more cash is more equity: 1 more unit fits once Redis has it
    margined.hset("balances:{ACC-1}", "cash", 50_500_000)
    wait_until(lambda: stub.EvaluateOrder(order(quantity=1, price=PRICE)),
               lambda d: d.approved)


def test_an_account_whose_instruments_have_no_margin_rates_trades_as_before(
        redis_client, gateway, stub):
    seed_account(redis_client, price=PRICE)
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 100, PRICE)])
    redis_client.hset("balances:{ACC-1}", "cash", 50_000_000)
    wait_until(lambda: gateway.gateway.table.account_info(b"ACC-1"),
               lambda info: info is not None and info["cash"] == 50_000_000)
    wait_until(lambda: stub.EvaluateOrder(order(quantity=40, price=PRICE)),
               lambda d: d.approved)
    totals = next_change(subscribe(stub)).totals
    assert (totals.margined, totals.equity, totals.margin_used) == (False, 0, 0)


def test_a_margin_rate_that_does_not_parse_fails_the_symbol_closed(margined, gateway, stub):
    wait_for_margin(gateway)
    margined.hset("instrument:AAPL", "initial_margin_long_bps", "50%")
    decision = wait_until(lambda: stub.EvaluateOrder(order(side=pb.SIDE_SELL, quantity=1,
                                                           price=PRICE)),
                          lambda d: not d.approved)
    assert codes(decision) == [pb.REJECT_CODE_INVALID_STATE]
    margined.hset("instrument:AAPL", "initial_margin_long_bps", 5_000)
    wait_until(lambda: stub.EvaluateOrder(order(side=pb.SIDE_SELL, quantity=1, price=PRICE)),
               lambda d: d.approved)
    margined.hset("instrument:AAPL", "initial_margin_long_bps", 100_001)   # past 1,000%
    decision = wait_until(lambda: stub.EvaluateOrder(order(side=pb.SIDE_SELL, quantity=1,
                                                           price=PRICE)),
                          lambda d: not d.approved)
    assert codes(decision) == [pb.REJECT_CODE_INVALID_STATE]


def test_the_portfolio_stream_shows_equity_and_margin_and_raises_and_clears_a_margin_call(
        margined, gateway, stub):
    wait_for_margin(gateway)
    stream = subscribe(stub)
    snapshot = next_change(stream)
    totals = snapshot.totals
    assert (totals.margined, totals.equity, totals.margin_used, totals.margin_excess,
            totals.maintenance_margin) == (True, 50_000_000, 50_000_000, 0, 25_000_000)
    assert not [a for a in snapshot.alerts if a.kind == pb.ALERT_KIND_MARGIN_CALL]
    # $60: equity $5,000 - $4,000 = $1,000, under the $1,500 maintenance margin
    tick(margined, "AAPL", 600_000)
    update = next_matching(stream, lambda u: bool(u.alerts))
    [call] = update.alerts
    assert (call.kind, call.code, call.observed, call.limit) == (
        pb.ALERT_KIND_MARGIN_CALL, pb.REJECT_CODE_MARGIN_SHORTFALL, 10_000_000, 15_000_000)
    assert (update.totals.equity, update.totals.margin_used, update.totals.margin_excess) == (
        10_000_000, 30_000_000, -20_000_000)
    # a new subscriber sees the call in force
    assert [a.kind for a in next_change(subscribe(stub)).alerts] == [pb.ALERT_KIND_MARGIN_CALL]
    # cash paid in: equity $2,000 covers the maintenance margin again
    margined.hset("balances:{ACC-1}", "cash", 60_000_000)
    update = next_matching(stream, lambda u: bool(u.alerts))
    assert [a.kind for a in update.alerts] == [pb.ALERT_KIND_MARGIN_CALL_CLEARED]
    assert update.totals.equity == 20_000_000
