"""StreamPortfolio fan-out: one price tick to 1,000 subscribers, delivery latency per subscriber.

A real redis-server, a real ``pretrade serve`` in its own process, and 1,000
StreamPortfolio streams over a few grpc.aio channels in this process. Each
round XADDs one tick to the ``prices`` stream and times, per subscriber, from
just before the XADD until that stream has received the UPDATE carrying the
new price. Target (issue 5): p99 <= 50 ms.

The clients are Python too: each message costs this process about as much
CPU as it costs the server, so on a small machine the figure includes the
client's share; the server's CPU time per tick is printed beside it.

Run with ``make bench`` (or ``.venv/bin/python -m pytest bench/test_portfolio_fanout.py -s``);
with ``--benchmark-disable`` (how CI keeps benchmarks from rotting) it uses 50
subscribers and one round and checks delivery only, not the latency target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
import redis.asyncio as aioredis

from hdr import new_histogram
from pretrade.app.devredis import RedisServer
from pretrade.state.schema import instrument_key, limits_key, lot_keys, price_key
from pretrade.v1 import risk_pb2 as pb
from servers import children_of, cpu_seconds, serve_process

SUBSCRIBERS, ROUNDS = 1_000, 30
QUICK_SUBSCRIBERS, QUICK_ROUNDS = 50, 1
ACCOUNTS = 100  # subscribers spread over this many accounts, all holding AAPL
CHANNELS = 8
TARGET_P99_MS = 50.0
FIRST_PRICE = 683_378
STREAM_PORTFOLIO = "/pretrade.v1.PreTradeRisk/StreamPortfolio"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, int]]:
    """``pretrade serve`` in a child process (its own GIL), over a seeded book: (target, pid)."""
    seed(redis.Redis.from_url(redis_server.url))
    table = tmp_path_factory.mktemp("table") / "fanout.table"
    with serve_process(redis_server.url, table, timeout=30) as served:
        yield served


def seed(r: redis.Redis) -> None:
    r.flushall()
    with r.pipeline(transaction=False) as pipe:
        pipe.hset(instrument_key(b"AAPL"), mapping={"tick_size": 1, "lot_size": 1})
        pipe.set(price_key(b"AAPL"), FIRST_PRICE)
        for n in range(ACCOUNTS):
            account = f"FAN-{n}".encode()
            tickers, quantities, prices = lot_keys(account)
            pipe.hset(tickers, "L1", "AAPL")
            pipe.hset(quantities, "L1", 10 + n)
            pipe.hset(prices, "L1", 680_000)
            pipe.hset(limits_key(account), mapping={"max_order_quantity": 1_000})
        pipe.execute()


class Fanout:
    """``subscribers`` open streams; ``tick`` times one price to all of them."""

    def __init__(self, target: str, redis_url: str, subscribers: int) -> None:
        self.target = target
        self.redis_url = redis_url
        self.count = subscribers
        self.channels: list[grpc.aio.Channel] = []
        self.readers: list[asyncio.Task[None]] = []
        self.received: list[tuple[int, bytes]] = []
        self.all_received = asyncio.Event()
        self.snapshots = 0
        self.all_subscribed = asyncio.Event()

    async def open(self) -> None:
        self.client = aioredis.Redis.from_url(self.redis_url)
        self.channels = [grpc.aio.insecure_channel(self.target) for _ in range(CHANNELS)]
        for n in range(self.count):
            # Raw bytes in: the client parses each update after the round, outside the
            # timing, so the measurement is the server's fan-out more than this client.
            call = self.channels[n % CHANNELS].unary_stream(
                STREAM_PORTFOLIO, request_serializer=pb.PortfolioRequest.SerializeToString,
                response_deserializer=None)
            request = pb.PortfolioRequest(account_id=f"FAN-{n % ACCOUNTS}",
                                          heartbeat_interval_ms=300_000)
            self.readers.append(asyncio.create_task(self._read(call(request))))
        await asyncio.wait_for(self.all_subscribed.wait(), 60)

    async def _read(self, call: grpc.aio.UnaryStreamCall) -> None:
        # call.read() rather than async for: one async generator less per message.
        if await call.read() is grpc.aio.EOF:
            return
        self.snapshots += 1
        if self.snapshots == self.count:
            self.all_subscribed.set()
        while (raw := await call.read()) is not grpc.aio.EOF:
            self.received.append((time.perf_counter_ns(), raw))
            if len(self.received) == self.count:
                self.all_received.set()

    async def tick(self, price: int) -> list[float]:
        """Milliseconds from just before the XADD to each subscriber's receipt."""
        self.received = []
        self.all_received.clear()
        started = time.perf_counter_ns()
        await self.client.xadd("prices", {"symbol": "AAPL", "price": price})
        await asyncio.wait_for(self.all_received.wait(), 30)
        for _, raw in self.received:  # each message is this tick's update
            update = pb.PortfolioUpdate.FromString(raw)
            assert update.kind == pb.PORTFOLIO_UPDATE_KIND_UPDATE, update
            assert update.holdings[0].last_price == price, update
        return [(at - started) / 1e6 for at, _ in self.received]

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        for channel in self.channels:
            await channel.close()
        await self.client.aclose()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.mark.benchmark(group="portfolio-fanout")
def test_one_tick_reaches_every_subscriber(benchmark, latency, server, redis_server):
    target, pid = server
    quick = benchmark.disabled
    subscribers, rounds = (QUICK_SUBSCRIBERS, QUICK_ROUNDS) if quick else (SUBSCRIBERS, ROUNDS)
    loop = asyncio.new_event_loop()
    fanout = Fanout(target, redis_server.url, subscribers)
    latencies: list[float] = []
    ticks: list[int] = []
    prices = iter(range(FIRST_PRICE + 1, FIRST_PRICE + 10_000))
    try:
        loop.run_until_complete(fanout.open())
        loop.run_until_complete(fanout.tick(next(prices)))  # warm-up, not counted

        def one_round() -> None:
            ticks.append(len(ticks))
            latencies.extend(loop.run_until_complete(fanout.tick(next(prices))))

        # the server processes are the children of the process started
        pids = [pid, *children_of(pid)]
        cpu_before = cpu_seconds(pids)
        benchmark.pedantic(one_round, rounds=rounds, iterations=1)
        server_ms = (cpu_seconds(pids) - cpu_before) * 1000 / rounds
    finally:
        loop.run_until_complete(fanout.close())
        loop.close()

    # Every subscriber got every tick (a disabled benchmark runs one round).
    assert ticks and len(latencies) == subscribers * len(ticks)
    rounds = len(ticks)
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    benchmark.extra_info.update(subscribers=subscribers, rounds=rounds,
                                p50_ms=round(p50, 2), p99_ms=round(p99, 2),
                                max_ms=round(max(latencies), 2),
                                server_cpu_ms_per_tick=round(server_ms, 1))
    print(f"\nportfolio fan-out: {subscribers} subscribers x {rounds} ticks: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(latencies):.2f} ms; "
          f"server CPU {server_ms:.1f} ms per tick")
    # The target is reported, not asserted: a benchmark on a shared machine must
    # not fail the run on a noisy minute (docs/performance.md says met or missed).
    histogram = new_histogram()
    for value in latencies:
        histogram.record_value(max(1, int(value * 1_000_000)))
    verdict = "met" if p99 <= TARGET_P99_MS else "MISSED"
    latency.record(f"portfolio fan-out: one tick to each of {subscribers} subscribers",
                   histogram, f"{rounds} ticks; p99 target {TARGET_P99_MS:.0f} ms {verdict}; "
                   f"server CPU {server_ms:.1f} ms per tick")
