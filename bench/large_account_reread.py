"""One re-read of a 100,000-lot account, as the sync reads it: wall time and client CPU.

    .venv/bin/python bench/large_account_reread.py

Starts a redis-server, writes one account's three lot hashes, then reads
them in one MULTI/EXEC (with the account's other snapshot keys) and sums
the lots, alternately as three dicts (redis-py pairs each HGETALL reply) and
as the flat RESP2 replies the sync reads now (``Reads.hgetall_flat``), best
of seven each.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import redis

from pretrade.app.devredis import RedisServer
from pretrade.state.connection import Reads, read_snapshot, redis_client
from pretrade.state.schema import (
    account_snapshot_keys,
    aggregate_lots,
    lot_keys,
    version_key,
)

ACCOUNT = b"CHURN"
LOTS = 100_000
ROUNDS = 7


async def _once(client: object, flat: bool) -> tuple[float, float]:
    reads = Reads()
    keys = account_snapshot_keys(ACCOUNT)
    for key in keys[:3]:
        (reads.hgetall_flat if flat else reads.hgetall)(key)
    for key in keys[3:]:
        reads.hgetall(key)
    reads.get(version_key(ACCOUNT))
    cpu, wall = time.process_time(), time.perf_counter()
    replies = await read_snapshot(client, reads)  # type: ignore[arg-type]
    positions = aggregate_lots(*replies[:3])  # three dicts, or three flat replies
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert positions == {b"AAPL": (LOTS, LOTS * 680_000)}, positions
    return wall, cpu


async def _compare(url: str) -> None:
    client = redis_client(url)
    try:
        for flat in (False, True, False, True):
            runs = [await _once(client, flat) for _ in range(ROUNDS)]
            print(f"{'flat replies' if flat else 'three dicts '}: "
                  f"wall {min(r[0] for r in runs) * 1000:.1f} ms, "
                  f"client CPU {min(r[1] for r in runs) * 1000:.1f} ms (best of {ROUNDS})")
    finally:
        await client.aclose()


def main() -> None:
    with tempfile.TemporaryDirectory() as directory, \
            RedisServer(data_dir=Path(directory)) as server:
        r = redis.Redis.from_url(server.url)
        tickers, quantities, prices = lot_keys(ACCOUNT)
        r.hset(tickers, mapping={f"L{n}": "AAPL" for n in range(LOTS)})
        r.hset(quantities, mapping={f"L{n}": 1 for n in range(LOTS)})
        r.hset(prices, mapping={f"L{n}": 680_000 for n in range(LOTS)})
        asyncio.run(_compare(server.url))


if __name__ == "__main__":
    main()
