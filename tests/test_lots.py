"""The compiled lot loop against its oracle, the reference aggregation in Python.

``aggregate_lots`` sums an account's lots in compiled code and hands whatever
it does not accept to ``aggregate_lots_reference``; for any three hashes both
must give the same positions, or the same error.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrade._core.lots import sum_lots, sum_lots_flat
from pretrade.engine.text import is_valid_id
from pretrade.state.schema import (
    StateError,
    aggregate_lots,
    aggregate_lots_reference,
)

INT64_MAX = 2**63 - 1

integers = st.one_of(
    st.integers(-10**6, 10**6),
    st.sampled_from([0, 1, -1, INT64_MAX, -INT64_MAX - 1, INT64_MAX // 3, 10**18]),
    st.integers(-(2**70), 2**70),
)
raw_values = st.one_of(
    integers.map(lambda n: str(n).encode()),
    integers.map(lambda n: f"+{n}".encode() if n >= 0 else str(n).encode()),
    st.sampled_from([b"", b"+", b"-", b"1.5", b"1e3", b" 1", b"1 ", b"0x10", b"--1",
                     b"99999999999999999999", b"\xff", b"\xd9\xa3"]),  # Arabic-Indic digit
    st.binary(max_size=6),
)
symbols = st.one_of(st.sampled_from([b"AAPL", b"MSFT", b"BRK.B", b"X"]),
                    st.sampled_from([b"", b"BAD SYMBOL", b"A" * 200, b"\x00"]))


def _outcome(function, tickers, quantities, prices):
    try:
        return "ok", function(tickers, quantities, prices)
    except StateError as error:
        return "error", str(error)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(symbols, raw_values, raw_values), max_size=12),
       st.sampled_from(["all", "drop", "rename"]), st.sampled_from([0, 1, 2]))
def test_the_compiled_loop_gives_what_the_reference_gives(lots, lot_ids, which):
    tickers = {f"L{n}".encode(): symbol for n, (symbol, _, _) in enumerate(lots)}
    quantities = {f"L{n}".encode(): quantity for n, (_, quantity, _) in enumerate(lots)}
    prices = {f"L{n}".encode(): price for n, (_, _, price) in enumerate(lots)}
    hashes = (tickers, quantities, prices)
    if lot_ids == "drop" and lots:
        del hashes[which][b"L0"]  # a lot missing from one hash
    if lot_ids == "rename" and lots:
        # the same number of lots in every hash, but not the same lots
        hashes[which][b"LX"] = hashes[which].pop(b"L0")
    assert _outcome(aggregate_lots, tickers, quantities, prices) == \
        _outcome(aggregate_lots_reference, tickers, quantities, prices)


def test_plain_lots_are_summed_by_the_compiled_loop():
    tickers = {b"L1": b"AAPL", b"L2": b"AAPL", b"L3": b"MSFT"}
    quantities = {b"L1": b"10", b"L2": b"+10", b"L3": b"-5"}
    prices = {b"L1": b"683378", b"L2": b"688200", b"L3": b"3000"}
    expected = {b"AAPL": (20, 13_715_780), b"MSFT": (-5, -15_000)}
    assert sum_lots(tickers, quantities, prices, is_valid_id) == expected
    assert aggregate_lots(tickers, quantities, prices) == expected


@pytest.mark.parametrize("quantities, prices", [
    ({b"L1": b"1.5"}, {b"L1": b"1"}),                 # not an integer
    ({b"L1": b"1"}, {b"L1": b"-1"}),                  # negative price
    ({b"L1": b"9223372036854775807"}, {b"L1": b"2"}),  # cost leaves int64
])
def test_what_the_compiled_loop_does_not_take_goes_to_the_reference(quantities, prices):
    tickers = {b"L1": b"AAPL"}
    assert sum_lots(tickers, quantities, prices, is_valid_id) is None
    with pytest.raises(StateError):
        aggregate_lots(tickers, quantities, prices)


def test_a_sum_that_leaves_int64_only_on_the_way_is_the_reference_s_to_compute():
    # +max then -max: the compiled loop overflows midway and defers; the total fits.
    tickers = {b"L1": b"AAPL", b"L2": b"AAPL", b"L3": b"AAPL"}
    quantities = {b"L1": b"9223372036854775807", b"L2": b"1", b"L3": b"-9223372036854775807"}
    prices = {b"L1": b"0", b"L2": b"0", b"L3": b"0"}
    assert sum_lots(tickers, quantities, prices, is_valid_id) is None
    assert aggregate_lots(tickers, quantities, prices) == {b"AAPL": (1, 0)}


def _flat(fields: dict[bytes, bytes], order: list[bytes] | None = None) -> list[bytes]:
    """A hash as a RESP2 HGETALL reply: field, value, field, value, ..."""
    reply: list[bytes] = []
    for lot in (order if order is not None else list(fields)):
        reply += [lot, fields[lot]]
    return reply


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(symbols, raw_values, raw_values), max_size=12),
       st.sampled_from(["all", "drop", "rename"]), st.sampled_from([0, 1, 2]),
       st.sampled_from(["same order", "shuffled"]), st.integers(0, 2**32))
def test_flat_replies_give_what_the_reference_gives_in_any_order(lots, lot_ids, which, order,
                                                                 seed):
    # The sync reads the lot hashes as flat HGETALL replies: summed as they are
    # when the three list the same lots in the same order, else paired up.
    hashes = tuple({f"L{n}".encode(): lot[k] for n, lot in enumerate(lots)} for k in range(3))
    if lot_ids == "drop" and lots:
        del hashes[which][b"L0"]
    if lot_ids == "rename" and lots:
        hashes[which][b"LX"] = hashes[which].pop(b"L0")
    replies = []
    for fields in hashes:
        lot_order = list(fields)
        if order == "shuffled":
            random.Random(seed + len(replies)).shuffle(lot_order)
        replies.append(_flat(fields, lot_order))
    # the reference over the hashes as Redis listed them (its first error is
    # the first bad lot in that order)
    as_read = [dict(zip(reply[::2], reply[1::2], strict=True)) for reply in replies]
    assert as_read == list(hashes)
    assert _outcome(aggregate_lots, *replies) == \
        _outcome(aggregate_lots_reference, *as_read)


def test_flat_replies_in_the_same_order_are_summed_without_pairing_them_up():
    tickers = {b"L1": b"AAPL", b"L2": b"MSFT", b"L3": b"AAPL"}
    quantities = {b"L1": b"10", b"L2": b"-5", b"L3": b"+10"}
    prices = {b"L1": b"683378", b"L2": b"3000", b"L3": b"688200"}
    expected = {b"AAPL": (20, 13_715_780), b"MSFT": (-5, -15_000)}
    assert sum_lots_flat(_flat(tickers), _flat(quantities), _flat(prices), is_valid_id) \
        == expected


@pytest.mark.parametrize("tickers, quantities, prices", [
    # the same lots in another order: the caller pairs them up
    ([b"L1", b"AAPL", b"L2", b"AAPL"], [b"L2", b"1", b"L1", b"1"], [b"L1", b"1", b"L2", b"1"]),
    ([b"L1", b"AAPL"], [b"L1", b"1"], [b"L1"]),                  # odd length
    ([b"L1", b"AAPL"], [b"L1", b"1"], [b"L1", b"1", b"L2", b"1"]),  # other lengths
    ([b"L1", b"AAPL"], [b"L1", 1], [b"L1", b"1"]),               # not bytes
    ([b"L1", b"BAD SYMBOL"], [b"L1", b"1"], [b"L1", b"1"]),      # invalid symbol
])
def test_flat_replies_the_loop_does_not_take_are_none(tickers, quantities, prices):
    assert sum_lots_flat(tickers, quantities, prices, is_valid_id) is None
