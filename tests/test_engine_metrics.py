"""What the compiled engine counts for the metrics (``Engine.metrics``), in process.

The figures the exporter reads at scrape time: decisions by verdict, reject
codes, the engine-time histogram; and ``Engine.counting`` off counts nothing.
"""

from __future__ import annotations

from pretrade._core import Engine
from pretrade._core.constants import LATENCY_BUCKET_BOUNDS_NS, ORDER_ID_EXPIRED, VERDICT_NAMES
from pretrade.engine.tally import Buckets
from pretrade.v1 import risk_pb2 as pb
from test_checks import ACC, Book

APPROVED, REJECTED, REPLAYED = (list(VERDICT_NAMES.values()).index(name)
                                for name in ("approved", "rejected", "replayed"))
SECOND = 1_000_000_000


def test_decisions_are_counted_by_verdict_code_and_engine_time():
    book = Book("core")
    engine: Engine = book.engine
    assert engine.metrics()["checks"] == (0, 0, 0)
    book.order(order_id=b"a1")
    book.order(order_id=b"a1")                      # replayed
    book.order(quantity=2_000)                      # quantity and notional
    book.order(quantity=2_000, price=10_000_000)    # quantity, notional and collar
    figures = engine.metrics()
    assert figures["checks"][APPROVED] == 1
    assert figures["checks"][REPLAYED] == 1
    assert figures["checks"][REJECTED] == 2
    assert figures["rejections"] == {pb.REJECT_CODE_MAX_ORDER_QUANTITY: 2,
                                     pb.REJECT_CODE_MAX_ORDER_NOTIONAL: 2,
                                     pb.REJECT_CODE_PRICE_COLLAR: 1}
    for kind, count in enumerate(figures["checks"]):
        assert sum(figures["latency"][kind]) == count
        assert len(figures["latency"][kind]) == len(LATENCY_BUCKET_BOUNDS_NS) + 1
        assert (figures["latency_sum_ns"][kind] > 0) == (count > 0)


def test_counting_off_counts_nothing_and_decides_the_same():
    counted, uncounted = Book("core"), Book("core")
    uncounted.engine.counting = False
    for quantity in (10, 2_000, 20):
        assert counted.order(quantity=quantity) == uncounted.order(quantity=quantity)
    assert counted.engine.metrics()["checks"] == (2, 1, 0)
    assert uncounted.engine.metrics() == {"checks": (0, 0, 0),
                                          "latency": ((0,) * 17,) * 3,
                                          "latency_sum_ns": (0, 0, 0), "rejections": {}}


def test_an_id_whose_record_left_the_table_is_not_counted_until_it_is_decided():
    book = Book("core", order_expiry_ms=1_000)
    book.order(quantity=2_000, order_id=b"r1")
    book.state.mark_durable_many([(ACC, b"r1")])
    assert book.state.expire_orders(book.now + 10 * SECOND) == 1
    before = book.engine.metrics()
    marker = book.order(quantity=2_000, order_id=b"r1")
    assert marker[2] == ((pb.REJECT_CODE_DUPLICATE_ORDER_ID, ORDER_ID_EXPIRED, 1),)
    assert book.engine.metrics() == before


def test_buckets_count_each_value_once_at_its_upper_bound():
    buckets = Buckets((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 3.0):
        buckets.observe(value)
    assert buckets.cumulative() == [(1.0, 2), (2.0, 3), (float("inf"), 4)]
    assert buckets.count == 4 and buckets.total == 6.0
