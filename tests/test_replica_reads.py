"""Large accounts re-read on a replica (``redis_read_url``), never on data older than the change.

A re-read of an account of 100,000 lots is one MULTI/EXEC of 300,000 fields;
on the primary it holds Redis for tens of milliseconds, and every durable
decision waits behind it. With a replica, the sync SETs a fence of its own
to a fresh token on the primary after the change, and keeps the replica's
snapshot only if that snapshot holds the token: the account is then at least as new as the
change that made it dirty. A replica that is behind, stopped, or not a
replica of this primary at all is never trusted: the primary is read.

Real redis-servers: a primary and its replica of this module's own, so the
session's Redis is not made a primary of anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import redis

from book import GENEROUS_LIMITS, seed_lots
from pretrade.app.devredis import RedisServer
from pretrade.engine.table import new_private_table
from pretrade.state.connection import redis_client as async_client
from pretrade.state.halts import HaltBook
from pretrade.state.schema import account_snapshot_keys, aggregate_lots, limits_key, lot_keys
from pretrade.state.sync import REPLICA_REST_SECONDS, Dirty, RedisSync
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve

LOTS = 300
ACCOUNT = b"BIG"


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path_factory.mktemp("primary")) as server:
        yield server


@pytest.fixture
def replica(primary: RedisServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[RedisServer]:
    """A fresh replica of ``primary`` per test (tests stop, detach or pause it)."""
    redis.Redis(port=primary.port).flushall()
    with RedisServer(data_dir=tmp_path_factory.mktemp("replica"),
                     replica_of=primary.port) as server:
        yield server


def _table():
    return new_private_table(max_accounts=16, max_instruments=16, max_positions=64,
                             max_overrides=16, lock_stripes=4, max_orders=64,
                             max_orders_per_account=64)


def _seed(r: redis.Redis) -> None:
    seed_lots(r, ACCOUNT.decode(), [(f"L{n}", ("AAPL", "MSFT", "IBM")[n % 3], 1 + n % 7,
                                     1_000 + n) for n in range(LOTS)])


def _positions(r: redis.Redis) -> dict[bytes, tuple[int, int]]:
    tickers, quantities, prices = (r.hgetall(key) for key in lot_keys(ACCOUNT))
    return aggregate_lots(tickers, quantities, prices)


def _calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def _caught_up(primary: redis.Redis, replica: redis.Redis) -> None:
    offset = primary.info("replication")["master_repl_offset"]
    deadline = time.monotonic() + 10
    while replica.info("replication").get("slave_repl_offset", -1) < offset:
        assert time.monotonic() < deadline, "the replica did not catch up"
        time.sleep(0.01)


@contextlib.asynccontextmanager
async def _sync(primary_url: str, read_url: str, table, max_lag_ms: int = 2_000
                ) -> AsyncIterator[RedisSync]:
    """A sync on ``primary_url`` reading large accounts (over 100 lots) on ``read_url``."""
    client, reader = async_client(primary_url), async_client(read_url)
    try:
        yield RedisSync(client, table, HaltBook(table), large_account_lots=100,
                        max_lag_ms=max_lag_ms, read_client=reader)
    finally:
        await client.aclose()
        await reader.aclose()


async def _reread(primary_url: str, read_url: str, table, rounds: int, write,
                  max_lag_ms: int = 2_000, loaded=lambda: None
                  ) -> tuple[RedisSync, list[float]]:
    """A sync on ``primary_url`` reading large accounts on ``read_url``: a full load
    (then ``loaded()``), then ``rounds`` times ``write()`` on the primary and a
    re-read of the account."""
    took: list[float] = []
    async with _sync(primary_url, read_url, table, max_lag_ms) as sync:
        await sync.full_load()
        loaded()
        for _ in range(rounds):
            write()
            started = time.monotonic()
            await sync.refresh(Dirty(lots={ACCOUNT}))
            took.append(time.monotonic() - started)
    return sync, took


def test_a_large_account_is_reread_on_the_replica_and_holds_the_change(
        primary: RedisServer, replica: RedisServer):
    r, rr = redis.Redis(port=primary.port), redis.Redis(port=replica.port)
    _seed(r)
    _caught_up(r, rr)
    _, quantities, _ = lot_keys(ACCOUNT)
    table = _table()
    writes = iter(range(1, 100))
    counts: list[int] = []
    sync, _ = asyncio.run(_reread(
        primary.url, replica.url, table, 5, lambda: r.hincrby(quantities, "L0", next(writes)),
        loaded=lambda: counts.extend((_calls(r, "hgetall"), _calls(rr, "hgetall")))))
    assert sync.stats.replica_reads == 5 and sync.stats.replica_fallbacks == 0
    # after the full load, the five re-reads read the replica's hashes, none of the primary's
    assert _calls(r, "hgetall") == counts[0]
    assert _calls(rr, "hgetall") - counts[1] == 5 * len(account_snapshot_keys(ACCOUNT))
    # each re-read saw its own round's write, made on the primary just before
    assert table.account_positions(ACCOUNT) == _positions(r)
    assert int(r.hget(quantities, "L0")) == 1 + sum(range(1, 6))


def test_a_replica_behind_the_change_is_not_trusted_and_the_primary_is_read(
        primary: RedisServer, replica: RedisServer):
    # Detached (REPLICAOF NO ONE), the replica keeps the old lots and never
    # hears of the change or the fence: its snapshot must not be taken.
    r, rr = redis.Redis(port=primary.port), redis.Redis(port=replica.port)
    _seed(r)
    _caught_up(r, rr)
    rr.replicaof("NO", "ONE")
    _, quantities, _ = lot_keys(ACCOUNT)
    table = _table()
    sync, took = asyncio.run(_reread(primary.url, replica.url, table, 3,
                                     lambda: r.hincrby(quantities, "L1", 1_000)))
    assert table.account_positions(ACCOUNT) == _positions(r) != _positions(rr)
    # one try, bounded by a quarter of the lag bound, then the replica rests
    assert sync.stats.replica_fallbacks == 1 and sync.stats.replica_reads == 0
    assert took[0] < 0.5 + 0.5, took
    assert REPLICA_REST_SECONDS > sum(took)


def test_a_replica_left_behind_by_a_flushed_primary_is_not_trusted(
        primary: RedisServer, replica: RedisServer):
    # The sync has read on the replica (the replica holds its fence); then the
    # primary is emptied and written anew (FLUSHALL, a restart without its
    # data) while the replica, cut off, still holds the old lots and the old
    # fence. After the sync's resync, a re-read must not take the old lots.
    r, rr = redis.Redis(port=primary.port), redis.Redis(port=replica.port)
    _seed(r)
    _caught_up(r, rr)
    _, quantities, _ = lot_keys(ACCOUNT)
    table = _table()

    async def run():
        async with _sync(primary.url, replica.url, table) as sync:
            await sync.full_load()
            for n in range(3):
                r.hincrby(quantities, "L5", n)
                await sync.refresh(Dirty(lots={ACCOUNT}))
            assert sync.stats.replica_reads == 3
            _caught_up(r, rr)
            rr.replicaof("NO", "ONE")
            r.flushall()
            seed_lots(r, ACCOUNT.decode(), [(f"L{n}", "IBM", 2, 500) for n in range(LOTS)])
            await sync.full_load()  # the resync after the database was replaced
            r.hincrby(quantities, "L5", 1)
            await sync.refresh(Dirty(lots={ACCOUNT}))
        return sync

    sync = asyncio.run(run())
    held = LOTS * 2 + 1
    # the symbols no longer held stay in the table as closed (zero) positions
    positions = {symbol: position for symbol, position in table.account_positions(ACCOUNT).items()
                 if position != (0, 0)}
    assert positions == _positions(r) == {b"IBM": (held, held * 500)}
    assert sync.stats.replica_fallbacks == 1


def test_a_server_that_is_no_replica_of_this_primary_is_never_read(
        primary: RedisServer, tmp_path_factory: pytest.TempPathFactory):
    # Another Redis holding the same account with other lots (a replica of some
    # other primary, a wrong URL): it never holds this sync's fence.
    r = redis.Redis(port=primary.port)
    r.flushall()
    _seed(r)
    with RedisServer(data_dir=tmp_path_factory.mktemp("other")) as other:
        o = redis.Redis(port=other.port)
        _seed(o)
        _, quantities, _ = lot_keys(ACCOUNT)
        o.hset(quantities, "L2", 999_999)
        table = _table()
        sync, _ = asyncio.run(_reread(primary.url, other.url, table, 2, lambda: None))
    assert table.account_positions(ACCOUNT) == _positions(r)
    assert sync.stats.replica_reads == 0 and sync.stats.replica_fallbacks == 1


def test_a_fence_of_another_type_is_overwritten_and_the_read_holds_the_change(
        primary: RedisServer, replica: RedisServer):
    # Somebody overwrote the fence with a hash: the next read's SET replaces
    # it, and the replica's snapshot still holds the change. Nothing crashes.
    r, rr = redis.Redis(port=primary.port), redis.Redis(port=replica.port)
    _seed(r)
    _caught_up(r, rr)
    _, quantities, _ = lot_keys(ACCOUNT)
    table = _table()

    async def run():
        async with _sync(primary.url, replica.url, table) as sync:
            await sync.full_load()
            r.hincrby(quantities, "L4", 7)
            r.hset(sync.fence_key, "x", "y")
            await sync.refresh(Dirty(lots={ACCOUNT}))
        return sync

    sync = asyncio.run(run())
    assert r.type(sync.fence_key) == b"string"
    assert table.account_positions(ACCOUNT) == _positions(r)
    assert sync.stats.replica_fallbacks == 0 and sync.stats.replica_reads == 1


def test_a_stopped_replica_costs_one_bounded_wait_then_rests(
        primary: RedisServer, replica: RedisServer):
    # SIGSTOP: the replica accepts nothing and answers nothing. The first read
    # gives up within a quarter of the lag bound; the next ones go to the
    # primary at once while the replica rests.
    r, rr = redis.Redis(port=primary.port), redis.Redis(port=replica.port)
    _seed(r)
    _caught_up(r, rr)
    _, quantities, _ = lot_keys(ACCOUNT)
    table = _table()
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        sync, took = asyncio.run(_reread(primary.url, replica.url, table, 4,
                                         lambda: r.hincrby(quantities, "L3", 1),
                                         max_lag_ms=1_000))
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    assert table.account_positions(ACCOUNT) == _positions(r)
    assert sync.stats.replica_fallbacks == 1 and sync.stats.replica_reads == 0
    assert took[0] < 0.25 + 0.5 and max(took[1:]) < 0.1, took


def _seed_three(r: redis.Redis) -> list[bytes]:
    accounts = [b"BIG-1", b"BIG-2", b"BIG-3"]
    for account in accounts:
        seed_lots(r, account.decode(), [(f"L{n}", "AAPL", 1 + n % 5, 1_000)
                                        for n in range(LOTS)])
    return accounts


async def _refresh_all(primary_url: str, read_url: str, table, accounts: list[bytes],
                       write, max_lag_ms: int = 2_000) -> tuple[RedisSync, float]:
    async with _sync(primary_url, read_url, table, max_lag_ms) as sync:
        await sync.full_load()
        write()
        started = time.monotonic()
        await sync.refresh(Dirty(lots=set(accounts)))
        return sync, time.monotonic() - started


def _equal_to_redis(table, r: redis.Redis, accounts: list[bytes]) -> bool:
    for account in accounts:
        tickers, quantities, prices = (r.hgetall(key) for key in lot_keys(account))
        if table.account_positions(account) != aggregate_lots(tickers, quantities, prices):
            return False
    return True


def test_the_large_accounts_of_one_batch_share_one_fence_and_one_wait(
        primary: RedisServer, replica: RedisServer):
    r, rr = redis.Redis(port=primary.port), redis.Redis(port=replica.port)
    accounts = _seed_three(r)
    _caught_up(r, rr)
    table = _table()
    waits = _calls(r, "wait")

    def write() -> None:
        for account in accounts:
            r.hincrby(lot_keys(account)[1], "L0", 3)

    sync, _ = asyncio.run(_refresh_all(primary.url, replica.url, table, accounts, write))
    assert sync.stats.replica_reads == 3 and sync.stats.replica_fallbacks == 0
    assert _calls(r, "wait") - waits == 1
    assert _equal_to_redis(table, r, accounts)


def test_a_stopped_replica_holds_a_batch_of_large_accounts_one_budget_at_most(
        primary: RedisServer, replica: RedisServer):
    # The budget is the batch's, not each account's: three large accounts wait
    # for a stopped replica a quarter of the lag bound in all, then all three
    # are read on the primary.
    r, rr = redis.Redis(port=primary.port), redis.Redis(port=replica.port)
    accounts = _seed_three(r)
    _caught_up(r, rr)
    table = _table()

    def write() -> None:
        for account in accounts:
            r.hincrby(lot_keys(account)[1], "L1", 2)

    os.kill(replica.pid, signal.SIGSTOP)
    try:
        sync, took = asyncio.run(_refresh_all(primary.url, replica.url, table, accounts,
                                              write, max_lag_ms=1_000))
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    assert sync.stats.replica_fallbacks == 3 and sync.stats.replica_reads == 0
    assert took < 0.25 + 0.3, took
    assert _equal_to_redis(table, r, accounts)


def test_pretrade_serve_with_a_read_url_reads_a_large_account_on_the_replica(
        primary: RedisServer, replica: RedisServer, tmp_path):
    # The setting reaches the sync process: a change to a large account is
    # re-read on the replica (GetStatus counts it), and its order is decided
    # on the changed position.
    r, rr = redis.Redis(port=primary.port), redis.Redis(port=replica.port)
    lots = 20_001  # above LARGE_ACCOUNT_LOTS
    tickers, quantities, prices = lot_keys(ACCOUNT)
    r.hset(tickers, mapping={f"L{n}": "AAPL" for n in range(lots)})
    r.hset(quantities, mapping={f"L{n}": 1 for n in range(lots)})
    r.hset(prices, mapping={f"L{n}": 1_000_000 for n in range(lots)})
    r.hset(b"instrument:AAPL", mapping={"tick_size": 1, "lot_size": 1})
    r.set(b"price:AAPL", 1_000_000)
    r.hset(limits_key(ACCOUNT), mapping={
        **GENEROUS_LIMITS, "max_long_position": lots + 20, "max_net_position": 10**9})
    _caught_up(r, rr)
    server = Serve(tmp_path, "replica-reads", "--redis-url", primary.url,
                   "--listen", "127.0.0.1:0", env={"PRETRADE_REDIS_READ_URL": replica.url})
    try:
        target = server.wait_for_banner()
        server.wait_until_serving()
        with grpc.insecure_channel(target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)

            def order(n: int) -> pb.Decision:
                return stub.EvaluateOrder(pb.Order(
                    order_id=f"o{n}", account_id=ACCOUNT.decode(), symbol="AAPL",
                    side=pb.SIDE_BUY, quantity=10, price=1_000_000,
                    order_type=pb.ORDER_TYPE_LIMIT), timeout=10)

            # 20,001 held + 10 working + 10 fits the limit of 20,021 ...
            assert order(0).approved
            r.hset(quantities, "L0", 2)  # ... one more unit held, and it does not
            deadline = time.monotonic() + 10
            while stub.GetStatus(pb.StatusRequest(), timeout=5).replica_reads < 1:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            decision = order(1)
            assert not decision.approved
            assert decision.rejections[0].code == pb.REJECT_CODE_MAX_LONG_POSITION
            assert stub.GetStatus(pb.StatusRequest(), timeout=5).replica_fallbacks == 0
    finally:
        server.terminate()
