"""Each holding carries its instrument's currency, from Redis to StreamPortfolio.

The currency travels in the shared table's instrument row (``currency``,
packed ISO 4217), so every server process of ``pretrade serve`` reads it
there; a symbol whose ``instrument:<SYM>`` names none has ``default_currency``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from book import codes, order, seed_account, seed_instrument, seed_lots, wait_until
from pretrade.engine.table import new_private_table
from pretrade.state.schema import StateError, instrument_key, parse_instrument
from pretrade.stream.portfolio import sum_totals, value_holding
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve

STREAM_TIMEOUT = 20.0


def snapshot(stub: risk_pb2_grpc.PreTradeRiskStub, account: str = "ACC-1") -> pb.PortfolioUpdate:
    request = pb.PortfolioRequest(account_id=account)
    return next(stub.StreamPortfolio(request, timeout=STREAM_TIMEOUT))


def currencies(update: pb.PortfolioUpdate) -> dict[str, str]:
    return {holding.symbol: holding.currency for holding in update.holdings}


@pytest.fixture
def served(redis_client: redis.Redis, redis_url: str, tmp_path: Path
           ) -> Iterator[risk_pb2_grpc.PreTradeRiskStub]:
    """``pretrade serve`` (a sync process and a server process) with default_currency EUR."""
    seed_account(redis_client)
    server = Serve(tmp_path, "currency", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   env={"PRETRADE_DEFAULT_CURRENCY": "eur"})
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        with grpc.insecure_channel(server.target) as channel:
            yield risk_pb2_grpc.PreTradeRiskStub(channel)
    finally:
        server.kill()


def test_a_currency_written_to_redis_reaches_holding_currency_in_a_served_process(
        redis_client, served):
    redis_client.hset(instrument_key(b"AAPL"), "currency", "USD")
    seed_instrument(redis_client, "SAP", price=1_200_000)
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 10, 683_378)])
    first = wait_until(lambda: snapshot(served), lambda s: currencies(s) == {"AAPL": "USD"})
    assert first.totals.currency == "USD"

    # Changing the instrument's currency alone reaches the holding too.
    redis_client.hset(instrument_key(b"AAPL"), "currency", "GBP")
    later = wait_until(lambda: snapshot(served), lambda s: currencies(s) == {"AAPL": "GBP"})
    assert later.totals.currency == "GBP"


def test_a_symbol_without_a_currency_has_the_default_and_mixed_totals_have_none(
        redis_client, served):
    redis_client.hset(instrument_key(b"AAPL"), "currency", "USD")
    seed_instrument(redis_client, "SAP", price=1_200_000)  # no currency field: EUR
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 10, 683_378), ("L2", "SAP", 5, 1_190_000)])
    mixed = wait_until(lambda: snapshot(served),
                       lambda s: currencies(s) == {"AAPL": "USD", "SAP": "EUR"})
    assert mixed.totals.currency == ""
    # The figures are still summed (the proto says not to read them as one amount).
    assert mixed.totals.cost_basis == 10 * 683_378 + 5 * 1_190_000


def test_a_malformed_currency_makes_the_instrument_invalid_and_its_orders_rejected(
        redis_client, stub):
    seed_account(redis_client)
    wait_until(lambda: stub.EvaluateOrder(order(), timeout=5), lambda d: codes(d) == [])
    redis_client.hset(instrument_key(b"AAPL"), "currency", "usd")
    decision = wait_until(lambda: stub.EvaluateOrder(order(), timeout=5),
                          lambda d: codes(d) == [pb.REJECT_CODE_INVALID_STATE])
    [rejection] = decision.rejections
    assert rejection.observed == 3  # HALT_SCOPE_SYMBOL: the instrument, not the account
    redis_client.hset(instrument_key(b"AAPL"), "currency", "USD")
    wait_until(lambda: stub.EvaluateOrder(order(), timeout=5), lambda d: codes(d) == [])


@pytest.mark.parametrize("raw", [b"usd", b"US", b"USDT", b"US$", b"", "€UR".encode()])
def test_the_parser_refuses_anything_but_three_capital_letters(raw):
    with pytest.raises(StateError, match="ISO 4217"):
        parse_instrument({b"currency": raw})
    assert parse_instrument({b"currency": b"JPY"}).currency == "JPY"
    assert parse_instrument({}).currency == ""


def test_the_table_stores_the_currency_in_the_instrument_row_and_refuses_bad_codes(tmp_path):
    table = new_private_table(max_accounts=4, max_instruments=4, max_positions=4)
    table.set_instrument(b"AAPL", known=True, currency="CHF")
    assert table.instrument_info(b"AAPL")["currency"] == "CHF"
    table.set_instrument(b"AAPL", known=True)
    assert table.instrument_info(b"AAPL")["currency"] == ""
    for bad in ("chf", "CH", "CHFX", "C1F"):
        with pytest.raises(ValueError, match="ISO 4217"):
            table.set_instrument(b"AAPL", known=True, currency=bad)


def test_totals_take_the_one_currency_of_the_holdings_else_none():
    usd = value_holding(b"AAPL", 10, 6_833_780, 683_378, "USD")
    eur = value_holding(b"SAP", 5, 5_950_000, 1_200_000, "EUR")
    assert usd.currency == "USD"
    assert sum_totals([usd], 0, "JPY").currency == "USD"
    assert sum_totals([usd, eur], 0).currency == ""
    assert sum_totals([], 0, "JPY").currency == "JPY"


def test_a_decision_carries_its_instruments_currency(redis_client, stub):
    seed_account(redis_client)
    wait_until(lambda: stub.EvaluateOrder(order(), timeout=5),
               lambda d: d.approved and d.currency == "USD")  # none given: the default
    redis_client.hset(instrument_key(b"AAPL"), "currency", "JPY")
    wait_until(lambda: stub.EvaluateOrder(order(), timeout=5), lambda d: d.currency == "JPY")
