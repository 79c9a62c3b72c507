"""Orders for one account arriving at once never jointly breach a limit.

Several processes map one table and fire thousands of orders at one account
and one limit at the same moment; threads do the same over a real gRPC
channel. The approved quantity must sum to at most the limit, and equal what
the table holds as working.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from book import order, seed_account
from pretrade._core import Engine
from pretrade.engine.limits import LimitKind
from pretrade.engine.table import Capacities, MappedTable
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

ACC, AAPL = b"ACC", b"AAPL"
LIMIT = 5_000
CAPS = Capacities(max_accounts=16, max_instruments=16, max_positions=64, max_overrides=16,
                  lock_stripes=4, max_orders=120_000)


def _fire_at(path: str, worker: int, orders: int, start_at: float, account: bytes) -> int:
    """Buys of 1 to 40 AAPL for ``account`` from the moment ``start_at``; the units approved."""
    mapped = MappedTable.attach(path)
    engine = Engine(mapped.table)
    rng = random.Random(worker)
    approved = 0
    while time.monotonic() < start_at:
        pass  # every process starts firing at the same moment
    for n in range(orders):
        quantity = rng.randint(1, 40)
        decision = engine.evaluate(f"w{worker}-{n}".encode(), account, AAPL, pb.SIDE_BUY,
                                   pb.ORDER_TYPE_LIMIT, quantity, 10_000, b"", b"",
                                   time.perf_counter_ns())
        approved += quantity if decision[0] else 0
    mapped.close()
    return approved


def _fire(path: str, worker: int, orders: int, start_at: float, out: multiprocessing.Queue,
          ) -> None:
    out.put(_fire_at(path, worker, orders, start_at, ACC))


def _shared_table(path: Path, max_long: int) -> MappedTable:
    """A live shared table: AAPL at $1, ACC allowed ``max_long`` long and little else bound."""
    mapped = MappedTable.create(path, CAPS)
    table = mapped.table
    table.set_sync_live(True)
    table.set_instrument(AAPL, known=True)
    table.set_last_price(AAPL, 10_000)
    table.set_account_state(ACC, known=True)
    limits = {int(kind): 10**12 for kind in LimitKind if kind < 6}
    limits[LimitKind.MAX_LONG_POSITION] = max_long
    limits[LimitKind.PRICE_COLLAR_BPS] = 1_000
    table.set_account_limits(ACC, limits)
    return mapped


def _at_once(target: Callable[..., None], mapped: MappedTable, orders: int) -> list[Any]:
    """Four processes running ``target`` on the table from one moment; what each reported."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    start_at = time.monotonic() + 3.0
    workers = [context.Process(target=target,
                               args=(str(mapped.path), w, orders, start_at, results))
               for w in range(4)]
    for worker in workers:
        worker.start()
    reported = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    return reported


def test_processes_sharing_the_table_never_jointly_breach_a_position_limit(tmp_path):
    mapped = _shared_table(tmp_path / "shared.table", LIMIT)
    table = mapped.table
    try:
        totals = _at_once(_fire, mapped, 25_000)
        print(f"approved per process: {totals}")
        assert sum(totals) <= LIMIT
        assert sum(totals) == table.working(ACC, AAPL)[0]
        # 100,000 orders of up to 40 against 5,000: the limit is reached, not undershot
        assert sum(totals) > LIMIT - 40
    finally:
        mapped.close(unlink=True)


DESK, MEMBERS = b"DESK", (b"ACC-A", b"ACC-B")
GROUP_CAPS = Capacities(max_accounts=16, max_instruments=64, max_positions=128,
                        max_overrides=16, lock_stripes=4, max_orders=120_000)


def _desk_table(path: Path) -> MappedTable:
    """A live shared table: AAPL at $1, ACC-A and ACC-B in DESK (no limits of its
    own yet), each allowed far more than any group limit the tests set."""
    mapped = MappedTable.create(path, GROUP_CAPS)
    table = mapped.table
    table.set_sync_live(True)
    table.set_instrument(AAPL, known=True)
    table.set_last_price(AAPL, 10_000)
    limits = {int(kind): 10**12 for kind in LimitKind if kind < 6}
    limits[LimitKind.PRICE_COLLAR_BPS] = 1_000
    for account in MEMBERS:
        table.set_account_state(account, known=True)
        table.set_account_limits(account, limits)
        table.set_account_groups(account, [DESK])
    return mapped


def _fire_grouped(path: str, worker: int, orders: int, start_at: float,
                  out: multiprocessing.Queue) -> None:
    # Workers 0 and 2 trade ACC-A, 1 and 3 ACC-B: two accounts of one group
    # from four processes at once.
    account = MEMBERS[worker % 2]
    out.put((account, _fire_at(path, worker, orders, start_at, account)))


def test_processes_trading_two_accounts_of_one_group_never_jointly_breach_the_group_limit(
        tmp_path):
    # Each account alone may go far past the group's 5,000 long (and its
    # gross exposure of $6,000): only the group's lock, taken with each
    # account's stripe, keeps the two accounts' approvals from passing it.
    mapped = _desk_table(tmp_path / "grouped.table")
    table = mapped.table
    # each member holds 1 of 40 other symbols: summing the group takes a while,
    # so two checks at once overlap often
    held = {b"S%02d" % n: (1, 10_000) for n in range(40)}
    for symbol in held:
        table.set_instrument(symbol, known=True)
        table.set_last_price(symbol, 10_000)
    for account in MEMBERS:
        table.replace_positions(account, held)
    table.set_group(DESK, {LimitKind.MAX_LONG_POSITION: LIMIT,
                           LimitKind.MAX_GROSS_EXPOSURE: 6_000 * 10_000 + 80 * 10_000})
    try:
        reported = _at_once(_fire_grouped, mapped, 25_000)
        print(f"approved per process: {reported}")
        approved = {account: sum(n for a, n in reported if a == account) for account in MEMBERS}
        assert sum(approved.values()) <= LIMIT
        assert approved == {account: table.working(account, AAPL)[0] for account in MEMBERS}
        # together they reached the group's limit, not undershot it
        assert sum(approved.values()) > LIMIT - 40
    finally:
        mapped.close(unlink=True)


def _one_at_a_time(path: str, worker: int, rounds: int, start_at: float,
                   out: multiprocessing.Queue) -> None:
    # The group may hold one unit long: each round buys 1 for this worker's
    # account and, if approved, looks at the other account before cancelling
    # its own. Its own order works until it is cancelled, so the other
    # account working too at that moment is two units in a group of one.
    mapped = MappedTable.attach(path)
    table, engine = mapped.table, Engine(mapped.table)
    mine, other = MEMBERS[worker], MEMBERS[1 - worker]
    approvals = overlaps = 0
    while time.monotonic() < start_at:
        pass
    for n in range(rounds):
        order_id = f"w{worker}-{n}".encode()
        if engine.evaluate(order_id, mine, AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1, 10_000,
                           b"", b"", time.perf_counter_ns()).approved:
            approvals += 1
            overlaps += table.working(other, AAPL)[0] > 0
            table.replace_positions(mine, {}, filled={}, cancelled={order_id})
    mapped.close()
    out.put((approvals, overlaps))


def test_two_accounts_of_a_group_of_one_unit_never_work_at_once_across_processes(tmp_path):
    # Thousands of approvals at the boundary, each released again: the
    # group's lock must keep every check of one account from overlapping the
    # other's approval.
    mapped = _desk_table(tmp_path / "one-unit.table")
    table = mapped.table
    table.set_group(DESK, {LimitKind.MAX_LONG_POSITION: 1})
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    start_at = time.monotonic() + 3.0
    workers = [context.Process(target=_one_at_a_time,
                               args=(str(mapped.path), w, 20_000, start_at, results))
               for w in range(2)]
    try:
        for worker in workers:
            worker.start()
        reported = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(30)
            assert worker.exitcode == 0
        print(f"(approvals, overlaps) per process: {reported}")
        assert [overlaps for _, overlaps in reported] == [0, 0]
        # both accounts kept getting the unit: the test raced at the boundary
        assert min(approvals for approvals, _ in reported) > 1_000
    finally:
        mapped.close(unlink=True)


def test_threads_over_grpc_never_jointly_breach_a_position_limit(redis_client, gateway):
    seed_account(redis_client)
    redis_client.hset("limits:{ACC-1}", "max_long_position", 2_000)
    approved: list[int] = []
    lock = threading.Lock()

    def fire(worker: int) -> None:
        rng = random.Random(worker)
        mine = 0
        with grpc.insecure_channel(gateway.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            for _ in range(150):
                quantity = rng.randint(1, 30)
                if stub.EvaluateOrder(order(quantity=quantity), timeout=10).approved:
                    mine += quantity
        with lock:
            approved.append(mine)

    # let the limit change reach the table first
    deadline = time.monotonic() + 5
    while (gateway.gateway.table.account_info(b"ACC-1") or {"limits": {}})["limits"].get(
            LimitKind.MAX_LONG_POSITION) != 2_000:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    threads = [threading.Thread(target=fire, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(approved) == 8
    assert sum(approved) <= 2_000
    assert sum(approved) == gateway.gateway.table.working(b"ACC-1", b"AAPL")[0]


RECYCLE_CAPS = Capacities(max_accounts=16, max_instruments=16, max_positions=64,
                          max_overrides=16, lock_stripes=4, max_orders=64,
                          max_orders_per_account=8)


def _recycle(path: str, worker: int, rounds: int, out: multiprocessing.Queue) -> None:
    # Each round decides a new id (rejected: over max_order_quantity), makes it
    # durable, and sends it and an older id again: the new one must replay from
    # the table, the old one must replay or be read back from Redis (its record
    # left): never decided anew, while the other processes reuse records and
    # rebuild the order index under this one.
    from pretrade.api.servicer import expired_mark

    mapped = MappedTable.attach(path)
    table, engine = mapped.table, Engine(mapped.table)
    account = f"W{worker}".encode()
    wrong = []
    for n in range(rounds):
        order_id = b"%d" % n
        args = (account, AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 2_000, 10_000, b"", b"")
        first = engine.evaluate(order_id, *args, time.perf_counter_ns())
        mark = expired_mark(first)
        if mark is not None:
            # a false alarm of the account's evicted-id filter: there is no
            # durable copy (as the servicer would find), so it is decided now
            first = engine.evaluate(order_id, *args, time.perf_counter_ns(), mark)
        table.mark_durable(account, order_id)
        again = engine.evaluate(order_id, *args, time.perf_counter_ns())
        older = engine.evaluate(b"%d" % max(0, n - 20), *args, time.perf_counter_ns())
        if not first.stored or first.replayed or not again.replayed \
                or not (older.replayed or expired_mark(older) is not None):
            wrong.append((n, first, again, older))
    mapped.close()
    out.put(wrong[:5])


@pytest.mark.parametrize("grouped", [False, True], ids=["accounts", "one-group"])
def test_reused_order_records_never_let_a_decided_id_be_decided_again(tmp_path, grouped):
    # one-group: the four accounts are in one group, so every decision also
    # holds the group's lock while other processes rebuild the order index
    # (which takes every stripe): no wait may deadlock.
    mapped = MappedTable.create(tmp_path / "recycle.table", RECYCLE_CAPS)
    table = mapped.table
    table.set_sync_live(True)
    table.set_instrument(AAPL, known=True)
    table.set_last_price(AAPL, 10_000)
    limits = {int(kind): 1_000 for kind in LimitKind if kind < 6}
    for worker in range(4):
        table.set_account_state(f"W{worker}".encode(), known=True)
        table.set_account_limits(f"W{worker}".encode(), limits)
        if grouped:
            table.set_account_groups(f"W{worker}".encode(), [DESK])
    if grouped:
        table.set_group(DESK, {LimitKind.MAX_ORDERS_PER_WINDOW: 10**9})
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    workers = [context.Process(target=_recycle, args=(str(mapped.path), w, 4_000, results))
               for w in range(4)]
    try:
        for worker in workers:
            worker.start()
        wrong = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(30)
            assert worker.exitcode == 0
        assert wrong == [[], [], [], []]
        counts = table.counts()
        # 16,000 decisions through 64 records: they were reused, and the index rebuilt
        assert counts["orders_evicted"] >= 15_000
        assert counts["order_index_rebuilds"] > 0
        assert counts["orders"] <= 4 * 8
    finally:
        mapped.close(unlink=True)


def _replace_and_fire(path: str, worker: int, rounds: int, start_at: float,
                      out: multiprocessing.Queue) -> None:
    # First every process replaces the same original at the same moment, then
    # each sends orders and replaces its own working ones up and down. It
    # keeps what it believes works: its approved orders, less those replaced.
    mapped = MappedTable.attach(path)
    engine = Engine(mapped.table)
    rng = random.Random(worker)
    while time.monotonic() < start_at:
        pass
    shared = engine.replace(f"S-{worker}".encode(), ACC, b"S", 20, 0, time.perf_counter_ns())
    live: dict[bytes, int] = {b"S-%d" % worker: 20} if shared.approved else {}
    for n in range(rounds):
        quantity = rng.randint(1, 40)
        if live and rng.random() < 0.5:
            original = rng.choice(list(live))
            new_id = f"r{worker}-{n}".encode()
            verdict = engine.replace(new_id, ACC, original, quantity, 0, time.perf_counter_ns())
            if verdict.approved:
                del live[original]
                live[new_id] = quantity
        else:
            order_id = f"w{worker}-{n}".encode()
            verdict = engine.evaluate(order_id, ACC, AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT,
                                      quantity, 10_000, b"", b"", time.perf_counter_ns())
            if verdict.approved:
                live[order_id] = quantity
    mapped.close()
    out.put((bool(shared.approved), sum(live.values())))


def test_processes_replacing_at_once_never_breach_a_limit_nor_replace_one_order_twice(
        tmp_path):
    mapped = _shared_table(tmp_path / "replace.table", 2_000)
    table = mapped.table
    assert Engine(table).evaluate(b"S", ACC, AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 10,
                                  10_000, b"", b"", 1).approved
    try:
        outcomes = _at_once(_replace_and_fire, mapped, 10_000)
        print(f"(replaced the shared order, quantity working) per process: {outcomes}")
        # the shared original was replaced exactly once
        assert sum(replaced for replaced, _ in outcomes) == 1
        working = sum(quantity for _, quantity in outcomes)
        assert working == table.working(ACC, AAPL)[0]
        # at the limit, not past it
        assert 2_000 - 40 < working <= 2_000
    finally:
        mapped.close(unlink=True)
