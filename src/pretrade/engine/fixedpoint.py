"""Fixed point money: the one place that converts to and from decimal text.

Prices and notionals are ``int`` counts of 1/10,000 of the currency
(``PRICE_SCALE``): $68.3378 is ``683378``. Quantities are whole units.
Every value that crosses the wire is an int64, so parsing checks the range.

Nothing here goes through ``float``: text is parsed digit by digit into
``int`` and formatted back with integer division, so every value with at
most four decimal places survives a round trip exactly.

Examples
--------
>>> parse_price("68.3378")
683378
>>> format_price(683378)
'68.3378'
>>> parse_price("-1.5")
-15000
"""

from __future__ import annotations

import operator
import re

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "PRICE_DECIMALS",
    "PRICE_SCALE",
    "fits_int64",
    "format_money",
    "format_notional",
    "format_price",
    "format_quantity",
    "parse_price",
    "parse_quantity",
]

PRICE_DECIMALS = 4
"""Decimal places carried by a price: the smallest price step is 0.0001."""

PRICE_SCALE = 10**PRICE_DECIMALS
"""Units per whole currency unit: ``parse_price("1") == PRICE_SCALE``."""

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# ASCII digits only: ``str.isdigit`` and ``\d`` accept other scripts' digits,
# and ``int()`` accepts underscores ("1_000"); neither belongs in a price.
# No exponent, no "nan"/"inf": anything but sign, digits and one point fails.
_DECIMAL_TEXT = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?", re.ASCII)
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)

# int64 has at most 19 digits; checking the length first keeps a hostile
# 100,000-digit string from reaching int().
_INT64_MAX_DIGITS = len(str(INT64_MAX))


def fits_int64(value: int) -> bool:
    """Whether ``value`` is representable as a signed 64-bit integer.

    Parameters
    ----------
    value : int
        Any Python integer.

    Returns
    -------
    bool
        ``True`` when ``INT64_MIN <= value <= INT64_MAX``.
    """
    return INT64_MIN <= value <= INT64_MAX


def parse_price(text: str) -> int:
    """Parse decimal text into a price in 1/10,000 of the currency.

    Parameters
    ----------
    text : str
        An optional sign, digits, and at most one decimal point, e.g.
        ``"68.3378"``, ``"68"``, ``"-1.5"``, ``".25"``. Surrounding whitespace
        is ignored. Digits past the fourth decimal place are accepted only
        when they are zeros (``"1.500000"``), since they lose nothing.

    Returns
    -------
    int
        The price scaled by ``PRICE_SCALE``: ``"68.3378"`` gives ``683378``.

    Raises
    ------
    ValueError
        If the text is empty, is not plain decimal notation (exponents,
        ``nan``, ``inf``, separators), has a non-zero digit past the fourth
        decimal place, or the result does not fit in int64.
    TypeError
        If ``text`` is not a ``str`` (a ``float`` has already lost digits).
    """
    if not isinstance(text, str):
        raise TypeError(f"price must be decimal text, not {type(text).__name__}: {text!r}")
    stripped = text.strip()
    if not stripped:
        raise ValueError("price is empty; expected decimal text such as '68.3378'")
    match = _DECIMAL_TEXT.fullmatch(stripped)
    if match is None:
        raise ValueError(
            f"price {text!r} is not a plain decimal number; expected digits with at most "
            f"one '.', e.g. '68.3378' (no exponents, separators, nan or inf)"
        )
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if not whole and not fraction:
        raise ValueError(f"price {text!r} has no digits; expected e.g. '68.3378'")
    significant_fraction = fraction.rstrip("0")
    if len(significant_fraction) > PRICE_DECIMALS:
        raise ValueError(
            f"price {text!r} has more than {PRICE_DECIMALS} decimal places; "
            f"the smallest price step is 0.{'0' * (PRICE_DECIMALS - 1)}1"
        )
    whole = whole.lstrip("0")
    if len(whole) + PRICE_DECIMALS > _INT64_MAX_DIGITS:
        raise ValueError(f"price {text!r} is out of range for an int64 price")
    units = int(whole or "0") * PRICE_SCALE + int(
        significant_fraction.ljust(PRICE_DECIMALS, "0") or "0"
    )
    if sign == "-":
        units = -units
    if not fits_int64(units):
        raise ValueError(f"price {text!r} is out of range for an int64 price")
    return units


def format_price(units: int) -> str:
    """Format a price in 1/10,000 of the currency as decimal text.

    Parameters
    ----------
    units : int
        The scaled price (any integer; ``bool`` and ``float`` are refused).

    Returns
    -------
    str
        Always four decimal places and no thousands separators, so that
        ``parse_price(format_price(x)) == x``: ``683378`` gives
        ``"68.3378"``, ``680000`` gives ``"68.0000"``, ``-15000`` gives
        ``"-1.5000"``.

    Raises
    ------
    TypeError
        If ``units`` is not an integer.
    """
    if isinstance(units, bool):
        raise TypeError("price units must be an int, not bool")
    value = operator.index(units)
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), PRICE_SCALE)
    return f"{sign}{whole}.{fraction:0{PRICE_DECIMALS}d}"


def format_notional(units: int) -> str:
    """Format a notional (quantity x price, in 1/10,000 of the currency).

    Notionals carry the price's scale, so this is :func:`format_price`
    under the name that says what the figure is.

    Parameters
    ----------
    units : int
        The scaled notional.

    Returns
    -------
    str
        Decimal text with four decimal places, e.g. ``"6833.7800"`` for 100 x $68.3378.
    """
    return format_price(units)


#: Currencies written with a symbol before the amount; any other code follows it.
CURRENCY_SYMBOLS = {
    "USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CNY": "CN¥", "INR": "₹", "KRW": "₩",
    "CAD": "CA$", "AUD": "A$", "NZD": "NZ$", "HKD": "HK$", "SGD": "S$", "MXN": "MX$",
    "BRL": "R$", "ILS": "₪",
}
#: Decimal places a person reads, unless digits past them are not zero.
DISPLAY_DECIMALS = 2


def format_money(units: int, currency: str = "") -> str:
    """Money for a person: grouped thousands, two decimals, the currency's symbol.

    Exact (integer arithmetic only). Two decimal places, unless the figure has
    non-zero digits past the cent: then all four, so nothing is hidden.

    Parameters
    ----------
    units : int
        An amount in 1/10,000 of the currency.
    currency : str
        Its ISO 4217 code: ``USD`` and other common ones get their symbol
        before the amount (:data:`CURRENCY_SYMBOLS`), any other code follows
        it; ``""`` (unknown, or a sum over several currencies): the bare amount.

    Examples
    --------
    >>> format_money(68_910_000, "USD")
    '$6,891.00'
    >>> format_money(683_378, "USD")
    '$68.3378'
    >>> format_money(-12_345_000, "CHF")
    '-1,234.50 CHF'
    >>> format_money(5_000, "")
    '0.50'
    """
    if isinstance(units, bool):
        raise TypeError("money units must be an int, not bool")
    value = operator.index(units)
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), PRICE_SCALE)
    hidden = PRICE_DECIMALS - DISPLAY_DECIMALS
    if fraction % 10**hidden:
        decimals = f"{fraction:0{PRICE_DECIMALS}d}"
    else:
        decimals = f"{fraction // 10**hidden:0{DISPLAY_DECIMALS}d}"
    amount = f"{whole:,}.{decimals}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    if symbol is not None:
        return f"{sign}{symbol}{amount}"
    return f"{sign}{amount} {currency}" if currency else f"{sign}{amount}"


def format_quantity(quantity: int) -> str:
    """A quantity for a person, thousands grouped: ``1234567`` gives ``'1,234,567'``."""
    if isinstance(quantity, bool):
        raise TypeError("a quantity must be an int, not bool")
    return f"{operator.index(quantity):,}"


def parse_quantity(text: str) -> int:
    """Parse a whole-unit quantity (shares, contracts).

    Parameters
    ----------
    text : str
        An optional sign and ASCII digits, e.g. ``"100"``. Surrounding
        whitespace is ignored. Whether a quantity must be positive is the
        risk checks' decision, not the parser's.

    Returns
    -------
    int
        The quantity.

    Raises
    ------
    ValueError
        If the text is empty, has a fractional part, exponent or
        separators, or does not fit in int64.
    TypeError
        If ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"quantity must be text, not {type(text).__name__}: {text!r}")
    stripped = text.strip()
    if not stripped:
        raise ValueError("quantity is empty; expected a whole number such as '100'")
    if _INTEGER_TEXT.fullmatch(stripped) is None:
        raise ValueError(f"quantity {text!r} is not a whole number; expected digits, e.g. '100'")
    if len(stripped.lstrip("+-").lstrip("0")) > _INT64_MAX_DIGITS:
        raise ValueError(f"quantity {text!r} is out of range for an int64 quantity")
    quantity = int(stripped)
    if not fits_int64(quantity):
        raise ValueError(f"quantity {text!r} is out of range for an int64 quantity")
    return quantity


def average_cost(quantity: int, cost_basis: int) -> int:
    """Quantity-weighted average lot price, rounded half away from zero; 0 when flat."""
    if quantity == 0:
        return 0
    magnitude, remainder = divmod(abs(cost_basis), abs(quantity))
    if 2 * remainder >= abs(quantity):
        magnitude += 1
    return magnitude if (cost_basis >= 0) == (quantity > 0) else -magnitude
