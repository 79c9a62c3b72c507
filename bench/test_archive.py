"""The audit archive: what the archiver moves into PostgreSQL, and its lag at full order rate.

1. Throughput: a stream of 200,000 decision records (batches of 1,000, as the
   writer makes them) archived by one archiver into an embedded PostgreSQL
   with its default durability (fsync on): records per second, and the
   archiver's CPU per record.
2. Lag: one client process sends batches of 1,000 orders to a server
   process as fast as it answers, while a ``pretrade archive`` process
   archives; every 50 ms the newest archived record's age is sampled, and at
   the end the time until the last answered decision is archived.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import redis

from hdr import new_histogram, scale
from pretrade.app.devpostgres import PostgresServer
from pretrade.app.devredis import RedisServer
from pretrade.audit.archive import Archiver, ArchiveStore
from pretrade.audit.entries import AUDIT_STREAM
from pretrade.audit.trail import AuditTrail
from pretrade.state.connection import redis_client
from pretrade.v1 import risk_pb2 as pb

REJECTIONS = ((9, 1_001, 1_000), (10, 68_406_137, 10_000_000))


def order(n: int) -> pb.Order:
    return pb.Order(order_id=f"o{n}", account_id=f"ACC-{n % 100}", symbol="AAPL",
                    side=pb.SIDE_BUY, quantity=100, price=683_378,
                    order_type=pb.ORDER_TYPE_LIMIT, venue="XNAS")


@pytest.fixture(scope="module")
def postgres():
    with tempfile.TemporaryDirectory(prefix="pretrade-bench-pg-") as name:
        Path(name).chmod(0o711)  # run as root, the server runs as nobody
        with PostgresServer(data_dir=Path(name)) as server:
            yield server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with RedisServer(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def _fresh_database(postgres: PostgresServer, name: str) -> str:
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.benchmark(group="archive")
def test_archive_throughput(benchmark, latency, postgres, redis_url):
    records = scale(benchmark.disabled, 200_000, 2_000)
    client = redis.Redis.from_url(redis_url)
    client.delete(AUDIT_STREAM)

    async def fill() -> None:
        trail = AuditTrail(redis_client(redis_url, socket_timeout=None),
                           queue_size=records + 1)
        for n in range(records):
            trail.decision(order(n), n % 2 == 0, REJECTIONS if n % 2 else (), 900, False,
                           68_337_800, "oms-1")
        await trail.close(timeout=600)
        await trail.client.aclose()

    asyncio.run(fill())
    database = _fresh_database(postgres, "bench_throughput")
    archiver = Archiver(client, ArchiveStore(database), block_ms=1, retain_ms=0)
    archiver.store.connection()
    started, cpu = time.perf_counter(), time.process_time()
    while archiver.step():
        pass
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    archiver.store.close()
    with psycopg.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM audit_record").fetchone() == (records,)
    client.close()
    latency.figure("archive: decision records into PostgreSQL per second (one archiver, COPY "
                   "in batches of 64 stream entries, fsync on, 5 indexes)",
                   f"{records / elapsed:,.0f}/s; archiver CPU {cpu / records * 1e6:.1f} "
                   "µs/record")
    benchmark.pedantic(lambda: None, rounds=1)


def _newest_archived_ms(database: str) -> int | None:
    with psycopg.connect(database) as connection:
        row = connection.execute(
            "SELECT (extract(epoch from max(ts)) * 1000)::bigint FROM audit_record").fetchone()
    return row[0] if row else None


@pytest.mark.benchmark(group="archive")
def test_archive_lag_behind_the_batch_rpc_at_full_speed(benchmark, latency, postgres,
                                                        tmp_path):
    import grpc

    from pretrade.v1 import risk_pb2_grpc
    from servers import start_bench_server
    from test_grpc import BIG, PRICE, _batch_load

    batches = scale(benchmark.disabled, 200, 2)
    database = _fresh_database(postgres, "bench_lag")
    with RedisServer(data_dir=tmp_path / "redis") as redis_server:
        seed = redis.Redis.from_url(redis_server.url)
        seed.hset("instrument:AAPL", mapping={"tick_size": 1})
        seed.set("price:AAPL", PRICE)
        seed.hset("limits:{ACC-9}", mapping=BIG)
        archiver = subprocess.Popen(
            [sys.executable, "-m", "pretrade", "archive", "--redis-url", redis_server.url,
             "--database-url", database, "--log-level", "WARNING"],
            stdin=subprocess.DEVNULL)
        server = start_bench_server(redis_server.url, tmp_path / "archive.table",
                                    durable_decisions=False)
        lag = new_histogram()
        try:
            context = multiprocessing.get_context("spawn")
            out = context.Queue()
            client = context.Process(target=_batch_load,
                                     args=(server.target, "ACC-9", batches, 1_000, out))
            started = time.perf_counter()
            client.start()
            while client.is_alive() and out.empty():
                newest = _newest_archived_ms(database)
                if newest is not None:
                    lag.record_value(max(1, time.time_ns() - newest * 1_000_000))
                time.sleep(0.05)
            total = out.get(timeout=300)
            answered = time.perf_counter()
            client.join(30)
            with psycopg.connect(database) as connection:
                while connection.execute("SELECT count(*) FROM audit_record").fetchone()[0] \
                        < total:
                    time.sleep(0.01)
            caught_up = time.perf_counter()
            with grpc.insecure_channel(server.target) as channel:
                status = risk_pb2_grpc.PreTradeRiskStub(channel).GetStatus(
                    pb.StatusRequest(), timeout=5)
        finally:
            server.close()
            archiver.terminate()
            archiver.wait(timeout=20)
        assert status.audit_dropped == status.audit_refused == 0
        if lag.get_total_count():
            latency.record("archive lag: newest archived decision's age, sampled every 50 ms",
                           lag, "batch EvaluateOrders at full speed, 1 server process")
        latency.figure(
            "archive behind batch EvaluateOrders at full speed (1 server process, durable "
            "decisions off, archiver and PostgreSQL on the same 2 cores)",
            f"{total / (answered - started):,.0f} orders/s answered; all {total:,} archived "
            f"{(caught_up - answered) * 1000:,.0f} ms after the last answer")
    benchmark.pedantic(lambda: None, rounds=1)
