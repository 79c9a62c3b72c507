"""Cancel/replace (ReplaceOrder): accept, reject and the exact boundary.

Written once, run against both the compiled Engine and the twin (the
``book`` fixture of test_checks). A replace is checked as the replacement
order with the original's reservation released in the same locked step; a
rejected replace leaves the original working and untouched.
"""

from __future__ import annotations

from typing import Any

import pytest

from pretrade._core.constants import ORDER_DONE, ORDER_REJECTED, ORDER_REPLACED
from pretrade.v1 import risk_pb2 as pb
from test_checks import AAPL, ACC, LAST, SECOND, Book, approved


@pytest.fixture(params=["core", "twin"])
def book(request: pytest.FixtureRequest) -> Book:
    return Book(request.param)


@pytest.fixture(params=["core", "twin"])
def make_book(request: pytest.FixtureRequest) -> Any:
    return lambda **capacities: Book(request.param, **capacities)


def replace(book: Any, new_id: bytes, original: bytes, quantity: int = 0, price: int = 0,
            **kwargs: Any) -> Any:
    return book.engine.replace(new_id, ACC, original, quantity, price, book.now, **kwargs)


def codes(verdict: Any) -> list[int]:
    return [code for code, _, _ in verdict.rejections]


def test_an_approved_replace_moves_the_reservation_to_the_replacement(book):
    assert approved(book.order(quantity=10, order_id=b"A"))
    verdict = replace(book, b"B", b"A", quantity=25, price=LAST + 100)
    assert verdict.approved and verdict.notional == 25 * (LAST + 100)
    assert book.state.working(ACC, AAPL) == (25, 0)     # not 35: the original stopped counting
    # the replacement can be replaced in turn, the original no more
    assert codes(replace(book, b"C", b"A", quantity=5)) == [
        pb.REJECT_CODE_ORIGINAL_NOT_WORKING]
    assert replace(book, b"C", b"B", quantity=5).approved
    assert book.state.working(ACC, AAPL) == (5, 0)


def test_a_replace_is_checked_with_the_originals_reservation_released(book):
    # max long 100: 100 working; a replace to 100 passes (it would not if
    # the original still counted), to 101 it is held to 101 exactly
    book.limit(max_long_position=100)
    assert approved(book.order(quantity=100, order_id=b"A"))
    assert codes(book.order(quantity=1)) == [pb.REJECT_CODE_MAX_LONG_POSITION]
    assert replace(book, b"B", b"A", quantity=101).rejections == (
        (pb.REJECT_CODE_MAX_LONG_POSITION, 101, 100),)
    assert replace(book, b"C", b"A", quantity=100, price=LAST - 1).approved


def test_a_rejected_replace_leaves_the_original_working_and_untouched(book):
    book.limit(max_order_quantity=50)
    book.state.set_locates(ACC, {AAPL: 40})
    book.state.set_tag_limits(ACC, {b"XNAS": 40 * LAST}, {})
    assert approved(book.order(quantity=40, side=pb.SIDE_SELL_SHORT, venue=b"XNAS",
                               order_id=b"A"))
    assert codes(replace(book, b"B", b"A", quantity=51)) == [
        pb.REJECT_CODE_MAX_ORDER_QUANTITY, pb.REJECT_CODE_NO_LOCATE,
        pb.REJECT_CODE_VENUE_EXPOSURE]
    assert book.state.working(ACC, AAPL) == (0, 40)
    # the original still reserves its locate and its venue notional
    assert codes(book.order(quantity=1, side=pb.SIDE_SELL_SHORT, venue=b"XNAS")) == [
        pb.REJECT_CODE_NO_LOCATE, pb.REJECT_CODE_VENUE_EXPOSURE]
    # and works on: its fills and cancel apply to it, and it can still be replaced
    book.state.replace_positions(ACC, {AAPL: (-10, -10 * LAST)}, filled={b"A": 10},
                                 cancelled=set())
    assert book.state.working(ACC, AAPL) == (0, 30)
    assert replace(book, b"C", b"A", quantity=40, price=LAST - 1).approved


def test_a_replace_uses_the_locate_and_venue_room_its_original_held(book):
    book.state.set_locates(ACC, {AAPL: 40})
    book.state.set_tag_limits(ACC, {b"XNAS": 40 * LAST}, {})
    assert approved(book.order(quantity=40, side=pb.SIDE_SELL_SHORT, venue=b"XNAS",
                               order_id=b"A"))
    # exactly the same room: 40 located, 40 x $1.0000 at the venue
    assert replace(book, b"B", b"A", quantity=40).approved
    assert codes(replace(book, b"C", b"B", quantity=41)) == [
        pb.REJECT_CODE_NO_LOCATE, pb.REJECT_CODE_VENUE_EXPOSURE]


def test_a_replace_at_the_working_order_limit_is_approved(book):
    book.limit(max_working_orders=2)
    assert approved(book.order(order_id=b"A"))
    assert approved(book.order(order_id=b"B"))
    assert codes(book.order()) == [pb.REJECT_CODE_MAX_WORKING_ORDERS]
    assert replace(book, b"C", b"A", quantity=12).approved


def test_a_resent_replace_replays_and_another_replace_under_its_id_is_a_duplicate(book):
    assert approved(book.order(quantity=10, order_id=b"A"))
    first = replace(book, b"B", b"A", quantity=20)
    again = replace(book, b"B", b"A", quantity=20)
    assert again.replayed and again.approved and again.notional == first.notional
    # unchanged fields may be left out (0) in the re-send too
    assert replace(book, b"B", b"A").replayed
    assert codes(replace(book, b"B", b"A", quantity=21)) == [pb.REJECT_CODE_DUPLICATE_ORDER_ID]
    # an order sent under the replacement's id is another order
    assert codes(book.order(quantity=20, order_id=b"B")) == [pb.REJECT_CODE_DUPLICATE_ORDER_ID]
    assert book.state.working(ACC, AAPL) == (20, 0)


def test_a_rejected_replace_replays_its_rejection(book):
    book.limit(max_order_quantity=50)
    assert approved(book.order(quantity=10, order_id=b"A"))
    assert codes(replace(book, b"B", b"A", quantity=60)) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]
    again = replace(book, b"B", b"A", quantity=60)
    assert again.replayed and codes(again) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]


def test_a_replace_of_an_unknown_order_is_rejected_with_its_own_code(book):
    assert replace(book, b"B", b"NEVER").rejections == (
        (pb.REJECT_CODE_UNKNOWN_ORIGINAL_ORDER, 0, 0),)
    assert book.engine.replace(b"B", b"NOBODY", b"A", 10, 0, book.now).rejections == (
        (pb.REJECT_CODE_UNKNOWN_ORIGINAL_ORDER, 0, 0),)
    # not remembered: the id is free for an order
    assert approved(book.order(order_id=b"B"))


def test_a_replace_of_an_order_that_does_not_work_says_why(book):
    book.limit(max_order_quantity=50)
    assert not approved(book.order(quantity=60, order_id=b"R"))
    assert approved(book.order(quantity=10, order_id=b"F"))
    assert approved(book.order(quantity=10, order_id=b"X"))
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)}, filled={b"F": 10},
                                 cancelled={b"X"})
    assert replace(book, b"N1", b"R").rejections == (
        (pb.REJECT_CODE_ORIGINAL_NOT_WORKING, ORDER_REJECTED, 0),)
    assert replace(book, b"N2", b"F").rejections == (
        (pb.REJECT_CODE_ORIGINAL_NOT_WORKING, ORDER_DONE, 0),)
    assert replace(book, b"N3", b"X").rejections == (
        (pb.REJECT_CODE_ORIGINAL_NOT_WORKING, ORDER_DONE, 0),)
    assert approved(book.order(quantity=10, order_id=b"W"))
    assert replace(book, b"N4", b"W", quantity=11).approved
    assert replace(book, b"N5", b"W", quantity=12).rejections == (
        (pb.REJECT_CODE_ORIGINAL_NOT_WORKING, ORDER_REPLACED, 0),)


def test_a_replace_of_an_order_whose_record_left_the_table_is_not_working(make_book):
    book = make_book(max_orders=4, max_orders_per_account=4)
    assert approved(book.order(quantity=10, order_id=b"F"))
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)}, filled={b"F": 10},
                                 cancelled=set())
    book.state.mark_durable(ACC, b"F")
    assert book.state.expire_orders(book.now + 120 * SECOND) == 1
    assert replace(book, b"N", b"F").rejections == (
        (pb.REJECT_CODE_ORIGINAL_NOT_WORKING, 0, 0),)


def test_a_replace_quantity_must_be_above_what_the_original_filled(book):
    assert approved(book.order(quantity=10, order_id=b"A"))
    book.state.replace_positions(ACC, {AAPL: (6, 6 * LAST)}, filled={b"A": 6}, cancelled=set())
    assert replace(book, b"B", b"A", quantity=6).rejections == (
        (pb.REJECT_CODE_REPLACE_BELOW_FILLED, 6, 6),)
    assert book.state.working(ACC, AAPL) == (4, 0)
    # FIX OrderQty is the total: 7 with 6 filled leaves 1 to reserve
    verdict = replace(book, b"C", b"A", quantity=7)
    assert verdict.approved and verdict.notional == 1 * LAST
    assert book.state.working(ACC, AAPL) == (1, 0)


def test_fills_of_the_original_after_the_replace_count_against_the_replacement(book):
    assert approved(book.order(quantity=10, order_id=b"A"))
    book.state.replace_positions(ACC, {AAPL: (2, 2 * LAST)}, filled={b"A": 2}, cancelled=set())
    assert replace(book, b"B", b"A", quantity=20).approved
    assert book.state.working(ACC, AAPL) == (18, 0)
    # a fill of A that reached Redis after the replace, then one of B
    book.state.replace_positions(ACC, {AAPL: (5, 5 * LAST)}, filled={b"A": 5}, cancelled=set())
    assert book.state.working(ACC, AAPL) == (15, 0)
    assert replace(book, b"C", b"B", quantity=20).approved
    book.state.replace_positions(ACC, {AAPL: (9, 9 * LAST)}, filled={b"A": 5, b"B": 3, b"C": 1},
                                 cancelled=set())
    # C: 20 in all, 5 (A) + 3 (B) + 1 (C) filled
    assert book.state.working(ACC, AAPL) == (11, 0)
    book.state.replace_positions(ACC, {AAPL: (9, 9 * LAST)}, filled={b"A": 5, b"B": 3, b"C": 1},
                                 cancelled={b"C"})
    assert book.state.working(ACC, AAPL) == (0, 0)


def test_a_replace_on_a_stale_table_is_stale_and_leaves_the_original(book):
    assert approved(book.order(quantity=10, order_id=b"A"))
    book.state.set_sync_live(False)
    assert replace(book, b"B", b"A", quantity=20).rejections == (
        (pb.REJECT_CODE_STALE_DATA, 0, 0),)
    assert replace(book, b"B", b"NEVER").rejections == ((pb.REJECT_CODE_STALE_DATA, 0, 0),)
    book.state.set_sync_live(True)
    assert book.state.working(ACC, AAPL) == (10, 0)
    assert replace(book, b"B", b"A", quantity=20).approved


def test_a_replace_that_reduces_passes_a_reduce_only_halt(book):
    book.state.replace_positions(ACC, {AAPL: (100, 100 * LAST)})
    assert approved(book.order(quantity=60, side=pb.SIDE_SELL, order_id=b"A"))
    book.state.set_halt(pb.HALT_SCOPE_ACCOUNT, ACC, pb.HALT_MODE_REDUCE_ONLY)
    # 100 long: selling 100 in all still only reduces, with A's 60 released
    assert replace(book, b"B", b"A", quantity=100).approved
    assert codes(replace(book, b"C", b"B", quantity=101)) == [
        pb.REJECT_CODE_SHORT_SALE_NOT_MARKED, pb.REJECT_CODE_REDUCE_ONLY]


def test_a_restored_replacement_reserves_its_total_less_the_chain_fills(book):
    # after a restart: B replaced A (2 of A filled before, carried 0), 20 in all
    assert book.state.restore_order(ACC, b"B", AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 20,
                                    LAST, LAST, 18 * LAST, b"", b"", True, (), b"A", 0)
    book.state.replace_positions(ACC, {AAPL: (4, 4 * LAST)}, filled={b"A": 3, b"B": 1},
                                 cancelled=set())
    assert book.state.working(ACC, AAPL) == (16, 0)
    # a re-sent replace replays from the restored record
    assert replace(book, b"B", b"A", quantity=20).replayed
