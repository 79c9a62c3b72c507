"""Fault injection on Redis: restarted, reconfigured, flushed, swapped, its link cut.

Each test runs a real redis-server of its own (a stock one: no keyspace
notification flags until pretrade sets them), a real gateway in front of it,
and then does to Redis what an unlucky operator or a failover does. The
gateway may be stale for at most ``max_sync_lag_ms`` (plus the time to
notice); after that it must never approve what Redis says it must reject.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from book import GENEROUS_LIMITS, codes, order, seed_account, try_order, wait_until
from conftest import GatewayThread, gateway_settings
from faults import RestartableRedis
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

LAG_MS = 500
#: How long after a change the gateway may still decide on the old state:
#: the lag bound, the canary's period and a resync, with room for a slow CI.
NOTICE_SECONDS = 4 * LAG_MS / 1000 + 2.0


@pytest.fixture
def stock_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway_on(tmp_path: Path) -> Iterator[Callable[..., GatewayThread]]:
    started: list[GatewayThread] = []

    def start(url: str, **overrides: object) -> GatewayThread:
        values: dict[str, object] = {"max_sync_lag_ms": LAG_MS}
        values.update(overrides)
        gateway = GatewayThread(gateway_settings(tmp_path, **values), url)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def decide(stub: risk_pb2_grpc.PreTradeRiskStub, **fields: object) -> pb.Decision:
    return stub.EvaluateOrder(order(**fields), timeout=5)  # type: ignore[arg-type]


def no_approval_after(stub: risk_pb2_grpc.PreTradeRiskStub, changed_at: float,
                      expected: Callable[[pb.Decision], bool], seconds: float = 2.0) -> None:
    """Orders sent from ``NOTICE_SECONDS`` after the change on are all ``expected``.

    Before that the gateway may still be catching up; after it, one approval
    that Redis forbids fails the test. An UNAVAILABLE answer (a loaded machine
    did not make the decision durable within the lag bound) refuses the order
    too: it never approves, and never counts as ``expected``.
    """
    wait_until(lambda: try_order(stub, order()), lambda d: d is not None and expected(d),
               timeout=NOTICE_SECONDS + 10)
    time.sleep(max(0.0, changed_at + NOTICE_SECONDS - time.monotonic()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        decision = try_order(stub, order())
        assert decision is None or expected(decision), f"decided against Redis: {decision}"


def refused_for(code: int) -> Callable[[pb.Decision], bool]:
    """Rejected, and for ``code``: the change reached the table. A loaded
    machine may add STALE_DATA (a canary beat late, so a resync), which
    refuses too; an approval, or a rejection without ``code``, fails."""
    def refused(decision: pb.Decision) -> bool:
        return not decision.approved and code in codes(decision) \
            and set(codes(decision)) <= {code, pb.REJECT_CODE_STALE_DATA}
    return refused


def test_halt_written_after_redis_restart_is_enforced(stock_redis, gateway_on):
    seed_account(stock_redis.client())
    gateway = gateway_on(stock_redis.url)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert decide(stub).approved
        # The restart loses the notification flags pretrade had to set.
        stock_redis.kill_and_restart()
        wait_until(lambda: stub.GetStatus(pb.StatusRequest(), timeout=5),
                   lambda s: s.sync_live and s.full_loads >= 2, timeout=20)
        stock_redis.client().hset("halt:all", mapping={"mode": "HALTED", "reason": "test",
                                                       "by": "ops", "at": 1})
        halted_at = time.monotonic()
        no_approval_after(stub, halted_at, refused_for(pb.REJECT_CODE_GLOBAL_HALT))
        assert stock_redis.client().config_get("notify-keyspace-events")[
            "notify-keyspace-events"] != ""


def test_notifications_switched_off_while_running_fail_closed_then_recover(stock_redis,
                                                                            gateway_on):
    client = stock_redis.client()
    seed_account(client)
    gateway = gateway_on(stock_redis.url)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert decide(stub).approved
        client.config_set("notify-keyspace-events", "")
        client.hset("halt:account:ACC-1", mapping={"mode": "HALTED", "reason": "test",
                                                   "by": "ops", "at": 1})
        changed_at = time.monotonic()
        # Stale until it notices, then the flags are set again and the halt holds.
        no_approval_after(stub, changed_at, refused_for(pb.REJECT_CODE_ACCOUNT_HALT))
        status = stub.GetStatus(pb.StatusRequest(), timeout=5)
        assert status.full_loads >= 2 and status.sync_live


@pytest.mark.parametrize("empty_it", [
    pytest.param(lambda client: client.flushall(), id="FLUSHALL"),
    pytest.param(lambda client: client.flushdb(), id="FLUSHDB"),
    pytest.param(lambda client: client.swapdb(0, 1), id="SWAPDB"),
])
def test_an_emptied_or_replaced_database_is_detected_and_its_accounts_rejected(
        stock_redis, gateway_on, empty_it):
    client = stock_redis.client()
    seed_account(client)
    gateway = gateway_on(stock_redis.url)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert decide(stub).approved
        empty_it(client)
        emptied_at = time.monotonic()
        no_approval_after(stub, emptied_at,
                          lambda d: pb.REJECT_CODE_UNKNOWN_ACCOUNT in codes(d))


def test_a_change_made_while_the_notification_link_was_cut_is_not_missed(stock_redis,
                                                                          gateway_on):
    client = stock_redis.client()
    seed_account(client)
    gateway = gateway_on(stock_redis.url)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert decide(stub).approved
        # Cut the pub/sub link and halt in the same transaction: the halt's
        # notification goes to nobody, whatever the client does to reconnect.
        with client.pipeline(transaction=True) as pipe:
            pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            pipe.hset("halt:all", mapping={"mode": "HALTED", "reason": "t", "by": "o", "at": 1})
            pipe.execute()
        cut_at = time.monotonic()
        no_approval_after(stub, cut_at, refused_for(pb.REJECT_CODE_GLOBAL_HALT))


def test_the_first_durable_decisions_after_a_redis_restart_do_not_fail(stock_redis,
                                                                        gateway_on):
    client = stock_redis.client()
    seed_account(client)
    client.hset("limits:{ACC-1}", mapping=GENEROUS_LIMITS)
    gateway = gateway_on(stock_redis.url, durable_decisions=True)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert decide(stub).approved
        # Fill the pool: halts written at once each take a connection of their own.
        def halt_and_lift(n: int) -> None:
            for mode in (pb.HALT_MODE_HALTED, pb.HALT_MODE_ACTIVE):
                stub.Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_SYMBOL, symbol=f"X{n}",
                                         mode=mode, reason="warm the pool"), timeout=5)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(halt_and_lift, range(16)))
        stock_redis.kill_and_restart()
        # Once live again, no decision fails on a connection left from before.
        live = wait_until(lambda: stub.GetStatus(pb.StatusRequest(), timeout=5),
                          lambda s: s.sync_live and s.full_loads >= 2, timeout=20)
        with ThreadPoolExecutor(8) as pool:
            decisions = list(pool.map(lambda _: decide(stub), range(32)))
        assert all(d.approved for d in decisions), [d for d in decisions if not d.approved][:2]
        # ...and it stays live: a canary beat that was stuck on the dead link
        # while the sync reloaded must not count for the new load (it made the
        # lag look 0.5 s old at once, and so a needless second resync).
        time.sleep(3 * LAG_MS / 1000)
        after = stub.GetStatus(pb.StatusRequest(), timeout=5)
        assert after.sync_live and after.full_loads == live.full_loads


def test_a_durable_write_redis_holds_back_ends_unavailable_before_the_deadline(stock_redis,
                                                                               gateway_on):
    client = stock_redis.client()
    seed_account(client)
    gateway = gateway_on(stock_redis.url, durable_decisions=True, max_sync_lag_ms=2_000)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert decide(stub).approved
        # Redis takes no write for 2.5 s (reads go on): the decision is made and
        # reserved, but cannot be made durable within the client's second.
        client.execute_command("CLIENT", "PAUSE", "2500", "WRITE")
        request = order(order_id="held-1")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            stub.EvaluateOrder(request, timeout=1.0)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
        assert "re-send" in raised.value.details()
        assert time.monotonic() - started < 1.0
        # The documented recovery: re-send the same id once Redis is back; it replays.
        again = wait_until(lambda: stub.EvaluateOrder(request, timeout=5), lambda d: d.approved,
                           timeout=15)
        assert again.replayed
        wait_until(lambda: client.hexists("orders:{ACC-1}", "held-1"), bool)
