"""SIGTERM while calls are in flight, against a real ``pretrade serve`` process.

The server follows the session's redis-server (``--redis-url``), so Redis
outlives it and the audit stream can be read after it exits. Client threads
keep batches of orders in flight; SIGTERM arrives in the middle. Every call
must either be answered in full or refused UNAVAILABLE, the process must
exit 0, and every order it answered must be in the audit stream.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from book import order, seed_account
from pretrade.app.config import environment_variable
from pretrade.audit.entries import AUDIT_STREAM, rows_of
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve
from test_serve import BANNER, serve_environment

START_TIMEOUT_SECONDS = 30.0
GRACE_MS = 10_000
BATCH = 2_000
SENDERS = 3


@dataclass
class Sender:
    """One client thread sending batches until a call fails."""

    name: str
    decided: list[str] = field(default_factory=list)
    #: (sent at, answered at) of each call that was answered
    answered: list[tuple[float, float]] = field(default_factory=list)
    failure: grpc.StatusCode | None = None


def send_until_refused(target: str, sender: Sender) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        for number in range(10_000):
            batch = pb.OrderBatch(orders=[
                order(order_id=f"{sender.name}-{number}-{n}", quantity=1 + n % 3)
                for n in range(BATCH)])
            sent = time.monotonic()
            try:
                reply = stub.EvaluateOrders(batch, timeout=30)
            except grpc.RpcError as error:
                sender.failure = error.code()
                return
            assert len(reply.decisions) == BATCH
            sender.answered.append((sent, time.monotonic()))
            sender.decided += [decision.order_id for decision in reply.decisions]


@pytest.fixture
def server(redis_client: redis.Redis, redis_url: str, tmp_path: Path):
    seed_account(redis_client)
    env = serve_environment(tmp_path / "data", tmp_path / "shutdown.table")
    env[environment_variable("shutdown_grace_ms")] = str(GRACE_MS)
    stderr = (tmp_path / "serve.stderr.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "pretrade", "serve", "--redis-url", redis_url,
         "--listen", "127.0.0.1:0", "--insecure", "--auth", "none"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True,
        cwd=tmp_path, env=env)
    try:
        yield process, tmp_path / "serve.stderr.log"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        stderr.close()


def wait_for_target(process: subprocess.Popen[str], log: Path) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    for line in process.stdout:
        found = BANNER.search(line)
        if found:
            return found["target"]
        if time.monotonic() > deadline:
            break
    pytest.fail(f"no banner from pretrade serve:\n{log.read_text()}")


def test_sigterm_finishes_calls_in_flight_refuses_new_ones_and_flushes_the_audit(
        server, redis_client):
    process, log = server
    target = wait_for_target(process, log)
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=GRACE_MS / 1000 + 20)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

        senders = [Sender(f"s{n}") for n in range(SENDERS)]
        threads = [threading.Thread(target=send_until_refused, args=(target, sender))
                   for sender in senders]
        for thread in threads:
            thread.start()
        while sum(len(sender.answered) for sender in senders) < 2 * SENDERS:
            assert all(thread.is_alive() for thread in threads), log.read_text()
            time.sleep(0.01)
        terminated_at = time.monotonic()
        process.send_signal(signal.SIGTERM)

        # Health turns NOT_SERVING before the server stops taking calls.
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        for thread in threads:
            thread.join(timeout=GRACE_MS / 1000 + 10)
        assert process.wait(timeout=2 * GRACE_MS / 1000 + 10) == 0, log.read_text()
        # Nothing waited out the grace period: the calls finished, the Watch ended.
        assert time.monotonic() - terminated_at < GRACE_MS / 1000 / 2
        assert list(watch) == []

    text = log.read_text()
    assert "Traceback" not in text, text
    assert "audit trail flushed: the last" in text, text
    # Each sender ended on a refusal, and some call was in flight across the SIGTERM
    # and still answered in full.
    assert [sender.failure for sender in senders] == [grpc.StatusCode.UNAVAILABLE] * SENDERS
    assert any(sent < terminated_at < answered
               for sender in senders for sent, answered in sender.answered), senders
    # Every order answered is in the audit stream, and nothing else is.
    decided = [order_id for sender in senders for order_id in sender.decided]
    audited = [fields["order_id"]
               for entry_id, raw in redis_client.xrange(AUDIT_STREAM)
               for _, fields in rows_of(entry_id, raw)
               if fields["event"] == "decision"]
    assert len(audited) == len(decided)
    assert set(audited) == set(decided)


# -- no call the server accepted ends CANCELLED ----------------------------------


def _outcome(error: grpc.aio.AioRpcError | None) -> str:
    return "OK" if error is None else error.code().name


@pytest.fixture
def serve(tmp_path: Path):
    started: list[Serve] = []

    def start(name: str, *args: str, **settings: object) -> Serve:
        env = {environment_variable(key): str(value) for key, value in settings.items()}
        server = Serve(tmp_path, name, *args, env=env)
        started.append(server)
        server.wait_for_banner()
        server.wait_until_serving()
        return server

    yield start
    for server in started:
        server.kill()


async def _concurrently(target: str, count: int, call, *, after=None):
    """``count`` calls at once on one channel; each one's status code name."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)

        async def one(number: int) -> str:
            try:
                await call(stub, number)
            except grpc.aio.AioRpcError as error:
                return f"{error.code().name}: {error.details()}"
            return "OK"

        calls = [asyncio.ensure_future(one(number)) for number in range(count)]
        if after is not None:
            await after()
        return await asyncio.gather(*calls)


def test_sigterm_with_many_calls_in_flight_answers_or_refuses_each_never_cancels(
        serve, redis_client, redis_url):
    seed_account(redis_client)
    server = serve("many", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   shutdown_grace_ms=GRACE_MS)

    async def batch(stub, number):
        await stub.EvaluateOrders(pb.OrderBatch(orders=[
            order(order_id=f"m{number}-{n}", quantity=1) for n in range(200)]), timeout=30)

    async def sigterm_soon():
        await asyncio.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)

    outcomes = asyncio.run(_concurrently(server.target, 48, batch, after=sigterm_soon))
    assert server.wait() == 0, server.log()
    kinds = collections.Counter(outcome.partition(":")[0] for outcome in outcomes)
    assert set(kinds) <= {"OK", "UNAVAILABLE"}, kinds
    assert kinds["OK"] > 0, outcomes
    refused = {outcome for outcome in outcomes if outcome != "OK"}
    assert all("shutting down" in outcome for outcome in refused), refused
    assert "Traceback" not in server.log(), server.log()


def test_a_burst_within_the_budget_is_answered_and_past_it_refused_never_cancelled(
        serve, redis_client, redis_url):
    seed_account(redis_client)
    redis_client.hset("limits:{ACC-1}", mapping={"max_long_position": 10**9,
                                                 "max_net_position": 10**9})

    async def one_order(stub, number):
        await stub.EvaluateOrder(order(order_id=f"b{number}", quantity=1), timeout=60)

    default = serve("default", "--redis-url", redis_url, "--listen", "127.0.0.1:0")
    outcomes = asyncio.run(_concurrently(default.target, 6_000, one_order))
    assert collections.Counter(outcomes) == {"OK": 6_000}

    small = serve("small", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                  max_concurrent_rpcs=200)
    outcomes = asyncio.run(_concurrently(small.target, 3_000, one_order))
    kinds = collections.Counter(outcome.partition(":")[0] for outcome in outcomes)
    assert set(kinds) <= {"OK", "RESOURCE_EXHAUSTED"}, kinds
    assert kinds["OK"] >= 200, kinds
    refused = {outcome for outcome in outcomes if outcome != "OK"}
    assert all("max_concurrent_rpcs" in outcome for outcome in refused), refused
    for server in (default, small):
        assert server.terminate() == 0, server.log()


def test_a_call_still_running_when_the_grace_period_ends_gets_unavailable(
        serve, redis_client, redis_url):
    seed_account(redis_client)
    server = serve("stuck", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   shutdown_grace_ms=1_000)

    async def durable_order(stub, number):
        # Approved at once, then waits for its durable record: Redis takes no writes.
        await stub.EvaluateOrder(order(order_id=f"s{number}", quantity=1), timeout=30)

    async def pause_then_sigterm():
        redis_client.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
        await asyncio.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)

    try:
        started = time.monotonic()
        outcomes = asyncio.run(_concurrently(server.target, 20, durable_order,
                                             after=pause_then_sigterm))
        ended = time.monotonic() - started
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
    assert server.wait() == 0, server.log()
    assert {outcome.partition(":")[0] for outcome in outcomes} == {"UNAVAILABLE"}, outcomes
    assert all("grace period" in outcome for outcome in outcomes), outcomes
    assert ended < 10, ended
