"""The fault-injection suite: real Redis and real `pretrade serve`, one fault at a time.

Every scenario runs a book of three accounts (lots, limits, a halted
account, a halted symbol, working orders made durable) behind a real
`pretrade serve` in front of a stock redis-server, sends orders while the
fault happens, and then, once the server is live again, demands:

* **the table equals Redis, key by key**: the live table (mapped from the
  server's own file) compares equal to a fresh load of the same Redis
  (:mod:`pretrade.state.reconcile`);
* **zero approvals a fresh server would reject**: probe orders decided on
  the live table and on the fresh one agree, and each order then sent over
  gRPC is approved only if the fresh table approves it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from book import seed_instrument, seed_limits, seed_lots, wait_until
from faults import RestartableRedis, ServeProcess
from pretrade._core import Engine, PositionTable
from pretrade.engine.table import Capacities, MappedTable
from pretrade.state.connection import redis_client
from pretrade.state.reconcile import compare, load_from_redis
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

LAG_MS = 500
ACCOUNTS = ("F-1", "F-2", "F-3")
SYMBOLS = {"AAPL": 683_378, "MSFT": 4_123_300, "IBM": 1_500_000}
LIMITS = {"max_order_quantity": 500, "max_order_notional": 10_000_000_000,
          "max_net_position": 2_000, "max_long_position": 2_000, "max_short_position": 1_000,
          "price_collar_bps": 1_000, "max_working_orders": 50}
#: The capacities `pretrade serve` uses by default (the fresh load must fit the same book).
CAPACITIES = Capacities(max_accounts=1_024, max_instruments=1_024, max_positions=8_192,
                        max_overrides=1_024, lock_stripes=8, max_orders=65_536)
_ids = itertools.count()


def seed_book(client: redis.Redis) -> None:
    for symbol, price in SYMBOLS.items():
        seed_instrument(client, symbol, price=price)
    for n, account in enumerate(ACCOUNTS):
        seed_limits(client, account, **LIMITS)
        seed_lots(client, account, [(f"L{n}-1", "AAPL", 100 * (n + 1), 680_000),
                                    (f"L{n}-2", "MSFT", -10 * n, 4_100_000)])
    client.hset("halt:account:F-3", mapping={"mode": "REDUCE_ONLY", "reason": "suite",
                                             "by": "ops", "at": 1})
    client.hset("halt:symbol:IBM", mapping={"mode": "HALTED", "reason": "suite", "by": "ops",
                                            "at": 1})


def an_order(rng: random.Random, order_id: str | None = None) -> pb.Order:
    symbol = rng.choice(list(SYMBOLS))
    return pb.Order(
        order_id=order_id or f"fs-{next(_ids)}", account_id=rng.choice(ACCOUNTS), symbol=symbol,
        side=rng.choice([pb.SIDE_BUY, pb.SIDE_SELL]), quantity=rng.randrange(1, 400),
        price=SYMBOLS[symbol], order_type=pb.ORDER_TYPE_LIMIT, venue="XNAS")


@dataclass
class Flow:
    """Orders sent from a thread while a fault happens; what came back."""

    target: str
    rng: random.Random
    decisions: list[pb.Decision] = field(default_factory=list)
    failures: list[grpc.StatusCode] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with grpc.insecure_channel(self.target) as channel:
                    stub = risk_pb2_grpc.PreTradeRiskStub(channel)
                    while not self.stop.is_set():
                        self.decisions.append(stub.EvaluateOrder(an_order(self.rng),
                                                                 timeout=2))
            except grpc.RpcError as error:
                self.failures.append(error.code())
                time.sleep(0.05)


class Book:
    """The redis-server, the server process, and what they are checked against."""

    def __init__(self, tmp_path: Path, rng: random.Random) -> None:
        self.tmp_path = tmp_path
        self.rng = rng
        self.redis = RestartableRedis(tmp_path / "redis")
        seed_book(self.redis.client())
        self.table_path = tmp_path / "suite.table"
        self.server = self.start_server()

    def start_server(self) -> ServeProcess:
        server = ServeProcess(self.redis.url, self.table_path,
                              env={"PRETRADE_MAX_SYNC_LAG_MS": str(LAG_MS),
                                   "PRETRADE_MAX_ACCOUNTS": str(CAPACITIES.max_accounts),
                                   "PRETRADE_MAX_INSTRUMENTS": str(CAPACITIES.max_instruments),
                                   "PRETRADE_MAX_POSITIONS": str(CAPACITIES.max_positions),
                                   "PRETRADE_LOCK_STRIPES": str(CAPACITIES.lock_stripes),
                                   "PRETRADE_MAX_ORDERS": str(CAPACITIES.max_orders)})
        self.wait_live(server.target)
        return server

    def stub(self) -> tuple[grpc.Channel, risk_pb2_grpc.PreTradeRiskStub]:
        channel = grpc.insecure_channel(self.server.target)
        return channel, risk_pb2_grpc.PreTradeRiskStub(channel)

    @staticmethod
    def wait_live(target: str, timeout: float = 30) -> pb.ServerStatus:
        with grpc.insecure_channel(target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            return wait_until(lambda: _status(stub), lambda s: s is not None and s.sync_live,
                              timeout=timeout)

    def work(self, count: int = 40) -> None:
        """Approve some orders, so working reservations exist (and are durable)."""
        channel, stub = self.stub()
        with channel:
            for _ in range(count):
                stub.EvaluateOrder(an_order(self.rng), timeout=5)

    def fresh_table(self) -> PositionTable:
        async def load() -> PositionTable:
            client = redis_client(self.redis.url)
            try:
                return await load_from_redis(client, CAPACITIES)
            finally:
                await client.aclose()

        return asyncio.run(load())

    def check_equal_to_redis(self) -> None:
        """The live table equals a fresh load of Redis (given a moment to catch up)."""
        mapped = MappedTable.attach(self.table_path)
        try:
            differences = wait_until(lambda: compare(mapped.table, self.fresh_table()),
                                     lambda found: not found, timeout=10)
            assert differences == []
        finally:
            mapped.close()

    def check_no_approval_a_fresh_server_rejects(self, probes: int = 60) -> None:
        fresh = Engine(self.fresh_table())
        mapped = MappedTable.attach(self.table_path)
        try:
            live = Engine(mapped.table)
            # Decided without an order id: nothing is stored or reserved.
            for _ in range(probes):
                probe = an_order(self.rng)
                args = (b"", probe.account_id.encode(), probe.symbol.encode(), probe.side,
                        probe.order_type, probe.quantity, probe.price, b"XNAS", b"",
                        time.monotonic_ns())
                assert live.evaluate(*args).astuple()[:3] == fresh.evaluate(*args).astuple()[:3]
        finally:
            mapped.close()
        channel, stub = self.stub()
        with channel:
            for _ in range(20):
                fresh = Engine(self.fresh_table())
                probe = an_order(self.rng)
                would = fresh.evaluate(b"", probe.account_id.encode(), probe.symbol.encode(),
                                       probe.side, probe.order_type, probe.quantity,
                                       probe.price, b"XNAS", b"", time.monotonic_ns())
                decision = stub.EvaluateOrder(probe, timeout=5)
                assert decision.approved == would.approved, (probe, decision, would)

    def close(self) -> None:
        self.server.stop()
        self.redis.stop()


def _status(stub: risk_pb2_grpc.PreTradeRiskStub) -> pb.ServerStatus | None:
    try:
        return stub.GetStatus(pb.StatusRequest(), timeout=2)
    except grpc.RpcError:
        return None


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Book]:
    seed = random.randrange(2**32)
    print(f"fault suite seed {seed}")
    book = Book(tmp_path, random.Random(seed))
    try:
        yield book
    finally:
        book.close()


# -- THE FAULTS --

def redis_killed_and_restarted(book: Book) -> None:
    book.redis.kill_and_restart()


def redis_restarted_with_other_flags(book: Book) -> None:
    # Some classes on, hashes and strings off: pretrade must add what it needs.
    book.redis.kill_and_restart(notify_keyspace_events="Kgx")


def redis_flushed_and_rewritten(book: Book) -> None:
    client = book.redis.client()
    client.flushall()
    seed_book(client)
    client.hset("limits:{F-2}", "max_long_position", 150)
    client.delete("halt:symbol:IBM")


def redis_paused(book: Book) -> None:
    client = book.redis.client()
    client.execute_command("CLIENT", "PAUSE", str(3 * LAG_MS), "ALL")
    time.sleep(3 * LAG_MS / 1000 + 0.2)
    client.hset("limits:{F-1}", "max_order_quantity", 50)


def notifications_switched_off(book: Book) -> None:
    client = book.redis.client()
    client.config_set("notify-keyspace-events", "")
    client.hset("halt:account:F-1", mapping={"mode": "HALTED", "reason": "suite", "by": "ops",
                                             "at": 1})


def pretrade_killed_and_restarted(book: Book) -> None:
    book.server.kill()
    client = book.redis.client()
    seed_lots(client, "F-2", [("L-while-down", "AAPL", 50, 690_000)])
    book.server = book.start_server()


FAULTS: list[Callable[[Book], None]] = [
    redis_killed_and_restarted, redis_restarted_with_other_flags, redis_flushed_and_rewritten,
    redis_paused, notifications_switched_off, pretrade_killed_and_restarted,
]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.__name__ for fault in FAULTS])
def test_after_the_fault_the_table_equals_redis_and_no_forbidden_order_is_approved(book, fault):
    book.work()
    book.check_equal_to_redis()
    flow = Flow(book.server.target, random.Random(book.rng.random()))
    sender = threading.Thread(target=flow.run)
    sender.start()
    try:
        time.sleep(0.3)
        fault(book)
        # Live again, and a beat past the lag bound: what it decides now, it decides on Redis.
        book.wait_live(book.server.target)
        time.sleep(2 * LAG_MS / 1000)
    finally:
        flow.stop.set()
        sender.join(10)
    assert flow.decisions, "no order was decided around the fault"
    assert set(flow.failures) <= {grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.DEADLINE_EXCEEDED}, flow.failures
    book.check_equal_to_redis()
    book.check_no_approval_a_fresh_server_rejects()
