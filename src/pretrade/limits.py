"""The limit catalogue: what each configurable limit is called, in Redis and in the core.

``LimitKind`` numbers are the indexes of ``LimitSet.values`` in
``ext/pretrade/_core/layout.pxd``; the Redis field names are those of the
``limits:{ACC}`` hash (see docs/redis-schema.md).
"""

from __future__ import annotations

from enum import IntEnum


class LimitKind(IntEnum):
    """A configurable limit; the value is its index in the core's LimitSet.

    Kinds below ``REQUIRED_COUNT`` must be configured for every order
    (LIMITS_NOT_CONFIGURED otherwise). The others switch a control on:
    absent means the control is off for the account.
    """

    MAX_ORDER_QUANTITY = 0
    MAX_ORDER_NOTIONAL = 1
    MAX_NET_POSITION = 2
    MAX_LONG_POSITION = 3
    MAX_SHORT_POSITION = 4
    PRICE_COLLAR_BPS = 5
    MIN_ORDER_QUANTITY = 6
    MAX_GROSS_EXPOSURE = 7
    MAX_NET_EXPOSURE = 8
    MAX_ORDERS_PER_WINDOW = 9
    ORDER_WINDOW_MS = 10
    MAX_NOTIONAL_PER_WINDOW = 11
    NOTIONAL_WINDOW_MS = 12
    MAX_WORKING_ORDERS = 13
    MAX_ISSUER_CONCENTRATION_BPS = 14
    MAX_SECTOR_CONCENTRATION_BPS = 15
    CONCENTRATION_MIN_GROSS = 16
    LOSS_LIMIT = 17
    MAX_REJECTS_PER_WINDOW = 18
    REJECT_WINDOW_MS = 19
    AUTO_HALT_SECONDS = 20
    MAX_VENUE_EXPOSURE = 21
    MAX_COUNTERPARTY_EXPOSURE = 22

    @property
    def field(self) -> str:
        """The field name in the ``limits:{ACC}`` Redis hash."""
        return self.name.lower()

    @classmethod
    def from_field(cls, field: str) -> LimitKind:
        """Parse a Redis field name (lower case); raises KeyError for an unknown one."""
        if field != field.lower():
            raise KeyError(field)
        return cls[field.upper()]


REQUIRED_COUNT = 6

#: Every order is checked against all of these; a missing one fails closed.
REQUIRED_LIMITS: tuple[LimitKind, ...] = tuple(k for k in LimitKind if k < REQUIRED_COUNT)

#: Limits a ``limits:{ACC}`` field may set per symbol (``max_long_position:AAPL``).
PER_SYMBOL_LIMITS: frozenset[LimitKind] = frozenset((
    LimitKind.MAX_ORDER_QUANTITY, LimitKind.MAX_ORDER_NOTIONAL, LimitKind.MAX_NET_POSITION,
    LimitKind.MAX_LONG_POSITION, LimitKind.MAX_SHORT_POSITION, LimitKind.PRICE_COLLAR_BPS,
    LimitKind.MIN_ORDER_QUANTITY,
))

#: Limits whose field suffix names a venue or a counterparty instead of a symbol
#: (``max_venue_exposure:XNAS``).
NAMED_LIMITS: frozenset[LimitKind] = frozenset((
    LimitKind.MAX_VENUE_EXPOSURE, LimitKind.MAX_COUNTERPARTY_EXPOSURE,
))

#: Named venue / counterparty limits an account may have (TagLimit slots).
TAG_LIMIT_SLOTS = 8

#: Ring sizes of the core's sliding windows (AccountActivity in layout.pxd).
RATE_RING_CAPACITY = 256
REJECT_RING_CAPACITY = 256

#: Window lengths used when a rate limit is set without its window.
DEFAULT_ORDER_WINDOW_MS = 1_000
DEFAULT_NOTIONAL_WINDOW_MS = 60_000
DEFAULT_REJECT_WINDOW_MS = 60_000

#: Limits as the core and the twin take them: ``{LimitKind: value}``.
Limits = dict[int, int]
