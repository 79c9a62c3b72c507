"""Crash recovery: kill -9 the server while orders flow, restart, nothing decided is lost.

A restarted server rebuilds from Redis: the decided orders it made durable
(``orders:{ACC}``) are put back before it trusts its table, so working orders
still count against limits and a re-sent order id gets its original decision.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis

from book import codes, order, seed_account
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from test_fills import report_fill

BANNER = re.compile(r"serving PreTradeRisk on ([\d.]+:\d+)")


@pytest.fixture
def launch(redis_url: str, tmp_path: Path) -> Iterator[Callable[[], tuple[str, subprocess.Popen]]]:
    """Start `pretrade serve` against the test Redis; every process is killed at teardown."""
    processes: list[subprocess.Popen[str]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETRADE_")}
    env.update({"PRETRADE_INSECURE": "true", "PRETRADE_AUTH": "none"})

    def start() -> tuple[str, subprocess.Popen[str]]:
        process = subprocess.Popen(
            [sys.executable, "-m", "pretrade", "serve", "--listen", "127.0.0.1:0",
             "--redis-url", redis_url, "--table-path", str(tmp_path / "recovery.table")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        processes.append(process)
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            if match := BANNER.search(line):
                threading.Thread(target=process.stdout.read, daemon=True).start()
                return match.group(1), process
        raise AssertionError("the server printed no banner")

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def live_stub(target: str) -> tuple[grpc.Channel, risk_pb2_grpc.PreTradeRiskStub]:
    channel = grpc.insecure_channel(target)
    stub = risk_pb2_grpc.PreTradeRiskStub(channel)
    deadline = time.monotonic() + 20
    while not stub.GetStatus(pb.StatusRequest(), timeout=5).sync_live:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return channel, stub


@pytest.fixture
def limited(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    redis_client.hset("limits:{ACC-1}", "max_long_position", 1_000)
    return redis_client


def test_kill_9_while_orders_flow_loses_no_decision(limited, launch):
    target, process = launch()
    channel, stub = live_stub(target)
    decided: dict[str, pb.Decision] = {}
    with channel:
        # Orders flow from a thread; the server is killed in the middle.
        stop = threading.Event()

        def flow() -> None:
            n = 0
            while not stop.is_set():
                request = order(quantity=7, order_id=f"K{n}")
                try:
                    decided[request.order_id] = stub.EvaluateOrder(request, timeout=5)
                except grpc.RpcError:
                    return  # the server died under this call: no answer, nothing promised
                n += 1

        sender = threading.Thread(target=flow)
        sender.start()
        # Killed once the flow is past the limit (a loaded machine may take
        # longer than usual to get there), while orders are still in flight.
        deadline = time.monotonic() + 30
        while not any(not d.approved for d in list(decided.values())):
            assert sender.is_alive() and time.monotonic() < deadline, \
                f"the flow never reached the limit: {len(decided)} decided"
            time.sleep(0.01)
        time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        stop.set()
        sender.join(10)
    approved = [oid for oid, d in decided.items() if d.approved]
    assert approved and len(approved) < len(decided), "the flow must reach the limit"

    target, _ = launch()
    channel, stub = live_stub(target)
    with channel:
        # GetStatus says how many decided orders the restart put back: every
        # answered one, and any made durable whose answer died with the server
        assert stub.GetStatus(pb.StatusRequest(), timeout=5).orders_restored >= len(decided)
        # every answered order id replays its original decision
        for order_id, first in decided.items():
            again = stub.EvaluateOrder(order(quantity=7, order_id=order_id), timeout=5)
            assert again.replayed
            assert (again.approved, list(again.rejections)) == (first.approved,
                                                                list(first.rejections))
        # the working orders still hold their reservation: 7 x approved <= 1,000
        room = 1_000 - 7 * len(approved)
        if room > 0:
            assert stub.EvaluateOrder(order(quantity=room), timeout=5).approved
        assert codes(stub.EvaluateOrder(order(quantity=1), timeout=5)) == [
            pb.REJECT_CODE_MAX_LONG_POSITION]


def test_fills_reported_while_down_are_applied_to_restored_orders(limited, launch):
    target, process = launch()
    channel, stub = live_stub(target)
    with channel:
        assert stub.EvaluateOrder(order(quantity=600, order_id="R1")).approved
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    # the order system reports a fill of 600 while the server is down
    report_fill(limited, "L1", "R1", 600)
    target, _ = launch()
    channel, stub = live_stub(target)
    with channel:
        # 600 held, nothing working: exactly 400 more fits
        assert stub.EvaluateOrder(order(quantity=400)).approved
        assert codes(stub.EvaluateOrder(order(quantity=1))) == [
            pb.REJECT_CODE_MAX_LONG_POSITION]


def test_a_restart_after_a_replace_reserves_the_replacement_and_not_its_original(limited,
                                                                                 launch):
    target, process = launch()
    channel, stub = live_stub(target)
    with channel:
        assert stub.EvaluateOrder(order(quantity=600, order_id="A")).approved
        # a fill of 100 of A, then A replaced by B: 900 in all, 800 of them working
        report_fill(limited, "L1", "A", 100)
        # probe until the table has the fill: a replace to 1 at a price off the collar
        # is BELOW_FILLED once it has (before, it is PRICE_COLLAR and A stays as it was)
        deadline = time.monotonic() + 10
        probes = 0
        while codes(stub.ReplaceOrder(pb.ReplaceRequest(
                account_id="ACC-1", original_order_id="A", order_id=f"probe-{probes}",
                quantity=1, price=1))) != [pb.REJECT_CODE_REPLACE_BELOW_FILLED]:
            assert time.monotonic() < deadline, "the fill never reached the table"
            probes += 1
            time.sleep(0.02)
        assert stub.ReplaceOrder(pb.ReplaceRequest(account_id="ACC-1", original_order_id="A",
                                                   order_id="B", quantity=900)).approved
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    target, _ = launch()
    channel, stub = live_stub(target)
    with channel:
        # 100 held + B's 800 working (A's 500 are not reserved again): 100 more fit
        assert stub.EvaluateOrder(order(quantity=100)).approved
        assert codes(stub.EvaluateOrder(order(quantity=1))) == [
            pb.REJECT_CODE_MAX_LONG_POSITION]
        again = stub.ReplaceOrder(pb.ReplaceRequest(account_id="ACC-1", original_order_id="A",
                                                    order_id="B", quantity=900))
        assert again.replayed and again.approved
        assert codes(stub.ReplaceOrder(pb.ReplaceRequest(
            account_id="ACC-1", original_order_id="A", order_id="C", quantity=950))) == [
            pb.REJECT_CODE_ORIGINAL_NOT_WORKING]


def test_an_unreadable_durable_order_fails_its_account_closed(limited, launch):
    limited.set("orders:{ACC-1}", "not a hash")
    target, _ = launch()
    channel, stub = live_stub(target)
    with channel:
        assert stub.GetStatus(pb.StatusRequest()).invalid_entities >= 1
        try:
            decision = stub.EvaluateOrder(order())
        except grpc.RpcError as error:
            # the rejection itself cannot be made durable under a key of the wrong type
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "durable" in error.details()
        else:
            assert codes(decision) == [pb.REJECT_CODE_INVALID_STATE]


def test_any_venue_a_client_may_send_survives_the_durable_record(limited, launch):
    # `;` `:` and `,` were the old record's separators; every printable character
    # a venue or counterparty may hold must come back from a restart intact.
    target, process = launch()
    channel, stub = live_stub(target)
    tricky = ["X;NAS", "A:B", "C,D", "1;2;3", "\\;x", "~!@#$%^&*()_+{}"]
    with channel:
        first = {}
        for n, name in enumerate(tricky):
            request = order(quantity=100, order_id=f"V{n}", venue=name[:15],
                            counterparty=name[::-1][:15])
            first[request.order_id] = stub.EvaluateOrder(request, timeout=5)
            assert first[request.order_id].approved
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    target, _ = launch()
    channel, stub = live_stub(target)
    with channel:
        assert stub.GetStatus(pb.StatusRequest(), timeout=5).invalid_entities == 0
        for n, name in enumerate(tricky):
            again = stub.EvaluateOrder(order(quantity=100, order_id=f"V{n}", venue=name[:15],
                                             counterparty=name[::-1][:15]), timeout=5)
            assert again.replayed and again.approved
        # all six reservations hold: 600 of the 1,000 long limit are working
        assert stub.EvaluateOrder(order(quantity=400), timeout=5).approved
        assert codes(stub.EvaluateOrder(order(quantity=1), timeout=5)) == [
            pb.REJECT_CODE_MAX_LONG_POSITION]


def test_an_unreadable_record_fails_its_account_closed_and_the_rest_is_restored(limited,
                                                                               launch):
    target, process = launch()
    channel, stub = live_stub(target)
    with channel:
        for n in range(5):
            assert stub.EvaluateOrder(order(quantity=100, order_id=f"G{n}"), timeout=5).approved
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    # The unreadable record first in the hash: nothing after it may be skipped.
    records = limited.hgetall("orders:{ACC-1}")
    with limited.pipeline(transaction=True) as pipe:
        pipe.delete("orders:{ACC-1}")
        pipe.hset("orders:{ACC-1}", "G-garbage", b"\xff not a decided order")
        pipe.hset("orders:{ACC-1}", mapping=records)
        pipe.execute()
    target, _ = launch()
    channel, stub = live_stub(target)
    with channel:
        status = stub.GetStatus(pb.StatusRequest(), timeout=5)
        assert status.invalid_entities >= 1
        assert status.orders_restored == 5
        # the account fails closed: its working orders are known, but not all it held
        assert codes(stub.EvaluateOrder(order(quantity=1), timeout=5)) == [
            pb.REJECT_CODE_INVALID_STATE]
        # every readable decision still replays
        for n in range(5):
            again = stub.EvaluateOrder(order(quantity=100, order_id=f"G{n}"), timeout=5)
            assert again.replayed and again.approved

# -- a decision is durable before it is answered, replays included --


def refuse_writes(client: redis.Redis) -> None:
    """Make the real redis-server refuse every write (out of memory, nothing evictable)."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)


def allow_writes(client: redis.Redis) -> None:
    client.config_set("maxmemory", 0)


def test_a_replayed_decision_that_was_never_durable_is_made_durable_before_answering(
        limited, start_gateway):
    gateway = start_gateway(max_sync_lag_ms=30_000)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        refuse_writes(limited)
        try:
            with pytest.raises(grpc.RpcError) as raised:
                stub.EvaluateOrder(order(quantity=7, order_id="D1"), timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as raised:
                stub.EvaluateOrders(pb.OrderBatch(orders=[
                    order(quantity=5, order_id="B1"), order(quantity=2_000, order_id="B2")]),
                    timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            allow_writes(limited)
        # the retry is answered from the table as the original decision: it must
        # be written before the answer, like the decision itself would have been
        # (the journal also retries the failed write by itself; whichever comes
        # first, the answer never precedes the record)
        again = stub.EvaluateOrder(order(quantity=7, order_id="D1"), timeout=5)
        assert again.replayed and again.approved
        assert limited.hexists("orders:{ACC-1}", "D1")
        batch = stub.EvaluateOrders(pb.OrderBatch(orders=[
            order(quantity=5, order_id="B1"), order(quantity=2_000, order_id="B2")]), timeout=5)
        assert [d.replayed for d in batch.decisions] == [True, True]
        assert [d.approved for d in batch.decisions] == [True, False]
        assert limited.hexists("orders:{ACC-1}", "B1") and limited.hexists("orders:{ACC-1}", "B2")
        # each at least once (the journal's own retry may write one again)
        assert stub.GetStatus(pb.StatusRequest()).journal_written >= 3
    gateway.stop()
    # a new server restores all three from Redis and replays them
    restarted = start_gateway("restarted")
    with grpc.insecure_channel(restarted.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert stub.GetStatus(pb.StatusRequest()).orders_restored == 3
        for request, approved in ((order(quantity=7, order_id="D1"), True),
                                  (order(quantity=5, order_id="B1"), True),
                                  (order(quantity=2_000, order_id="B2"), False)):
            decision = stub.EvaluateOrder(request, timeout=5)
            assert decision.replayed and decision.approved is approved


# -- restoring decided orders is linear in their number --


def write_working_orders(client: redis.Redis, account: str, count: int) -> None:
    """``count`` approved orders of one unit each, as the journal writes them."""
    from pretrade.state.journal import DecidedOrder

    fields = {}
    for n in range(count):
        record = DecidedOrder(account.encode(), f"W{n}".encode(), b"AAPL", pb.SIDE_BUY,
                              pb.ORDER_TYPE_LIMIT, 1, 683_378, 683_378, 683_378, b"XNAS", b"",
                              True, ())
        fields[record.order_id] = record.encode()
    for start in range(0, count, 10_000):
        chunk = dict(list(fields.items())[start:start + 10_000])
        client.hset(f"orders:{{{account}}}", mapping=chunk)


def test_thirty_thousand_restored_orders_of_one_account_load_in_seconds(redis_client,
                                                                         start_gateway):
    seed_account(redis_client)
    redis_client.hset("limits:{ACC-1}", mapping={"max_long_position": 30_010,
                                                 "max_net_position": 10**9})
    write_working_orders(redis_client, "ACC-1", 30_000)
    started = time.monotonic()
    gateway = start_gateway(max_orders=400_000)
    took = time.monotonic() - started
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        status = stub.GetStatus(pb.StatusRequest())
        assert status.orders_restored == 30_000
        # a quadratic restore (one pass over the working orders per order) takes minutes
        assert status.last_full_load_ms < 5_000, status.last_full_load_ms
        assert took < 10, took
        # every restored order holds its unit: 10 more fit, 11 do not
        assert codes(stub.EvaluateOrder(order(quantity=11))) == [
            pb.REJECT_CODE_MAX_LONG_POSITION]
        assert stub.EvaluateOrder(order(quantity=10)).approved


def test_a_restart_restores_each_oco_group_once_and_keeps_a_reused_group_id(limited, launch):
    # Long 100. Group X: a take-profit and a stop-loss of 100; the take-profit
    # fills (which ends no other leg). Group X again (a reused id): two buys
    # of 600 and 900. After kill -9 the buys reserve 900 (their worst, not
    # 1,500, and not dropped with the take-profit), and the stop-loss counts,
    # as it did before the restart, until its cancel is reported.
    limited.hset("limits:{ACC-1}", "max_long_position", 1_000)
    report_fill(limited, "L0", "BOUGHT", 100)
    target, process = launch()
    channel, stub = live_stub(target)

    def leg(order_id: str, side: int, quantity: int) -> pb.Order:
        request = order(side=side, quantity=quantity, order_id=order_id)
        request.group_id, request.contingency = "X", pb.CONTINGENCY_ONE_CANCELS_OTHER
        return request

    with channel:
        deadline = time.monotonic() + 10
        while stub.GetStatus(pb.StatusRequest()).positions < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for request in (leg("TP", pb.SIDE_SELL, 100), leg("SL", pb.SIDE_SELL, 100)):
            assert stub.EvaluateOrder(request).approved, request
        report_fill(limited, "L1", "TP", -100)
        # until the fill is in the table, a buy of 1,001 is 100 + 1,001 long
        probes = iter(range(10**6))
        deadline = time.monotonic() + 10
        while (pb.REJECT_CODE_MAX_LONG_POSITION, 1_001) not in [
                (r.code, r.observed) for r in stub.EvaluateOrder(order(
                    quantity=1_001, order_id=f"probe-{next(probes)}")).rejections]:
            assert time.monotonic() < deadline, "the fill never reached the table"
            time.sleep(0.02)
        # X sent again: the buys count their worst (the stop-loss still works)
        for request in (leg("Y1", pb.SIDE_BUY, 600), leg("Y2", pb.SIDE_BUY, 900)):
            decision = stub.EvaluateOrder(request)
            assert decision.approved, decision
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    limited.hset("limits:{ACC-1}", "max_working_orders", 4)
    target, _ = launch()
    channel, stub = live_stub(target)
    with channel:
        # flat; 900 working buys: 100 more fit the long limit of 1,000, and
        # with Y1, Y2 and SL the fourth working order
        decision = stub.EvaluateOrder(order(quantity=100))
        assert decision.approved, decision
        assert codes(stub.EvaluateOrder(order(quantity=1))) == [
            pb.REJECT_CODE_MAX_LONG_POSITION, pb.REJECT_CODE_MAX_WORKING_ORDERS]
        assert stub.EvaluateOrder(leg("Y2", pb.SIDE_BUY, 900)).replayed
        # the stop-loss's cancel, reported by the order system, ends it
        limited.hset("cancels:{ACC-1}", "SL", 1)
        deadline = time.monotonic() + 10
        while codes(stub.EvaluateOrder(order(quantity=1))) != [
                pb.REJECT_CODE_MAX_LONG_POSITION]:
            assert time.monotonic() < deadline, "the cancel never reached the table"
            time.sleep(0.02)
