"""Load limits over a real channel: client deadlines and the budget of each class of call."""

from __future__ import annotations

import time

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from book import order, seed_account, wait_until
from pretrade.api.access import new_token, token_entry
from pretrade.app.config import environment_variable
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    return redis_client


class ExpiredContext:
    """A servicer context whose client deadline has just passed."""

    def time_remaining(self) -> float:
        return 0.0

    async def abort(self, code: grpc.StatusCode, details: str,
                    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()) -> None:
        raise AbortedCall(code, details)


class AbortedCall(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code


@pytest.mark.parametrize(("method", "request_"), [
    ("EvaluateOrder", order(order_id="late-1")),
    ("EvaluateOrders", pb.OrderBatch(orders=[order(order_id="late-2")])),
    ("Halt", pb.HaltRequest(scope=pb.HALT_SCOPE_GLOBAL, mode=pb.HALT_MODE_HALTED,
                            reason="late")),
])
def test_a_call_started_after_its_deadline_is_refused_before_any_work(seeded, gateway, stub,
                                                                     method, request_):
    servicer = gateway.gateway.servicer
    with pytest.raises(AbortedCall) as aborted:
        gateway.run(getattr(servicer, method)(request_, ExpiredContext()))
    assert aborted.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    status = stub.GetStatus(pb.StatusRequest())
    assert status.orders == 0 and status.audit_pending + status.audit_written == 0
    assert stub.EvaluateOrder(order()).approved  # and no halt was set


def test_an_order_whose_deadline_passes_while_the_server_is_busy_is_not_decided(
        seeded, gateway, stub):
    # The server's event loop is stuck for 0.5 s; the client gives up after 0.2 s.
    gateway.loop.call_soon_threadsafe(time.sleep, 0.5)
    with pytest.raises(grpc.RpcError) as raised:
        stub.EvaluateOrder(order(order_id="busy-1", quantity=10), timeout=0.2)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)
    assert stub.GetStatus(pb.StatusRequest()).orders == 0
    # Not decided, so not remembered: the id is free for a different order.
    retry = stub.EvaluateOrder(order(order_id="busy-1", quantity=20))
    assert retry.approved and not retry.replayed


def _refused_at_once(call) -> str:
    """The details of a call that must end RESOURCE_EXHAUSTED within a second."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value
    assert time.monotonic() - started < 1.0
    return str(raised.value.details())


def test_portfolio_streams_have_their_own_budget_and_never_hold_order_slots(seeded,
                                                                            start_gateway):
    gateway = start_gateway(max_portfolio_streams=3, max_concurrent_rpcs=3)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        streams = [stub.StreamPortfolio(pb.PortfolioRequest(account_id="ACC-1"))
                   for _ in range(3)]
        for stream in streams:
            assert next(stream).kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
        details = _refused_at_once(lambda: next(stub.StreamPortfolio(
            pb.PortfolioRequest(account_id="ACC-1"), timeout=5)))
        assert "max_portfolio_streams" in details and "3" in details, details
        # Three streams open, and orders still have all their slots.
        assert all(stub.EvaluateOrder(order(), timeout=5).approved for _ in range(5))
        streams[0].cancel()
        stream = wait_until(lambda: _try_stream(stub), lambda opened: opened is not None)
        for other in (stream, *streams[1:]):
            other.cancel()


def _try_stream(stub: risk_pb2_grpc.PreTradeRiskStub) -> object | None:
    stream = stub.StreamPortfolio(pb.PortfolioRequest(account_id="ACC-1"), timeout=5)
    try:
        next(stream)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return None
    return stream


def test_past_the_order_budget_an_order_is_refused_at_once_and_control_calls_still_go(
        seeded, start_gateway, redis_client):
    gateway = start_gateway(max_concurrent_rpcs=3)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        # Redis takes no writes: each approved order waits for its durable record.
        redis_client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            waiting = [stub.EvaluateOrder.future(order(order_id=f"held-{n}"), timeout=15)
                       for n in range(3)]
            wait_until(lambda: gateway.gateway.gate.budgets["orders"].in_use,
                       lambda in_use: in_use == 3)
            details = _refused_at_once(lambda: stub.EvaluateOrder(order(), timeout=5))
            assert "max_concurrent_rpcs" in details and "order calls" in details, details
            # The kill switch's budget is its own: GetStatus (and Halt) still go.
            assert stub.GetStatus(pb.StatusRequest(), timeout=5).sync_live
        finally:
            redis_client.execute_command("CLIENT", "UNPAUSE")
        assert all(call.result().approved for call in waiting)
        assert stub.EvaluateOrder(order(), timeout=5).approved


def test_unauthenticated_health_watches_cannot_starve_a_traders_orders(
        redis_client, redis_url, tmp_path):
    seed_account(redis_client)
    token = new_token()
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(token_entry("oms-1", "trader", ["ACC-1"], token))
    server = Serve(tmp_path, "watched", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   "--auth", "tokens", "--tokens-file", str(tokens),
                   env={environment_variable("max_concurrent_rpcs"): "50"})
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
                       for _ in range(150)]
            opened, refused = [], []
            for watch in watches:
                try:
                    opened.append(next(watch).status)
                except grpc.RpcError as error:
                    refused.append(error)
            # 150 open Watch streams without a token, and a trader's orders never
            # notice: they have a budget of their own.
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            metadata = (("authorization", f"Bearer {token}"),)
            for number in range(60):
                decision = stub.EvaluateOrder(order(order_id=f"t-{number}", quantity=1),
                                              metadata=metadata, timeout=5)
                assert decision.approved, decision
            # The open services' own budget (max_open_calls, 100 by default) ran out.
            assert opened == [health_pb2.HealthCheckResponse.SERVING] * 100
            assert len(refused) == 50
            for error in refused:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                assert "max_open_calls" in str(error.details()), error
            for watch in watches:
                watch.cancel()
        assert server.terminate() == 0, server.log()
    finally:
        server.kill()
