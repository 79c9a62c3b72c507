"""Account groups (a desk, a firm): limits held over every member account together.

Each test runs against the compiled Engine and the pure-Python twin (a
``Book`` of test_checks). An account's groups are its direct groups and their
parents, flattened and sorted by id (the sync resolves them; the tests pass
the flattened list). A group may set the position limits (per symbol, summed
over its members), gross and net exposure, a loss limit and velocity limits
over its members' approved orders; a group that cannot be checked is
GROUP_UNAVAILABLE with the reason as observed and the group's 1-based place
in the account's list as limit (0 when the account's tree is invalid).

Unless a test says otherwise: AAPL and MSFT trade at $1.0000 (10,000 units);
ACC and ACC2 have test_checks' generous limits; the clock is at 1 s.
"""

from __future__ import annotations

from typing import Any

import pytest

from pretrade._core import TableFullError
from pretrade._core.constants import AUTO_HALT_NONE, CAPACITY_NUMBERS
from pretrade.engine.fixedpoint import INT64_MAX
from pretrade.engine.limits import GROUP_LIMIT_KINDS, MAX_ACCOUNT_GROUPS
from pretrade.engine.limits import LimitKind as K
from pretrade.v1 import risk_pb2 as pb
from test_checks import AAPL, ACC, LAST, MSFT, SECOND, Book, approved

BUY, SELL, SHORT = pb.SIDE_BUY, pb.SIDE_SELL, pb.SIDE_SELL_SHORT
ACC2, OUT = b"ACC2", b"OUT"
DESK, DESK2, FIRM = b"DESK", b"DESK2", b"FIRM"
UNAVAILABLE = pb.REJECT_CODE_GROUP_UNAVAILABLE


@pytest.fixture(params=["core", "twin"])
def book(request: pytest.FixtureRequest) -> Book:
    """test_checks' Book of either implementation, with ACC2 and OUT as ACC's peers."""
    made = Book(request.param)
    for account in (ACC2, OUT):
        made.state.set_account_state(account, known=True)
        made.state.set_account_limits(account, made.limits)
    return made


@pytest.fixture(params=["core", "twin"])
def make_book(request: pytest.FixtureRequest) -> Any:
    """A Book of either kind with other capacities: ``make_book(max_accounts=4)``."""
    return lambda **capacities: Book(request.param, **capacities)


def send(book: Book, account: bytes = ACC, quantity: int = 10, side: int = BUY,
         symbol: bytes = AAPL, price: int = LAST) -> tuple:
    """A limit order of ``account`` (Book.order sends ACC's only)."""
    return book.engine.evaluate(f"id-{next(book.ids)}".encode(), account, symbol, side,
                                pb.ORDER_TYPE_LIMIT, quantity, price, b"", b"", book.now)


def desk(book: Book, limits: dict[int, int], *members: bytes) -> None:
    """DESK with ``limits``; ``members`` (ACC and ACC2 by default) in DESK only."""
    book.state.set_group(DESK, limits)
    for account in members or (ACC, ACC2):
        book.state.set_account_groups(account, [DESK])


# -- who a group applies to --

def test_an_account_in_no_group_is_unaffected(book):
    desk(book, {K.MAX_LONG_POSITION: 5, K.MAX_ORDERS_PER_WINDOW: 1}, ACC2)
    assert book.state.account_groups(ACC) == ()
    assert approved(send(book, ACC, 100))
    assert approved(send(book, ACC, 100))


def test_a_group_limit_does_not_apply_to_an_account_outside_the_group(book):
    desk(book, {K.MAX_LONG_POSITION: 50})
    assert approved(send(book, OUT, 500))           # OUT's AAPL is not DESK's
    assert approved(send(book, ACC, 30))
    assert approved(send(book, ACC2, 20))           # DESK: 50, the limit
    assert send(book, ACC2, 1)[2] == ((pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 51, 50),)
    assert approved(send(book, OUT, 1))


# -- per-symbol position limits, summed over the members --

def test_group_max_long_counts_positions_and_working_buys_of_every_member_to_the_limit(book):
    desk(book, {K.MAX_LONG_POSITION: 100})
    book.state.replace_positions(ACC, {AAPL: (30, 30 * LAST)})
    assert approved(send(book, ACC2, 40))           # 30 held + 40 working
    assert approved(send(book, ACC, 30))            # exactly 100
    assert send(book, ACC, 1)[2] == ((pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 101, 100),)
    assert send(book, ACC2, 1)[2] == ((pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 101, 100),)
    # another symbol is held to its own sum
    assert approved(send(book, ACC, 100, symbol=MSFT))


def test_group_max_short_counts_positions_and_working_sells_of_every_member_to_the_limit(book):
    desk(book, {K.MAX_SHORT_POSITION: 50})
    for account in (ACC, ACC2):
        book.state.set_locates(account, {AAPL: 1_000})
    book.state.replace_positions(ACC2, {AAPL: (-5, -5 * LAST)})
    assert approved(send(book, ACC2, 15, SHORT))    # 5 short + 15 working
    assert approved(send(book, ACC, 30, SHORT))     # exactly 50
    assert send(book, ACC, 1, SHORT)[2] == ((pb.REJECT_CODE_GROUP_MAX_SHORT_POSITION, 51, 50),)
    # a buy is not held to the short limit
    assert approved(send(book, ACC2, 5))


def test_a_members_long_holding_offsets_another_members_short_sale(book):
    desk(book, {K.MAX_SHORT_POSITION: 10})
    book.state.set_locates(ACC, {AAPL: 1_000})
    book.state.replace_positions(ACC2, {AAPL: (20, 20 * LAST)})
    assert approved(send(book, ACC, 30, SHORT))     # the group: 20 - 30 = 10 short
    assert send(book, ACC, 1, SHORT)[2] == ((pb.REJECT_CODE_GROUP_MAX_SHORT_POSITION, 11, 10),)


def test_an_order_group_leg_counts_once_in_its_account_group(book):
    # two OCO legs of ACC reserve their worst leg in the desk's sum as in ACC's own
    desk(book, {K.MAX_LONG_POSITION: 60})
    assert approved(send(book, ACC2, 20))
    assert approved(book.order(quantity=40, order_id=b"A", group_id=b"G"))
    assert approved(book.order(quantity=40, order_id=b"B", group_id=b"G"))   # still 60
    assert book.order(quantity=41, order_id=b"C", group_id=b"G")[2] == (
        (pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 61, 60),)


# -- gross and net exposure, the loss limit: the members' books at last prices --

def test_group_gross_exposure_values_every_members_book_to_the_limit(book):
    # ACC2 holds 100 MSFT ($100); ACC's order of 10 AAPL ($10) reaches $110
    desk(book, {K.MAX_GROSS_EXPOSURE: 110 * LAST})
    book.state.replace_positions(ACC2, {MSFT: (100, 100 * LAST)})
    assert approved(send(book, ACC, 10))
    assert send(book, ACC, 1)[2] == (
        (pb.REJECT_CODE_GROUP_MAX_GROSS_EXPOSURE, 111 * LAST, 110 * LAST),)
    # a sell adds to gross as well
    book.state.replace_positions(ACC, {MSFT: (5, 5 * LAST)})
    assert send(book, ACC, 1, SELL, MSFT)[2] == (
        (pb.REJECT_CODE_GROUP_MAX_GROSS_EXPOSURE, 116 * LAST, 110 * LAST),)


def test_group_net_exposure_rejects_growth_past_the_limit_but_not_a_reduction(book):
    desk(book, {K.MAX_NET_EXPOSURE: 200 * LAST})
    book.state.replace_positions(ACC2, {MSFT: (150, 150 * LAST)})
    assert approved(send(book, ACC, 50))            # net $200: the limit
    assert send(book, ACC, 1)[2] == (
        (pb.REJECT_CODE_GROUP_MAX_NET_EXPOSURE, 201 * LAST, 200 * LAST),)
    book.state.set_group(DESK, {K.MAX_NET_EXPOSURE: 150 * LAST})
    # over the limit, but smaller than the $200 before: a reduction goes
    assert approved(send(book, ACC2, 10, SELL, MSFT))
    assert send(book, ACC2, 1, BUY, MSFT)[2] == (
        (pb.REJECT_CODE_GROUP_MAX_NET_EXPOSURE, 191 * LAST, 150 * LAST),)


def test_group_loss_limit_counts_every_members_pnl_to_the_limit_and_lets_a_reduction_pass(book):
    desk(book, {K.LOSS_LIMIT: 1_000})
    book.state.replace_positions(ACC, {AAPL: (10, 10 * LAST)})
    book.state.replace_positions(ACC2, {MSFT: (100, 100 * LAST + 400)}, realized_pnl=-600)
    decision = send(book, ACC, 1)                   # P&L -1,000: the limit
    assert approved(decision) and decision[4] == AUTO_HALT_NONE
    book.state.replace_positions(ACC2, {MSFT: (100, 100 * LAST + 401)}, realized_pnl=-600)
    decision = send(book, ACC, 1)
    assert decision[2] == ((pb.REJECT_CODE_GROUP_LOSS_LIMIT, -1_001, -1_000),)
    assert decision[4] == AUTO_HALT_NONE             # a group's loss halts no account
    assert approved(send(book, ACC, 5, SELL))       # reduces ACC's long: it goes


def test_a_members_holding_without_a_price_makes_the_group_unvalued(book):
    desk(book, {K.MAX_GROSS_EXPOSURE: 10**12})
    book.state.replace_positions(ACC2, {MSFT: (10, 10 * LAST)})
    book.state.set_last_price(MSFT, None)
    assert send(book, ACC, 1)[2] == ((pb.REJECT_CODE_PRICE_UNAVAILABLE, 2, 0),)
    # a group that does not value the books does not read MSFT's price
    book.state.set_group(DESK, {K.MAX_LONG_POSITION: 100})
    assert approved(send(book, ACC, 1))


def test_group_books_past_int64_are_an_overflow_of_the_group(book):
    desk(book, {K.MAX_GROSS_EXPOSURE: INT64_MAX})
    big = INT64_MAX // LAST
    book.state.replace_positions(ACC, {MSFT: (big, 0)})
    book.state.replace_positions(ACC2, {MSFT: (big, 0)})
    assert send(book, ACC, 1)[2] == ((pb.REJECT_CODE_ARITHMETIC_OVERFLOW, 2, 0),)


# -- velocity: the group's members' approved orders --

def test_group_order_rate_counts_every_members_approved_orders_in_the_window(book):
    desk(book, {K.MAX_ORDERS_PER_WINDOW: 3, K.ORDER_WINDOW_MS: 1_000})
    assert approved(send(book, ACC))
    assert approved(send(book, ACC2))
    assert approved(send(book, ACC))                # the third: the limit
    assert send(book, ACC2)[2] == ((pb.REJECT_CODE_GROUP_ORDER_RATE, 4, 3),)
    assert send(book, OUT)[0]                       # not a member
    book.now += SECOND - 1                          # the window has not passed yet
    assert send(book, ACC)[2] == ((pb.REJECT_CODE_GROUP_ORDER_RATE, 4, 3),)
    book.now += 1                                   # the first three left it
    assert approved(send(book, ACC))


def test_group_notional_rate_sums_every_members_approved_notional_in_the_window(book):
    desk(book, {K.MAX_NOTIONAL_PER_WINDOW: 30 * LAST})
    assert approved(send(book, ACC, 10))
    assert send(book, ACC2, 21)[2] == ((pb.REJECT_CODE_GROUP_NOTIONAL_RATE, 31 * LAST,
                                        30 * LAST),)
    assert approved(send(book, ACC2, 20))           # $30: the limit
    assert send(book, ACC, 1)[2] == ((pb.REJECT_CODE_GROUP_NOTIONAL_RATE, 31 * LAST,
                                      30 * LAST),)
    book.now += 60 * SECOND                         # the default window, 60 s
    assert approved(send(book, ACC, 30))


def test_a_group_ring_that_forgot_orders_inside_the_window_fails_closed(book):
    desk(book, {K.MAX_NOTIONAL_PER_WINDOW: 10**12})
    for n in range(256):
        assert approved(send(book, (ACC, ACC2)[n % 2], 1)), n
    assert send(book, ACC, 1)[2] == ((pb.REJECT_CODE_GROUP_NOTIONAL_RATE, INT64_MAX, 10**12),)


def test_a_group_whose_running_notional_would_pass_int64_refuses_the_reservation(book):
    desk(book, {K.MAX_ORDERS_PER_WINDOW: 1_000})
    price = 10**15                                  # 5,000 x 10**15: 5 x 10**18 each
    for symbol in (AAPL, MSFT):
        book.state.set_last_price(symbol, price)
    big = {**book.limits, K.MAX_ORDER_QUANTITY: 5_000, K.MAX_ORDER_NOTIONAL: INT64_MAX}
    for account in (ACC, ACC2, OUT):
        book.state.set_account_limits(account, big)
    assert approved(send(book, ACC2, 5_000, price=price))
    # ACC's own sums fit; DESK's 10**19 does not
    assert send(book, ACC, 5_000, price=price)[2] == (
        (pb.REJECT_CODE_ARITHMETIC_OVERFLOW, 5_000, price),)
    assert approved(send(book, OUT, 5_000, price=price))


# -- nested groups: an account's desk and the desk's firm, flattened --

def test_nested_groups_hold_an_account_to_its_desk_and_its_firm_in_id_order(book):
    book.state.set_group(DESK, {K.MAX_LONG_POSITION: 60})
    book.state.set_group(DESK2, {})
    book.state.set_group(FIRM, {K.MAX_LONG_POSITION: 100})
    book.state.set_account_groups(ACC, [DESK, FIRM])
    book.state.set_account_groups(ACC2, [DESK2, FIRM])
    assert book.state.account_groups(ACC) == (DESK, FIRM)
    assert approved(send(book, ACC, 60))            # DESK's limit exactly
    assert send(book, ACC, 1)[2] == ((pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 61, 60),)
    assert approved(send(book, ACC2, 40))           # FIRM's limit exactly, DESK2 has none
    assert send(book, ACC2, 1)[2] == ((pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 101, 100),)
    assert send(book, ACC, 1)[2] == ((pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 61, 60),
                                     (pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 101, 100))
    assert book.state.group_info(FIRM)["members"] == (ACC, ACC2)
    assert book.state.group_info(DESK)["members"] == (ACC,)


# -- a group that cannot be checked: GROUP_UNAVAILABLE (reason, place) --

def test_a_group_without_a_hash_is_unavailable_at_its_place(book):
    book.state.set_group(FIRM, {K.MAX_LONG_POSITION: 100})
    book.state.set_account_groups(ACC, [DESK, FIRM])
    assert book.state.group_info(DESK) == {"known": False, "invalid": False, "limits": {},
                                           "members": (ACC,)}
    assert send(book, ACC)[2] == ((UNAVAILABLE, 1, 1),)
    book.state.set_group(DESK, {})
    assert approved(send(book, ACC))
    book.state.set_group(FIRM, None)                # its hash went away
    assert send(book, ACC)[2] == ((UNAVAILABLE, 1, 2),)


def test_an_invalid_group_tree_refuses_the_accounts_orders_with_limit_zero(book):
    book.state.set_group(DESK, None)
    book.state.set_account_groups(ACC, [DESK], invalid=True)
    assert send(book, ACC)[2] == ((UNAVAILABLE, 2, 0),)         # nothing else of the check
    book.state.set_account_groups(ACC, [], invalid=True)
    assert send(book, ACC)[2] == ((UNAVAILABLE, 2, 0),)
    book.state.set_account_groups(ACC, [])
    assert approved(send(book, ACC))


def test_a_group_whose_hash_is_invalid_is_unavailable(book):
    book.state.set_group(DESK, {})
    book.state.set_group(FIRM, None, invalid=True)
    book.state.set_account_groups(ACC, [DESK, FIRM])
    assert book.state.group_info(FIRM)["invalid"]
    assert send(book, ACC)[2] == ((UNAVAILABLE, 3, 2),)
    book.state.set_group(FIRM, {K.MAX_LONG_POSITION: 100})
    assert approved(send(book, ACC))


def test_a_group_with_a_member_whose_state_is_invalid_or_did_not_fit_is_unavailable(book):
    desk(book, {K.MAX_LONG_POSITION: 100})
    book.state.set_account_state(ACC2, known=True, invalid=True)
    assert send(book, ACC)[2] == ((UNAVAILABLE, 6, 1),)
    book.state.set_account_state(ACC2, known=True, capacity=CAPACITY_NUMBERS["POSITIONS"])
    assert send(book, ACC)[2] == ((UNAVAILABLE, 6, 1),)
    book.state.set_account_state(ACC2, known=True)
    assert approved(send(book, ACC))


def test_with_ownership_on_a_group_needs_every_members_shard_held(book):
    from pretrade.shards.slots import shard_of

    desk(book, {K.MAX_LONG_POSITION: 100})
    mine, theirs = shard_of(ACC, 16), shard_of(ACC2, 16)
    assert mine != theirs
    book.state.set_shards(16)
    book.state.set_shard_lease(mine, 1, book.now + SECOND)
    assert send(book, ACC)[2] == ((UNAVAILABLE, 4, 1),)
    book.state.set_shard_lease(theirs, 1, book.now)              # held up to now exactly
    assert approved(send(book, ACC))
    book.now += 1
    assert send(book, ACC)[2] == ((UNAVAILABLE, 4, 1),)


def test_a_group_with_a_members_key_or_its_own_key_in_a_lost_slot_is_unavailable(book):
    from redis.crc import key_slot

    from pretrade._core import account_key_slots, symbol_key_slots

    desk(book, {K.MAX_LONG_POSITION: 100})
    used = set(account_key_slots(ACC)) | set(symbol_key_slots(AAPL))
    group_slot = key_slot(b"group:" + DESK)
    assert group_slot not in used and not used & set(account_key_slots(ACC2))
    for slot in (*account_key_slots(ACC2), group_slot):
        book.state.set_slots_lost([(slot, slot)], True)
        assert send(book, ACC)[2] == ((UNAVAILABLE, 5, 1),)
        # with a member's state invalid too, the smaller reason is given
        book.state.set_account_state(ACC2, known=True, invalid=True)
        assert send(book, ACC)[2] == ((UNAVAILABLE, 5, 1),)
        book.state.set_account_state(ACC2, known=True)
        book.state.set_slots_lost([(slot, slot)], False)
        assert approved(send(book, ACC))


def test_a_valued_group_whose_member_holds_a_symbol_with_a_lost_key_is_unavailable(book):
    # The price of ACC2's MSFT is in a lost slot: the table's last price may
    # be stale, so the desk's exposure cannot be vouched for (as ACC's own
    # such holding makes its order STALE_DATA). A desk that only limits
    # positions in the order's symbol (AAPL) still decides.
    from pretrade._core import account_key_slots, symbol_key_slots

    desk(book, {K.MAX_GROSS_EXPOSURE: 1_000 * LAST + 10 * LAST})
    book.state.replace_positions(ACC2, {MSFT: (1_000, 1_000 * LAST)})
    assert send(book, ACC, 11)[2] == ((pb.REJECT_CODE_GROUP_MAX_GROSS_EXPOSURE,
                                       1_011 * LAST, 1_010 * LAST),)
    used = set(symbol_key_slots(AAPL)) | set(account_key_slots(ACC)) | set(
        account_key_slots(ACC2))
    for slot in symbol_key_slots(MSFT):
        assert slot not in used
        book.state.set_slots_lost([(slot, slot)], True)
        assert send(book, ACC, 5)[2] == ((UNAVAILABLE, 5, 1),)
        book.state.set_slots_lost([(slot, slot)], False)
    assert approved(send(book, ACC, 5))
    book.state.set_group(DESK, {K.MAX_LONG_POSITION: 100})
    book.state.set_slots_lost([(symbol_key_slots(MSFT)[1],) * 2], True)
    assert approved(send(book, ACC, 5))


def test_an_unavailable_group_does_not_stop_the_next_group_being_checked(book):
    book.state.set_group(FIRM, {K.MAX_LONG_POSITION: 5})
    book.state.set_account_groups(ACC, [DESK, FIRM])
    assert send(book, ACC, 6)[2] == ((UNAVAILABLE, 1, 1),
                                     (pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 6, 5))


def test_an_approved_order_counts_in_a_groups_window_and_a_rejected_one_does_not(book):
    desk(book, {K.MAX_ORDERS_PER_WINDOW: 2, K.MAX_LONG_POSITION: 20})
    assert approved(send(book, ACC, 10))
    assert not approved(send(book, ACC2, 11))      # long: not counted in the window
    assert approved(send(book, ACC2, 10))
    assert send(book, ACC, 1)[2] == ((pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 21, 20),
                                     (pb.REJECT_CODE_GROUP_ORDER_RATE, 3, 2))


# -- the table's group records --

def test_group_records_refuse_what_the_contract_does_not_allow(book):
    assert GROUP_LIMIT_KINDS == {
        K.MAX_LONG_POSITION, K.MAX_SHORT_POSITION, K.MAX_GROSS_EXPOSURE, K.MAX_NET_EXPOSURE,
        K.MAX_ORDERS_PER_WINDOW, K.ORDER_WINDOW_MS, K.MAX_NOTIONAL_PER_WINDOW,
        K.NOTIONAL_WINDOW_MS, K.LOSS_LIMIT}
    with pytest.raises(ValueError):
        book.state.set_group(DESK, {K.MAX_ORDER_QUANTITY: 1})
    with pytest.raises(ValueError):
        book.state.set_group(DESK, {K.MAX_NET_POSITION: 1})
    ids = [b"G%d" % n for n in range(MAX_ACCOUNT_GROUPS + 1)]
    with pytest.raises(ValueError):
        book.state.set_account_groups(ACC, ids)
    with pytest.raises(ValueError):
        book.state.set_account_groups(ACC, [DESK, DESK])
    for bad in (b"", b"G" * 40, b"G\0H"):
        with pytest.raises(ValueError):
            book.state.set_account_groups(ACC, [bad])
        with pytest.raises(ValueError):
            book.state.set_group(bad, {})
    assert book.state.account_groups(ACC) == ()
    book.state.set_account_groups(ACC, ids[:MAX_ACCOUNT_GROUPS])
    assert book.state.account_groups(ACC) == tuple(ids[:MAX_ACCOUNT_GROUPS])
    assert book.state.account_groups(b"NOBODY") == ()
    assert book.state.group_info(b"NOGROUP") is None
    # (the Book's table holds 8 groups: these are all)
    book.state.set_group(ids[0], {K.LOSS_LIMIT: 7})
    assert book.state.group_info(ids[0]) == {"known": True, "invalid": False,
                                             "limits": {K.LOSS_LIMIT: 7}, "members": (ACC,)}


def test_a_full_group_region_is_a_table_full_error_naming_capacity_groups(make_book):
    book = make_book(max_accounts=4)                # max_groups = min(max_accounts, 4096)
    for n in range(4):
        book.state.set_group(b"G%d" % n, {})
    with pytest.raises(TableFullError) as full:
        book.state.set_group(b"G4", {})
    assert (full.value.capacity, full.value.limit) == (pb.CAPACITY_GROUPS, 4)
    with pytest.raises(TableFullError) as full:
        book.state.set_account_groups(ACC, [b"G0", b"G4"])
    assert (full.value.capacity, full.value.limit) == (pb.CAPACITY_GROUPS, 4)
    book.state.set_account_groups(ACC, [b"G0", b"G3"])   # known groups fit
    assert book.state.account_groups(ACC) == (b"G0", b"G3")


def test_a_group_that_cannot_be_checked_is_not_a_decision_kept_nor_a_client_error(book):
    # GROUP_UNAVAILABLE is the engine's state, like STALE_DATA: the id is
    # not remembered (once the group is configured, a re-send is decided),
    # and a run of them never trips the reject-storm breaker.
    limits = dict(book.limits)
    limits[K.MAX_REJECTS_PER_WINDOW] = 2
    book.state.set_account_limits(ACC, limits)
    book.state.set_account_groups(ACC, [DESK])
    for n in range(5):
        verdict = book.engine.evaluate(b"again", ACC, AAPL, BUY, pb.ORDER_TYPE_LIMIT, 10, LAST,
                                       b"", b"", book.now + n)
        assert verdict[2] == ((UNAVAILABLE, 1, 1),)
        assert not verdict.stored and not verdict.replayed and verdict.auto_halt == AUTO_HALT_NONE
    book.state.set_group(DESK, {})
    verdict = book.engine.evaluate(b"again", ACC, AAPL, BUY, pb.ORDER_TYPE_LIMIT, 10, LAST,
                                   b"", b"", book.now + 10)
    assert approved(verdict) and not verdict.replayed
