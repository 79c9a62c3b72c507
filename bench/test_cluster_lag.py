"""Notification lag on a Redis Cluster and on a standalone Redis, side by side in one run.

The same measurement as ``test_sync_lag_from_a_redis_write_to_a_decision``
(an HSET of ``limits:{LAG}`` by another client, until the engine decides by
it), against a real redis-server and a real 3-primary Redis Cluster (a
replica each) started from the same binary. On the cluster the write lands on
the primary of the ``{LAG}`` slot, whose notification reaches the sync on its
own connection to that primary; the sync is a cluster client (per-slot
MULTI/EXEC re-reads, redis-py's cluster routing).
"""

from __future__ import annotations

import asyncio

import pytest

from hdr import scale
from pretrade._core import Engine
from pretrade.app.devredis import RedisClusterServer, RedisServer
from pretrade.engine.table import Capacities, MappedTable
from pretrade.state.connection import redis_client, sync_client
from test_bulk_load import LIMITS, measure_lag

CAPACITIES = Capacities(max_accounts=64, max_instruments=64, max_positions=256,
                        max_overrides=64, lock_stripes=8, max_orders=64)


def _lag(url: str, table_path, samples: int):
    client = sync_client(url)
    client.hset("instrument:S0", mapping={"tick_size": 1})
    client.set("price:S0", 10_000)
    client.hset("limits:{LAG}", mapping=LIMITS)
    client.close()
    mapped = MappedTable.create(table_path, CAPACITIES)
    try:
        return asyncio.run(measure_lag(url, mapped.table, Engine(mapped.table), samples,
                                       connect=redis_client))
    finally:
        mapped.close(unlink=True)


@pytest.mark.benchmark(group="sync")
def test_notification_lag_on_a_cluster_and_on_standalone_side_by_side(benchmark, latency,
                                                                      tmp_path):
    samples = scale(benchmark.disabled, 2_000, 20)
    with RedisServer(data_dir=tmp_path / "redis") as standalone, \
            RedisClusterServer(data_dir=tmp_path / "cluster") as cluster:
        for name, url in (("standalone", standalone.url), ("Redis Cluster", cluster.url),
                          ("standalone, again", standalone.url)):
            h = _lag(url, tmp_path / "lag.table", samples)
            note = ("3 primaries + 3 replicas; the sync a cluster client" if "Cluster" in name
                    else "one redis-server; the sync's own hiredis connection")
            latency.record(f"notification lag, {name}: Redis write -> decision", h, note)
    benchmark.pedantic(lambda: None, rounds=1)
