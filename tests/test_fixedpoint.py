"""Fixed point money: decimal text in, int64 units out, and back, exactly."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pretrade.engine.fixedpoint import (
    INT64_MAX,
    INT64_MIN,
    PRICE_SCALE,
    fits_int64,
    format_notional,
    format_price,
    parse_price,
    parse_quantity,
)


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("68.3378", 683378),
        ("68", 680000),
        ("-1.5", -15000),
        ("0", 0),
        ("-0", 0),
        ("0.0001", 1),
        (".25", 2500),
        ("1.", 10000),
        ("+3.1", 31000),
        ("  68.3378\n", 683378),
        ("007.5", 75000),
        ("1.500000", 15000),
        ("922337203685477.5807", INT64_MAX),
        ("-922337203685477.5808", INT64_MIN),
    ],
)
def test_parse_price_scales_decimal_text_to_ten_thousandths(text, units):
    assert parse_price(text) == units


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (".", "no digits"),
        ("-", "no digits"),
        ("1.23456", "more than 4 decimal places"),
        ("0.00001", "more than 4 decimal places"),
        ("nan", "not a plain decimal"),
        ("NaN", "not a plain decimal"),
        ("inf", "not a plain decimal"),
        ("-Infinity", "not a plain decimal"),
        ("1e3", "not a plain decimal"),
        ("1E-4", "not a plain decimal"),
        ("1_000", "not a plain decimal"),
        ("1,000.00", "not a plain decimal"),
        ("1.2.3", "not a plain decimal"),
        ("--1", "not a plain decimal"),
        ("0x10", "not a plain decimal"),
        ("\u0661\u0662", "not a plain decimal"),  # Arabic-Indic digits
        ("922337203685477.5808", "out of range"),
        ("-922337203685477.5809", "out of range"),
        ("9" * 100_000, "out of range"),
    ],
)
def test_parse_price_rejects_text_that_is_not_an_exact_int64_price(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_price(text)


def test_parse_price_refuses_a_float_because_it_has_already_lost_digits():
    with pytest.raises(TypeError, match="decimal text"):
        parse_price(68.3378)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("units", "text"),
    [
        (683378, "68.3378"),
        (680000, "68.0000"),
        (-15000, "-1.5000"),
        (-1, "-0.0001"),
        (0, "0.0000"),
        (INT64_MAX, "922337203685477.5807"),
        (INT64_MIN, "-922337203685477.5808"),
    ],
)
def test_format_price_always_shows_four_decimal_places(units, text):
    assert format_price(units) == text


def test_format_notional_uses_the_price_scale():
    assert format_notional(100 * 683378) == "6833.7800"  # 100 shares at $68.3378


@pytest.mark.parametrize("not_an_int", [1.5, True, "683378"])
def test_format_price_refuses_anything_but_an_int(not_an_int):
    with pytest.raises(TypeError):
        format_price(not_an_int)


@given(st.integers(min_value=INT64_MIN, max_value=INT64_MAX))
@example(INT64_MIN)
@example(INT64_MAX)
@example(0)
def test_every_int64_price_round_trips_through_text(units):
    assert parse_price(format_price(units)) == units


@given(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.integers(min_value=0, max_value=PRICE_SCALE - 1),
)
def test_text_with_at_most_four_decimals_round_trips_through_units(whole, fraction):
    text = f"{whole}.{fraction:04d}"
    assert format_price(parse_price(text)) == text


@pytest.mark.parametrize(
    ("text", "quantity"),
    [("100", 100), ("-5", -5), ("+7", 7), (" 42 ", 42), (str(INT64_MAX), INT64_MAX)],
)
def test_parse_quantity_reads_whole_numbers(text, quantity):
    assert parse_quantity(text) == quantity


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("1.5", "not a whole number"),
        ("100.0", "not a whole number"),
        ("1e3", "not a whole number"),
        ("1_000", "not a whole number"),
        (str(INT64_MAX + 1), "out of range"),
        ("1" * 5000, "out of range"),
    ],
)
def test_parse_quantity_rejects_anything_but_an_int64_whole_number(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("value", "fits"),
    [
        (0, True),
        (INT64_MAX, True),
        (INT64_MIN, True),
        (INT64_MAX + 1, False),
        (INT64_MIN - 1, False),
    ],
)
def test_fits_int64_bounds_are_inclusive(value, fits):
    assert fits_int64(value) is fits
