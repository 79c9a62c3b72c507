"""Core pipeline latency: the compiled engine against the pure-Python twin, side by side.

Targets (issue 6): core p50 <= 1 us and p99 <= 3 us with every check on; the
core at least 100x faster than the twin. Both are called from Python with
plain values, timed per call with perf_counter_ns, interleaved in one run.
"""

from __future__ import annotations

import resource
import time

import pytest

from hdr import new_histogram, scale
from pretrade._core import Engine, account_key_slots, symbol_key_slots
from pretrade._core.constants import CLUSTER_SLOTS
from pretrade.engine.limits import GROUP_LIMIT_KINDS, LimitKind
from pretrade.engine.reference import ReferenceBook
from pretrade.engine.table import PREFAULTED, SPARSE, Residency, new_private_table
from pretrade.v1 import risk_pb2 as pb

ACCOUNT, SYMBOL = b"ACC-1", b"AAPL"
PRICE = 683_378


def populate(book) -> None:
    """Every control on, generous enough that orders are approved and reserved."""
    book.set_sync_live(True)
    for n, symbol in enumerate((SYMBOL, b"MSFT", b"BRK.B", b"XOM", b"JPM")):
        book.set_instrument(symbol, known=True, issuer_id=n + 1, sector_id=n % 2 + 1,
                            margin_bps=(5_000, 15_000, 2_500, 7_500))
        book.set_last_price(symbol, PRICE)
    limits = {int(kind): 10**15 for kind in LimitKind}
    limits[LimitKind.PRICE_COLLAR_BPS] = 1_000
    limits[LimitKind.MIN_ORDER_QUANTITY] = 1
    limits[LimitKind.MIN_ORDER_NOTIONAL] = 1
    limits[LimitKind.MAX_ORDERS_PER_WINDOW] = 256
    limits[LimitKind.ORDER_WINDOW_MS] = 1
    limits[LimitKind.NOTIONAL_WINDOW_MS] = 1
    limits[LimitKind.MAX_REJECTS_PER_WINDOW] = 256
    limits[LimitKind.MAX_ISSUER_CONCENTRATION_BPS] = 10_000
    limits[LimitKind.MAX_SECTOR_CONCENTRATION_BPS] = 10_000
    limits[LimitKind.CONCENTRATION_MIN_GROSS] = 0
    book.set_account_limits(ACCOUNT, limits)
    book.set_account_state(ACCOUNT, known=True)
    book.set_balances(ACCOUNT, 10**15, 0)
    book.replace_positions(ACCOUNT, {s: (100, 100 * PRICE)
                                     for s in (SYMBOL, b"MSFT", b"BRK.B", b"XOM", b"JPM")})


def make_engine(max_orders: int, memory: Residency = SPARSE) -> Engine:
    # the one account may use the whole order table (nothing here is durable,
    # so no decided order leaves it)
    table = new_private_table(max_accounts=64, max_instruments=64, max_positions=256,
                              max_overrides=64, lock_stripes=8, max_orders=max_orders,
                              max_orders_per_account=max_orders, memory=memory)
    populate(table)
    return Engine(table)


def make_twin(max_orders: int) -> ReferenceBook:
    book = ReferenceBook(max_orders=max_orders, max_orders_per_account=max_orders)
    populate(book)
    return book


@pytest.mark.benchmark(group="core")
def test_core_and_twin_latency_side_by_side(benchmark, latency):
    orders = scale(benchmark.disabled, 200_000, 500)
    twin_every = 20  # the twin is slow: time one of its calls every 20 core calls
    engine, twin = make_engine(orders + 10), make_twin(orders + 10)
    core_h, twin_h = new_histogram(), new_histogram()
    clock = time.perf_counter_ns
    core_eval, twin_eval = engine.evaluate, twin.evaluate
    ids = [f"o{n}".encode() for n in range(orders)]
    positions = {s: (100, 100 * PRICE) for s in (SYMBOL, b"MSFT", b"BRK.B", b"XOM", b"JPM")}
    for n, order_id in enumerate(ids):
        if n % 500 == 0:
            # Cancel what is working (untimed), as an order system would report,
            # so the account holds a realistic few hundred working orders.
            cancelled = set(ids[max(0, n - 500):n])
            engine.table.replace_positions(ACCOUNT, positions, filled={}, cancelled=cancelled)
            twin.replace_positions(ACCOUNT, positions, filled={}, cancelled=cancelled)
        # a tiny quantity keeps every control passing for the whole run
        # The order clock advances 10 us per order (100 orders per 1 ms window,
        # under the 256 limit), so velocity checks run but never trip.
        at = n * 10_000
        start = clock()
        decision = core_eval(order_id, ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1,
                             PRICE, b"XNAS", b"", at)
        core_h.record_value(max(1, clock() - start))
        assert decision[0], decision
        if n % twin_every == 0:
            start = clock()
            twin_decision = twin_eval(order_id, ACCOUNT, SYMBOL, pb.SIDE_BUY,
                                      pb.ORDER_TYPE_LIMIT, 1, PRICE, b"XNAS", b"", at)
            twin_h.record_value(max(1, clock() - start))
            assert twin_decision[0]
    latency.record("core pipeline, all checks, one order (Python call)", core_h,
                   "evaluate() incl. the Python call and result tuple; up to 500 working")
    latency.record("reference twin, same orders", twin_h, f"every {twin_every}th order")
    ratio = twin_h.get_value_at_percentile(50) / core_h.get_value_at_percentile(50)
    latency.figure("twin p50 / core p50", f"{ratio:.0f}x")
    # Benchmark the core call itself too, so pytest-benchmark JSON has it.
    counter = iter(range(orders, 10**9))
    benchmark(lambda: engine.evaluate(f"b{(n := next(counter))}".encode(), ACCOUNT, SYMBOL,
                                      pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1, PRICE, b"", b"",
                                      n * 10_000))


@pytest.mark.benchmark(group="core")
def test_core_pipeline_without_the_python_call(benchmark, latency):
    engine = make_engine(16)
    times = scale(benchmark.disabled, 1_000, 10)
    h = new_histogram()
    for _ in range(scale(benchmark.disabled, 2_000, 5)):
        start = time.perf_counter_ns()
        engine.evaluate_many(times, ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1, PRICE,
                             start)
        h.record_value(max(1, (time.perf_counter_ns() - start) // times))
    latency.record("core pipeline only (C loop, no order id, no reservation)", h,
                   f"mean of {times} runs per sample")
    benchmark(engine.evaluate_many, times, ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1,
              PRICE, 0)


def interleaved(runs, orders: int, faults: dict[int, int] | None = None):
    """The same ``orders`` to each (engine, histogram) of ``runs`` in turn; their histograms.

    Which engine goes first alternates, so none always finds the caches warm;
    every 500 orders what is working is cancelled (untimed), so each account
    holds a realistic few hundred working orders. With ``faults``, the minor
    page faults of each engine's calls are added to ``faults[id(engine)]``
    (``getrusage`` around the call, outside the timed part).
    """
    clock, usage = time.perf_counter_ns, resource.getrusage
    positions = {s: (100, 100 * PRICE) for s in (SYMBOL, b"MSFT", b"BRK.B", b"XOM", b"JPM")}
    ids = [f"o{n}".encode() for n in range(orders)]
    runs = tuple(runs)
    for n, order_id in enumerate(ids):
        if n % 500 == 0:
            cancelled = set(ids[max(0, n - 500):n])
            for engine, _ in runs:
                engine.table.replace_positions(ACCOUNT, positions, filled={},
                                               cancelled=cancelled)
        at = n * 10_000
        for engine, histogram in (runs if n % 2 else runs[::-1]):
            before = usage(resource.RUSAGE_SELF).ru_minflt if faults is not None else 0
            start = clock()
            decision = engine.evaluate(order_id, ACCOUNT, SYMBOL, pb.SIDE_BUY,
                                       pb.ORDER_TYPE_LIMIT, 1, PRICE, b"XNAS", b"", at)
            histogram.record_value(max(1, clock() - start))
            if faults is not None:
                faults[id(engine)] += usage(resource.RUSAGE_SELF).ru_minflt - before
            assert decision.approved, decision
    return tuple(histogram for _, histogram in runs)


@pytest.mark.benchmark(group="core")
def test_core_latency_with_and_without_the_metrics_counters(benchmark, latency):
    """Issue 13: what the engine's metrics cost on the hot path, side by side in one run.

    Two identical engines, one counting (the default: verdict, reject codes,
    an engine-time bucket, two clock reads) and one with ``counting`` off,
    called alternately with the same orders, so both see the same machine.
    """
    orders = scale(benchmark.disabled, 200_000, 500)
    counted, uncounted = make_engine(orders + 10), make_engine(orders + 10)
    uncounted.counting = False
    counted_h, uncounted_h = interleaved(((counted, new_histogram()),
                                          (uncounted, new_histogram())), orders)
    assert counted.metrics()["checks"][0] == orders
    assert uncounted.metrics()["checks"] == (0, 0, 0)
    latency.record("core evaluate, metrics counters on (default)", counted_h,
                   "interleaved with the next row, same orders")
    latency.record("core evaluate, metrics counters off (Engine.counting = False)",
                   uncounted_h, "")
    difference = (counted_h.get_value_at_percentile(50)
                  - uncounted_h.get_value_at_percentile(50))
    latency.figure("metrics counters: core p50 on - off", f"{difference} ns")
    benchmark(counted.metrics)


def _slots_read(symbols: tuple[bytes, ...]) -> set[int]:
    read = set(account_key_slots(ACCOUNT))
    for symbol in symbols:
        read.update(symbol_key_slots(symbol))
    return read


def _every_slot_but(kept: set[int]) -> list[tuple[int, int]]:
    """Slot ranges covering every slot of the cluster except ``kept``."""
    ranges, first = [], 0
    for slot in sorted(kept):
        if first < slot:
            ranges.append((first, slot - 1))
        first = slot + 1
    if first < CLUSTER_SLOTS:
        ranges.append((first, CLUSTER_SLOTS - 1))
    return ranges


@pytest.mark.benchmark(group="core")
def test_core_latency_with_no_slot_lost_and_with_slots_lost_elsewhere(benchmark, latency):
    """Issue 14: what the lost-slot check costs an order, side by side in one run.

    Two identical engines: one with no Redis Cluster slot lost (the check is one
    atomic load), one with every slot lost except those the orders read (their
    account's keys, and the keys of the symbol and of the five holdings valued
    on every order), so each order computes and tests all of them and is still
    approved: the worst case for the accounts that keep trading while a primary
    is lost.
    """
    orders = scale(benchmark.disabled, 200_000, 500)
    clear, lost = make_engine(orders + 10), make_engine(orders + 10)
    held = (SYMBOL, b"MSFT", b"BRK.B", b"XOM", b"JPM")
    lost.table.set_slots_lost(_every_slot_but(_slots_read(held)), True)
    assert lost.table.lost_slot_count() == CLUSTER_SLOTS - len(_slots_read(held))
    clear_h, lost_h = interleaved(((clear, new_histogram()), (lost, new_histogram())), orders)
    latency.record("core evaluate, no slot lost (default)", clear_h,
                   "interleaved with the next row, same orders")
    latency.record("core evaluate, every slot lost but the order's", lost_h,
                   f"{lost.table.lost_slot_count()} slots lost; 5 holdings valued")
    difference = clear_h.get_value_at_percentile(50) - lost_h.get_value_at_percentile(50)
    latency.figure("lost-slot check: core p50 lost - none", f"{-difference} ns")
    counter = iter(range(orders, 10**9))
    benchmark(lambda: lost.evaluate(f"b{(n := next(counter))}".encode(), ACCOUNT, SYMBOL,
                                    pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1, PRICE, b"", b"",
                                    n * 10_000))


@pytest.mark.benchmark(group="core")
def test_core_latency_on_a_prefaulted_and_a_sparse_table(benchmark, latency):
    """Issue 16 item 8: page faults on the hot path, side by side in one run.

    Two fresh tables of the same capacities, one with every page faulted in
    when it was made (prefault_table, the default) and one sparse, so each
    new decided order may land on a page never touched. Called alternately
    with the same orders; the minor faults each engine's calls took are
    counted around each call (outside the timed part).
    """
    orders = scale(benchmark.disabled, 200_000, 500)
    hot = make_engine(orders + 10, PREFAULTED)
    cold = make_engine(orders + 10, SPARSE)
    faults = {id(hot): 0, id(cold): 0}
    hot_h, cold_h = interleaved(((hot, new_histogram()), (cold, new_histogram())), orders,
                                faults)
    latency.record("core evaluate, prefaulted table (default)", hot_h,
                   f"{faults[id(hot)] / orders:.3f} minor faults per order; interleaved")
    latency.record("core evaluate, sparse fresh table (prefault_table off)", cold_h,
                   f"{faults[id(cold)] / orders:.3f} minor faults per order")
    latency.figure("page faults: core p99 sparse / prefaulted",
                   f"{cold_h.get_value_at_percentile(99) / hot_h.get_value_at_percentile(99):.2f}x")
    counter = iter(range(orders, 10**9))
    benchmark(lambda: hot.evaluate(f"b{(n := next(counter))}".encode(), ACCOUNT, SYMBOL,
                                   pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1, PRICE, b"", b"",
                                   n * 10_000))


@pytest.mark.benchmark(group="core")
def test_core_replace_latency_beside_evaluate(benchmark, latency):
    """Issue 12 item 3: a cancel/replace against an order, side by side in one run.

    The account holds 500 working orders; each replace takes the oldest one
    (the tail of the account's working list, which the release walks: its
    worst case) to a new price, alternating with a new order of the same size.
    """
    rounds = scale(benchmark.disabled, 50_000, 200)
    engine = make_engine(rounds * 2 + 1_000)
    working = [f"w{n}".encode() for n in range(500)]
    for n, order_id in enumerate(working):
        assert engine.evaluate(order_id, ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1,
                               PRICE, b"XNAS", b"", n * 10_000).approved
    clock = time.perf_counter_ns
    replace_h, order_h = new_histogram(), new_histogram()
    at = len(working) * 10_000
    for n in range(rounds):
        oldest = working.pop(0)
        new_id = f"r{n}".encode()
        at += 10_000
        start = clock()
        verdict = engine.replace(new_id, ACCOUNT, oldest, 0, PRICE + (n % 2) * 100, at)
        replace_h.record_value(max(1, clock() - start))
        assert verdict.approved, verdict
        working.append(new_id)
        at += 10_000
        start = clock()
        verdict = engine.evaluate(f"e{n}".encode(), ACCOUNT, SYMBOL, pb.SIDE_BUY,
                                  pb.ORDER_TYPE_LIMIT, 1, PRICE, b"XNAS", b"", at)
        order_h.record_value(max(1, clock() - start))
        assert verdict.approved, verdict
        if n % 400 == 399:   # the new orders are cancelled (untimed): 500 stay working
            engine.table.replace_positions(
                ACCOUNT, {s: (100, 100 * PRICE) for s in (SYMBOL, b"MSFT", b"BRK.B", b"XOM",
                                                           b"JPM")},
                filled={}, cancelled={f"e{k}".encode() for k in range(n - 399, n + 1)})
    latency.record("core replace, all checks, of the oldest of 500 working orders", replace_h,
                   "replace() incl. the Python call; interleaved with the next row")
    latency.record("core evaluate, same account, same run", order_h, "")
    counter = iter(range(rounds, 10**9))

    def one_replace() -> None:
        n = next(counter)
        oldest = working.pop(0)
        working.append(f"r{n}".encode())
        engine.replace(working[-1], ACCOUNT, oldest, 0, PRICE + (n % 2) * 100,
                       (rounds * 2 + n) * 10_000 + at)

    benchmark(one_replace)


@pytest.mark.benchmark(group="core")
def test_core_oco_leg_latency_beside_a_plain_order(benchmark, latency):
    """Issue 12 item 4: the second leg of an OCO pair against a plain order, side by side.

    The account holds 500 to 900 working plain orders and up to 20 OCO pairs.
    Each round sends the first leg of a new pair (untimed), then its second
    leg (timed: it finds its group among the account's working legs), then a
    plain order of the same size; every 10 rounds the pairs of the 10 before
    are cancelled, every 400 the plain orders (untimed).
    """
    rounds = scale(benchmark.disabled, 50_000, 200)
    engine = make_engine(rounds * 3 + 1_000)
    for n in range(500):
        assert engine.evaluate(f"w{n}".encode(), ACCOUNT, SYMBOL, pb.SIDE_BUY,
                               pb.ORDER_TYPE_LIMIT, 1, PRICE, b"XNAS", b"", n * 10_000).approved
    clock = time.perf_counter_ns
    leg_h, order_h = new_histogram(), new_histogram()
    at = 500 * 10_000
    evaluate = engine.evaluate
    positions = {s: (100, 100 * PRICE) for s in (SYMBOL, b"MSFT", b"BRK.B", b"XOM", b"JPM")}
    for n in range(rounds):
        group = f"g{n}".encode()
        at += 10_000
        assert evaluate(f"a{n}".encode(), ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1,
                        PRICE, b"XNAS", b"", at, group_id=group).approved
        at += 10_000
        start = clock()
        verdict = evaluate(f"b{n}".encode(), ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT,
                           1, PRICE - 100, b"XNAS", b"", at, group_id=group)
        leg_h.record_value(max(1, clock() - start))
        assert verdict.approved, verdict
        at += 10_000
        start = clock()
        verdict = evaluate(f"e{n}".encode(), ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT,
                           1, PRICE, b"XNAS", b"", at)
        order_h.record_value(max(1, clock() - start))
        assert verdict.approved, verdict
        if n % 10 == 9:
            done = {f"{kind}{k}".encode() for k in range(n - 19, n - 9) for kind in "ab"}
            if n % 400 == 399:
                done |= {f"e{k}".encode() for k in range(n - 399, n + 1)}
            engine.table.replace_positions(ACCOUNT, positions, filled={}, cancelled=done)
    latency.record("core evaluate, second leg of an OCO pair (up to 20 pairs working)", leg_h,
                   "incl. the Python call; 500-900 plain orders working too")
    latency.record("core evaluate, plain order, same account, same run", order_h, "")
    counter = iter(range(rounds, 10**9))

    def one_pair() -> None:
        n = next(counter)
        group = f"x{n}".encode()
        for leg in b"p", b"q":
            evaluate(leg + group, ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1, PRICE,
                     b"XNAS", b"", (rounds * 3 + n) * 10_000 + at, group_id=group)

    benchmark(one_pair)


def make_grouped_engine(orders: int, members: int) -> Engine:
    """make_engine's account in a desk of ``members`` accounts (itself included), each
    holding the same five positions, with every group limit set (generously)."""
    table = new_private_table(max_accounts=members + 64, max_instruments=64,
                              max_positions=5 * members + 256, max_overrides=64,
                              lock_stripes=8, max_orders=orders, max_orders_per_account=orders)
    populate(table)
    held = {s: (100, 100 * PRICE) for s in (SYMBOL, b"MSFT", b"BRK.B", b"XOM", b"JPM")}
    group_limits = {int(kind): 10**15 for kind in GROUP_LIMIT_KINDS}
    group_limits[LimitKind.ORDER_WINDOW_MS] = 1
    group_limits[LimitKind.NOTIONAL_WINDOW_MS] = 1
    table.set_group(b"DESK", group_limits)
    table.set_account_groups(ACCOUNT, [b"DESK"])
    for n in range(1, members):
        member = f"M{n}".encode()
        table.set_account_state(member, known=True)
        table.replace_positions(member, held)
        table.set_account_groups(member, [b"DESK"])
    return Engine(table)


@pytest.mark.benchmark(group="core")
def test_core_latency_of_an_account_in_a_group_beside_one_in_none(benchmark, latency):
    """Issue 12 item 5: what an account group costs an order, side by side in one run.

    Three engines with the same account and orders: in no group; in a desk of
    10 accounts; in a desk of 100. The desk sets every group limit, so each
    order sums the desk's positions in its symbol and values every member's
    five holdings (the group's exposure and loss limits), under the desk's lock.
    """
    orders = scale(benchmark.disabled, 100_000, 500)
    plain = make_engine(orders + 10)
    desk10, desk100 = make_grouped_engine(orders + 10, 10), make_grouped_engine(orders + 10, 100)
    plain_h, desk10_h, desk100_h = interleaved(
        ((plain, new_histogram()), (desk10, new_histogram()), (desk100, new_histogram())),
        orders)
    latency.record("core evaluate, account in no group", plain_h,
                   "interleaved with the next two rows, same orders")
    latency.record("core evaluate, account in a desk of 10 accounts", desk10_h,
                   "every group limit set: 10 x 5 holdings valued")
    latency.record("core evaluate, account in a desk of 100 accounts", desk100_h,
                   "100 x 5 holdings valued")
    counter = iter(range(orders, 10**9))
    benchmark(lambda: desk10.evaluate(f"b{(n := next(counter))}".encode(), ACCOUNT, SYMBOL,
                                      pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1, PRICE, b"", b"",
                                      n * 10_000))
