"""Large accounts are re-read in chunks under WATCH, and the snapshot stays consistent.

A one-lot change to an account of 100,000 lots means its hashes are read
again; one MULTI/EXEC of them holds Redis (single-threaded) for tens of
milliseconds, and every durable decision waits behind it. Above
``large_account_lots`` the sync reads the hashes with HSCAN under WATCH and
keeps the read only if nothing of the account changed meanwhile.
"""

from __future__ import annotations

import asyncio
import threading

import redis

from book import seed_lots
from pretrade.engine.table import new_private_table
from pretrade.state.connection import redis_client
from pretrade.state.halts import HaltBook
from pretrade.state.schema import aggregate_lots, lot_keys
from pretrade.state.sync import Dirty, RedisSync

LOTS = 300


def _table():
    return new_private_table(max_accounts=16, max_instruments=16, max_positions=64,
                             max_overrides=16, lock_stripes=4, max_orders=64,
                             max_orders_per_account=64)


def _redis_positions(r: redis.Redis, account: bytes) -> dict[bytes, tuple[int, int]]:
    tickers, quantities, prices = (r.hgetall(key) for key in lot_keys(account))
    return aggregate_lots(tickers, quantities, prices)


def _seed(r: redis.Redis) -> None:
    seed_lots(r, "BIG", [(f"L{n}", ("AAPL", "MSFT", "IBM")[n % 3], 1 + n % 7, 1_000 + n)
                         for n in range(LOTS)])


async def _reread(url: str, table, rounds: int, during=None) -> RedisSync:
    client = redis_client(url)
    # every re-read tries the chunks first (no atomic reads after a spoiled one)
    sync = RedisSync(client, table, HaltBook(table), large_account_lots=100,
                     atomic_reads_after_spoil=0)
    try:
        await sync.full_load()  # the first read of an account is the batch's own
        for _ in range(rounds):
            if during is not None:
                during()
            await sync.refresh(Dirty(lots={b"BIG"}))
    finally:
        await client.aclose()
    return sync


def test_a_large_account_is_reread_in_chunks_and_equals_redis(redis_client: redis.Redis,
                                                              redis_url: str):
    _seed(redis_client)
    table = _table()
    _, quantities, _ = lot_keys(b"BIG")
    sync = asyncio.run(_reread(redis_url, table, 3,
                               during=lambda: redis_client.hincrby(quantities, "L0", 5)))
    assert sync.chunked_reads == 3 and sync.chunked_fallbacks == 0
    expected = _redis_positions(redis_client, b"BIG")
    assert table.account_positions(b"BIG") == expected


def test_writes_during_chunked_reads_never_leave_a_half_read_account(redis_client: redis.Redis,
                                                                     redis_url: str):
    # A writer adds a lot to all three lot hashes in one MULTI/EXEC and removes
    # it again, as fast as it can, while the sync re-reads: a read that saw the
    # lot in one hash and not in another would make the account unparseable
    # ("not in all three lot hashes"). Every read the sync keeps (chunked, or
    # the atomic fallback) must show the account with or without the lot.
    _seed(redis_client)
    base = sum(q for q, _ in _redis_positions(redis_client, b"BIG").values())
    tickers, quantities, prices = lot_keys(b"BIG")
    stop = threading.Event()

    def churn() -> None:
        writer = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            with writer.pipeline(transaction=True) as pipe:
                pipe.hset(tickers, "X", "AAPL")
                pipe.hset(quantities, "X", 10)
                pipe.hset(prices, "X", 1_000)
                pipe.execute()
            with writer.pipeline(transaction=True) as pipe:
                for key in (tickers, quantities, prices):
                    pipe.hdel(key, "X")
                pipe.execute()

    table = _table()
    seen: list[tuple[bool, int]] = []

    def check() -> None:
        info = table.account_info(b"BIG")
        total = sum(q for q, _ in table.account_positions(b"BIG").values())
        seen.append((bool(info and info["invalid"]), total))

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        sync = asyncio.run(_reread(redis_url, table, 40, during=check))
    finally:
        stop.set()
        thread.join(10)
    check()
    assert {invalid for invalid, _ in seen} == {False}, seen
    assert {total for _, total in seen} <= {base, base + 10}, seen
    # every re-read tried the chunks; the spoiled ones were made again atomically
    assert sync.chunked_reads + sync.chunked_fallbacks == 40
