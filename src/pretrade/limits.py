"""The limit catalogue: what each configurable limit is called, in Redis and in the core.

``LimitKind`` numbers are the indexes of ``LimitSet.values`` in
``ext/pretrade/_core/layout.pxd``; the Redis field names are those of the
``limits:{ACC}`` hash (see docs/redis-schema.md).
"""

from __future__ import annotations

from enum import IntEnum


class LimitKind(IntEnum):
    """A configurable limit; the value is its index in the core's LimitSet."""

    MAX_ORDER_QUANTITY = 0
    MAX_ORDER_NOTIONAL = 1
    MAX_NET_POSITION = 2
    MAX_LONG_POSITION = 3
    MAX_SHORT_POSITION = 4

    @property
    def field(self) -> str:
        """The field name in the ``limits:{ACC}`` Redis hash."""
        return self.name.lower()

    @classmethod
    def from_field(cls, field: str) -> LimitKind:
        """Parse a Redis field name; raises KeyError for an unknown one."""
        return cls[field.upper()]


#: Every order is checked against all of these; a missing one fails closed.
REQUIRED_LIMITS: tuple[LimitKind, ...] = tuple(LimitKind)

#: Limits as the core and the twin take them: ``{LimitKind: value}``.
Limits = dict[int, int]
