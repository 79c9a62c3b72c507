"""The price feed: ticks XADDed to the Redis stream ``prices`` reach orders and portfolios."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio as aioredis

from book import order, seed_account, seed_lots, wait_until
from conftest import GatewayThread, gateway_settings
from pretrade.app.devredis import RedisServer
from pretrade.engine.table import new_private_table
from pretrade.state.halts import HaltBook
from pretrade.state.prices import PRICE_STREAM, PriceFeed, PriceFeedStats
from pretrade.state.sync import RedisSync
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc


def xadd(r: redis.Redis, **fields: Any) -> bytes:
    return r.xadd(PRICE_STREAM, fields)


def feed_stats(gateway: GatewayThread) -> PriceFeedStats:
    async def copy() -> PriceFeedStats:
        return PriceFeedStats(**vars(gateway.gateway.writer.prices.stats))

    return gateway.run(copy())


def table_price(gateway: GatewayThread, symbol: bytes) -> int | None:
    async def read() -> int | None:
        info = gateway.gateway.table.instrument_info(symbol)
        return None if info is None else info["last_price"]

    return gateway.run(read())


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)  # AAPL last price 683378 in price:AAPL
    return redis_client


def test_a_tick_changes_the_next_market_order_notional(seeded, gateway, stub):
    market = order(order_type=pb.ORDER_TYPE_MARKET, price=0, quantity=3)
    xadd(seeded, symbol="AAPL", price=700_000)  # the stream only: price:AAPL is unchanged
    wait_until(lambda: table_price(gateway, b"AAPL"), lambda price: price == 700_000)
    decision = stub.EvaluateOrder(market)
    assert decision.notional == 3 * 700_000
    assert seeded.get("price:AAPL") == b"683378"
    assert feed_stats(gateway).ticks_applied >= 1


def test_a_tick_reaches_portfolio_subscribers(seeded, stub):
    seed_lots(seeded, "ACC-1", [("L1", "AAPL", 20, 685_789)])
    request = pb.PortfolioRequest(account_id="ACC-1", heartbeat_interval_ms=300_000)
    snapshot = wait_until(lambda: next(stub.StreamPortfolio(request, timeout=20)),
                          lambda s: len(s.holdings) == 1)
    assert snapshot.holdings[0].last_price == 683_378
    stream = stub.StreamPortfolio(request, timeout=20)
    next(stream)
    xadd(seeded, symbol="AAPL", price=691_000)
    update = next(stream)
    assert update.kind == pb.PORTFOLIO_UPDATE_KIND_UPDATE
    assert (update.holdings[0].last_price, update.holdings[0].market_value) == (
        691_000, 20 * 691_000)


@pytest.mark.parametrize("bad", [
    {"symbol": "AAPL", "price": "68.91"},
    {"symbol": "AAPL", "price": "-1"},
    {"symbol": "AAPL", "price": "0"},
    {"symbol": "AAPL", "price": "1e6"},
    {"symbol": "AAPL", "price": "99999999999999999999"},
    {"symbol": "AAPL"},
    {"price": "700000"},
    {"symbol": "BAD SYMBOL", "price": "700000"},
    {"symbol": "x" * 40, "price": "700000"},
])
def test_a_malformed_tick_is_counted_and_skipped(seeded, gateway, bad):
    xadd(seeded, **bad)
    last = xadd(seeded, symbol="AAPL", price=701_000)
    stats = wait_until(lambda: feed_stats(gateway), lambda s: s.last_id == last)
    assert stats.bad_entries == 1
    assert table_price(gateway, b"AAPL") == 701_000


def test_ticks_before_the_gateway_started_are_not_replayed(seeded, start_gateway):
    xadd(seeded, symbol="AAPL", price=111_111)  # history: price:AAPL says 683378
    gateway = start_gateway()
    marker = xadd(seeded, symbol="MSFT", price=4_000_000)
    wait_until(lambda: feed_stats(gateway).last_id, lambda last_id: last_id == marker)
    # Applied in order: had the old AAPL tick been replayed, it would be in force now.
    assert table_price(gateway, b"AAPL") == 683_378
    assert feed_stats(gateway).ticks_applied == 1


def _new_feed(redis_url: str) -> tuple[RedisSync, PriceFeed, list[tuple[bytes, int | None]]]:
    """A feed over a sync that is not running: the test says when its load is done."""
    table = new_private_table(max_accounts=8, max_instruments=8, max_positions=16,
                              max_overrides=8, lock_stripes=2)
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    sync = RedisSync(client, table, HaltBook(table))
    applied: list[tuple[bytes, int | None]] = []
    sync.listeners.append(_Recorder(applied))
    return sync, PriceFeed(client, sync), applied


class _Recorder:
    """A SyncListener that records prices in the order they are applied."""

    def __init__(self, applied: list[tuple[bytes, int | None]]) -> None:
        self.applied = applied

    def account_changed(self, account: bytes, positions: dict[bytes, tuple[int, int]],
                        realized_pnl: int) -> None:
        pass

    def price_changed(self, symbol: bytes, price: int | None) -> None:
        self.applied.append((symbol, price))


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_ticks_written_during_the_first_load_are_applied_after_it(redis_client, redis_url):
    async def scenario() -> list[tuple[bytes, int | None]]:
        sync, feed, applied = _new_feed(redis_url)
        await feed.mark_start()  # Gateway.start: before the sync's full load
        redis_client.xadd(PRICE_STREAM, {"symbol": "AAPL", "price": 690_000})  # "during" it
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.sleep(0)
            assert applied == []  # the feed waits for the load to finish
            sync.ready.set()
            await _until(lambda: bool(applied))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sync.client.aclose()
        return applied

    assert asyncio.run(scenario()) == [(b"AAPL", 690_000)]


def test_ticks_for_one_symbol_in_one_batch_are_coalesced_to_the_latest(redis_client,
                                                                        redis_url):
    for symbol, price in (("AAPL", 1), ("MSFT", 2), ("AAPL", 3), ("NVDA", "bad"), ("AAPL", 4)):
        redis_client.xadd(PRICE_STREAM, {"symbol": symbol, "price": price})

    async def scenario() -> tuple[list[tuple[bytes, int | None]], PriceFeedStats]:
        sync, feed, applied = _new_feed(redis_url)
        feed.stats.last_id = b"0-0"  # read the five entries above in one batch
        sync.ready.set()
        task = asyncio.create_task(feed.run())
        try:
            await _until(lambda: feed.stats.batches == 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sync.client.aclose()
        return applied, feed.stats

    applied, stats = asyncio.run(scenario())
    assert applied == [(b"MSFT", 2), (b"AAPL", 4)]
    assert (stats.ticks_applied, stats.ticks_coalesced, stats.bad_entries) == (2, 2, 1)


def test_a_prices_key_of_the_wrong_type_is_retried_not_fatal(seeded, gateway):
    seeded.set(PRICE_STREAM, "not a stream")
    wait_until(lambda: feed_stats(gateway).link_errors, lambda errors: errors >= 1)
    seeded.delete(PRICE_STREAM)
    xadd(seeded, symbol="AAPL", price=702_000)
    wait_until(lambda: table_price(gateway, b"AAPL"), lambda price: price == 702_000,
               timeout=15)
    assert "WRONGTYPE" in feed_stats(gateway).last_error


async def _sync_live(gateway: GatewayThread) -> bool:
    return bool(gateway.gateway.table.sync_live)


def test_the_feed_resumes_after_a_redis_restart(tmp_path):
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    server = RedisServer(data_dir=data_dir, persistent=True).start()
    port = server.port
    seed_account(redis.Redis(port=port))
    gateway = GatewayThread(gateway_settings(tmp_path), server.url)
    restarted = None
    try:
        client = redis.Redis(port=port)
        xadd(client, symbol="AAPL", price=700_000)
        wait_until(lambda: table_price(gateway, b"AAPL"), lambda price: price == 700_000)
        client.close()
        server.stop()
        wait_until(lambda: feed_stats(gateway).link_errors, lambda errors: errors >= 1)

        restarted = RedisServer(port=port, data_dir=data_dir, persistent=True).start()
        # Once the sync has reloaded (price:AAPL still says 683378), only the feed
        # can bring the stream's next tick to the table.
        wait_until(lambda: gateway.run(_sync_live(gateway)), bool, timeout=15)
        client = redis.Redis(port=port)
        last = xadd(client, symbol="AAPL", price=705_000)
        wait_until(lambda: feed_stats(gateway).last_id, lambda last_id: last_id == last,
                   timeout=15)
        assert table_price(gateway, b"AAPL") == 705_000
        with grpc.insecure_channel(gateway.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            market = order(order_type=pb.ORDER_TYPE_MARKET, price=0, quantity=2)
            decision = wait_until(lambda: stub.EvaluateOrder(market),
                                  lambda d: d.notional == 2 * 705_000, timeout=15)
            assert decision.approved
        client.close()
    finally:
        gateway.stop()
        if restarted is not None:
            restarted.stop()
        if server.running:
            server.stop()
