"""Standby failover time: the owner of a shard is killed (-9); how long until the standby
approves an order for one of its accounts.

Two ``pretrade serve`` nodes own the same (only) shard over one fresh
redis-server: the owner holds the lease, the standby follows the data and
keeps trying to take it. The time from the kill to the standby's first
approval is the lease's remaining TTL (at most ``lease_ttl_ms``; renewed every
third of it), the standby's next try (every third of it), and its full load
before it decides (decided orders restored from ``orders:{ACC}``).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
import redis

from hdr import new_histogram, scale
from pretrade.app.devredis import RedisServer
from pretrade.client import CallFailed, RiskClient
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from servers import children_of, serve_process

TTL_MS = 1_500
LIMITS = {"max_order_quantity": 10**6, "max_order_notional": 10**15, "max_net_position": 10**12,
          "max_long_position": 10**12, "max_short_position": 10**12, "price_collar_bps": 10**6}
PRICE = 683_378


def _env(node: str) -> dict[str, str]:
    return {"PRETRADE_OWNED_SHARDS": "all", "PRETRADE_SHARD_COUNT": "1",
            "PRETRADE_NODE_ID": node, "PRETRADE_LEASE_TTL_MS": str(TTL_MS)}


def _holds(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        status = risk_pb2_grpc.PreTradeRiskStub(channel).GetStatus(pb.StatusRequest(),
                                                                   timeout=5)
    return any(lease.held_here for lease in status.shard_leases)


def _order(order_id: str) -> pb.Order:
    return pb.Order(order_id=order_id, account_id="F-1", symbol="AAPL", side=pb.SIDE_BUY,
                    quantity=1, price=PRICE, order_type=pb.ORDER_TYPE_LIMIT)


def _one_failover(redis_url: str, tmp_path: Path, run: int) -> float:
    with serve_process(redis_url, tmp_path / f"owner-{run}.table",
                       env=_env(f"owner-{run}")) as (owner, owner_pid):
        deadline = time.monotonic() + 30
        while not _holds(owner):
            assert time.monotonic() < deadline, "the owner never took the lease"
            time.sleep(0.02)
        with serve_process(redis_url, tmp_path / f"standby-{run}.table",
                           env=_env(f"standby-{run}")) as (standby, _), \
                RiskClient([standby, owner], retries=0, timeout=2) as client:
            for n in range(20):
                assert client.evaluate(_order(f"r{run}-before-{n}")).approved
            # The whole node at once: its server processes would otherwise go on
            # approving on the lease it still holds until they notice their parent died.
            for pid in (owner_pid, *children_of(owner_pid)):
                os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            attempt = 0
            while time.monotonic() - killed < 30:
                attempt += 1
                try:
                    if client.evaluate(_order(f"r{run}-probe-{attempt}")).approved:
                        return time.monotonic() - killed
                except CallFailed:
                    pass
                time.sleep(0.005)
    raise AssertionError("the standby never approved")


@pytest.mark.benchmark(group="failover")
def test_failover_time_from_a_killed_owner_to_the_standbys_first_approval(
        benchmark, latency, tmp_path):
    runs = scale(benchmark.disabled, 5, 1)
    histogram = new_histogram()
    with RedisServer(data_dir=tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        client.hset("instrument:AAPL", mapping={"tick_size": 1, "lot_size": 1})
        client.set("price:AAPL", PRICE)
        client.hset("limits:{F-1}", mapping=LIMITS)
        client.close()
        seconds = [_one_failover(server.url, tmp_path, run) for run in range(runs)]
    for value in seconds:
        histogram.record_value(int(value * 1e9))
    latency.record(f"failover: owner killed -> first approval by the standby "
                   f"(lease ttl {TTL_MS} ms, {runs} runs)", histogram)
    latency.figure(f"failover time, lease ttl {TTL_MS} ms (min / max of {runs})",
                   f"{min(seconds) * 1000:.0f} / {max(seconds) * 1000:.0f} ms")
    benchmark.extra_info["failover_seconds"] = seconds
    benchmark.pedantic(lambda: None, rounds=1)
