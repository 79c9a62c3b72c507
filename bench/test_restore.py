"""Restoring decided orders: a million of them from Redis, in time linear in their number.

Writes N decided orders (``orders:{ACC}``, the journal's encoding) for A
accounts into a fresh redis-server: half approved and still working, a
fifth approved and cancelled since, the rest rejected. Then times what a
restarted server does before it trusts its table: ``RedisSync`` restoring
them (the working ones back into the table with their reservations, the
others into the accounts' evicted-id filters) and the full load around it,
and reports the rate. A second, 4x smaller run of the same shape gives the
ratio that shows the restore is linear (quadratic would be 16x).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from hdr import scale
from pretrade.app.devredis import RedisServer
from pretrade.engine.table import Capacities, MappedTable
from pretrade.state.halts import HaltBook
from pretrade.state.journal import DecidedOrder
from pretrade.state.sync import RedisSync
from pretrade.v1 import risk_pb2 as pb

PRICE = 683_378
LIMITS = {"max_order_quantity": 10**6, "max_order_notional": 10**15, "max_net_position": 10**12,
          "max_long_position": 10**12, "max_short_position": 10**12, "price_collar_bps": 10**6}


def write_orders(client: redis.Redis, accounts: int, per_account: int) -> int:
    """Decided orders of every account; returns how many are still working."""
    client.hset("instrument:AAPL", mapping={"tick_size": 1, "lot_size": 1})
    client.set("price:AAPL", PRICE)
    working = 0
    for a in range(accounts):
        account = f"A{a}".encode()
        fields, cancels = {}, {}
        for n in range(per_account):
            kind = n % 10
            approved = kind < 7
            record = DecidedOrder(account, b"O%d" % n, b"AAPL", pb.SIDE_BUY,
                                  pb.ORDER_TYPE_LIMIT, 1, PRICE, PRICE,
                                  PRICE if approved else 0, b"XNAS", b"", approved,
                                  () if approved else ((pb.REJECT_CODE_MAX_ORDER_QUANTITY, 1, 0),))
            fields[record.order_id] = record.encode()
            if kind in (5, 6):
                cancels[record.order_id] = b"1"
            working += kind < 5
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(f"orders:{{A{a}}}", mapping=fields)
            if cancels:
                pipe.hset(f"cancels:{{A{a}}}", mapping=cancels)
            pipe.hset(f"limits:{{A{a}}}", mapping=LIMITS)
            pipe.execute()
    return working


async def restore(url: str, table) -> tuple[float, float, RedisSync]:
    client = aioredis.Redis.from_url(url, decode_responses=False)
    sync = RedisSync(client, table, HaltBook(table), batch_size=500)
    started = time.perf_counter()
    await sync._restore_orders()
    restored = time.perf_counter() - started
    started = time.perf_counter()
    await sync.full_load()          # restores nothing more, then reads the accounts
    loaded = time.perf_counter() - started
    await client.aclose()
    return restored, loaded, sync


def run(tmp_path: Path, name: str, accounts: int, per_account: int) -> tuple[int, float, float]:
    orders = accounts * per_account
    caps = Capacities(max_accounts=accounts + 16, max_instruments=16,
                      max_positions=accounts + 16, max_overrides=16, lock_stripes=64,
                      max_orders=orders, max_orders_per_account=per_account)
    with RedisServer(data_dir=tmp_path / f"redis-{name}") as server:
        client = redis.Redis.from_url(server.url)
        working = write_orders(client, accounts, per_account)
        client.close()
        mapped = MappedTable.create(tmp_path / f"{name}.table", caps)
        restored, loaded, sync = asyncio.run(restore(server.url, mapped.table))
        assert sync.stats.orders_restored == orders
        assert mapped.table.counts()["orders"] == working
        assert mapped.table.working(b"A0", b"AAPL") == (working // accounts, 0)
        assert not sync.over_capacity
        mapped.close(unlink=True)
    return orders, restored, loaded


@pytest.mark.benchmark(group="sync")
def test_restore_of_a_million_decided_orders(benchmark, latency, tmp_path):
    accounts = scale(benchmark.disabled, 1_000, 4)
    per_account = scale(benchmark.disabled, 1_000, 500)
    orders, restored, loaded = run(tmp_path, "full", accounts, per_account)
    quarter, quarter_restored, _ = run(tmp_path, "quarter", accounts, per_account // 4)
    latency.figure(f"restore of {orders:,} decided orders ({accounts:,} accounts, half working)",
                   f"{restored:.2f} s = {orders / restored:,.0f} orders/s; the full load after "
                   f"it (account snapshots) {loaded:.2f} s")
    latency.figure(f"restore time, {orders:,} vs {quarter:,} orders (linear: 4x)",
                   f"{restored / quarter_restored:.1f}x")
    benchmark.extra_info.update(orders=orders, seconds=restored)
    benchmark.pedantic(lambda: None, rounds=1)
