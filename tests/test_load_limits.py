"""Load limits over a real channel: client deadlines and the concurrent call limit."""

from __future__ import annotations

import time

import grpc
import pytest
import redis

from book import order, seed_account
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    return redis_client


class ExpiredContext:
    """A servicer context whose client deadline has just passed."""

    def time_remaining(self) -> float:
        return 0.0

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
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


def test_past_the_concurrency_limit_a_call_is_refused_at_once_not_queued(seeded,
                                                                         start_gateway):
    gateway = start_gateway(max_concurrent_rpcs=3)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        # Portfolio streams hold their slot for as long as they are open.
        streams = [stub.StreamPortfolio(pb.PortfolioRequest(account_id="ACC-1"))
                   for _ in range(3)]
        for stream in streams:
            assert next(stream).kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            stub.EvaluateOrder(order(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 1.0
        streams[0].cancel()
        deadline = time.monotonic() + 5
        while True:  # the server frees the slot once it has seen the cancel
            try:
                assert stub.EvaluateOrder(order(), timeout=5).approved
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the slot was never freed"
                time.sleep(0.02)
        for stream in streams[1:]:
            stream.cancel()
