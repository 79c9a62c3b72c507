"""Sizing: the bytes one account, one holding and one decided order cost, in the table and in Redis.

The figures docs/scaling.md multiplies out (10 million accounts, a million
orders a second). Each is measured, not read off a struct:

* the table: the marginal bytes of one more account, position slot and
  decided-order record, from ``PositionTable.required_size`` at two
  capacities (records, index slots and per-account activity together);
* Redis: ``used_memory`` of a real redis-server before and after writing the
  same accounts with 1 and with 10 holdings (the order system's four lot
  hashes, ``version``, ``limits`` and ``balances``), so the fixed part of an
  account and the cost of one more holding come apart;
* a decided order: a real ``pretrade serve`` (durable decisions and the audit
  trail on, the defaults) decides orders sent over gRPC (1,000 per account
  in the full run: past the 512 fields Redis keeps in a compact hash, as a
  busy account's day is), and ``MEMORY USAGE`` of every ``orders:{ACC}``
  hash and of the ``audit`` stream is divided by the number of orders, and
  so is the redis-server's CPU time meanwhile;
* the sync process's resident memory with that book loaded, against the
  same process over an empty database (its Python bookkeeping per account);
* the keyspace notifications one fill makes (the fill contract's
  MULTI/EXEC, counted on a real subscription): the follow load per fill.

Run with ``make bench``; with ``--benchmark-disable`` (CI) it runs small and
checks that every figure is positive.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import redis

from hdr import scale
from pretrade._core import LAYOUT
from pretrade._core.positions import PositionTable
from pretrade.app.devredis import RedisServer
from pretrade.audit.entries import AUDIT_STREAM
from pretrade.state.schema import (
    ORDERS_BY_LOT,
    balances_key,
    instrument_key,
    limits_key,
    lot_keys,
    orders_key,
    price_key,
    tagged,
    version_key,
)
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from servers import serve_process


def orders_by_lot_key(account: bytes) -> bytes:
    return ORDERS_BY_LOT + tagged(account)


LIMITS = {"max_order_quantity": 10**6, "max_order_notional": 10**15, "max_net_position": 10**9,
          "max_long_position": 10**9, "max_short_position": 10**9, "price_collar_bps": 10**6}
SYMBOLS = 10


def _marginal(field: str, base: dict[str, int], step: int) -> float:
    bigger = {**base, field: base[field] + step}
    return (PositionTable.required_size(**bigger) - PositionTable.required_size(**base)) / step


def _write_accounts(client: redis.Redis, prefix: str, accounts: int, holdings: int) -> None:
    for start in range(0, accounts, 500):
        with client.pipeline(transaction=False) as pipe:
            for a in range(start, min(start + 500, accounts)):
                account = f"{prefix}{a}".encode()
                tickers, quantities, prices = lot_keys(account)
                lots = [f"L{h}" for h in range(holdings)]
                pipe.hset(tickers, mapping={lot: f"S{h % SYMBOLS}" for h, lot in enumerate(lots)})
                pipe.hset(quantities, mapping={lot: 100 + h for h, lot in enumerate(lots)})
                pipe.hset(prices, mapping={lot: 1_000_000 + h for h, lot in enumerate(lots)})
                pipe.hset(orders_by_lot_key(account), mapping={lot: f"FILL-{a}-{lot}"
                                                               for lot in lots})
                pipe.set(version_key(account), holdings)
                pipe.hset(limits_key(account), mapping=LIMITS)
                pipe.hset(balances_key(account), mapping={"cash": 10**12})
            pipe.execute()


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _redis_cpu_seconds(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _redis_bytes(client: redis.Redis, accounts: int) -> tuple[float, float]:
    """(bytes of an account's fixed part, bytes per holding), from 1- and 10-holding books."""
    before = _used_memory(client)
    _write_accounts(client, "ONE", accounts, 1)
    one = (_used_memory(client) - before) / accounts
    before = _used_memory(client)
    _write_accounts(client, "TEN", accounts, 10)
    ten = (_used_memory(client) - before) / accounts
    per_holding = (ten - one) / 9
    return one - per_holding, per_holding


def _notifications_per_fill(client: redis.Redis) -> int:
    """Keyspace events one fill makes: the fill contract's transaction, counted as heard."""
    pubsub = client.pubsub()
    pubsub.psubscribe("__keyspace@0__:*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    account = b"FILL-COUNT"
    tickers, quantities, prices = lot_keys(account)
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(tickers, "L1", "S1")
        pipe.hset(quantities, "L1", 100)
        pipe.hset(prices, "L1", 1_000_000)
        pipe.hset(orders_by_lot_key(account), "L1", "O-1")
        pipe.incr(version_key(account))
        pipe.execute()
    heard = 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is None and heard:
            break
        heard += message is not None
    pubsub.close()
    return heard


def _resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _capacities(book: int, orders: int) -> dict[str, str]:
    """The table of the sizing run: room for the whole book the Redis measurement wrote
    (2 x book accounts, 11 holdings each)."""
    return {"PRETRADE_MAX_ACCOUNTS": str(3 * book), "PRETRADE_MAX_POSITIONS": str(12 * book),
            "PRETRADE_MAX_ORDERS": str(2 * orders), "PRETRADE_MAX_ORDERS_PER_ACCOUNT": str(orders)}


def _empty_sync_resident_bytes(url: str, tmp_path, book: int, orders: int) -> int:
    """The sync process's resident memory over an empty database (the baseline), with the
    same table as the loaded run: the difference is the book, not the table's capacities."""
    with serve_process(url.rsplit("/", 1)[0] + "/1", tmp_path / "empty.table",
                       env=_capacities(book, orders)) as (_target, pid):
        return _resident_bytes(pid)


def _decided_order_bytes(url: str, tmp_path, book: int, accounts: int, orders: int
                         ) -> tuple[float, float, int, float]:
    """(bytes per decided order in orders:{ACC}, per decision in the audit stream,
    the sync process's resident bytes with the book loaded, Redis CPU seconds per order)."""
    client = redis.Redis.from_url(url)
    for s in range(SYMBOLS):
        client.hset(instrument_key(f"S{s}".encode()), mapping={"tick_size": 1, "lot_size": 1})
        client.set(price_key(f"S{s}".encode()), 1_000_000)
    with serve_process(url, tmp_path / "sizing.table",
                       env=_capacities(book, orders)) as (target, pid):
        loaded = _resident_bytes(pid)
        cpu_before = _redis_cpu_seconds(client)
        with grpc.insecure_channel(target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            sent = 0
            while sent < orders:
                batch = pb.OrderBatch(orders=[
                    pb.Order(order_id=f"SIZE-{n:012d}", account_id=f"TEN{n % accounts}",
                             symbol=f"S{n % SYMBOLS}", side=pb.SIDE_BUY,
                             order_type=pb.ORDER_TYPE_LIMIT, quantity=1, price=1_000_000)
                    for n in range(sent, min(sent + 500, orders))])
                decided = stub.EvaluateOrders(batch, timeout=30)
                refused = [d for d in decided.decisions if not d.approved]
                assert not refused, refused[0]
                sent += len(batch.orders)
        redis_cpu = _redis_cpu_seconds(client) - cpu_before
    journal = sum(client.memory_usage(orders_key(f"TEN{a}".encode()), samples=0) or 0
                  for a in range(accounts))
    audit = client.memory_usage(AUDIT_STREAM, samples=0) or 0
    assert client.hlen(orders_key(b"TEN0")) > 0 and client.xlen(AUDIT_STREAM) > 0
    return journal / orders, audit / orders, loaded, redis_cpu / orders


@pytest.mark.benchmark(group="sizing")
def test_bytes_per_account_holding_and_decided_order(benchmark, latency, tmp_path):
    accounts = scale(benchmark.disabled, 20_000, 200)
    orders = scale(benchmark.disabled, 100_000, 1_000)
    base = {"max_accounts": 100_000, "max_instruments": 10_000, "max_positions": 1_000_000,
            "max_overrides": 1_024, "lock_stripes": 64, "max_orders": 1_000_000}
    account_table = _marginal("max_accounts", base, 100_000)
    position_table = _marginal("max_positions", base, 1_000_000)
    order_table = _marginal("max_orders", base, 1_000_000)
    with RedisServer(data_dir=tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        account_redis, holding_redis = _redis_bytes(client, accounts)
        events = _notifications_per_fill(client)
        empty = _empty_sync_resident_bytes(server.url, tmp_path, accounts, orders)
        journal, audit, loaded, redis_cpu = _decided_order_bytes(server.url, tmp_path, accounts,
                                                      min(accounts, 100), orders)
    figures = {
        "table bytes per account (record, index, activity)": account_table,
        "table bytes per position slot (slot and index)": position_table,
        "table bytes per decided-order record (record and index)": order_table,
        "Redis bytes per account, fixed part (limits, balances, version, 4 hashes)":
            account_redis,
        "Redis bytes per holding (one lot in the 4 lot hashes)": holding_redis,
        "Redis bytes per decided order in orders:{ACC}": journal,
        "Redis bytes per decision in the audit stream": audit,
        "sync process resident bytes per account (5.5 holdings on average)":
            (loaded - empty) / (2 * accounts),
    }
    figures["Redis CPU per decided order (journal HSETs, audit XADDs, the sync's reads), ns"
            ] = redis_cpu * 1e9
    assert LAYOUT["position_bytes"] <= position_table
    for name, value in figures.items():
        assert value > 0, name
        latency.figure(name, f"{value:,.0f}")
    assert events == 5, f"one fill made {events} keyspace events, the contract writes 5 keys"
    latency.figure("keyspace events per fill (4 lot hashes + version)", str(events))
    benchmark.extra_info.update({name: round(value) for name, value in figures.items()})
    benchmark.pedantic(lambda: None, rounds=1)
