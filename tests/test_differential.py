"""The compiled pipeline agrees with the pure-Python twin on random inputs.

Both are driven with the same operations (state writes and orders); every
decision must be identical: verdict, notional, and every (code, observed,
limit) rejection in order.
"""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_ops import ACCOUNTS, SYMBOLS, Op, RandomWalk, operations, orders
from pretrade._core import Engine
from pretrade.engine.reference import ReferenceBook
from pretrade.engine.table import new_private_table


def fresh_pair(max_orders: int) -> tuple[object, Engine, ReferenceBook]:
    """A compiled table and a twin with the same order capacity."""
    table = new_private_table(max_accounts=8, max_instruments=8, max_positions=64,
                              max_overrides=64, lock_stripes=4, max_orders=max_orders)
    return table, Engine(table), ReferenceBook(max_orders=max_orders)


def apply(op: Op, table: object, engine: Engine, book: ReferenceBook) -> tuple | None:
    """Apply one operation to both; for an order, return the (identical) decision."""
    name, args, kwargs = op
    if name == "evaluate":
        decision = engine.evaluate(*args)
        assert decision == book.evaluate(*args), f"decisions differ for {args}"
        return decision
    getattr(table, name)(*args, **kwargs)
    getattr(book, name)(*args, **kwargs)
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(operations, orders, orders), min_size=30, max_size=120))
def test_core_and_reference_agree_on_random_operation_sequences(ops: list[Op]) -> None:
    # A tiny order region, so a full one is exercised too.
    table, engine, book = fresh_pair(max_orders=12)
    table.set_sync_live(True)
    book.set_sync_live(True)
    for op in ops:
        apply(op, table, engine, book)


def test_core_and_reference_agree_over_a_seeded_random_walk() -> None:
    seed = int(os.environ.get("PRETRADE_SEED", random.randrange(2**32)))
    print(f"random walk seed: {seed} (rerun with PRETRADE_SEED={seed})")
    walk = RandomWalk(random.Random(seed))
    # Room for most of the walk's orders: the region fills up near the end.
    table, engine, book = fresh_pair(max_orders=9_000)
    table.set_sync_live(True)
    book.set_sync_live(True)
    decisions = approvals = replays = auto_halts = 0
    codes: set[int] = set()
    for step in range(20_000):
        op = walk.operation()
        try:
            decision = apply(op, table, engine, book)
        except AssertionError as error:
            raise AssertionError(f"seed {seed}, step {step}: {error}") from None
        if decision is not None:
            decisions += 1
            approvals += decision[0]
            replays += decision[3]
            auto_halts += decision[4] != 0
            codes.update(code for code, _, _ in decision[2])
        if step % 500 == 0:
            assert_same_reservations(table, book, f"seed {seed}, step {step}")
    # The walk must exercise both verdicts, replays and breakers, or it proves little.
    assert decisions > 5_000
    assert 0 < approvals < decisions
    assert replays > 0 and auto_halts > 0
    print(f"{decisions} decisions, {approvals} approved, {replays} replayed, "
          f"{auto_halts} auto-halts; codes seen: {sorted(codes)}")


def assert_same_reservations(table, book: ReferenceBook, where: str) -> None:
    for account in ACCOUNTS:
        for symbol in SYMBOLS:
            assert table.working(account, symbol) == book.working(account, symbol), (
                f"{where}: working quantities of {account!r} {symbol!r} differ")
            assert table.position(account, symbol) == book.position(account, symbol), where
