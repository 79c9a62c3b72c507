"""Seeding Redis the way an order system would, and waiting for the sync to see it."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from pretrade.app.devredis import find_redis_cli
from pretrade.state.connection import redis_client
from pretrade.state.lotlog import FUNCTION, function_keys
from pretrade.state.reconcile import compare, load_from_redis
from pretrade.state.reconciler import capacities_of_table
from pretrade.state.schema import instrument_key, limits_key, lot_keys, price_key
from pretrade.v1 import risk_pb2 as pb

T = TypeVar("T")

GENEROUS_LIMITS = {
    "max_order_quantity": 1_000,
    "max_order_notional": 1_000_000_000,  # $100,000.0000
    "max_net_position": 5_000,
    "max_long_position": 5_000,
    "max_short_position": 2_000,
    "price_collar_bps": 1_000,  # 10% either side of the last price
}


def seed_instrument(r: redis.Redis, symbol: str, *, price: int | None = None,
                    tick_size: int = 1, lot_size: int = 1) -> None:
    r.hset(instrument_key(symbol.encode()),
           mapping={"tick_size": tick_size, "lot_size": lot_size, "sector": "Test"})
    if price is not None:
        r.set(price_key(symbol.encode()), price)


def seed_lots(r: redis.Redis, account: str, lots: list[tuple[str, str, int, int]]) -> None:
    """Lots as ``(lot id, symbol, signed quantity, cost price)``, in one transaction."""
    tickers, quantities, prices = lot_keys(account.encode())
    with r.pipeline(transaction=True) as pipe:
        for lot, symbol, quantity, price in lots:
            pipe.hset(tickers, lot, symbol)
            pipe.hset(quantities, lot, quantity)
            pipe.hset(prices, lot, price)
        pipe.execute()


def write_lots(r: redis.Redis | redis.RedisCluster, account: str, *ops: object) -> int:
    """Lots written through ``pretrade_lots`` (the lot log); the account's new version.

    ``ops``: ``"SET", lot, symbol, quantity, price, order id ("" for none)`` or
    ``"DEL", lot``, any number of them. The library must be loaded (a sync does).
    """
    return int(r.fcall(FUNCTION, len(keys := function_keys(account.encode())), *keys, *ops))


def seed_limits(r: redis.Redis, account: str, **limits: int) -> None:
    r.hset(limits_key(account.encode()), mapping=limits or GENEROUS_LIMITS)


def seed_account(r: redis.Redis, account: str = "ACC-1", symbol: str = "AAPL",
                 price: int = 683_378) -> None:
    """An instrument with a last price and an account with generous limits."""
    seed_instrument(r, symbol, price=price)
    seed_limits(r, account, **GENEROUS_LIMITS)


_order_ids = itertools.count(1)


def order(account: str = "ACC-1", symbol: str = "AAPL", side: int = pb.SIDE_BUY,
          quantity: int = 10, price: int = 683_378, order_type: int = pb.ORDER_TYPE_LIMIT,
          order_id: str | None = None, venue: str = "XNAS",
          counterparty: str = "") -> pb.Order:
    """An order with a fresh order id unless one is given (ids are idempotency keys)."""
    return pb.Order(order_id=order_id or f"o-{next(_order_ids)}", account_id=account,
                    symbol=symbol, side=side, quantity=quantity, price=price,
                    order_type=order_type, venue=venue, counterparty=counterparty)


def codes(decision: pb.Decision) -> list[int]:
    return [rejection.code for rejection in decision.rejections]


def wait_until(probe: Callable[[], T], accept: Callable[[T], bool], timeout: float = 5.0) -> T:
    """Call ``probe`` until ``accept`` holds for its result; fail with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last value: {value}")
        time.sleep(0.01)


def try_order(stub: object, request: pb.Order) -> pb.Decision | None:
    """EvaluateOrder, or None when the call failed (e.g. UNAVAILABLE: Redis is down and
    the decision could not be made durable). For probes while Redis comes and goes."""
    import grpc

    try:
        return stub.EvaluateOrder(request, timeout=5)  # type: ignore[attr-defined,no-any-return]
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
            raise
        return None


def redis_cli(redis_url: str, script: str) -> None:
    """Run ``script`` (one command a line) through redis-cli, as an operator would."""
    subprocess.run([find_redis_cli(), "-u", redis_url], input=script.encode(), check=True,
                   capture_output=True, timeout=10)


def differences_from_a_fresh_load(redis_url: str, live: object) -> list[str]:
    """What the reconciliation finds between ``live`` (a followed table) and the table a
    fresh load of Redis builds (a restart): [] when the two agree."""
    async def load():
        client = redis_client(redis_url)
        try:
            return await load_from_redis(client, capacities_of_table(live))
        finally:
            await client.aclose()

    return [str(d) for d in compare(live, asyncio.run(load()))]
