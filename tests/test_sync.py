"""The sync against a real redis-server: startup checks, link loss and resync."""

from __future__ import annotations

import asyncio

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
    try_order,
    wait_until,
)
from conftest import GatewayThread, gateway_settings
from pretrade.app.devredis import RedisServer
from pretrade.app.server import Gateway
from pretrade.state.sync import SyncConfigError
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc


def test_missing_keyspace_notification_flags_are_set_at_startup(redis_client, start_gateway):
    redis_client.config_set("notify-keyspace-events", "")
    start_gateway()
    flags = str(redis_client.config_get("notify-keyspace-events")["notify-keyspace-events"])
    for flag in "Kg$hsxe":
        assert flag in flags.replace("A", "g$lshzxetd")


def test_startup_fails_with_exact_instructions_when_flags_cannot_be_set(redis_client,
                                                                        redis_url, tmp_path):
    redis_client.config_set("notify-keyspace-events", "")
    redis_client.acl_setuser("no-config", enabled=True, passwords=["+secret"], keys=["*"],
                             channels=["*"], commands=["+@all", "-config"])
    settings = gateway_settings(tmp_path, redis_username="no-config", redis_password="secret")
    try:
        with pytest.raises(SyncConfigError) as raised:
            asyncio.run(_start_and_stop(settings, redis_url))
        message = str(raised.value)
        assert "CONFIG SET notify-keyspace-events" in message
        assert "Kg$hsxe" in message
    finally:
        redis_client.acl_deluser("no-config")
        redis_client.config_set("notify-keyspace-events", "KEA")


async def _start_and_stop(settings, redis_url) -> None:
    gateway = Gateway(settings, redis_url)
    try:
        await gateway.start()
    finally:
        await gateway.stop(grace=0)


def test_losing_redis_fails_closed_and_a_restart_resyncs(tmp_path):
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    server = RedisServer(data_dir=data_dir, persistent=True).start()
    port = server.port
    client = redis.Redis(port=port)
    seed_account(client)
    gateway = GatewayThread(gateway_settings(tmp_path), server.url)
    restarted = None
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            assert stub.EvaluateOrder(order()).approved

            server.stop()
            decision = wait_until(lambda: try_order(stub, order()),
                                  lambda d: d is not None and not d.approved)
            assert codes(decision) == [pb.REJECT_CODE_STALE_DATA]
            wait_until(lambda: health.Check(health_pb2.HealthCheckRequest()).status,
                       lambda s: s == health_pb2.HealthCheckResponse.NOT_SERVING)

            restarted = RedisServer(port=port, data_dir=data_dir, persistent=True).start()
            wait_until(lambda: try_order(stub, order()), lambda d: d is not None and d.approved,
                       timeout=15)
            wait_until(lambda: health.Check(health_pb2.HealthCheckRequest()).status,
                       lambda s: s == health_pb2.HealthCheckResponse.SERVING)

            # The resubscribed link follows changes again.
            redis.Redis(port=port).hset("limits:{ACC-1}", "max_order_quantity", 1)
            decision = wait_until(lambda: stub.EvaluateOrder(order()), lambda d: not d.approved)
            assert codes(decision) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]
    finally:
        gateway.stop()
        server.stop()
        if restarted is not None:
            restarted.stop()


def test_keys_deleted_while_the_link_was_down_are_cleared_by_the_resync(tmp_path):
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    server = RedisServer(data_dir=data_dir, persistent=True).start()
    port = server.port
    seed_account(redis.Redis(port=port), "ACC-1")
    seed_account(redis.Redis(port=port), "ACC-2")
    gateway = GatewayThread(gateway_settings(tmp_path), server.url)
    restarted = None
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            assert stub.EvaluateOrder(order(account="ACC-2")).approved
            # Delete ACC-2's limits, then kill Redis before the event can be trusted to
            # arrive: restart from a copy of the data without them.
            server.stop()
            restarted = RedisServer(port=port, data_dir=data_dir, persistent=True).start()
            redis.Redis(port=port).delete("limits:{ACC-2}")
            decision = wait_until(lambda: try_order(stub, order(account="ACC-2")),
                                  lambda d: d is not None
                                  and pb.REJECT_CODE_STALE_DATA not in codes(d),
                                  timeout=15)
            assert codes(decision) == [pb.REJECT_CODE_UNKNOWN_ACCOUNT]
            assert stub.EvaluateOrder(order(account="ACC-1")).approved
    finally:
        gateway.stop()
        server.stop()
        if restarted is not None:
            restarted.stop()


def test_lots_listed_in_another_order_in_each_hash_are_summed_as_in_one(redis_client,
                                                                         start_gateway):
    # The sync sums the three lot hashes as Redis lists them when their lots
    # come in one order, and pairs them up when they do not: each hash here
    # is written in another order (a small hash lists its fields as written),
    # ACC-2's in one. Either way the position is what the lots hold (39 long),
    # so with max_long_position 100 a buy of 61 passes and one of 62 does not.
    from pretrade.state.schema import lot_keys

    seed_instrument(redis_client, "AAPL", price=683_378)
    lots = [(f"L{n}", 1 + n % 3) for n in range(20)]
    assert sum(units for _, units in lots) == 39
    orders = {"ACC-1": (lots, lots[::-1], lots[7:] + lots[:7]), "ACC-2": (lots, lots, lots)}
    for account, (by_ticker, by_quantity, by_price) in orders.items():
        seed_limits(redis_client, account, **{**GENEROUS_LIMITS, "max_long_position": 100})
        tickers, quantities, prices = lot_keys(account.encode())
        for lot, _ in by_ticker:
            redis_client.hset(tickers, lot, "AAPL")
        for lot, units in by_quantity:
            redis_client.hset(quantities, lot, units)
        for lot, _ in by_price:
            redis_client.hset(prices, lot, 683_000)
    listed = [redis_client.hkeys(key) for key in lot_keys(b"ACC-1")]
    assert listed[0] != listed[1] != listed[2]  # three orders
    gateway = start_gateway()
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        for account in orders:
            over = stub.EvaluateOrder(order(account=account, quantity=62), timeout=5)
            assert codes(over) == [pb.REJECT_CODE_MAX_LONG_POSITION], account
            assert over.rejections[0].observed == 101
            assert stub.EvaluateOrder(order(account=account, quantity=61), timeout=5).approved
