"""One owning node against two on a Redis Cluster: server CPU per order, and throughput.

Issue 14's benchmark. A real 3-primary Redis Cluster (a replica each) and
real ``pretrade serve`` nodes (each its sync process and one server process).
The accounts are split by the slot of ``{ACC}`` into two shards; 16 accounts
fall in each. Three runs, side by side in one process:

* **1 node** owns both shards; the C++ load generator sends batch
  EvaluateOrders (1,000 orders per message) on 2 connections, all 32 accounts;
* **2 nodes** own one shard each; one load generator per node, on 1
  connection each, only that node's 16 accounts (2 connections in all again);
* **1 node, again**, as the first (the machine's drift shows as their
  difference).

Server CPU is user + system time of every process of the node(s), from
/proc, over the run; per order it is that over the orders decided. On this
2-core machine the two nodes and the load generators share the same two
cores: the figure to read is the CPU per order (issue 14: flat within 10%
from 1 node to 2), and the throughput ratio only as that (no linear-scaling
claim can be made on 2 cores).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from hdr import scale
from pretrade.app.devredis import RedisClusterServer
from pretrade.shards.slots import shard_of
from pretrade.state.connection import sync_client
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from servers import children_of, cpu_seconds, serve_process
from test_grpc import BIG, PRICE
from test_loadgen import FULL_SECONDS, SMOKE_SECONDS, loadgen, run  # noqa: F401

SHARDS = 2
PER_SHARD = 16
TTL_MS = 1_500


def _accounts() -> list[list[str]]:
    """``PER_SHARD`` account ids in each of the ``SHARDS`` shards."""
    found: list[list[str]] = [[] for _ in range(SHARDS)]
    n = 0
    while min(len(ids) for ids in found) < PER_SHARD:
        account = f"SC-{n}"
        ids = found[shard_of(account.encode(), SHARDS)]
        if len(ids) < PER_SHARD:
            ids.append(account)
        n += 1
    return found


def _node_env(node: str, owned: str) -> dict[str, str]:
    return {"PRETRADE_SHARD_COUNT": str(SHARDS), "PRETRADE_OWNED_SHARDS": owned,
            "PRETRADE_NODE_ID": node, "PRETRADE_LEASE_TTL_MS": str(TTL_MS),
            "PRETRADE_WORKERS": "1", "PRETRADE_DURABLE_DECISIONS": "false",
            "PRETRADE_MAX_ACCOUNTS": "1024", "PRETRADE_MAX_POSITIONS": "4096",
            "PRETRADE_MAX_ORDERS": "2000000", "PRETRADE_MAX_ORDERS_PER_ACCOUNT": "2000000"}


def _holds_all(target: str, shards: int) -> bool:
    with grpc.insecure_channel(target) as channel:
        status = risk_pb2_grpc.PreTradeRiskStub(channel).GetStatus(pb.StatusRequest(),
                                                                   timeout=5)
    return sum(lease.held_here for lease in status.shard_leases) == shards


@contextlib.contextmanager
def _nodes(url: str, tmp_path: Path, name: str,
           owned: list[str]) -> Iterator[list[tuple[str, int]]]:
    """Nodes owning ``owned`` (one entry each), once every one holds its leases."""
    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(serve_process(url, tmp_path / f"{name}-{n}.table",
                                                   env=_node_env(f"{name}-{n}", shards)))
                 for n, shards in enumerate(owned)]
        deadline = time.monotonic() + 30
        for (target, _), shards in zip(nodes, owned, strict=True):
            count = SHARDS if shards == "all" else len(shards.split(","))
            while not _holds_all(target, count):
                assert time.monotonic() < deadline, f"{target} never took its leases"
                time.sleep(0.05)
        yield nodes


def _cpu(nodes: list[tuple[str, int]]) -> float:
    return cpu_seconds([pid for _, node in nodes for pid in (node, *children_of(node))])


def _one_run(loadgen: Path, nodes: list[tuple[str, int]], accounts: list[list[str]],  # noqa: F811
             seconds: float, prefix: str) -> dict[str, Any]:
    """Every node loaded at once, 2 connections in all: orders, orders/s, CPU per order."""
    threads = 2 // len(nodes)
    work = [(target, [a for shard in (range(SHARDS) if len(nodes) == 1 else [n])
                      for a in accounts[shard]])
            for n, (target, _) in enumerate(nodes)]
    before = _cpu(nodes)
    with ThreadPoolExecutor(len(nodes)) as pool:
        results = list(pool.map(
            lambda job: run(loadgen, job[0], "batch", seconds,
                            f"{prefix}-{job[0].rsplit(':', 1)[1]}", threads=threads,
                            batch=1_000, account_list=",".join(job[1])),
            work))
    cpu = _cpu(nodes) - before
    orders = sum(r["orders"] for r in results)
    return {"orders": orders, "rate": sum(r["orders_per_second"] for r in results),
            "cpu_us": cpu / orders * 1e6, "p50_ns": max(r["latency"]["p50_ns"] for r in results),
            "p99_ns": max(r["latency"]["p99_ns"] for r in results),
            "p999_ns": max(r["latency"]["p999_ns"] for r in results)}


@pytest.mark.benchmark(group="cluster")
def test_server_cpu_per_order_one_node_against_two_on_a_redis_cluster(
        benchmark, latency, tmp_path, loadgen):  # noqa: F811
    seconds = scale(benchmark.disabled, FULL_SECONDS, SMOKE_SECONDS)
    accounts = _accounts()
    assert all(shard_of(a.encode(), SHARDS) == n for n, ids in enumerate(accounts) for a in ids)
    with RedisClusterServer(data_dir=tmp_path / "cluster") as cluster:
        client = sync_client(cluster.url)
        client.hset("instrument:AAPL", mapping={"tick_size": 1})
        client.set("price:AAPL", PRICE)
        for account in (a for ids in accounts for a in ids):
            client.hset(f"limits:{{{account}}}", mapping=BIG)
        client.close()
        found: dict[str, dict[str, Any]] = {}
        for name, owned in (("1 node", ["all"]), ("2 nodes", ["0", "1"]),
                            ("1 node, again", ["all"])):
            with _nodes(cluster.url, tmp_path, name.replace(" ", "").replace(",", ""),
                        owned) as nodes:
                found[name] = _one_run(loadgen, nodes, accounts, seconds,
                                       name.replace(" ", "").replace(",", ""))
    for name, figures in found.items():
        latency.figure(
            f"Redis Cluster, batch EvaluateOrders (1,000 per message, 2 connections, durable "
            f"off), {name}",
            f"{figures['rate']:,.0f} orders/s; server CPU {figures['cpu_us']:.2f} µs/order; "
            f"per message p50 {figures['p50_ns'] / 1000:,.0f} µs, p99 "
            f"{figures['p99_ns'] / 1000:,.0f} µs, p99.9 {figures['p999_ns'] / 1000:,.0f} µs")
    one = (found["1 node"]["cpu_us"] + found["1 node, again"]["cpu_us"]) / 2
    one_rate = (found["1 node"]["rate"] + found["1 node, again"]["rate"]) / 2
    latency.figure("Redis Cluster: server CPU per order, 2 nodes / 1 node (target within 10%)",
                   f"{found['2 nodes']['cpu_us'] / one:.2f}x")
    latency.figure("Redis Cluster: aggregate orders/s, 2 nodes / 1 node (2 cores in all)",
                   f"{found['2 nodes']['rate'] / one_rate:.2f}x")
    benchmark.extra_info["runs"] = found
    benchmark.pedantic(lambda: None, rounds=1)
