"""The servicer and the wire: what pretrade adds around the core, and throughput.

1. Servicer path: protobuf Order in, Decision out, no network, against the
   core call alone, interleaved.
2. EvaluateOrder over gRPC on loopback, one call in flight, against an empty
   echo handler on the same server stack (target: p50 <= 1.1x the echo).
3. Throughput: unary calls on 1 versus 2 server processes sharing the table
   (SO_REUSEPORT), and the batch RPC; server CPU time per order for each.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis

from hdr import new_histogram, scale
from pretrade._core import Engine
from pretrade.api.servicer import PreTradeRiskServicer
from pretrade.app.devredis import RedisServer
from pretrade.engine.limits import LimitKind
from pretrade.engine.table import new_private_table
from pretrade.state.halts import HaltBook
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from servers import ECHO_METHOD, children_of, cpu_seconds, start_bench_server

PRICE = 683_378
BIG = {kind.field: 10**15 for kind in LimitKind if kind < 6}
BIG.update(price_collar_bps=1_000)


def order(n: int, account: str = "ACC-1", quantity: int = 1) -> pb.Order:
    return pb.Order(order_id=f"o{n}", account_id=account, symbol="AAPL", side=pb.SIDE_BUY,
                    quantity=quantity, price=PRICE, order_type=pb.ORDER_TYPE_LIMIT,
                    venue="XNAS")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> str:
    with RedisServer(data_dir=tmp_path_factory.mktemp("redis")) as server:
        client = redis.Redis.from_url(server.url)
        client.hset("instrument:AAPL", mapping={"tick_size": 1})
        client.set("price:AAPL", PRICE)
        for a in range(16):
            client.hset(f"limits:{{ACC-{a}}}", mapping=BIG)
        yield server.url


@pytest.mark.benchmark(group="servicer")
def test_servicer_path_cost_above_the_core(benchmark, latency):
    orders = scale(benchmark.disabled, 100_000, 200)
    table = new_private_table(max_accounts=16, max_instruments=16, max_positions=64,
                              max_overrides=16, lock_stripes=4, max_orders=2 * orders + 10,
                              max_orders_per_account=2 * orders + 10)
    table.set_sync_live(True)
    table.set_instrument(b"AAPL", known=True)
    table.set_last_price(b"AAPL", PRICE)
    table.set_account_state(b"ACC-1", known=True)
    table.set_account_limits(b"ACC-1", {int(k): 10**15 for k in LimitKind if k < 5}
                             | {int(LimitKind.PRICE_COLLAR_BPS): 1_000})
    engine = Engine(table)
    servicer = PreTradeRiskServicer(engine, HaltBook(table), aioredis.Redis())
    core_h, servicer_h = new_histogram(), new_histogram()
    clock = time.perf_counter_ns
    requests = [order(n) for n in range(orders)]
    for n, request in enumerate(requests):
        start = clock()
        engine.evaluate(f"c{n}".encode(), b"ACC-1", b"AAPL", pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT,
                        1, PRICE, b"XNAS", b"", start)
        core_h.record_value(max(1, clock() - start))
        start = clock()
        decision = servicer.decide(request)
        servicer_h.record_value(max(1, clock() - start))
        assert decision.approved
    latency.record("servicer: pb.Order -> validate -> core -> pb.Decision (no network)",
                   servicer_h, "PreTradeRiskServicer.decide")
    latency.record("core alone, same orders, interleaved", core_h, "Engine.evaluate")
    extra = servicer_h.get_value_at_percentile(50) - core_h.get_value_at_percentile(50)
    latency.figure("servicer cost above the core (p50)", f"{extra / 1000:.2f} µs")
    counter = itertools.count(orders)
    benchmark(lambda: servicer.decide(order(next(counter))))


def _round_trips(target: str, calls: int) -> tuple:
    channel = grpc.insecure_channel(target)
    stub = risk_pb2_grpc.PreTradeRiskStub(channel)
    echo = channel.unary_unary(ECHO_METHOD)
    payload = order(0).SerializeToString()
    echo_h, evaluate_h = new_histogram(), new_histogram()
    clock = time.perf_counter_ns
    for _ in range(200):  # warm up both paths
        echo(payload)
    for n in range(calls):
        start = clock()
        echo(payload)
        echo_h.record_value(max(1, clock() - start))
        start = clock()
        decision = stub.EvaluateOrder(order(n + 10**9))
        evaluate_h.record_value(max(1, clock() - start))
        assert decision.approved
    channel.close()
    return echo_h, evaluate_h


@pytest.mark.benchmark(group="grpc")
@pytest.mark.parametrize("durable", [False, True], ids=["durable-off", "durable-on"])
def test_evaluate_order_against_an_echo_on_the_same_server(benchmark, latency, redis_url,
                                                           tmp_path, durable):
    server = start_bench_server(redis_url, tmp_path / "echo.table", durable_decisions=durable)
    try:
        calls = scale(benchmark.disabled, 5_000, 50)
        echo_h, evaluate_h = _round_trips(server.target, calls)
        mode = "durable decisions on" if durable else "durable decisions off"
        latency.record(f"gRPC loopback: empty echo handler ({mode} run)", echo_h,
                       "same server, interleaved")
        latency.record(f"gRPC loopback: EvaluateOrder, {mode}", evaluate_h,
                       "one call in flight")
        ratio = evaluate_h.get_value_at_percentile(50) / echo_h.get_value_at_percentile(50)
        latency.figure(f"EvaluateOrder p50 / echo p50 ({mode})", f"{ratio:.2f}x")
        benchmark.pedantic(lambda: None, rounds=1)
    finally:
        server.close()


def _unary_load(target: str, account: str, seconds: float, out) -> None:
    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = risk_pb2_grpc.PreTradeRiskStub(channel)
    futures, done, n = [], 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # a few calls in flight per channel keep the server busy
        while len(futures) < 8:
            futures.append(stub.EvaluateOrder.future(order(n, account)))
            n += 1
        futures.pop(0).result()
        done += 1
    for future in futures:
        future.result()
        done += 1
    channel.close()
    out.put(done)


def _serve_workers(redis_url: str, table: Path, workers: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETRADE_")}
    env.update(PRETRADE_MAX_ORDERS="2000000", PRETRADE_MAX_POSITIONS="65536")
    process = subprocess.Popen(
        [sys.executable, "-m", "pretrade", "serve", "--insecure", "--auth", "none",
         "--workers", str(workers), "--listen", "127.0.0.1:0", "--redis-url", redis_url,
         "--table-path", str(table)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if "serving PreTradeRisk on" in line:
            target = line.split(" on ")[1].split()[0]
            break
    channel = grpc.insecure_channel(target)
    stub = risk_pb2_grpc.PreTradeRiskStub(channel)
    deadline = time.monotonic() + 20
    while not stub.GetStatus(pb.StatusRequest(), timeout=5).sync_live:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    channel.close()
    return process, target


@pytest.mark.benchmark(group="throughput")
@pytest.mark.parametrize("workers", [1, 2])
def test_unary_throughput_by_server_processes(benchmark, latency, redis_url, tmp_path,
                                              workers):
    seconds = 5.0 if not benchmark.disabled else 0.5
    process, target = _serve_workers(redis_url, tmp_path / f"w{workers}.table", workers)
    try:
        pids = [process.pid, *children_of(process.pid)]
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        clients = [context.Process(target=_unary_load,
                                   args=(target, f"ACC-{c}", seconds, out))
                   for c in range(max(2, workers))]
        cpu_before = cpu_seconds(pids)
        started = time.perf_counter()
        for client in clients:
            client.start()
        total = sum(out.get(timeout=120) for _ in clients)
        elapsed = time.perf_counter() - started
        for client in clients:
            client.join(30)
        cpu = cpu_seconds(pids) - cpu_before
        latency.figure(f"unary EvaluateOrder, {workers} server process(es), "
                       f"{len(clients)} client processes",
                       f"{total / elapsed:,.0f} orders/s; server CPU "
                       f"{cpu / max(total, 1) * 1e6:.1f} µs/order")
        benchmark.pedantic(lambda: None, rounds=1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _batch_load(target: str, account: str, batches: int, size: int, out) -> None:
    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = risk_pb2_grpc.PreTradeRiskStub(channel)
    requests = [pb.OrderBatch(orders=[order(b * size + n, account) for n in range(size)])
                for b in range(batches)]
    done = 0
    in_flight = []
    for request in requests:
        in_flight.append(stub.EvaluateOrders.future(request, timeout=60))
        if len(in_flight) >= 2:
            done += len(in_flight.pop(0).result().decisions)
    for future in in_flight:
        done += len(future.result().decisions)
    channel.close()
    out.put(done)


@pytest.mark.benchmark(group="throughput")
@pytest.mark.parametrize("durable", [False, True], ids=["durable-off", "durable-on"])
def test_batch_throughput(benchmark, latency, redis_url, tmp_path, durable):
    batches = scale(benchmark.disabled, 200, 2)
    size = 1_000
    server = start_bench_server(redis_url, tmp_path / "batch.table", durable_decisions=durable)
    try:
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        client = context.Process(target=_batch_load,
                                 args=(server.target, "ACC-9", batches, size, out))
        cpu_before = cpu_seconds([server.pid])
        started = time.perf_counter()
        client.start()
        total = out.get(timeout=300)
        elapsed = time.perf_counter() - started
        client.join(30)
        cpu = cpu_seconds([server.pid]) - cpu_before
        mode = "durable decisions on" if durable else "durable decisions off"
        latency.figure(f"batch EvaluateOrders, {size} orders per message, 1 server process, "
                       f"{mode}", f"{total / elapsed:,.0f} orders/s; server CPU "
                       f"{cpu / max(total, 1) * 1e6:.2f} µs/order")
        benchmark.pedantic(lambda: None, rounds=1)
    finally:
        server.close()
