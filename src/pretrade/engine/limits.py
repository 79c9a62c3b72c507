"""The limit catalogue: what each configurable limit is called, in Redis and in the core.

``LimitKind`` numbers are the indexes of ``LimitSet.values`` in
``ext/pretrade/_core/layout.pxd``, read from the core's ``LIMIT_KINDS`` (a
test checks that the two name the same kinds); the Redis field names are
those of the ``limits:{ACC}`` hash (see docs/redis-schema.md).
"""

from __future__ import annotations

from enum import IntEnum

from pretrade._core.constants import GROUP_LIMIT_NAMES, LIMIT_KINDS, LIMIT_REQUIRED_COUNT
from pretrade._core.constants import MAX_ACCOUNT_GROUPS as MAX_ACCOUNT_GROUPS


class LimitKind(IntEnum):
    """A configurable limit; the value is its index in the core's LimitSet.

    Kinds below ``REQUIRED_COUNT`` must be configured for every order
    (LIMITS_NOT_CONFIGURED otherwise). The others switch a control on:
    absent means the control is off for the account.
    """

    MAX_ORDER_QUANTITY = LIMIT_KINDS["MAX_ORDER_QUANTITY"]
    MAX_ORDER_NOTIONAL = LIMIT_KINDS["MAX_ORDER_NOTIONAL"]
    MAX_NET_POSITION = LIMIT_KINDS["MAX_NET_POSITION"]
    MAX_LONG_POSITION = LIMIT_KINDS["MAX_LONG_POSITION"]
    MAX_SHORT_POSITION = LIMIT_KINDS["MAX_SHORT_POSITION"]
    PRICE_COLLAR_BPS = LIMIT_KINDS["PRICE_COLLAR_BPS"]
    MIN_ORDER_QUANTITY = LIMIT_KINDS["MIN_ORDER_QUANTITY"]
    MAX_GROSS_EXPOSURE = LIMIT_KINDS["MAX_GROSS_EXPOSURE"]
    MAX_NET_EXPOSURE = LIMIT_KINDS["MAX_NET_EXPOSURE"]
    MAX_ORDERS_PER_WINDOW = LIMIT_KINDS["MAX_ORDERS_PER_WINDOW"]
    ORDER_WINDOW_MS = LIMIT_KINDS["ORDER_WINDOW_MS"]
    MAX_NOTIONAL_PER_WINDOW = LIMIT_KINDS["MAX_NOTIONAL_PER_WINDOW"]
    NOTIONAL_WINDOW_MS = LIMIT_KINDS["NOTIONAL_WINDOW_MS"]
    MAX_WORKING_ORDERS = LIMIT_KINDS["MAX_WORKING_ORDERS"]
    MAX_ISSUER_CONCENTRATION_BPS = LIMIT_KINDS["MAX_ISSUER_CONCENTRATION_BPS"]
    MAX_SECTOR_CONCENTRATION_BPS = LIMIT_KINDS["MAX_SECTOR_CONCENTRATION_BPS"]
    CONCENTRATION_MIN_GROSS = LIMIT_KINDS["CONCENTRATION_MIN_GROSS"]
    LOSS_LIMIT = LIMIT_KINDS["LOSS_LIMIT"]
    MAX_REJECTS_PER_WINDOW = LIMIT_KINDS["MAX_REJECTS_PER_WINDOW"]
    REJECT_WINDOW_MS = LIMIT_KINDS["REJECT_WINDOW_MS"]
    AUTO_HALT_SECONDS = LIMIT_KINDS["AUTO_HALT_SECONDS"]
    MAX_VENUE_EXPOSURE = LIMIT_KINDS["MAX_VENUE_EXPOSURE"]
    MAX_COUNTERPARTY_EXPOSURE = LIMIT_KINDS["MAX_COUNTERPARTY_EXPOSURE"]
    MIN_ORDER_NOTIONAL = LIMIT_KINDS["MIN_ORDER_NOTIONAL"]

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


REQUIRED_COUNT = LIMIT_REQUIRED_COUNT

#: Every order is checked against all of these; a missing one fails closed.
REQUIRED_LIMITS: tuple[LimitKind, ...] = tuple(k for k in LimitKind if k < REQUIRED_COUNT)

#: Limits a ``limits:{ACC}`` field may set per symbol (``max_long_position:AAPL``).
PER_SYMBOL_LIMITS: frozenset[LimitKind] = frozenset((
    LimitKind.MAX_ORDER_QUANTITY, LimitKind.MAX_ORDER_NOTIONAL, LimitKind.MAX_NET_POSITION,
    LimitKind.MAX_LONG_POSITION, LimitKind.MAX_SHORT_POSITION, LimitKind.PRICE_COLLAR_BPS,
    LimitKind.MIN_ORDER_QUANTITY, LimitKind.MIN_ORDER_NOTIONAL,
))

#: Limits whose field suffix names a venue or a counterparty instead of a symbol
#: (``max_venue_exposure:XNAS``).
NAMED_LIMITS: frozenset[LimitKind] = frozenset((
    LimitKind.MAX_VENUE_EXPOSURE, LimitKind.MAX_COUNTERPARTY_EXPOSURE,
))

#: Limits as the core and the twin take them: ``{LimitKind: value}``.
Limits = dict[int, int]

#: Limits a ``group:<G>`` hash may set (an account group: a desk, a firm). The
#: position limits hold per symbol over the group's members, the rest over
#: the members' whole books; none takes a per-symbol override. The core's
#: GROUP_LIMIT_MASK is the one source. MAX_ACCOUNT_GROUPS (imported above) is
#: the most groups one account is in, its groups and their parents flattened.
GROUP_LIMIT_KINDS: frozenset[LimitKind] = frozenset(
    LimitKind[name] for name in GROUP_LIMIT_NAMES)
