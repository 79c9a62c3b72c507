"""Every check of the catalogue: accept, reject and the exact boundary.

Each test is written once and runs against both implementations, the
compiled Engine and the pure-Python twin (the ``book`` fixture), so a case
that passes proves both agree with the specification written here.

Unless a test says otherwise: AAPL trades at $1.0000 (10,000 units) with tick
and lot size 1; account ACC has generous limits and a 10% collar; the clock
is at 1 s.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from pretrade._core import Engine, TableFullError
from pretrade._core.constants import ORDER_DONE, ORDER_ID_EXPIRED, ORDER_REJECTED, ORDER_REPLACED
from pretrade.engine.limits import LimitKind as K
from pretrade.engine.reference import ReferenceBook
from pretrade.engine.table import new_private_table
from pretrade.v1 import risk_pb2 as pb

ACC, AAPL, MSFT = b"ACC", b"AAPL", b"MSFT"
LAST = 10_000
BASE_LIMITS = {
    K.MAX_ORDER_QUANTITY: 1_000, K.MAX_ORDER_NOTIONAL: 10_000_000, K.MAX_NET_POSITION: 100_000,
    K.MAX_LONG_POSITION: 100_000, K.MAX_SHORT_POSITION: 100_000, K.PRICE_COLLAR_BPS: 1_000,
}
SECOND = 1_000_000_000


CAPACITIES = {"max_accounts": 8, "max_instruments": 8, "max_positions": 64,
              "max_overrides": 64, "max_orders": 1_000, "max_orders_per_account": 1_000}


class Book:
    """One face for both implementations: state writes and ``order``."""

    def __init__(self, kind: str, **capacities: int) -> None:
        caps = {**CAPACITIES, **capacities}
        self.kind = kind
        if kind == "core":
            self.state: Any = new_private_table(**caps, lock_stripes=4)
            self.engine: Any = Engine(self.state)
        else:
            self.state = self.engine = ReferenceBook(**caps)
        self.ids = itertools.count(1)
        self.now = SECOND
        self.limits = dict(BASE_LIMITS)
        self.state.set_sync_live(True)
        for symbol in (AAPL, MSFT):
            self.state.set_instrument(symbol, known=True)
            self.state.set_last_price(symbol, LAST)
        self.state.set_account_state(ACC, known=True)
        self.state.set_account_limits(ACC, self.limits)

    def limit(self, **limits: int) -> None:
        for name, value in limits.items():
            self.limits[K[name.upper()]] = value
        self.state.set_account_limits(ACC, self.limits)

    def order(self, quantity: int = 10, price: int = LAST, side: int = pb.SIDE_BUY,
              symbol: bytes = AAPL, order_type: int = pb.ORDER_TYPE_LIMIT, venue: bytes = b"",
              counterparty: bytes = b"", order_id: bytes | None = None,
              **time_in_force: int) -> tuple:
        oid = order_id or f"id-{next(self.ids)}".encode()
        return self.engine.evaluate(oid, ACC, symbol, side, order_type, quantity, price, venue,
                                    counterparty, self.now, **time_in_force)

    def codes(self, **order: Any) -> list[int]:
        return [code for code, _, _ in self.order(**order)[2]]


@pytest.fixture(params=["core", "twin"])
def book(request: pytest.FixtureRequest) -> Book:
    return Book(request.param)


@pytest.fixture(params=["core", "twin"])
def make_book(request: pytest.FixtureRequest) -> Any:
    """A Book of either kind with other capacities: ``make_book(max_orders=4)``."""
    return lambda **capacities: Book(request.param, **capacities)


def approved(decision: tuple) -> bool:
    return decision[0]


# -- price sanity, collar, size --

def test_price_on_the_tick_passes_and_off_the_tick_is_rejected(book):
    book.state.set_instrument(AAPL, known=True, tick_size=100)
    assert book.codes(price=10_100) == []
    assert book.codes(price=10_050) == [pb.REJECT_CODE_TICK_SIZE]
    assert book.codes(price=10_099) == [pb.REJECT_CODE_TICK_SIZE]


def test_market_order_is_valued_at_the_last_price(book):
    decision = book.order(order_type=pb.ORDER_TYPE_MARKET, price=0, quantity=7)
    assert approved(decision) and decision[1] == 7 * LAST


def test_collar_allows_exactly_n_basis_points_and_rejects_beyond(book):
    # 1,000 bp = 10% of $1.0000
    assert book.codes(price=11_000) == []
    assert book.codes(price=9_000) == []
    assert book.codes(price=11_001) == [pb.REJECT_CODE_PRICE_COLLAR]
    assert book.order(price=8_999)[2] == ((pb.REJECT_CODE_PRICE_COLLAR, 1_001, 1_000),)


def test_collar_without_a_last_price_fails_closed(book):
    book.state.set_last_price(AAPL, None)
    assert book.codes() == [pb.REJECT_CODE_PRICE_UNAVAILABLE]


def test_minimum_quantity_boundary(book):
    book.limit(min_order_quantity=5)
    assert book.codes(quantity=5) == []
    assert book.codes(quantity=4) == [pb.REJECT_CODE_MIN_ORDER_QUANTITY]


def test_lot_size_multiples(book):
    book.state.set_instrument(AAPL, known=True, lot_size=10)
    assert book.codes(quantity=20) == []
    assert book.codes(quantity=25) == [pb.REJECT_CODE_LOT_SIZE]


def test_max_order_quantity_and_notional_boundaries(book):
    assert book.codes(quantity=1_000) == []
    assert book.codes(quantity=1_001, price=9_000) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]
    # 1,000 x $1.0000 = $1,000 = the notional limit exactly
    book.limit(max_order_quantity=10_000)
    assert book.codes(quantity=1_000, price=LAST) == []
    assert book.codes(quantity=1_000, price=LAST + 1) == [pb.REJECT_CODE_MAX_ORDER_NOTIONAL]


def test_minimum_notional_boundary_reports_the_notional_and_the_minimum(book):
    book.limit(min_order_notional=50 * LAST)            # $50
    assert book.codes(quantity=50) == []                # $50.0000 exactly
    assert book.order(quantity=49)[2] == ((pb.REJECT_CODE_MIN_ORDER_NOTIONAL, 49 * LAST,
                                           50 * LAST),)
    # one unit of price short of the minimum: 50 x $0.9999
    assert book.order(quantity=50, price=LAST - 1)[2] == (
        (pb.REJECT_CODE_MIN_ORDER_NOTIONAL, 50 * (LAST - 1), 50 * LAST),)


def test_minimum_notional_values_a_market_order_at_the_last_price(book):
    book.limit(min_order_notional=50 * LAST)
    assert book.codes(order_type=pb.ORDER_TYPE_MARKET, price=0, quantity=50) == []
    book.state.set_last_price(AAPL, LAST - 1)
    assert book.codes(order_type=pb.ORDER_TYPE_MARKET, price=0, quantity=50) == [
        pb.REJECT_CODE_MIN_ORDER_NOTIONAL]


def test_a_per_symbol_minimum_notional_overrides_the_account_minimum(book):
    book.limit(min_order_notional=50 * LAST)
    book.state.set_symbol_limits(ACC, MSFT, {K.MIN_ORDER_NOTIONAL: 10 * LAST})
    assert book.codes(symbol=MSFT, quantity=10) == []
    assert book.codes(symbol=MSFT, quantity=9) == [pb.REJECT_CODE_MIN_ORDER_NOTIONAL]
    assert book.codes(symbol=AAPL, quantity=10) == [pb.REJECT_CODE_MIN_ORDER_NOTIONAL]
    # an override applies without any account-wide minimum too
    book.limits.pop(K.MIN_ORDER_NOTIONAL)
    book.state.set_account_limits(ACC, book.limits)
    book.state.set_symbol_limits(ACC, MSFT, {K.MIN_ORDER_NOTIONAL: 100 * LAST})
    assert book.codes(symbol=AAPL, quantity=1) == []
    assert book.order(symbol=MSFT, quantity=99)[2] == (
        (pb.REJECT_CODE_MIN_ORDER_NOTIONAL, 99 * LAST, 100 * LAST),)


def test_without_a_minimum_notional_any_small_order_goes(book):
    assert book.codes(quantity=1, price=1) == [pb.REJECT_CODE_PRICE_COLLAR]  # $0.0001: collar
    book.limit(price_collar_bps=10_000)
    assert book.codes(quantity=1, price=1) == []


# -- positions with working orders --

def test_working_orders_count_against_the_long_limit(book):
    book.limit(max_long_position=5_000)
    book.state.replace_positions(ACC, {AAPL: (4_000, 4_000 * LAST)})
    assert approved(book.order(quantity=900))       # 4,000 held + 900 working
    assert book.codes(quantity=101) == [pb.REJECT_CODE_MAX_LONG_POSITION]
    assert book.codes(quantity=100) == []           # exactly 5,000


def test_a_hundred_orders_before_any_fill_cannot_together_pass_the_limit(book):
    book.limit(max_long_position=1_000)
    results = [approved(book.order(quantity=15)) for _ in range(100)]
    assert sum(results) * 15 <= 1_000
    assert sum(results) == 1_000 // 15


def test_short_limit_counts_working_sells(book):
    book.limit(max_short_position=50)
    book.state.set_locates(ACC, {AAPL: 1_000})
    assert approved(book.order(side=pb.SIDE_SELL_SHORT, quantity=30))
    assert book.codes(side=pb.SIDE_SELL_SHORT, quantity=21) == [
        pb.REJECT_CODE_MAX_SHORT_POSITION]
    assert book.codes(side=pb.SIDE_SELL_SHORT, quantity=20) == []


def test_a_fill_moves_quantity_from_working_to_position_in_one_step(book):
    assert approved(book.order(quantity=100, order_id=b"F1"))
    assert book.state.working(ACC, AAPL) == (100, 0)
    book.state.replace_positions(ACC, {AAPL: (60, 60 * LAST)}, filled={b"F1": 60},
                                 cancelled=set())
    assert book.state.position(ACC, AAPL) == (60, 60 * LAST)
    assert book.state.working(ACC, AAPL) == (40, 0)
    book.state.replace_positions(ACC, {AAPL: (60, 60 * LAST)}, filled={b"F1": 60},
                                 cancelled={b"F1"})
    assert book.state.working(ACC, AAPL) == (0, 0)


# -- short sales --

def test_selling_below_zero_must_be_marked_short(book):
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)})
    assert book.codes(side=pb.SIDE_SELL, quantity=10) == []
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)})
    assert book.codes(side=pb.SIDE_SELL, quantity=1) == [pb.REJECT_CODE_SHORT_SALE_NOT_MARKED]


def test_short_sale_needs_a_locate_which_it_consumes(book):
    book.state.set_locates(ACC, {AAPL: 5})
    assert book.codes(side=pb.SIDE_SELL_SHORT, quantity=6) == [pb.REJECT_CODE_NO_LOCATE]
    assert book.codes(side=pb.SIDE_SELL_SHORT, quantity=5) == []
    assert book.codes(side=pb.SIDE_SELL_SHORT, quantity=1) == [pb.REJECT_CODE_NO_LOCATE]


def test_short_sale_on_the_restricted_list_is_refused(book):
    book.state.set_locates(ACC, {AAPL: 100})
    book.state.set_instrument(AAPL, known=True, short_restricted=True)
    assert book.codes(side=pb.SIDE_SELL_SHORT) == [pb.REJECT_CODE_SHORT_SALE_RESTRICTED]
    book.state.set_instrument(AAPL, known=True)
    assert book.codes(side=pb.SIDE_SELL_SHORT) == []


# -- exposure and buying power --

def test_gross_exposure_boundary(book):
    book.state.replace_positions(ACC, {AAPL: (100, 100 * LAST)})  # $100 long
    book.limit(max_gross_exposure=100 * LAST + 10 * LAST)
    assert book.codes(quantity=10) == []                 # exactly at the limit
    assert book.codes(quantity=1) == [pb.REJECT_CODE_MAX_GROSS_EXPOSURE]


def test_net_exposure_rejects_growth_but_not_reduction(book):
    book.state.replace_positions(ACC, {AAPL: (100, 100 * LAST)})
    book.limit(max_net_exposure=105 * LAST)
    assert book.codes(quantity=5) == []
    assert book.codes(quantity=1) == [pb.REJECT_CODE_MAX_NET_EXPOSURE]
    assert book.codes(side=pb.SIDE_SELL, quantity=50) == []


def test_buying_power_covers_buys_and_short_sales_exactly(book):
    book.state.set_balances(ACC, 10 * LAST, 5 * LAST)
    book.state.set_locates(ACC, {AAPL: 100})
    assert book.codes(quantity=16) == [pb.REJECT_CODE_BUYING_POWER]
    assert book.codes(quantity=15) == []                  # $10 cash + $5 credit
    assert book.codes(quantity=1) == [pb.REJECT_CODE_BUYING_POWER]
    assert book.codes(side=pb.SIDE_SELL_SHORT, quantity=1) == [pb.REJECT_CODE_BUYING_POWER]


def test_a_buy_that_covers_a_short_is_held_to_buying_power_only_past_the_short(book):
    # Short 10 @ 30, last 35, $1 of cash: the short commits $35 of buying
    # power, so the account has none left. A BUY that only covers it reduces
    # the position and frees what it commits: it must not be refused, or an
    # account can never flatten a short (issue 12, defect 1).
    price = 35 * LAST // 10
    book.state.replace_positions(ACC, {AAPL: (-10, -10 * 3 * LAST)})
    book.state.set_last_price(AAPL, price)
    book.state.set_balances(ACC, LAST, 0)
    # 1 unit past the short is held: $3.50 > the $1 left once the short is covered
    decision = book.order(quantity=11, price=price)
    assert [(code, observed, limit) for code, observed, limit in decision[2]] == [
        (pb.REJECT_CODE_BUYING_POWER, price, LAST)]
    assert book.codes(quantity=10, price=price) == []    # flattens it
    # the working buy covers the short now: nothing of the next buy is exempt
    assert book.codes(quantity=1, price=price) == [pb.REJECT_CODE_BUYING_POWER]


def test_working_buys_that_already_cover_the_short_leave_nothing_to_exempt(book):
    book.state.replace_positions(ACC, {AAPL: (-100, -100 * LAST)})
    book.state.set_balances(ACC, 100 * LAST, 0)       # $100 against a $100 short
    assert book.codes(quantity=60) == []
    assert book.codes(quantity=40) == []                # the rest of the short
    assert book.codes(quantity=1) == [pb.REJECT_CODE_BUYING_POWER]  # nothing left to cover


def test_an_order_that_closes_or_reduces_a_position_is_exempt_from_the_minimum_size(book):
    # A residual long of 50 under a minimum of 100 must be sellable (defect 2).
    book.state.replace_positions(ACC, {AAPL: (50, 50 * LAST)})
    book.limit(min_order_quantity=100)
    assert book.codes(side=pb.SIDE_SELL, quantity=50) == []      # closes it exactly
    assert book.codes(side=pb.SIDE_BUY, quantity=50) == [pb.REJECT_CODE_MIN_ORDER_QUANTITY]
    # the working sell of 50 leaves nothing to reduce: another is held to the minimum
    assert pb.REJECT_CODE_MIN_ORDER_QUANTITY in book.codes(side=pb.SIDE_SELL, quantity=30)


def test_an_order_that_closes_or_reduces_a_position_is_exempt_from_the_minimum_notional(book):
    # Item 7 with defect 2's exemption: a residual long of $50 under a $100 minimum.
    book.state.replace_positions(ACC, {AAPL: (50, 50 * LAST)})
    book.limit(min_order_notional=100 * LAST)
    assert book.codes(side=pb.SIDE_SELL, quantity=20) == []      # only reduces
    assert book.codes(side=pb.SIDE_SELL, quantity=30) == []      # closes what is left
    # the working sells of 50 leave nothing to reduce: the next is held to the minimum
    assert book.order(side=pb.SIDE_SELL, quantity=1)[2][0] == (
        pb.REJECT_CODE_MIN_ORDER_NOTIONAL, LAST, 100 * LAST)
    assert book.codes(side=pb.SIDE_BUY, quantity=50) == [pb.REJECT_CODE_MIN_ORDER_NOTIONAL]


def test_a_buy_that_covers_a_short_is_exempt_from_the_minimum_notional_but_not_a_flip(book):
    book.state.replace_positions(ACC, {AAPL: (-30, -30 * LAST)})
    book.limit(min_order_notional=100 * LAST)
    assert book.codes(side=pb.SIDE_BUY, quantity=31) == [pb.REJECT_CODE_MIN_ORDER_NOTIONAL]
    assert book.codes(side=pb.SIDE_BUY, quantity=30) == []       # closes the short exactly


def test_a_closing_order_under_reduce_only_is_not_refused_for_its_small_notional(book):
    book.state.replace_positions(ACC, {AAPL: (5, 5 * LAST)})
    book.limit(min_order_notional=100 * LAST, min_order_quantity=100)
    book.state.set_halt(pb.HALT_SCOPE_ACCOUNT, ACC, pb.HALT_MODE_REDUCE_ONLY)
    assert book.codes(side=pb.SIDE_SELL, quantity=5) == []
    assert book.codes(side=pb.SIDE_BUY, quantity=5) == [
        pb.REJECT_CODE_MIN_ORDER_QUANTITY, pb.REJECT_CODE_MIN_ORDER_NOTIONAL,
        pb.REJECT_CODE_REDUCE_ONLY]


# -- margin --

def margined(book, long_bps: int = 5_000, short_bps: int = 15_000) -> None:
    """AAPL at 50% initial margin long and 150% short (maintenance half of that);
    100 AAPL held, bought at $2.0000 and now at $1.0000; $200 of cash: equity
    $200 - $100 of unrealized loss = $100, of which the holding needs $50."""
    book.state.set_instrument(AAPL, known=True,
                              margin_bps=(long_bps, short_bps, long_bps // 2, short_bps // 2))
    book.state.replace_positions(ACC, {AAPL: (100, 100 * 2 * LAST)})
    book.state.set_balances(ACC, 200 * LAST, 0)


def test_initial_margin_up_to_equity_is_approved_and_a_unit_beyond_is_a_shortfall(book):
    margined(book)
    assert book.codes(quantity=100) == []               # $50 + $50 = $100 = equity
    # the working buy counts: 1 more unit needs $100.5
    assert book.order(quantity=1)[2] == ((pb.REJECT_CODE_MARGIN_SHORTFALL, 1_005_000,
                                          1_000_000),)


def test_a_working_sell_that_reduces_a_long_adds_no_margin(book):
    margined(book)
    assert book.codes(side=pb.SIDE_SELL, quantity=60) == []      # works, reduces
    # worst case of AAPL: all 100 held plus this buy's 100, or 40 if the sell fills
    assert book.codes(quantity=100) == []
    assert book.codes(quantity=1) == [pb.REJECT_CODE_MARGIN_SHORTFALL]


def test_short_sales_are_margined_at_the_short_rate(book):
    margined(book)
    book.state.set_locates(ACC, {MSFT: 100})
    book.state.set_instrument(MSFT, known=True, margin_bps=(5_000, 15_000, 2_500, 7_500))
    # $50 held for AAPL; 33 MSFT short at 150% needs $49.50, 34 needs $51
    assert book.codes(symbol=MSFT, side=pb.SIDE_SELL_SHORT, quantity=34) == [
        pb.REJECT_CODE_MARGIN_SHORTFALL]
    assert book.codes(symbol=MSFT, side=pb.SIDE_SELL_SHORT, quantity=33) == []


def test_an_order_that_only_reduces_is_not_held_to_margin(book):
    margined(book, long_bps=20_000)                     # the holding alone needs $200
    assert book.codes(quantity=1) == [pb.REJECT_CODE_MARGIN_SHORTFALL]
    assert book.codes(side=pb.SIDE_SELL, quantity=60) == []
    assert book.codes(side=pb.SIDE_SELL, quantity=40) == []      # closes it


def test_realized_pnl_and_credit_count_as_equity(book):
    margined(book)
    book.codes(quantity=100)                            # equity used up
    book.state.replace_positions(ACC, {AAPL: (100, 100 * 2 * LAST)}, realized_pnl=LAST)
    assert book.codes(quantity=2) == []                 # +$1 realized covers 2 units
    book.state.set_balances(ACC, 200 * LAST, 10 * LAST)
    assert book.codes(quantity=20) == []                # +$10 of credit covers 20 more
    assert book.codes(quantity=1) == [pb.REJECT_CODE_MARGIN_SHORTFALL]


def test_an_account_whose_instruments_carry_no_margin_rates_is_not_margined(book):
    margined(book, long_bps=0, short_bps=0)
    book.state.set_balances(ACC, -50 * LAST, 0)         # negative equity, no margin at all
    assert pb.REJECT_CODE_MARGIN_SHORTFALL not in book.codes(quantity=1)


def test_margin_rates_are_bounded(book):
    with pytest.raises(ValueError, match="margin rates"):
        book.state.set_instrument(AAPL, known=True, margin_bps=(100_001, 0, 0, 0))
    with pytest.raises(ValueError, match="margin rates"):
        book.state.set_instrument(AAPL, known=True, margin_bps=(0, -1, 0, 0))


# -- time in force --

NOON = 1_767_268_800_000            # 2026-01-01 12:00 UTC, Unix ms
SESSION_END = NOON + 8 * 3_600_000  # 20:00 UTC
DAY, IOC, GTC, GTD = (pb.TIME_IN_FORCE_DAY, pb.TIME_IN_FORCE_IOC, pb.TIME_IN_FORCE_GTC,
                      pb.TIME_IN_FORCE_GTD)


def test_a_gtd_order_must_expire_after_now_to_the_millisecond(book):
    assert book.codes(time_in_force=GTD, expire_at_unix_ms=NOON + 1, now_unix_ms=NOON) == []
    assert book.order(time_in_force=GTD, expire_at_unix_ms=NOON, now_unix_ms=NOON)[2] == (
        (pb.REJECT_CODE_ORDER_EXPIRED, NOON, NOON),)
    assert book.codes(time_in_force=GTD, expire_at_unix_ms=NOON - 60_000,
                      now_unix_ms=NOON) == [pb.REJECT_CODE_ORDER_EXPIRED]


def test_a_gtd_order_without_an_expiry_is_expired(book):
    assert book.order(time_in_force=GTD, now_unix_ms=NOON)[2] == (
        (pb.REJECT_CODE_ORDER_EXPIRED, 0, NOON),)


def test_other_times_in_force_are_not_held_to_an_expiry(book):
    for tif in (pb.TIME_IN_FORCE_UNSPECIFIED, DAY, IOC, GTC):
        assert book.codes(time_in_force=tif, now_unix_ms=NOON,
                          session_end_unix_ms=SESSION_END) == [], tif


def test_day_and_ioc_orders_stop_counting_at_the_session_end_and_not_before(book):
    book.limit(max_long_position=100, max_net_position=100)
    session = {"now_unix_ms": NOON, "session_end_unix_ms": SESSION_END}
    assert book.codes(quantity=60, time_in_force=DAY, **session) == []
    assert book.codes(quantity=40, time_in_force=IOC, **session) == []
    assert book.codes(quantity=1, **session) == [pb.REJECT_CODE_MAX_NET_POSITION,
                                                 pb.REJECT_CODE_MAX_LONG_POSITION]
    assert book.state.end_lapsed_orders(SESSION_END - 1) == 0
    assert book.state.working(ACC, AAPL) == (100, 0)
    assert book.state.end_lapsed_orders(SESSION_END) == 2
    assert book.state.working(ACC, AAPL) == (0, 0)
    assert book.codes(quantity=100, **session) == []
    assert book.state.end_lapsed_orders(SESSION_END + 1) == 0   # the last one is GTC-like


def test_gtc_and_unspecified_orders_count_until_their_fill_or_cancel(book):
    book.codes(quantity=30, time_in_force=GTC, now_unix_ms=NOON,
               session_end_unix_ms=SESSION_END)
    book.codes(quantity=20, now_unix_ms=NOON, session_end_unix_ms=SESSION_END)
    assert book.state.end_lapsed_orders(SESSION_END * 2) == 0
    assert book.state.working(ACC, AAPL) == (50, 0)


def test_a_working_gtd_order_stops_counting_at_its_expiry(book):
    book.codes(quantity=30, time_in_force=GTD, expire_at_unix_ms=NOON + 5_000,
               now_unix_ms=NOON, session_end_unix_ms=SESSION_END)
    book.codes(quantity=7, side=pb.SIDE_SELL_SHORT, time_in_force=GTD,
               expire_at_unix_ms=NOON + 9_000, now_unix_ms=NOON)
    assert book.state.end_lapsed_orders(NOON + 4_999) == 0
    assert book.state.end_lapsed_orders(NOON + 5_000) == 1
    assert book.state.working(ACC, AAPL) == (0, 0)      # the short sale has no locate
    assert book.state.end_lapsed_orders(NOON + 10_000) == 0


def test_a_day_order_without_a_configured_session_end_counts_until_reported(book):
    book.codes(quantity=30, time_in_force=DAY, now_unix_ms=NOON)
    assert book.state.end_lapsed_orders(SESSION_END * 2) == 0
    assert book.state.working(ACC, AAPL) == (30, 0)


def test_a_lapsed_order_stays_ended_through_later_snapshots_and_replays_its_decision(book):
    decision = book.order(quantity=30, order_id=b"day-1", time_in_force=DAY,
                          now_unix_ms=NOON, session_end_unix_ms=SESSION_END)
    book.state.end_lapsed_orders(SESSION_END)
    book.state.replace_positions(ACC, {AAPL: (5, 5 * LAST)}, filled={b"day-1": 5},
                                 cancelled=())
    assert book.state.working(ACC, AAPL) == (0, 0)
    again = book.order(quantity=30, order_id=b"day-1", time_in_force=DAY,
                       now_unix_ms=NOON, session_end_unix_ms=SESSION_END)
    assert again[0] == decision[0] and again[3]         # replayed


def test_the_same_order_id_with_another_time_in_force_is_a_duplicate(book):
    book.order(order_id=b"o-1", time_in_force=DAY, now_unix_ms=NOON)
    assert book.codes(order_id=b"o-1", time_in_force=GTC, now_unix_ms=NOON) == [
        pb.REJECT_CODE_DUPLICATE_ORDER_ID]
    book.order(order_id=b"o-2", time_in_force=GTD, expire_at_unix_ms=NOON + 1,
               now_unix_ms=NOON)
    assert book.codes(order_id=b"o-2", time_in_force=GTD, expire_at_unix_ms=NOON + 2,
                      now_unix_ms=NOON) == [pb.REJECT_CODE_DUPLICATE_ORDER_ID]


def test_a_restored_order_keeps_its_time_in_force_and_lapses_at_its_end(book):
    order = (b"r-1", AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 40, LAST, LAST, 40 * LAST, b"",
             b"", True, (), DAY, 0, SESSION_END)
    assert book.state.restore_orders(ACC, [order]) == 1
    assert book.state.working(ACC, AAPL) == (40, 0)
    assert book.state.end_lapsed_orders(SESSION_END) == 1
    assert book.state.working(ACC, AAPL) == (0, 0)
    with pytest.raises(ValueError, match="time in force"):
        book.state.restore_orders(ACC, [(b"r-2", *order[1:12], 9, 0, 0)])


# -- velocity, working orders, duplicates --

def test_orders_per_window_slides(book):
    # The window is (now - 1 s, now]: orders at 1 s, 1 s + 1 ns, 1 s + 2 ns.
    book.limit(max_orders_per_window=3, order_window_ms=1_000)
    for _ in range(3):
        assert book.codes() == []
        book.now += 1
    assert book.codes() == [pb.REJECT_CODE_ORDER_RATE]
    book.now = 2 * SECOND - 1       # the first order is still inside the window
    assert book.codes() == [pb.REJECT_CODE_ORDER_RATE]
    book.now = 2 * SECOND           # now it has left
    assert book.codes() == []


def test_notional_per_window(book):
    book.limit(max_notional_per_window=25 * LAST, notional_window_ms=60_000)
    assert book.codes(quantity=10) == []
    assert book.codes(quantity=15) == []                  # exactly $25 in the window
    assert book.codes(quantity=1) == [pb.REJECT_CODE_NOTIONAL_RATE]
    book.now += 60 * SECOND
    assert book.codes(quantity=1) == []


def test_max_working_orders(book):
    book.limit(max_working_orders=2)
    assert book.codes() == [] and book.codes() == []
    assert book.codes() == [pb.REJECT_CODE_MAX_WORKING_ORDERS]


def test_resending_an_order_id_replays_the_original_decision_and_reserves_nothing(book):
    first = book.order(quantity=10, order_id=b"X")
    again = book.order(quantity=10, order_id=b"X")
    assert again[:3] == first[:3] and again[3] is True
    assert book.state.working(ACC, AAPL) == (10, 0)
    rejected = book.order(quantity=0, order_id=b"Y")
    assert book.order(quantity=0, order_id=b"Y")[:3] == rejected[:3]


def test_reusing_an_order_id_for_a_different_order_is_rejected(book):
    assert approved(book.order(quantity=10, order_id=b"X"))
    assert book.codes(quantity=11, order_id=b"X") == [pb.REJECT_CODE_DUPLICATE_ORDER_ID]
    assert book.state.working(ACC, AAPL) == (10, 0)


# -- concentration, venues, counterparties --

def test_issuer_concentration_boundary(book):
    book.state.set_instrument(AAPL, known=True, issuer_id=1, sector_id=1)
    book.state.set_instrument(MSFT, known=True, issuer_id=2, sector_id=1)
    book.state.replace_positions(ACC, {AAPL: (100, 100 * LAST), MSFT: (300, 300 * LAST)})
    book.limit(max_issuer_concentration_bps=5_000)
    # AAPL after = 100 + 200 = 300 of gross 600: exactly 50%
    assert book.codes(quantity=201) == [pb.REJECT_CODE_ISSUER_CONCENTRATION]
    assert book.codes(quantity=200) == []


def test_sector_concentration_and_its_floor(book):
    book.state.set_instrument(AAPL, known=True, sector_id=7)
    book.limit(max_sector_concentration_bps=5_000, concentration_min_gross=50 * LAST)
    assert book.codes(quantity=49) == []        # gross below the floor: not checked
    assert book.codes(quantity=10) == [pb.REJECT_CODE_SECTOR_CONCENTRATION]


def test_venue_and_counterparty_exposure(book):
    book.state.set_tag_limits(ACC, {b"XNAS": 15 * LAST}, {b"GS": 12 * LAST})
    assert book.codes(quantity=10, venue=b"XNAS") == []
    assert book.codes(quantity=6, venue=b"XNAS") == [pb.REJECT_CODE_VENUE_EXPOSURE]
    assert book.codes(quantity=5, venue=b"XNAS") == []
    assert book.codes(quantity=10, venue=b"XNYS") == []     # no limit at XNYS
    assert book.codes(quantity=13, counterparty=b"GS") == [
        pb.REJECT_CODE_COUNTERPARTY_EXPOSURE]
    assert book.codes(quantity=12, counterparty=b"GS") == []


# -- loss limit and circuit breakers --

def test_loss_limit_blocks_growth_allows_reduction_and_asks_for_reduce_only(book):
    book.state.replace_positions(ACC, {AAPL: (100, 100 * (LAST + 100))}, realized_pnl=0)
    book.limit(loss_limit=10_000)             # P&L is exactly -$1.0000 = -limit
    assert approved(book.order())
    book.limit(loss_limit=9_999)
    decision = book.order()
    assert [c for c, _, _ in decision[2]] == [pb.REJECT_CODE_LOSS_LIMIT]
    assert decision[4] == 1 and decision[5] == -10_000
    assert approved(book.order(side=pb.SIDE_SELL, quantity=5))


def test_k_rejections_in_a_window_ask_for_a_halt(book):
    book.limit(max_rejects_per_window=3, reject_window_ms=1_000)
    assert book.order(quantity=0)[4] == 0
    assert book.order(quantity=0)[4] == 0
    assert book.order(quantity=0)[4] == 2
    book.state.set_halt(pb.HALT_SCOPE_ACCOUNT, ACC, pb.HALT_MODE_HALTED)
    assert book.order(quantity=0)[4] == 0     # already halted: nothing more to ask


def test_every_failure_is_listed_not_only_the_first(book):
    book.state.set_instrument(AAPL, known=True, tick_size=100, lot_size=10)
    assert book.codes(quantity=1_005, price=10_050) == [
        pb.REJECT_CODE_TICK_SIZE, pb.REJECT_CODE_LOT_SIZE, pb.REJECT_CODE_MAX_ORDER_QUANTITY,
        pb.REJECT_CODE_MAX_ORDER_NOTIONAL]


# -- capacity: what does not fit is refused, and says what is full --

def capacity(decision: tuple) -> tuple[int, int]:
    """(observed, limit) of the decision's CAPACITY_EXHAUSTED rejection."""
    found = [(observed, limit) for code, observed, limit in decision[2]
             if code == pb.REJECT_CODE_CAPACITY_EXHAUSTED]
    assert found, decision
    return found[0]


def test_an_account_with_no_room_in_the_table_is_capacity_not_unknown(make_book):
    book = make_book(max_accounts=2)            # ACC is one of them
    assert book.codes(symbol=AAPL) == []
    book.state.set_account_state(b"OTHER", known=True)
    with pytest.raises(TableFullError) as raised:
        book.state.set_account_state(b"THIRD", known=True)
    assert (raised.value.capacity, raised.value.limit) == (pb.CAPACITY_ACCOUNTS, 2)
    decision = book.engine.evaluate(b"t1", b"THIRD", AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT,
                                    10, LAST, b"", b"", book.now)
    assert decision[2] == ((pb.REJECT_CODE_CAPACITY_EXHAUSTED, pb.CAPACITY_ACCOUNTS, 2),)
    # with room left, an account the table never saw is unknown
    roomy = make_book(max_accounts=3)
    decision = roomy.engine.evaluate(b"t1", b"THIRD", AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT,
                                     10, LAST, b"", b"", roomy.now)
    assert [code for code, _, _ in decision[2]] == [pb.REJECT_CODE_UNKNOWN_ACCOUNT]


def test_a_symbol_with_no_room_in_the_table_is_capacity_not_unknown(make_book):
    book = make_book(max_instruments=2)         # AAPL and MSFT fill it
    with pytest.raises(TableFullError):
        book.state.set_instrument(b"IBM", known=True)
    assert book.order(symbol=b"IBM")[2] == (
        (pb.REJECT_CODE_CAPACITY_EXHAUSTED, pb.CAPACITY_INSTRUMENTS, 2),)
    assert make_book(max_instruments=3).codes(symbol=b"IBM") == [pb.REJECT_CODE_UNKNOWN_SYMBOL]


def test_an_account_whose_state_did_not_fit_is_refused_until_it_does(book):
    book.state.set_account_state(ACC, known=True, capacity=pb.CAPACITY_POSITIONS)
    decision = book.order()
    assert decision[2] == ((pb.REJECT_CODE_CAPACITY_EXHAUSTED, pb.CAPACITY_POSITIONS, 64),)
    assert not decision.stored          # not a real decision: a retry gets one
    book.state.set_account_state(ACC, known=True)
    assert approved(book.order())


def test_positions_that_do_not_all_fit_create_none(make_book):
    book = make_book(max_positions=2)
    book.state.replace_positions(ACC, {AAPL: (1, LAST)})
    with pytest.raises(TableFullError) as raised:
        book.state.replace_positions(b"BIG", {AAPL: (1, LAST), MSFT: (1, LAST)})
    assert raised.value.capacity == pb.CAPACITY_POSITIONS
    # nothing of BIG's was created: the last slot is still free for ACC
    assert approved(book.order(symbol=MSFT))
    other = make_book(max_positions=1)
    other.state.replace_positions(ACC, {AAPL: (1, LAST)})
    assert capacity(other.order(symbol=MSFT)) == (pb.CAPACITY_POSITIONS, 1)


def test_an_account_holds_at_most_its_share_of_decided_orders(make_book):
    book = make_book(max_orders_per_account=3)
    for n in range(3):                                   # exactly the share fits
        assert approved(book.order(order_id=f"w{n}".encode()))
    over = book.order(order_id=b"w3")
    assert capacity(over) == (pb.CAPACITY_ACCOUNT_ORDERS, 3) and not over.stored
    # another account is untouched by ACC's share
    book.state.set_account_state(b"ACC-2", known=True)
    book.state.set_account_limits(b"ACC-2", book.limits)
    assert book.engine.evaluate(b"w0", b"ACC-2", AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 10,
                                LAST, b"", b"", book.now)[0]
    # a rejection that cannot be remembered says so too, and is not stored
    rejected = book.order(quantity=2_000, order_id=b"r1")
    assert pb.REJECT_CODE_MAX_ORDER_QUANTITY in [c for c, _, _ in rejected[2]]
    assert capacity(rejected) == (pb.CAPACITY_ACCOUNT_ORDERS, 3) and not rejected.stored


def test_the_whole_order_table_full_is_its_own_capacity(make_book):
    book = make_book(max_orders=2, max_orders_per_account=2)
    book.state.set_account_state(b"ACC-2", known=True)
    book.state.set_account_limits(b"ACC-2", book.limits)
    assert approved(book.order(order_id=b"a"))
    assert book.engine.evaluate(b"b", b"ACC-2", AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 10,
                                LAST, b"", b"", book.now)[0]
    assert capacity(book.order(order_id=b"c")) == (pb.CAPACITY_ORDER_TABLE, 2)


def test_a_replay_of_a_decision_not_yet_durable_asks_to_be_made_durable(book):
    first = book.order(order_id=b"d1")
    assert first.stored and not first.replayed
    again = book.order(order_id=b"d1")
    assert again.replayed and again.stored          # the caller must write it first
    assert book.state.mark_durable(ACC, b"d1")
    again = book.order(order_id=b"d1")
    assert again.replayed and not again.stored
    assert not book.state.mark_durable(ACC, b"never-decided")
    assert book.state.mark_durable_many([(ACC, b"d1"), (ACC, b"nope")]) == 1


def test_a_durable_order_that_stopped_working_leaves_the_table_after_the_window(make_book):
    book = make_book(order_expiry_ms=1_000)
    rejected = book.order(quantity=2_000, order_id=b"r1")
    working = book.order(quantity=5, order_id=b"w1")
    assert not approved(rejected) and approved(working)
    # not durable: it stays, however long
    assert book.state.expire_orders(book.now + 10 * SECOND) == 0
    book.state.mark_durable_many([(ACC, b"r1"), (ACC, b"w1")])
    # its window restarted when it could not leave: one window from then, not before
    assert book.state.expire_orders(book.now + 11 * SECOND - 1) == 0
    assert book.state.expire_orders(book.now + 11 * SECOND) == 1      # r1; w1 still works
    marker = book.order(quantity=2_000, order_id=b"r1")
    assert marker[2] == ((pb.REJECT_CODE_DUPLICATE_ORDER_ID, ORDER_ID_EXPIRED, 1),)
    assert not approved(marker) and not marker.stored and not marker.replayed
    assert book.state.order_id_may_have_expired(ACC, b"r1")
    # no durable copy found for it: decided anew (quoting the eviction count back)
    anew = book.engine.evaluate(b"r1", ACC, AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 2_000, LAST,
                                b"", b"", book.now, 1)
    assert pb.REJECT_CODE_MAX_ORDER_QUANTITY in [c for c, _, _ in anew[2]]
    assert anew.stored and not anew.replayed
    # w1 is filled: it stops working now, and leaves one window later
    book.now += 20 * SECOND
    book.state.expire_orders(book.now)
    book.state.replace_positions(ACC, {AAPL: (5, 5 * LAST)}, filled={b"w1": 5})
    assert book.state.expire_orders(book.now + SECOND - 1) == 0
    assert book.state.expire_orders(book.now + SECOND) == 1
    assert book.state.working(ACC, AAPL) == (0, 0)
    assert book.order(quantity=5, order_id=b"w1")[2][0][:2] == (
        pb.REJECT_CODE_DUPLICATE_ORDER_ID, ORDER_ID_EXPIRED)


def test_at_its_share_an_account_reuses_its_oldest_durable_record(make_book):
    book = make_book(max_orders_per_account=2)
    book.order(quantity=2_000, order_id=b"r1")
    book.order(quantity=2_000, order_id=b"r2")
    assert capacity(book.order(quantity=2_000, order_id=b"r3")) == (
        pb.CAPACITY_ACCOUNT_ORDERS, 2)
    book.state.mark_durable(ACC, b"r2")             # r1 is not durable: it may not leave
    assert book.order(quantity=2_000, order_id=b"r3").stored
    assert book.order(quantity=2_000, order_id=b"r1").replayed     # still in the table
    assert book.order(quantity=2_000, order_id=b"r2")[2][0][:2] == (
        pb.REJECT_CODE_DUPLICATE_ORDER_ID, ORDER_ID_EXPIRED)
    # working orders never leave: a share of working orders refuses the next
    full = make_book(max_orders_per_account=2)
    full.order(order_id=b"w1")
    full.order(order_id=b"w2")
    full.state.mark_durable_many([(ACC, b"w1"), (ACC, b"w2")])
    assert capacity(full.order(order_id=b"w3")) == (pb.CAPACITY_ACCOUNT_ORDERS, 2)


def test_restored_orders_are_durable_and_fit_all_or_none(make_book):
    book = make_book(max_orders_per_account=3)
    orders = [(f"k{n}".encode(), AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 10, LAST, LAST,
               10 * LAST, b"", b"", True, ()) for n in range(4)]
    with pytest.raises(TableFullError) as raised:
        book.state.restore_orders(ACC, orders)
    assert raised.value.capacity == pb.CAPACITY_ACCOUNT_ORDERS
    assert book.state.working(ACC, AAPL) == (0, 0)              # none was added
    assert book.state.restore_orders(ACC, orders[:3]) == 3
    assert book.state.restore_orders(ACC, orders[:3]) == 0       # already there
    assert book.state.working(ACC, AAPL) == (30, 0)
    again = book.order(order_id=b"k0")
    assert again.replayed and approved(again) and not again.stored
    # rejected or finished ones need not take room: their ids are remembered
    assert book.state.forget_orders(ACC, [b"gone", b"k1"]) == 1   # k1 is in the table
    assert book.order(order_id=b"gone")[2][0][:2] == (
        pb.REJECT_CODE_DUPLICATE_ORDER_ID, ORDER_ID_EXPIRED)
    with pytest.raises(ValueError):
        book.state.restore_order(ACC, b"huge", AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT,
                                 2, 2**62, 2**62, 2**63, b"", b"", True, ())


def test_an_order_id_longer_than_a_record_holds_is_decided_but_not_remembered(book):
    long_id = b"L" * 100
    first = book.order(order_id=long_id)
    assert approved(first) and not first.stored
    again = book.order(order_id=long_id)
    assert approved(again) and not again.replayed and not again.stored
    assert book.state.working(ACC, AAPL) == (0, 0)


# -- cancel/replace (ReplaceOrder) --
# Checked as the replacement order with the original's reservation released
# in the same locked step; a rejected replace leaves the original untouched.


def replace(book: Any, new_id: bytes, original: bytes, quantity: int = 0, price: int = 0,
            **kwargs: Any) -> Any:
    return book.engine.replace(new_id, ACC, original, quantity, price, book.now, **kwargs)


def codes(verdict: Any) -> list[int]:
    """The reject codes of a Verdict, in order."""
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


def test_a_replacement_below_the_minimum_notional_is_rejected_and_the_original_works_on(book):
    book.limit(min_order_notional=10 * LAST)
    assert approved(book.order(quantity=20, order_id=b"A"))
    assert replace(book, b"B", b"A", quantity=9).rejections == (
        (pb.REJECT_CODE_MIN_ORDER_NOTIONAL, 9 * LAST, 10 * LAST),)
    assert book.state.working(ACC, AAPL) == (20, 0)
    assert replace(book, b"C", b"A", quantity=10).approved       # exactly the minimum
    assert book.state.working(ACC, AAPL) == (10, 0)


def test_a_replace_releases_the_margin_its_original_committed(book):
    margined(book)
    assert book.codes(quantity=100, order_id=b"A") == []    # $50 + $50 = $100 = equity
    # the same 100 again fits only because A's $50 is released with it
    assert replace(book, b"B", b"A", quantity=100, price=LAST).approved
    # one unit beyond is short by exactly as much as a new order would be
    assert replace(book, b"C", b"B", quantity=101).rejections == (
        (pb.REJECT_CODE_MARGIN_SHORTFALL, 1_005_000, 1_000_000),)
    # rejected, B still commits its margin
    assert book.codes(quantity=1) == [pb.REJECT_CODE_MARGIN_SHORTFALL]
    assert book.state.working(ACC, AAPL) == (100, 0)


def test_a_replacement_keeps_the_originals_time_in_force_and_lapses_at_its_end(book):
    book.order(quantity=30, order_id=b"G", time_in_force=GTD, expire_at_unix_ms=NOON + 5_000,
               now_unix_ms=NOON)
    book.order(quantity=20, order_id=b"D", time_in_force=DAY, now_unix_ms=NOON,
               session_end_unix_ms=SESSION_END)
    # a replace names no time in force: each replacement has its original's
    assert replace(book, b"G2", b"G", quantity=31, now_unix_ms=NOON + 1_000).approved
    assert replace(book, b"D2", b"D", quantity=21, now_unix_ms=NOON + 1_000).approved
    assert book.state.working(ACC, AAPL) == (52, 0)
    assert book.state.end_lapsed_orders(NOON + 4_999) == 0
    assert book.state.end_lapsed_orders(NOON + 5_000) == 1     # G2, at G's expiry
    assert book.state.working(ACC, AAPL) == (21, 0)
    assert book.state.end_lapsed_orders(SESSION_END - 1) == 0
    assert book.state.end_lapsed_orders(SESSION_END) == 1      # D2, at D's session end
    assert book.state.working(ACC, AAPL) == (0, 0)


def test_a_replace_of_an_original_whose_time_in_force_ended_is_not_working(book):
    book.order(quantity=30, order_id=b"G", time_in_force=GTD, expire_at_unix_ms=NOON + 5_000,
               now_unix_ms=NOON)
    # at its expiry it no longer works, though no sweep has ended it yet
    assert replace(book, b"B", b"G", quantity=10, now_unix_ms=NOON + 5_000).rejections == (
        (pb.REJECT_CODE_ORIGINAL_NOT_WORKING, 3, 0),)
    assert book.state.working(ACC, AAPL) == (30, 0)            # the sweep ends it
    assert replace(book, b"C", b"G", quantity=10, now_unix_ms=NOON + 4_999).approved


def test_a_restored_replacement_reserves_its_total_less_the_chain_fills(book):
    # after a restart: B replaced A (2 of A filled before, carried 0), 20 in all
    assert book.state.restore_order(ACC, b"B", AAPL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 20,
                                    LAST, LAST, 18 * LAST, b"", b"", True, (),
                                    replaces=b"A", carried=0)
    book.state.replace_positions(ACC, {AAPL: (4, 4 * LAST)}, filled={b"A": 3, b"B": 1},
                                 cancelled=set())
    assert book.state.working(ACC, AAPL) == (16, 0)
    # a re-sent replace replays from the restored record
    assert replace(book, b"B", b"A", quantity=20).replayed


# -- account ownership: the lease of the account's shard --

def shard_of_acc(count: int) -> int:
    from pretrade.shards.slots import shard_of
    return shard_of(ACC, count)


def test_with_ownership_on_an_order_is_approved_only_while_its_shard_is_held(book):
    book.state.set_shards(16)
    assert book.order()[2] == ((pb.REJECT_CODE_STALE_DATA, 0, 0),)
    mine = shard_of_acc(16)
    book.state.set_shard_lease((mine + 1) % 16, 3, book.now + SECOND)   # another shard
    assert book.codes() == [pb.REJECT_CODE_STALE_DATA]
    book.state.set_shard_lease(mine, 3, book.now + SECOND)
    assert book.codes() == []
    book.state.set_shard_lease(mine, 0, 0)                              # released
    assert book.codes() == [pb.REJECT_CODE_STALE_DATA]


def test_a_shard_lease_decides_up_to_its_deadline_and_not_one_nanosecond_after(book):
    book.state.set_shards(4)
    book.state.set_shard_lease(shard_of_acc(4), 1, book.now)
    assert book.codes() == []                   # exactly at the deadline
    book.now += 1
    assert book.codes() == [pb.REJECT_CODE_STALE_DATA]
    book.state.set_shard_lease(shard_of_acc(4), 2, book.now)   # renewed
    assert book.codes() == []


def test_a_shard_held_without_a_deadline_yet_is_stale(book):
    # (a lease just taken over: held, its decided orders still being restored)
    book.state.set_shards(4)
    book.state.set_shard_lease(shard_of_acc(4), 7, 0)
    assert book.state.shard_lease(shard_of_acc(4)) == (7, 0)
    assert book.codes() == [pb.REJECT_CODE_STALE_DATA]


def test_a_stale_shard_decision_is_not_remembered_and_a_resend_after_renewal_decides(book):
    book.state.set_shards(2)
    assert book.codes(order_id=b"X") == [pb.REJECT_CODE_STALE_DATA]
    book.state.set_shard_lease(shard_of_acc(2), 1, book.now)
    decision = book.order(order_id=b"X")
    assert approved(decision) and not decision[3]          # decided now, not replayed


def test_a_replace_on_a_shard_not_held_is_stale_and_the_original_works_on(book):
    book.state.set_shards(8)
    book.state.set_shard_lease(shard_of_acc(8), 5, book.now)
    assert approved(book.order(quantity=10, order_id=b"A"))
    book.now += 1
    assert replace(book, b"B", b"A", quantity=20).rejections == (
        (pb.REJECT_CODE_STALE_DATA, 0, 0),)
    assert book.state.working(ACC, AAPL) == (10, 0)


def test_turning_ownership_off_decides_every_account_again(book):
    book.state.set_shards(16)
    assert book.codes() == [pb.REJECT_CODE_STALE_DATA]
    book.state.set_shards(0)
    assert book.codes() == []


def test_shard_settings_out_of_range_are_refused(book):
    from pretrade._core.constants import MAX_SHARDS
    with pytest.raises(ValueError):
        book.state.set_shards(MAX_SHARDS + 1)
    book.state.set_shards(4)
    with pytest.raises(ValueError):
        book.state.set_shard_lease(4, 1, 0)
    with pytest.raises(ValueError):
        book.state.set_shard_lease(0, -1, 0)
    assert book.state.shard_lease(1) == (0, 0)
    book.state.set_shard_lease(1, 9, 77)
    assert book.state.shard_lease(1) == (9, 77)


# -- a lost Redis Cluster primary: its slots' orders are stale, the rest trade --

def _lose(book: Book, *slots: int, lost: bool = True) -> int:
    return book.state.set_slots_lost([(slot, slot) for slot in slots], lost)


def test_the_core_computes_the_slots_of_the_keys_the_schema_names() -> None:
    from redis.crc import key_slot

    from pretrade._core import account_key_slots, symbol_key_slots
    from pretrade.state.schema import halt_key, instrument_key, limits_key, price_key

    for account in (ACC, b"ACC-1", b"a.b_c/d-e+f=g#h@i$j&k!l~m^n", b"Z" * 39):
        assert account_key_slots(account) == (
            key_slot(limits_key(account)), key_slot(halt_key(pb.HALT_SCOPE_ACCOUNT, account)))
    for symbol in (AAPL, b"BRK.B", b"S" * 39):
        assert symbol_key_slots(symbol) == (
            key_slot(instrument_key(symbol)), key_slot(price_key(symbol)),
            key_slot(halt_key(pb.HALT_SCOPE_SYMBOL, symbol)))


@pytest.mark.parametrize("whose,key", [("account", 0), ("account", 1), ("symbol", 0),
                                       ("symbol", 1), ("symbol", 2)])
def test_an_order_with_a_key_in_a_lost_slot_is_stale_data_naming_the_slot(
        book: Book, whose: str, key: int) -> None:
    from pretrade._core import account_key_slots, symbol_key_slots

    slots = account_key_slots(ACC) if whose == "account" else symbol_key_slots(AAPL)
    scope = pb.HALT_SCOPE_ACCOUNT if whose == "account" else pb.HALT_SCOPE_SYMBOL
    assert _lose(book, slots[key]) == 1
    approved, _, rejections, *_ = book.order()
    assert not approved
    assert rejections == ((pb.REJECT_CODE_STALE_DATA, -scope, slots[key]),)
    # served again (re-read): the same order is decided as before the loss
    assert _lose(book, slots[key], lost=False) == 0
    assert book.order()[0]


def test_orders_whose_keys_are_in_other_slots_trade_while_a_primary_is_lost(book: Book) -> None:
    from pretrade._core import account_key_slots, symbol_key_slots

    used = set(account_key_slots(ACC)) | set(symbol_key_slots(AAPL))
    # the exact boundary: every slot but the order's own keys', neighbours included
    others = [(first, last) for first, last in _gaps(sorted(used))]
    assert book.state.set_slots_lost(others, True) == 16384 - len(used)
    assert book.order()[0]
    assert book.state.slot_lost(min(used) - 1) and not book.state.slot_lost(min(used))


def _gaps(used: list[int]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for slot in used:
        if slot > start:
            spans.append((start, slot - 1))
        start = slot + 1
    if start <= 16383:
        spans.append((start, 16383))
    return spans


def test_an_order_valued_over_a_holding_of_a_lost_symbol_is_stale(book: Book) -> None:
    from pretrade._core import symbol_key_slots

    book.state.replace_positions(ACC, {MSFT: (10, 10 * LAST)})
    lost = symbol_key_slots(MSFT)[1]   # MSFT's price may have moved unseen
    _lose(book, lost)
    # no control values the whole account: MSFT's price is not read
    assert book.order()[0]
    # gross exposure values it: fail closed, naming the lowest lost slot of a holding
    book.limit(max_gross_exposure=10**12)
    assert book.order()[2] == ((pb.REJECT_CODE_STALE_DATA, -pb.HALT_SCOPE_SYMBOL, lost),)


def test_a_table_that_is_not_live_says_so_before_any_lost_slot(book: Book) -> None:
    from pretrade._core import account_key_slots

    _lose(book, account_key_slots(ACC)[0])
    book.state.set_sync_live(False)
    assert book.order()[2] == ((pb.REJECT_CODE_STALE_DATA, 0, 0),)


@pytest.mark.parametrize("first,last", [(-1, 3), (5, 4), (0, 16384), (16384, 16384)])
def test_a_slot_range_outside_the_cluster_is_refused(book: Book, first: int, last: int) -> None:
    with pytest.raises(ValueError, match="slot range"):
        book.state.set_slots_lost([(first, last)], True)
    assert book.state.lost_slot_count() == 0
