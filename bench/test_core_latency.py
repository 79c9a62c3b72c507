"""Core pipeline latency: the compiled engine against the pure-Python twin, side by side.

Run with ``make bench``; CI runs this file once with ``--benchmark-disable`` so it
cannot rot. Targets (issue 6): core p50 <= 1 us, p99 <= 3 us, >= 100x the twin.
"""

from __future__ import annotations

import pytest

from pretrade._core import Engine
from pretrade.limits import LimitKind
from pretrade.reference import ReferenceBook
from pretrade.table import new_private_table
from pretrade.v1 import risk_pb2 as pb

ACCOUNT, SYMBOL = b"ACC-1", b"AAPL"
ORDER = (ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 10, 683_378)
LIMITS = {int(kind): 10**12 for kind in LimitKind}


def populate(book) -> None:
    book.set_sync_live(True)
    book.set_instrument(SYMBOL, known=True, tick_size=1, lot_size=1)
    book.set_last_price(SYMBOL, 683_378)
    book.set_account_limits(ACCOUNT, LIMITS)
    book.set_account_state(ACCOUNT, known=True)
    book.replace_positions(ACCOUNT, {SYMBOL: (100, 100 * 683_378)})


@pytest.fixture(scope="module")
def engine() -> Engine:
    table = new_private_table(max_accounts=64, max_instruments=64, max_positions=256,
                              max_overrides=64, lock_stripes=8)
    populate(table)
    return Engine(table)


@pytest.fixture(scope="module")
def twin() -> ReferenceBook:
    book = ReferenceBook()
    populate(book)
    return book


@pytest.mark.benchmark(group="core-pipeline")
def test_core_pipeline_one_order(benchmark, engine):
    assert benchmark(engine.evaluate_rejection_count, *ORDER) == 0


@pytest.mark.benchmark(group="core-pipeline")
def test_core_pipeline_one_order_with_result_tuple(benchmark, engine):
    approved, _, _ = benchmark(engine.evaluate, *ORDER)
    assert approved


@pytest.mark.benchmark(group="core-pipeline")
def test_reference_twin_one_order(benchmark, twin):
    approved, _, _ = benchmark(twin.evaluate, *ORDER)
    assert approved
