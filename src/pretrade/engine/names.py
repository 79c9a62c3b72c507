"""Names of the contract's enum values, as logs, the audit trail and the CLI show them.

``short_name(pb.Side, pb.SIDE_BUY)`` is ``"BUY"``: the value's name in
``pretrade.v1`` without its type's prefix. A number the contract does not
name (a fuzzed enum, a newer server) is shown as itself, so no value is ever
lost or turned into a wrong name.
"""

from __future__ import annotations

from functools import cache

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

#: The prefix every value of each enum type carries in the contract.
_PREFIXES: dict[str, str] = {
    "Side": "SIDE_", "OrderType": "ORDER_TYPE_", "HaltMode": "HALT_MODE_",
    "HaltScope": "HALT_SCOPE_", "RejectCode": "REJECT_CODE_", "Valuation": "VALUATION_",
    "AlertKind": "ALERT_KIND_", "PortfolioUpdateKind": "PORTFOLIO_UPDATE_KIND_",
    "TimeInForce": "TIME_IN_FORCE_",
}


@cache
def names_of(enum: EnumTypeWrapper) -> dict[int, str]:
    """``{value: short name}`` for every value of a ``pretrade.v1`` enum type."""
    prefix = _PREFIXES.get(enum.DESCRIPTOR.name, "")
    return {number: name.removeprefix(prefix) for name, number in enum.items()}


def short_name(enum: EnumTypeWrapper, value: int) -> str:
    """``value``'s name without its prefix, or the number as text when it has none."""
    return names_of(enum).get(value) or str(value)




def full_name(enum: EnumTypeWrapper, name: str) -> str:
    """The contract's name of a short name (``full_name(pb.Side, "BUY")`` is
    ``"SIDE_BUY"``); the type's UNSPECIFIED value for a name it does not have."""
    prefix = _PREFIXES.get(enum.DESCRIPTOR.name, "")
    return prefix + name if name in names_of(enum).values() else prefix + "UNSPECIFIED"
