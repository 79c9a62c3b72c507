"""Order groups (OCO, one-cancels-other): a group's legs reserve its worst leg.

Each test runs against the compiled Engine and the pure-Python twin (a
``Book`` of test_checks): legs sent with one ``group_id`` count, on
each side, the most units and the most notional any working leg has left,
not their sum; a leg's fill, even a complete one, ends no other leg (their
reported cancels do); the legs of a group are of one symbol, venue and
counterparty (GROUP_MISMATCH otherwise).
"""

from __future__ import annotations

import pytest

from pretrade.engine.limits import LimitKind as K
from pretrade.v1 import risk_pb2 as pb
from test_checks import AAPL, ACC, LAST, MSFT, Book, approved, codes, replace

SELL, BUY, SHORT = pb.SIDE_SELL, pb.SIDE_BUY, pb.SIDE_SELL_SHORT


@pytest.fixture(params=["core", "twin"])
def book(request: pytest.FixtureRequest) -> Book:
    """test_checks' Book of either implementation."""
    return Book(request.param)


def leg(book: Book, order_id: bytes, quantity: int = 10, side: int = SELL, price: int = LAST,
        group: bytes = b"G", **order: object) -> tuple:
    return book.order(quantity=quantity, side=side, price=price, order_id=order_id,
                      group_id=group, **order)


def test_a_take_profit_and_a_stop_loss_that_each_close_a_long_are_both_closing_orders(book):
    # Long 10: both exits sell 10. Under reduce-only each one only closes,
    # and the pair reserves 10 units, not 20.
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)})
    book.state.set_halt(pb.HALT_SCOPE_ACCOUNT, ACC, pb.HALT_MODE_REDUCE_ONLY)
    assert approved(leg(book, b"TP", price=LAST + 500))
    assert approved(leg(book, b"SL", price=LAST - 500))
    assert book.state.working(ACC, AAPL) == (0, 10)


def test_the_same_pair_without_a_group_is_refused_as_a_short_sale(book):
    # The contrast: two plain sells of a long 10 sell 20.
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)})
    assert approved(book.order(quantity=10, side=SELL, order_id=b"TP"))
    assert book.codes(quantity=10, side=SELL, order_id=b"SL") == [
        pb.REJECT_CODE_SHORT_SALE_NOT_MARKED]
    assert book.state.working(ACC, AAPL) == (0, 10)


def test_a_group_counts_its_largest_leg_and_is_held_to_the_limit_at_the_exact_boundary(book):
    book.limit(max_long_position=100, max_net_position=100)
    assert approved(leg(book, b"A", 60, BUY))
    assert approved(leg(book, b"B", 100, BUY))           # the worst is now 100: the limit
    assert book.state.working(ACC, AAPL) == (100, 0)
    assert leg(book, b"C", 101, BUY)[2] == (
        (pb.REJECT_CODE_MAX_NET_POSITION, 101, 100), (pb.REJECT_CODE_MAX_LONG_POSITION, 101, 100))
    # a plain order still adds to the group's worst
    assert book.codes(quantity=1, order_id=b"P") == [
        pb.REJECT_CODE_MAX_NET_POSITION, pb.REJECT_CODE_MAX_LONG_POSITION]


def test_a_group_counts_the_most_notional_of_its_legs_against_gross_exposure(book):
    # 10 @ 1.0500 (105,000) and 8 @ 1.0900 (87,200): the group counts 105,000.
    book.limit(max_gross_exposure=105_000 + 20 * LAST)
    assert approved(leg(book, b"A", 10, BUY, price=10_500))
    assert approved(leg(book, b"B", 8, BUY, price=10_900))
    # gross = 105,000 (the group) + 20 x 1.0000 (a plain order) is the limit
    assert approved(book.order(quantity=20, order_id=b"P"))
    assert book.order(quantity=1, order_id=b"Q")[2] == (
        (pb.REJECT_CODE_MAX_GROSS_EXPOSURE, 105_000 + 21 * LAST, 105_000 + 20 * LAST),)


def test_a_leg_with_more_notional_than_the_group_so_far_adds_only_the_difference(book):
    book.limit(max_gross_exposure=12 * 10_900)
    assert approved(leg(book, b"A", 10, BUY, price=10_000))       # 100,000
    # 12 x 1.0900 = 130,800: the group's worst becomes exactly the limit
    assert approved(leg(book, b"B", 12, BUY, price=10_900))
    assert leg(book, b"C", 12, BUY, price=10_901)[2] == (
        (pb.REJECT_CODE_MAX_GROSS_EXPOSURE, 12 * 10_901, 12 * 10_900),)


def test_buy_legs_of_a_group_each_fit_the_buying_power_that_one_of_them_needs(book):
    book.state.set_balances(ACC, 100 * LAST, 0)
    assert approved(leg(book, b"A", 100, BUY))
    assert approved(leg(book, b"B", 100, BUY, price=LAST - 100))
    assert book.order(quantity=1, order_id=b"P")[2] == (
        (pb.REJECT_CODE_BUYING_POWER, LAST, 0),)


def test_the_legs_of_a_group_share_a_venue_exposure_limit_once(book):
    book.state.set_tag_limits(ACC, {b"XNAS": 10 * LAST}, {})
    assert approved(leg(book, b"A", 10, BUY, venue=b"XNAS"))
    assert approved(leg(book, b"B", 10, BUY, venue=b"XNAS", price=LAST - 100))
    assert book.order(quantity=1, venue=b"XNAS", order_id=b"P")[2] == (
        (pb.REJECT_CODE_VENUE_EXPOSURE, 11 * LAST, 10 * LAST),)


def test_a_straddle_counts_its_worst_buy_and_its_worst_sell(book):
    # An OCO of a buy stop and a sell-short stop: each side counts its own worst.
    book.state.set_locates(ACC, {AAPL: 100})
    assert approved(leg(book, b"UP", 10, BUY, price=LAST + 500))
    assert approved(leg(book, b"DOWN", 7, SHORT, price=LAST - 500))
    assert approved(leg(book, b"UP2", 4, BUY, price=LAST + 400))
    assert book.state.working(ACC, AAPL) == (10, 7)


@pytest.mark.parametrize(("other", "mismatch"), [
    ({"symbol": MSFT}, 1), ({"venue": b"XNYS"}, 2), ({"counterparty": b"MS"}, 3)])
def test_a_leg_of_another_symbol_venue_or_counterparty_is_a_group_mismatch(book, other,
                                                                            mismatch):
    assert approved(leg(book, b"A", 10, BUY, venue=b"XNAS", counterparty=b"GS"))
    terms = {"venue": b"XNAS", "counterparty": b"GS", **other}
    assert leg(book, b"B", 10, BUY, **terms)[2] == (
        (pb.REJECT_CODE_GROUP_MISMATCH, mismatch, 0),)
    # the same id in another group is its own group
    assert approved(leg(book, b"C", 10, BUY, group=b"H", **terms))


def test_a_leg_filled_completely_ends_no_other_leg_their_reported_cancel_does(book):
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)})
    assert approved(leg(book, b"TP", 10))
    assert approved(leg(book, b"SL", 10))
    assert approved(book.order(quantity=3, side=BUY, order_id=b"P"))   # not in the group
    book.state.replace_positions(ACC, {AAPL: (0, 0)}, filled={b"TP": 10})
    # The venue cancels SL; until the order system says so, SL works on.
    assert book.state.working(ACC, AAPL) == (3, 10)
    book.state.replace_positions(ACC, {AAPL: (0, 0)}, filled={b"TP": 10}, cancelled={b"SL"})
    assert book.state.working(ACC, AAPL) == (3, 0)
    # SL no longer works: a replace of it is refused as not working
    assert codes(replace(book, b"SL2", b"SL", quantity=5)) == [
        pb.REJECT_CODE_ORIGINAL_NOT_WORKING]


def test_legs_sent_under_a_reused_group_id_before_the_fill_reached_the_table_keep_counting(
        book):
    # Found by review: a complete fill ended every leg the table held under
    # the group id, also legs sent after the venue filled it and before the
    # fill reached the table, under the same (reused) id; they work at the
    # venue, and reserved nothing (fail open).
    book.limit(max_long_position=1_000, max_net_position=1_000)
    book.state.replace_positions(ACC, {AAPL: (100, 100 * LAST)})
    assert approved(leg(book, b"TP", 100, SELL, group=b"X"))
    assert approved(leg(book, b"SL", 100, SELL, group=b"X"))
    # the venue fills TP and cancels SL; before the table has it, X is reused
    assert approved(leg(book, b"Y1", 600, BUY, group=b"X"))
    assert approved(leg(book, b"Y2", 900, BUY, group=b"X"))
    book.state.replace_positions(ACC, {AAPL: (0, 0)}, filled={b"TP": 100}, cancelled={b"SL"})
    assert book.state.working(ACC, AAPL) == (900, 0)
    assert not approved(book.order(quantity=1_000, order_id=b"P"))
    assert approved(book.order(quantity=100, order_id=b"Q"))


def test_a_late_fill_after_a_refused_replace_ends_only_that_leg(book):
    # Found by review: TP fills 5, is replaced down to 6 in all, the venue
    # refuses the replace, and TP fills 1 more: the table takes TP2 for filled
    # (docs/redis-schema.md says why), and that ended SL too, with no leg
    # filled at the venue (fail open). Now SL keeps the group's 20.
    book.state.replace_positions(ACC, {AAPL: (-20, -20 * LAST)})
    assert approved(leg(book, b"TP", 20, BUY, group=b"X"))
    assert approved(leg(book, b"SL", 20, BUY, group=b"X"))
    book.state.replace_positions(ACC, {AAPL: (-15, -15 * LAST)}, filled={b"TP": 5})
    assert approved(replace(book, b"TP2", b"TP", quantity=6))
    book.state.replace_positions(ACC, {AAPL: (-14, -14 * LAST)}, filled={b"TP": 6})
    assert book.state.working(ACC, AAPL)[0] >= 14


def test_a_partial_fill_leaves_the_group_counting_its_worst_remaining_leg(book):
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)})
    assert approved(leg(book, b"TP", 10))
    assert approved(leg(book, b"SL", 10))
    book.state.replace_positions(ACC, {AAPL: (6, 6 * LAST)}, filled={b"TP": 4})
    # TP has 6 left, SL 10: the group counts 10 (the venue may still fill SL whole)
    assert book.state.working(ACC, AAPL) == (0, 10)


def test_a_cancelled_leg_leaves_the_others_counting_their_own_worst(book):
    assert approved(leg(book, b"A", 15, BUY))
    assert approved(leg(book, b"B", 10, BUY))
    book.state.replace_positions(ACC, {}, cancelled={b"A"})
    assert book.state.working(ACC, AAPL) == (10, 0)
    # a cancel is not a fill: the group goes on
    assert approved(leg(book, b"C", 12, BUY))
    assert book.state.working(ACC, AAPL) == (12, 0)


def test_a_replaced_leg_stays_in_its_group(book):
    assert approved(leg(book, b"A", 15, BUY))
    assert approved(leg(book, b"B", 10, BUY))
    assert replace(book, b"A2", b"A", quantity=8).approved
    assert book.state.working(ACC, AAPL) == (10, 0)
    assert replace(book, b"A3", b"A2", quantity=20).approved
    assert book.state.working(ACC, AAPL) == (20, 0)


def test_a_rejected_replace_of_a_leg_leaves_the_group_as_it_was(book):
    book.limit(max_long_position=20, max_net_position=20)
    assert approved(leg(book, b"A", 15, BUY))
    assert approved(leg(book, b"B", 10, BUY))
    assert not replace(book, b"A2", b"A", quantity=21).approved
    assert book.state.working(ACC, AAPL) == (15, 0)


def test_a_leg_whose_time_in_force_ends_leaves_the_others_counting(book):
    day_end = 2_000
    assert approved(leg(book, b"DAY", 15, BUY, time_in_force=pb.TIME_IN_FORCE_DAY,
                        now_unix_ms=1_000, session_end_unix_ms=day_end))
    assert approved(leg(book, b"GTC", 10, BUY, time_in_force=pb.TIME_IN_FORCE_GTC))
    assert book.state.working(ACC, AAPL) == (15, 0)
    assert book.state.end_lapsed_orders(day_end) == 1
    assert book.state.working(ACC, AAPL) == (10, 0)


def test_a_resent_leg_replays_and_the_same_id_in_another_group_is_a_duplicate(book):
    first = leg(book, b"A", 10, BUY)
    assert leg(book, b"A", 10, BUY)[3]                   # replayed
    assert leg(book, b"A", 10, BUY, group=b"H")[2] == (
        (pb.REJECT_CODE_DUPLICATE_ORDER_ID, 0, 0),)
    assert book.order(quantity=10, order_id=b"A")[2] == ((pb.REJECT_CODE_DUPLICATE_ORDER_ID, 0, 0),)
    assert approved(first)


def test_restored_legs_count_their_group_once(book):
    for order_id, quantity in ((b"A", 15), (b"B", 10)):
        assert book.state.restore_order(ACC, order_id, AAPL, BUY, pb.ORDER_TYPE_LIMIT, quantity,
                                        LAST, LAST, quantity * LAST, b"", b"", True, (), 0, 0, 0,
                                        b"", 0, b"G")
    assert book.state.working(ACC, AAPL) == (15, 0)
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)}, filled={b"B": 10})
    assert book.state.working(ACC, AAPL) == (15, 0)   # B's fill does not end A
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)}, filled={b"B": 10},
                                 cancelled={b"A"})
    assert book.state.working(ACC, AAPL) == (0, 0)


def test_a_group_id_longer_than_an_order_id_is_refused(book):
    with pytest.raises(ValueError, match="group id"):
        leg(book, b"A", group=b"G" * 64)
    assert K.MAX_LONG_POSITION in book.limits


def test_the_worst_units_and_the_worst_notional_may_be_different_legs(book):
    # A: 10 @ 0.9500 = 95,000; B: 9 @ 1.0900 = 98,100. The group counts 10
    # units (A's) and 98,100 (B's); with A cancelled, B's 9 and 98,100.
    book.limit(max_gross_exposure=98_100 + LAST - 1)
    assert approved(leg(book, b"A", 10, BUY, price=9_500))
    assert approved(leg(book, b"B", 9, BUY, price=10_900))
    assert book.state.working(ACC, AAPL) == (10, 0)
    assert book.order(quantity=1, order_id=b"P")[2] == (
        (pb.REJECT_CODE_MAX_GROSS_EXPOSURE, 98_100 + LAST, 98_100 + LAST - 1),)
    book.state.replace_positions(ACC, {}, cancelled={b"A"})
    assert book.state.working(ACC, AAPL) == (9, 0)
    assert book.order(quantity=1, order_id=b"Q")[2] == (
        (pb.REJECT_CODE_MAX_GROSS_EXPOSURE, 98_100 + LAST, 98_100 + LAST - 1),)


def test_restored_legs_are_each_counted_whole_until_their_group_is_in(book):
    # Legs A and B of 1 @ 4e18 restored, then C approved live (the group
    # counts 4e18 only). A restore of all three counts each whole before the
    # group's worst is taken: 1.2e19 does not fit in int64, so it is refused
    # (the account fails closed), by the core and the twin alike.
    big = 4 * 10**18
    book.state.set_last_price(AAPL, big)
    book.limit(max_order_notional=2**63 - 1)

    def record(order_id: bytes) -> tuple:
        return (order_id, AAPL, BUY, pb.ORDER_TYPE_LIMIT, 1, big, big, big, b"", b"", True, (),
                0, 0, 0, b"", 0, b"G")

    assert book.state.restore_orders(ACC, [record(b"A"), record(b"B")]) == 2
    assert approved(leg(book, b"C", 1, BUY, price=big))
    assert book.state.working(ACC, AAPL) == (1, 0)
    again = Book(book.kind)
    again.state.set_last_price(AAPL, big)
    with pytest.raises(ValueError, match="order b'C': its reservation would take"):
        again.state.restore_orders(ACC, [record(b"A"), record(b"B"), record(b"C")])
    # what was restored before it counts as its group: once
    assert again.state.working(ACC, AAPL) == (1, 0)
