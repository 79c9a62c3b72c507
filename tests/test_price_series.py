"""Last prices from RedisTimeSeries (``price_source = "timeseries"``), on a real Redis 7.4.

The series ``price_history:<SYM>`` (``TS.ADD price_history:AAPL * 689100``)
is the price source: its latest sample (``TS.GET``) values orders and
holdings, each new sample reaches the table through the series' keyspace
notification, and everything the other sources do after a gap (a restart, a
flag switched off) happens here too. ``price:<SYM>`` keys are then ignored.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import grpc
import pytest
import redis

from book import codes, order, seed_account, seed_instrument, seed_lots, wait_until
from conftest import GatewayThread, gateway_settings
from pretrade.app.config import Settings
from pretrade.app.devredis import RedisServer, find_redis_cli
from pretrade.engine.errors import ConfigError
from pretrade.engine.table import new_private_table
from pretrade.state.halts import HaltBook
from pretrade.state.schema import StateError, parse_series_price
from pretrade.state.sync import RedisSync, SyncConfigError
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve
from test_docs import DOC, after_marker, code_blocks, run_example
from test_prices import table_price

SERIES = "price_history:AAPL"


@pytest.fixture
def series_redis(redis_server: RedisServer, redis_client: redis.Redis) -> redis.Redis:
    """The session's Redis, empty, with the module; one account with AAPL (no price yet)."""
    if not redis_server.timeseries:
        pytest.fail("the embedded redis-server runs without RedisTimeSeries: run `make build` "
                    "(it installs Redis Stack) or unset PRETRADE_REDIS_SERVER")
    seed_account(redis_client)
    redis_client.delete("price:AAPL")
    return redis_client


@pytest.fixture
def series_gateway(series_redis: redis.Redis, start_gateway) -> GatewayThread:
    return start_gateway(price_source="timeseries")


def ts_add(r: redis.Redis, price: int | str, key: str = SERIES) -> None:
    r.execute_command("TS.ADD", key, "*", price, "DUPLICATE_POLICY", "LAST")


def market(stub: risk_pb2_grpc.PreTradeRiskStub, quantity: int = 3) -> pb.Decision:
    return stub.EvaluateOrder(order(order_type=pb.ORDER_TYPE_MARKET, price=0,
                                    quantity=quantity), timeout=10)


def status(gateway: GatewayThread) -> pb.ServerStatus:
    with grpc.insecure_channel(gateway.target) as channel:
        return risk_pb2_grpc.PreTradeRiskStub(channel).GetStatus(pb.StatusRequest(), timeout=5)


def test_the_latest_sample_values_orders_and_each_new_sample_revalues_them(
        series_redis, series_gateway, start_gateway):
    ts_add(series_redis, 689_100)
    # A price:<SYM> key is another source's: written, it changes nothing here.
    series_redis.set("price:AAPL", 100)
    with grpc.insecure_channel(series_gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        decision = wait_until(lambda: market(stub), lambda d: d.notional == 3 * 689_100)
        assert decision.approved
        ts_add(series_redis, 701_200)
        wait_until(lambda: table_price(series_gateway, b"AAPL"), lambda price: price == 701_200)
        assert market(stub).notional == 3 * 701_200
        series_redis.set("price:AAPL", 200)
        time.sleep(0.3)
        assert table_price(series_gateway, b"AAPL") == 701_200
    assert status(series_gateway).price_ticks >= 2


@pytest.mark.parametrize("bad", ["68.91", "-5", "0", "9007199254740992"])
def test_a_sample_that_is_not_a_whole_positive_price_fails_closed(series_redis, series_gateway,
                                                                  bad):
    ts_add(series_redis, 689_100)
    wait_until(lambda: table_price(series_gateway, b"AAPL"), lambda price: price == 689_100)
    invalid_before = status(series_gateway).invalid_entities
    ts_add(series_redis, bad)
    wait_until(lambda: status(series_gateway).invalid_entities,
               lambda count: count > invalid_before)
    with grpc.insecure_channel(series_gateway.target) as channel:
        decision = market(risk_pb2_grpc.PreTradeRiskStub(channel))
    assert not decision.approved
    assert pb.REJECT_CODE_PRICE_UNAVAILABLE in codes(decision)


def test_no_series_an_empty_one_a_deleted_one_or_a_string_is_no_price(series_redis,
                                                                      series_gateway):
    with grpc.insecure_channel(series_gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        wait_until(lambda: status(series_gateway).sync_live, bool)
        assert pb.REJECT_CODE_PRICE_UNAVAILABLE in codes(market(stub))  # no series at all
        series_redis.execute_command("TS.CREATE", SERIES)                # a series, no sample
        time.sleep(0.3)
        assert pb.REJECT_CODE_PRICE_UNAVAILABLE in codes(market(stub))
        ts_add(series_redis, 689_100)
        wait_until(lambda: market(stub), lambda d: d.approved)
        series_redis.delete(SERIES)
        wait_until(lambda: codes(market(stub)), lambda c: pb.REJECT_CODE_PRICE_UNAVAILABLE in c)
        series_redis.set(SERIES, "689100")                                # not a series
        time.sleep(0.3)
        assert pb.REJECT_CODE_PRICE_UNAVAILABLE in codes(market(stub))


def test_the_first_load_reads_every_series_in_pipelined_ts_gets(series_redis, start_gateway):
    symbols = [f"S{n:03d}" for n in range(120)]
    for n, symbol in enumerate(symbols):
        seed_instrument(series_redis, symbol, price=None)
        ts_add(series_redis, 10_000 + n, key=f"price_history:{symbol}")
    series_redis.config_resetstat()
    gateway = start_gateway(price_source="timeseries")
    wait_until(lambda: status(gateway).sync_live, bool, timeout=15)
    for n, symbol in enumerate(symbols):
        assert table_price(gateway, symbol.encode()) == 10_000 + n
    stats = series_redis.info("commandstats")
    # One TS.GET per series (and one module probe at start and at subscribe),
    # sent in pipelined transactions, not one round trip each.
    assert len(symbols) <= stats["cmdstat_ts.get"]["calls"] <= len(symbols) + 2
    assert stats["cmdstat_exec"]["calls"] < len(symbols) / 10


def test_a_new_sample_reaches_portfolio_subscribers(series_redis, series_gateway):
    seed_lots(series_redis, "ACC-1", [("L1", "AAPL", 20, 685_789)])
    ts_add(series_redis, 683_378)
    request = pb.PortfolioRequest(account_id="ACC-1", heartbeat_interval_ms=300_000)
    with grpc.insecure_channel(series_gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        snapshot = wait_until(lambda: next(stub.StreamPortfolio(request, timeout=20)),
                              lambda s: len(s.holdings) == 1 and s.holdings[0].last_price)
        assert snapshot.holdings[0].last_price == 683_378
        stream = stub.StreamPortfolio(request, timeout=20)
        next(stream)
        ts_add(series_redis, 691_000)
        update = next(stream)
        assert update.kind == pb.PORTFOLIO_UPDATE_KIND_UPDATE
        assert (update.holdings[0].last_price, update.holdings[0].market_value) == (
            691_000, 20 * 691_000)


def test_notifications_switched_off_for_module_keys_force_a_resync_that_sets_them_again(
        series_redis, series_gateway):
    ts_add(series_redis, 689_100)
    wait_until(lambda: table_price(series_gateway, b"AAPL"), lambda price: price == 689_100)
    loads = status(series_gateway).full_loads
    # Everything but d (module key types): TS.ADD would no longer be heard.
    series_redis.config_set("notify-keyspace-events", "KEA".replace("A", "g$lshzxe"))
    wait_until(lambda: status(series_gateway).full_loads, lambda n: n > loads, timeout=15)
    flags = series_redis.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert "d" in flags or "A" in flags
    wait_until(lambda: status(series_gateway).sync_live, bool, timeout=15)
    ts_add(series_redis, 702_000)
    wait_until(lambda: table_price(series_gateway, b"AAPL"), lambda price: price == 702_000)


def test_a_restarted_redis_is_reloaded_from_its_series_and_followed_again(tmp_path):
    data_dir = tmp_path / "redis"
    server = RedisServer(data_dir=data_dir, persistent=True, notify_keyspace_events="").start()
    port = server.port
    client = redis.Redis(port=port)
    seed_account(client)
    client.delete("price:AAPL")
    ts_add(client, 689_100)
    gateway = GatewayThread(gateway_settings(tmp_path, price_source="timeseries"), server.url)
    restarted = None
    try:
        wait_until(lambda: table_price(gateway, b"AAPL"), lambda price: price == 689_100,
                   timeout=15)
        client.close()
        server.stop()
        # Restarted without the flags pretrade set; a sample written while it was
        # down (here: before pretrade reconnects) is read by the reload.
        restarted = RedisServer(port=port, data_dir=data_dir, persistent=True,
                                notify_keyspace_events="").start()
        client = redis.Redis(port=port)
        ts_add(client, 695_500)
        wait_until(lambda: table_price(gateway, b"AAPL"), lambda price: price == 695_500,
                   timeout=20)
        wait_until(lambda: status(gateway).sync_live, bool, timeout=15)
        ts_add(client, 699_900)
        wait_until(lambda: table_price(gateway, b"AAPL"), lambda price: price == 699_900)
        client.close()
    finally:
        gateway.stop()
        for each in (restarted, server):
            if each is not None and each.running:
                each.stop()


def test_a_redis_without_the_module_is_refused_in_one_clear_error(tmp_path):
    async def prepare(url: str) -> None:
        client = redis.asyncio.Redis.from_url(url, protocol=2)
        try:
            sync = RedisSync(client, new_private_table(max_accounts=4, max_instruments=4,
                                                       max_positions=16),
                             HaltBook(None), series_prices=True)
            await sync.ensure_notifications()
        finally:
            await client.aclose()

    with RedisServer(data_dir=tmp_path, timeseries=False) as plain:
        assert not plain.timeseries
        with pytest.raises(SyncConfigError, match="no RedisTimeSeries module"):
            asyncio.run(prepare(plain.url))


def test_the_setting_is_checked_and_refused_on_a_redis_cluster():
    assert Settings(price_source="TimeSeries").price_source == "timeseries"
    with pytest.raises(ConfigError, match="price_source"):
        Settings(price_source="ticks")
    with pytest.raises(ConfigError, match="standalone Redis only"):
        Settings(price_source="timeseries", redis_url="redis+cluster://127.0.0.1:7000")


@pytest.mark.parametrize(("reply", "price"), [
    ([1, b"689100"], 689_100), ([], None), ([5, b"9007199254740991"], 2**53 - 1)])
def test_a_ts_get_reply_is_read_as_a_whole_price(reply, price):
    assert parse_series_price(reply) == price


@pytest.mark.parametrize("reply", [
    [1, b"68.91"], [1, b"1e+15"], [1, b"1.2345678901234568E17"], [1, b"-5"], [1, b"0"],
    [1, b"9007199254740992"], [1, 689100], [1], b"689100", None])
def test_a_ts_get_reply_that_is_no_whole_price_is_refused(reply):
    with pytest.raises(StateError):
        parse_series_price(reply)


def test_pretrade_serve_follows_series_written_by_redis_cli(redis_server, redis_client,
                                                            tmp_path: Path):
    seed_account(redis_client)
    redis_client.delete("price:AAPL")
    cli = [find_redis_cli(), "-p", str(redis_server.port)]
    subprocess.run([*cli, "TS.ADD", SERIES, "*", "689100"], check=True, capture_output=True)
    server = Serve(tmp_path, "series", "--redis-url", redis_server.url,
                   "--listen", "127.0.0.1:0", env={"PRETRADE_PRICE_SOURCE": "timeseries"})
    try:
        target = server.wait_for_banner()
        server.wait_until_serving()
        with grpc.insecure_channel(target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            assert wait_until(lambda: market(stub), lambda d: d.approved).notional == 3 * 689_100
            subprocess.run([*cli, "TS.ADD", SERIES, "*", "702000"], check=True,
                           capture_output=True)
            decision = wait_until(lambda: market(stub), lambda d: d.notional == 3 * 702_000)
            assert decision.approved, server.log()
    finally:
        server.terminate()


def test_the_documented_series_example_sets_the_price_orders_are_valued_at(
        series_redis, series_gateway, redis_url):
    block = code_blocks(after_marker(DOC.read_text(), "series"))[0]
    run_example([find_redis_cli(), "-u", redis_url], block)
    assert series_redis.type(SERIES) == b"TSDB-TYPE"
    wait_until(lambda: table_price(series_gateway, b"AAPL"), lambda price: price == 689_100)


def test_the_scheduled_reconciliation_reads_prices_from_the_series_too(series_redis,
                                                                       series_gateway):
    ts_add(series_redis, 689_100)
    wait_until(lambda: table_price(series_gateway, b"AAPL"), lambda price: price == 689_100)
    reconciler = series_gateway.gateway.writer.reconciler
    # A fresh load for the comparison must read the same source as the live
    # table, or every series price is reported as drift.
    assert series_gateway.run(reconciler.once()) == []
    series_redis.set("price:AAPL", 100)  # another source's key: no difference either
    assert series_gateway.run(reconciler.once()) == []


def test_the_demo_book_writes_series_when_prices_come_from_them(redis_server, redis_client,
                                                                start_gateway):
    from pretrade.app.demo import LAST_PRICES, load_demo_book
    from pretrade.engine.fixedpoint import parse_price

    async def load() -> bool:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            return await load_demo_book(client, series_prices=True)
        finally:
            await client.aclose()

    assert asyncio.run(load())
    assert redis_client.keys("price:*") == []
    gateway = start_gateway(price_source="timeseries")
    for symbol, price in LAST_PRICES.items():
        assert redis_client.type(b"price_history:" + symbol) == b"TSDB-TYPE"
        wait_until(lambda symbol=symbol: table_price(gateway, symbol),
                   lambda found, price=price: found == parse_price(price), timeout=10)


def test_a_flushall_empties_the_series_and_the_resync_leaves_no_price(series_redis,
                                                                      series_gateway):
    ts_add(series_redis, 689_100)
    wait_until(lambda: table_price(series_gateway, b"AAPL"), lambda price: price == 689_100)
    loads = status(series_gateway).full_loads
    series_redis.flushall()  # no keyspace event: the canary's disappearance tells
    wait_until(lambda: status(series_gateway).full_loads, lambda n: n > loads, timeout=15)
    wait_until(lambda: table_price(series_gateway, b"AAPL"), lambda price: price is None)
    with grpc.insecure_channel(series_gateway.target) as channel:
        decision = market(risk_pb2_grpc.PreTradeRiskStub(channel))
    assert not decision.approved
