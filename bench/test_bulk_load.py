"""Bulk load and memory: a million positions from Redis into the table.

Writes N accounts x M symbols (one lot each) into a fresh redis-server, then
times RedisSync.full_load (SCAN + pipelined MULTI/EXEC reads, hiredis) and
reports the rate, the table's bytes per position slot and the resident memory
the loaded table costs. Also measures the sync lag: from a Redis write to the
value being visible in a decision.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from hdr import new_histogram, scale
from pretrade._core import LAYOUT, Engine
from pretrade.app.devredis import RedisServer
from pretrade.engine.table import Capacities, MappedTable
from pretrade.state.halts import HaltBook
from pretrade.state.sync import RedisSync
from pretrade.v1 import risk_pb2 as pb

LIMITS = {"max_order_quantity": 10**6, "max_order_notional": 10**15, "max_net_position": 10**9,
          "max_long_position": 10**9, "max_short_position": 10**9, "price_collar_bps": 10**6}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def write_book(client: redis.Redis, accounts: int, symbols: int) -> None:
    with client.pipeline(transaction=False) as pipe:
        for s in range(symbols):
            pipe.hset(f"instrument:S{s}", mapping={"tick_size": 1, "lot_size": 1})
            pipe.set(f"price:S{s}", 10_000 + s)
        pipe.execute()
    for start in range(0, accounts, 200):
        with client.pipeline(transaction=False) as pipe:
            for a in range(start, min(start + 200, accounts)):
                tag = f"{{A{a}}}"
                pipe.hset(f"tickers_by_lot:{tag}", mapping={f"L{s}": f"S{s}"
                                                            for s in range(symbols)})
                pipe.hset(f"quantities_by_lot:{tag}", mapping={f"L{s}": 100
                                                               for s in range(symbols)})
                pipe.hset(f"prices_by_lot:{tag}", mapping={f"L{s}": 10_000
                                                           for s in range(symbols)})
                pipe.hset(f"limits:{tag}", mapping=LIMITS)
            pipe.execute()


async def load(url: str, table) -> RedisSync:
    client = aioredis.Redis.from_url(url, decode_responses=False)
    sync = RedisSync(client, table, HaltBook(table), batch_size=500)
    await sync.full_load()
    await client.aclose()
    return sync


@pytest.mark.benchmark(group="sync")
def test_bulk_load_rate_and_memory(benchmark, latency, tmp_path):
    accounts = scale(benchmark.disabled, 10_000, 20)
    symbols = 100 if not benchmark.disabled else 5
    positions = accounts * symbols
    caps = Capacities(max_accounts=accounts + 16, max_instruments=symbols + 16,
                      max_positions=positions + 16, max_overrides=1_024, lock_stripes=64,
                      max_orders=1_024)
    with RedisServer(data_dir=tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        started = time.perf_counter()
        write_book(client, accounts, symbols)
        written = time.perf_counter() - started
        before = rss_bytes()
        mapped = MappedTable.create(tmp_path / "bulk.table", caps)
        started = time.perf_counter()
        asyncio.run(load(server.url, mapped.table))
        seconds = time.perf_counter() - started
        resident = rss_bytes() - before
        counts = mapped.table.counts()
        assert counts["positions"] == positions
        assert mapped.table.position(b"A0", b"S1") == (100, 100 * 10_000)
        latency.figure(f"bulk load of {positions:,} positions ({accounts:,} accounts)",
                       f"{seconds:.2f} s = {positions / seconds:,.0f} positions/s "
                       f"(writing them took {written:.1f} s)")
        latency.figure("bytes per position slot (layout)", f"{LAYOUT['position_bytes']}")
        latency.figure(f"table file for {caps.max_positions:,} slots (sparse)",
                       f"{counts['total_bytes'] / 2**20:,.0f} MiB")
        latency.figure(f"resident memory added by loading {positions:,} positions",
                       f"{resident / 2**20:,.0f} MiB "
                       f"({resident / max(positions, 1):,.0f} bytes per position, incl. the "
                       "sync's Python bookkeeping)")
        mapped.close(unlink=True)
        benchmark.extra_info.update(positions=positions, seconds=seconds)
        benchmark.pedantic(lambda: None, rounds=1)


def _plain(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=False)


async def measure_lag(url: str, table, engine: Engine, samples: int, connect=_plain):
    """Redis write -> visible in a decision, ``samples`` times: an HdrHistogram (ns).

    ``connect(url)`` makes the sync's client and the writer's (a cluster
    client for a ``redis+cluster://`` URL: bench/test_cluster_lag.py).
    """
    client = connect(url)
    sync = RedisSync(client, table, HaltBook(table))
    runner = asyncio.create_task(sync.run())
    await asyncio.wait_for(sync.ready.wait(), 20)
    while not table.sync_live:  # not before the canary came back: a stale table approves none
        await asyncio.sleep(0.01)
    writer = connect(url)
    h = new_histogram()
    for n in range(samples):
        limit = 1_000 + n % 2
        started = time.perf_counter_ns()
        await writer.hset(b"limits:{LAG}", b"max_order_quantity", limit)
        # visible when an order of `limit` passes and one of limit + 1 does not
        while True:
            approved = engine.evaluate(b"", b"LAG", b"S0", pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT,
                                       limit + 1, 10_000, b"", b"", 0)[0]
            if not approved:
                break
            await asyncio.sleep(0)
        h.record_value(max(1, time.perf_counter_ns() - started))
    sync.stop()
    runner.cancel()
    await writer.aclose()
    await client.aclose()
    return h


@pytest.mark.benchmark(group="sync")
def test_sync_lag_from_a_redis_write_to_a_decision(benchmark, latency, tmp_path):
    samples = scale(benchmark.disabled, 2_000, 20)
    caps = Capacities(max_accounts=64, max_instruments=64, max_positions=256, max_overrides=64,
                      lock_stripes=8, max_orders=64)
    with RedisServer(data_dir=tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        client.hset("instrument:S0", mapping={"tick_size": 1})
        client.set("price:S0", 10_000)
        client.hset("limits:{LAG}", mapping=LIMITS)
        mapped = MappedTable.create(tmp_path / "lag.table", caps)
        engine = Engine(mapped.table)
        h = asyncio.run(measure_lag(server.url, mapped.table, engine, samples))
        latency.record("sync lag: Redis write -> visible in a decision", h,
                       "HSET of a limit by another client, until the engine applies it")
        mapped.close(unlink=True)
        benchmark.pedantic(lambda: None, rounds=1)
