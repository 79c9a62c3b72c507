"""The audit trail's cost: the append on the hot path, and what its writer sustains.

1. ``AuditTrail.decision``, what the servicer adds to every order: per call.
2. The writer: entries per second that batches of pipelined
   ``XADD audit`` move to a real redis-server on loopback, through
   the gateway's own kind of connection (hiredis packing), and the stream's
   memory per entry in Redis.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from hdr import new_histogram, scale
from pretrade.app.devredis import RedisServer
from pretrade.audit.entries import AUDIT_STREAM, rows_of
from pretrade.audit.trail import AuditTrail
from pretrade.state.connection import redis_client
from pretrade.v1 import risk_pb2 as pb

REJECTIONS = ((9, 1_001, 1_000), (10, 68_406_137, 10_000_000))


def audit_client(url: str):
    """The connection the gateway gives its audit writer."""
    return redis_client(url, socket_timeout=None)


def order(n: int) -> pb.Order:
    return pb.Order(order_id=f"o{n}", account_id="ACC-1", symbol="AAPL", side=pb.SIDE_BUY,
                    quantity=100, price=683_378, order_type=pb.ORDER_TYPE_LIMIT, venue="XNAS")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> str:
    with RedisServer(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.mark.benchmark(group="audit")
def test_the_append_on_the_hot_path(benchmark, latency, redis_url):
    calls = scale(benchmark.disabled, 200_000, 200)
    requests = [order(n) for n in range(calls)]

    async def measure():
        trail = AuditTrail(audit_client(redis_url), queue_size=calls + 1)
        histogram = new_histogram()
        clock = time.perf_counter_ns
        for n, request in enumerate(requests):
            start = clock()
            trail.decision(request, n % 2 == 0, REJECTIONS if n % 2 else (), 900, False,
                           68_337_800)
            histogram.record_value(max(1, clock() - start))
        await trail.client.aclose()
        return histogram

    histogram = asyncio.run(measure())
    latency.record("audit: AuditTrail.decision (queue append)", histogram,
                   "added to every decision")
    benchmark.pedantic(lambda: None, rounds=1)


@pytest.mark.benchmark(group="audit")
def test_what_the_writer_sustains(benchmark, latency, redis_url):
    entries = scale(benchmark.disabled, 200_000, 2_000)
    requests = [order(n) for n in range(entries)]
    sync = redis.Redis.from_url(redis_url)
    sync.delete(AUDIT_STREAM)

    async def drain() -> float:
        trail = AuditTrail(audit_client(redis_url), queue_size=entries + 1)
        for n, request in enumerate(requests):
            trail.decision(request, n % 2 == 0, REJECTIONS if n % 2 else (), 900, False,
                           68_337_800)
        started, cpu = time.perf_counter(), time.process_time()
        trail.start()
        await trail.close(timeout=600)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert trail.stats.written == entries and trail.stats.dropped == 0
        await trail.client.aclose()
        return elapsed, cpu

    elapsed, cpu = asyncio.run(drain())
    records = sum(len(rows_of(entry_id, fields))
                  for entry_id, fields in sync.xrange(AUDIT_STREAM))
    assert records == entries
    per_entry = sync.memory_usage(AUDIT_STREAM) / entries
    sync.close()
    latency.figure("audit writer: decisions written per second (one XADD per batch of 1,000 "
                   "protobuf records, loopback redis-server)",
                   f"{entries / elapsed:,.0f}/s; gateway CPU {cpu / entries * 1e6:.1f} µs/entry")
    latency.figure("audit stream: Redis memory per decision entry", f"{per_entry:,.0f} bytes")
    benchmark.pedantic(lambda: None, rounds=1)


@pytest.mark.benchmark(group="audit")
def test_the_writer_behind_the_batch_rpc_at_full_speed(benchmark, latency, tmp_path):
    """One client process sends batches of 1,000 orders as fast as the server answers."""
    import multiprocessing

    import grpc

    from pretrade.v1 import risk_pb2_grpc
    from servers import start_bench_server
    from test_grpc import BIG, PRICE, _batch_load

    batches = scale(benchmark.disabled, 200, 2)
    with RedisServer(data_dir=tmp_path / "redis") as redis_server:
        seed = redis.Redis.from_url(redis_server.url)
        seed.hset("instrument:AAPL", mapping={"tick_size": 1})
        seed.set("price:AAPL", PRICE)
        seed.hset("limits:{ACC-9}", mapping=BIG)
        server = start_bench_server(redis_server.url, tmp_path / "audit.table",
                                    durable_decisions=False)
        try:
            context = multiprocessing.get_context("spawn")
            out = context.Queue()
            client = context.Process(target=_batch_load,
                                     args=(server.target, "ACC-9", batches, 1_000, out))
            started = time.perf_counter()
            client.start()
            total = out.get(timeout=300)
            answered = time.perf_counter()
            client.join(30)
            with grpc.insecure_channel(server.target) as channel:
                stub = risk_pb2_grpc.PreTradeRiskStub(channel)
                while (status := stub.GetStatus(pb.StatusRequest(), timeout=5)).audit_pending:
                    time.sleep(0.01)
            caught_up = time.perf_counter()
        finally:
            server.close()
        assert status.audit_written + status.audit_dropped + status.audit_refused == total
        latency.figure(
            "audit behind batch EvaluateOrders at full speed (1 server process, durable "
            "decisions off, each answer after its records are in Redis)",
            f"{total / (answered - started):,.0f} orders/s answered; audit dropped "
            f"{status.audit_dropped:,}, refused {status.audit_refused:,} of {total:,}, fully "
            f"written {(caught_up - answered) * 1000:,.0f} ms after the last answer")
    benchmark.pedantic(lambda: None, rounds=1)


@pytest.mark.benchmark(group="audit")
@pytest.mark.parametrize("durable", [False, True], ids=["durable-off", "durable-on"])
def test_the_cost_of_answering_after_the_record(benchmark, latency, tmp_path, durable):
    """Unary EvaluateOrder with audit_before_answer on and off, interleaved call by call
    (two server processes on one redis-server): what waiting for the record costs."""
    import grpc

    from hdr import new_histogram
    from pretrade.v1 import risk_pb2_grpc
    from servers import start_bench_server
    from test_grpc import BIG, PRICE

    calls = scale(benchmark.disabled, 4_000, 20)
    with RedisServer(data_dir=tmp_path / "redis") as redis_server:
        seed = redis.Redis.from_url(redis_server.url)
        seed.hset("instrument:AAPL", mapping={"tick_size": 1})
        seed.set("price:AAPL", PRICE)
        seed.hset("limits:{ACC-9}", mapping=BIG)
        servers = {wait: start_bench_server(redis_server.url, tmp_path / f"{wait}.table",
                                            durable_decisions=durable,
                                            audit_before_answer=wait)
                   for wait in (False, True)}
        histograms = {wait: new_histogram() for wait in servers}
        channels = {wait: grpc.insecure_channel(server.target)
                    for wait, server in servers.items()}
        try:
            stubs = {wait: risk_pb2_grpc.PreTradeRiskStub(channel)
                     for wait, channel in channels.items()}
            for n in range(calls):
                for wait, stub in stubs.items():
                    request = pb.Order(order_id=f"{wait}-{n}", account_id="ACC-9",
                                       symbol="AAPL", quantity=1, price=PRICE,
                                       side=pb.SIDE_BUY, order_type=pb.ORDER_TYPE_LIMIT)
                    started = time.perf_counter_ns()
                    assert stub.EvaluateOrder(request, timeout=5).approved
                    if n >= calls // 10:  # after a warm-up
                        histograms[wait].record_value(time.perf_counter_ns() - started)
        finally:
            for channel in channels.values():
                channel.close()
            for server in servers.values():
                server.close()
    durability = "on" if durable else "off"
    for wait, histogram in histograms.items():
        latency.record(f"gRPC loopback: EvaluateOrder, durable decisions {durability}, "
                       f"audit_before_answer {'on' if wait else 'off'}", histogram,
                       "interleaved with the other setting")
    benchmark.pedantic(lambda: None, rounds=1)
