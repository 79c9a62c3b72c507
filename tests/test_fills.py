"""The fill and cancel contract: how working quantity becomes position, exactly.

The order system writes a fill as a lot plus its ``orders_by_lot`` attribution
in one MULTI/EXEC, and a cancel as a ``cancels:{ACC}`` field. pretrade reads
the account's snapshot in one MULTI/EXEC and applies it in one locked step,
so position + working never double-counts a fill nor drops it.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
import redis

from book import order, seed_account, wait_until
from pretrade.engine.table import MappedTable
from pretrade.v1 import risk_pb2 as pb

PRICE = 683_378


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    redis_client.hset("limits:{ACC-1}", "max_long_position", 100)
    return redis_client


def report_fill(r: redis.Redis, lot: str, order_id: str, quantity: int) -> None:
    with r.pipeline(transaction=True) as pipe:
        pipe.hset("tickers_by_lot:{ACC-1}", lot, "AAPL")
        pipe.hset("quantities_by_lot:{ACC-1}", lot, quantity)
        pipe.hset("prices_by_lot:{ACC-1}", lot, PRICE)
        pipe.hset("orders_by_lot:{ACC-1}", lot, order_id)
        pipe.execute()


def test_a_reported_fill_moves_quantity_from_working_to_position(seeded, gateway, stub):
    table = gateway.gateway.table
    assert stub.EvaluateOrder(order(quantity=60, order_id="F1")).approved
    assert table.position_and_working(b"ACC-1", b"AAPL") == (0, 60, 0)
    report_fill(seeded, "L1", "F1", 60)
    wait_until(lambda: table.position_and_working(b"ACC-1", b"AAPL"),
               lambda state: state[0] == 60)
    assert table.position_and_working(b"ACC-1", b"AAPL") == (60, 0, 0)
    assert table.order_info(b"ACC-1", b"F1")["status"] == "done"
    # 60 held + 40 = the limit of 100 exactly; one more is over
    assert stub.EvaluateOrder(order(quantity=40)).approved
    decision = stub.EvaluateOrder(order(quantity=1))
    assert [r.code for r in decision.rejections] == [pb.REJECT_CODE_MAX_LONG_POSITION]


def test_a_partial_fill_then_a_cancel_release_the_rest(seeded, gateway, stub):
    table = gateway.gateway.table
    assert stub.EvaluateOrder(order(quantity=80, order_id="P1")).approved
    report_fill(seeded, "L1", "P1", 30)
    wait_until(lambda: table.position_and_working(b"ACC-1", b"AAPL"),
               lambda state: state == (30, 50, 0))
    seeded.hset("cancels:{ACC-1}", "P1", int(time.time() * 1000))
    wait_until(lambda: table.position_and_working(b"ACC-1", b"AAPL"),
               lambda state: state == (30, 0, 0))
    assert stub.EvaluateOrder(order(quantity=70)).approved


def _sample(path: str, ready, stop, out: multiprocessing.Queue) -> None:
    # Another process reading the shared table under the account's lock,
    # as fast as it can: every (position, working) pair it ever sees, from
    # the moment it says it is reading until it is told to stop.
    mapped = MappedTable.attach(path)
    seen: dict[tuple[int, int, int], int] = {}
    state = mapped.table.position_and_working(b"ACC-1", b"AAPL")
    seen[state] = 1
    ready.set()
    while not stop.is_set():
        for _ in range(1000):
            state = mapped.table.position_and_working(b"ACC-1", b"AAPL")
            seen[state] = seen.get(state, 0) + 1
    mapped.close()
    out.put(seen)


def test_no_moment_in_which_a_fill_counts_twice_or_not_at_all(seeded, gateway, stub):
    # 20 working orders of 5; each is filled in turn while another process
    # watches. position + working must be 100 in every sample it takes.
    table = gateway.gateway.table
    for n in range(20):
        assert stub.EvaluateOrder(order(quantity=5, order_id=f"W{n}")).approved
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = context.Queue()
    ready, stop = context.Event(), context.Event()
    sampler = context.Process(target=_sample,
                              args=(str(gateway.gateway.mapped.path), ready, stop, out),
                              daemon=True)
    sampler.start()
    try:
        _fill_all_while_sampling(seeded, table, ready)
    finally:
        stop.set()
    seen = out.get(timeout=30)
    sampler.join(10)
    assert table.position_and_working(b"ACC-1", b"AAPL") == (100, 0, 0)
    totals = {position + working_buy for position, working_buy, _ in seen}
    assert totals == {100}, f"samples by state: {seen}"
    assert len(seen) > 10, "the sampler must have seen the fills land one by one"


def _fill_all_while_sampling(seeded, table, ready) -> None:
    # the fills must land while the sampler reads: a slow spawn on a loaded
    # machine once left it reading only the final state
    assert ready.wait(60), "the sampler process never started reading"
    for n in range(20):
        report_fill(seeded, f"L{n}", f"W{n}", 5)
        wait_until(lambda: table.position_and_working(b"ACC-1", b"AAPL"),
                   lambda state, n=n: state[0] == 5 * (n + 1))
        time.sleep(0.01)
