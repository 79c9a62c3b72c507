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

from core_ops import Op, operations, orders, random_operation
from pretrade._core import Engine
from pretrade.reference import ReferenceBook
from pretrade.table import new_private_table


def fresh_pair() -> tuple[object, Engine, ReferenceBook]:
    table = new_private_table(max_accounts=8, max_instruments=8, max_positions=64,
                              max_overrides=64, lock_stripes=4)
    return table, Engine(table), ReferenceBook()


def apply(op: Op, table: object, engine: Engine, book: ReferenceBook) -> None:
    name, args, kwargs = op
    if name == "evaluate":
        assert engine.evaluate(*args) == book.evaluate(*args), f"decisions differ for {args}"
    else:
        getattr(table, name)(*args, **kwargs)
        getattr(book, name)(*args, **kwargs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(operations, orders, orders), min_size=30, max_size=120))
def test_core_and_reference_agree_on_random_operation_sequences(ops: list[Op]) -> None:
    table, engine, book = fresh_pair()
    table.set_sync_live(True)
    book.set_sync_live(True)
    for op in ops:
        apply(op, table, engine, book)


def test_core_and_reference_agree_over_a_seeded_random_walk() -> None:
    seed = int(os.environ.get("PRETRADE_SEED", random.randrange(2**32)))
    print(f"random walk seed: {seed} (rerun with PRETRADE_SEED={seed})")
    rng = random.Random(seed)
    table, engine, book = fresh_pair()
    table.set_sync_live(True)
    book.set_sync_live(True)
    decisions = approvals = 0
    for step in range(20_000):
        op = random_operation(rng)
        try:
            apply(op, table, engine, book)
        except AssertionError as error:
            raise AssertionError(f"seed {seed}, step {step}: {error}") from None
        if op[0] == "evaluate":
            decisions += 1
            approvals += engine.evaluate(*op[1])[0]
    # The walk must exercise both verdicts, or it proves little.
    assert decisions > 5_000
    assert 0 < approvals < decisions
