"""The one place that maps pretrade's errors and rejections to the wire.

Domain code raises the small hierarchy of :mod:`pretrade.engine.errors`; the
servicer and the interceptors turn each into a gRPC status with
:func:`grpc_status`, and into machine-readable details with
:func:`status_details` (``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer, as ``grpc_status.rpc_status.from_call`` reads it): INVALID_ARGUMENT
carries a ``BadRequest`` (the field at fault and why), FAILED_PRECONDITION and
RESOURCE_EXHAUSTED an ``ErrorInfo`` (a reason, :data:`ERROR_DOMAIN`, metadata).
Coded rejections (a normal "no" to an order) become ``Rejection`` messages
with a readable text built by :func:`describe_rejection` from the figures the
check recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from pretrade._core.constants import (
    ORDER_DONE,
    ORDER_ID_EXPIRED,
    ORDER_REJECTED,
    ORDER_REPLACED,
)
from pretrade.engine.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PretradeError,
    Unauthenticated,
    Unavailable,
)
from pretrade.engine.fixedpoint import INT64_MAX, format_money, format_quantity
from pretrade.engine.limits import MAX_ACCOUNT_GROUPS, LimitKind
from pretrade.engine.names import short_name
from pretrade.engine.sessions import format_unix_ms
from pretrade.v1 import risk_pb2 as pb

#: The status each domain error ends a call with.
_STATUS: dict[type[PretradeError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}

#: ErrorInfo.domain of every pretrade error.
ERROR_DOMAIN = "pretrade.dev"
#: ErrorInfo.reason of a call refused because its class of calls is at its budget.
TOO_MANY_CALLS = "TOO_MANY_CALLS"
#: ErrorInfo.reason of a call refused because another address serves its class of calls.
SERVED_ELSEWHERE = "SERVED_ELSEWHERE"
Metadata = tuple[tuple[str, str | bytes], ...]


def grpc_status(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and details an RPC ends with when ``error`` escapes it."""
    if isinstance(error, PretradeError):
        for kind in type(error).__mro__:
            if kind in _STATUS:
                return _STATUS[kind], str(error)
        return grpc.StatusCode.INTERNAL, str(error)
    # Imported here so this module stays importable without a Redis client.
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return grpc.StatusCode.UNAVAILABLE, f"Redis is unreachable: {error}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}"


def status_details(code: grpc.StatusCode, details: str, error: Exception | None = None,
                   info: error_details_pb2.ErrorInfo | None = None) -> Metadata:
    """The trailing metadata that carries a status's machine-readable details.

    INVALID_ARGUMENT: a ``BadRequest`` with one field violation (the field
    :class:`InvalidRequest` names; empty when the request as a whole is
    wrong). FAILED_PRECONDITION: an ``ErrorInfo`` from a
    :class:`FailedPrecondition`. Any status: ``info``, when given (the call
    budgets' RESOURCE_EXHAUSTED). Other statuses carry none (empty tuple).
    """
    packed: list[any_pb2.Any] = []
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = error.field if isinstance(error, InvalidRequest) else ""
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=details)
        packed.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(error, FailedPrecondition):
        info = error_info(error.reason, error.metadata)
    if info is not None:
        packed.append(_pack(info))
    if not packed:
        return ()
    status = status_pb2.Status(code=code.value[0], message=details, details=packed)
    return tuple(rpc_status.to_status(status).trailing_metadata)


def error_info(reason: str, metadata: Mapping[str, str] | None = None
               ) -> error_details_pb2.ErrorInfo:
    """An ``ErrorInfo`` of :data:`ERROR_DOMAIN`."""
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN,
                                       metadata=dict(metadata or {}))


def _pack(message: error_details_pb2.BadRequest | error_details_pb2.ErrorInfo) -> any_pb2.Any:
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped


_HALT_SCOPES = frozenset((pb.HALT_SCOPE_GLOBAL, pb.HALT_SCOPE_ACCOUNT, pb.HALT_SCOPE_SYMBOL))


def _missing_limits(mask: int) -> str:
    names = [kind.field for kind in LimitKind if mask & (1 << kind)]
    return ", ".join(names) or "none"


#: What each Capacity is, and the setting that sizes it.
_CAPACITIES: dict[int, tuple[str, str, str]] = {
    pb.CAPACITY_ORDER_TABLE: ("the order table is full", "decided orders", "max_orders"),
    pb.CAPACITY_ACCOUNT_ORDERS: ("this account holds its whole share of the order table",
                                 "decided orders", "max_orders_per_account"),
    pb.CAPACITY_ACCOUNTS: ("the table has no room for this account", "accounts",
                           "max_accounts"),
    pb.CAPACITY_INSTRUMENTS: ("the table has no room for this symbol's instrument",
                              "instruments", "max_instruments"),
    pb.CAPACITY_POSITIONS: ("the table has no room for this account's positions",
                            "position slots", "max_positions"),
    pb.CAPACITY_OVERRIDES: ("the table has no room for this account's per-symbol limits",
                            "override records", "max_overrides"),
    pb.CAPACITY_GROUPS: ("the table has no room for a group this account is in",
                         "group records", "max_groups: max_accounts, at most 4,096"),
}

#: Why a group of the account cannot be checked (GROUP_UNAVAILABLE's observed).
_GROUP_UNAVAILABLE: dict[int, str] = {
    1: "has no group:<G> hash (it is not configured)",
    3: "has a group:<G> hash that could not be parsed; see the server log",
    4: "has an account in a shard this node does not hold now",
    5: ("has an account's key, its own group:<G>, or (as it values its accounts) the key of "
        "a symbol an account holds, in a Redis Cluster slot whose primary was lost"),
    6: "has an account whose state in Redis is invalid or did not fit in the table",
}


def _capacity(what: int, limit: int) -> str:
    """CAPACITY_EXHAUSTED: which capacity (``what``) is full, and its size."""
    if what not in _CAPACITIES:
        return "the engine's order table is full; see the server log"
    sentence, unit, setting = _CAPACITIES[what]
    if what == pb.CAPACITY_ACCOUNT_ORDERS:
        return (f"{sentence} ({limit:,} {unit}, {setting}); it frees as its orders stop "
                "working, and this order was not remembered: send it again then")
    if what == pb.CAPACITY_ORDER_TABLE:
        return (f"{sentence} ({limit:,} {unit}, {setting}); this order was not remembered: "
                "send it again later")
    return (f"{sentence} ({limit:,} {unit}, {setting}): its orders are refused; "
            "see the server log")


def describe_rejection(code: int, observed: int, limit: int, currency: str = "") -> str:
    """A human-readable sentence for one coded rejection, with its figures.

    Money is written as a person reads it, in ``currency`` (the instrument's:
    ``$6,891.00``; ``""``: the bare amount), quantities with separators.
    """

    def money(units: int) -> str:
        return format_money(units, currency)

    qty = format_quantity
    scope = (short_name(pb.HaltScope, observed).lower() if observed in _HALT_SCOPES
             else "unknown")
    match code:
        case pb.REJECT_CODE_STALE_DATA:
            if observed in (-pb.HALT_SCOPE_ACCOUNT, -pb.HALT_SCOPE_SYMBOL):
                whose = ("the account" if observed == -pb.HALT_SCOPE_ACCOUNT
                         else "the symbol, or of a holding the order is valued over,")
                return (f"a key of {whose} is in Redis Cluster slot {limit}, whose primary "
                        "was lost; such orders are refused until the slot is re-read on the "
                        "primary that serves it now")
            if limit > 0:
                return (f"the table holds version {observed:,} of the account's state and "
                        f"the order asks for at least {limit:,}; it is refused until the "
                        "newer state is read")
            return ("risk state is not in sync with Redis, or this node's lease of the "
                    "account's shard is not renewed; orders are refused until it is")
        case pb.REJECT_CODE_UNKNOWN_ACCOUNT:
            return "unknown account: no holdings or limits are configured for it"
        case pb.REJECT_CODE_UNKNOWN_SYMBOL:
            return "unknown symbol: no instrument reference data"
        case pb.REJECT_CODE_LIMITS_NOT_CONFIGURED:
            return f"limits not configured: {_missing_limits(observed)}"
        case pb.REJECT_CODE_INVALID_QUANTITY:
            return f"quantity {qty(observed)} is not positive"
        case pb.REJECT_CODE_INVALID_PRICE:
            return f"limit price {money(observed)} is not positive"
        case pb.REJECT_CODE_PRICE_UNAVAILABLE:
            if observed == 1:
                return "a holding of the account has no last price, so it cannot be valued"
            return "no reference (last) price for the symbol"
        case pb.REJECT_CODE_ARITHMETIC_OVERFLOW:
            return (f"quantity {qty(observed)} x price {money(limit)} or the resulting "
                    "position does not fit in int64")
        case pb.REJECT_CODE_MAX_ORDER_QUANTITY:
            return f"order quantity {qty(observed)} exceeds max order quantity {qty(limit)}"
        case pb.REJECT_CODE_MAX_ORDER_NOTIONAL:
            return (f"order notional {money(observed)} exceeds max order notional "
                    f"{money(limit)}")
        case pb.REJECT_CODE_MAX_NET_POSITION:
            return (f"net position would be {qty(observed)}, over the max net position "
                    f"{qty(limit)}")
        case pb.REJECT_CODE_MAX_LONG_POSITION:
            return (f"long position would be {qty(observed)}, over the max long position "
                    f"{qty(limit)}")
        case pb.REJECT_CODE_MAX_SHORT_POSITION:
            return (f"short position would be {qty(observed)}, over the max short position "
                    f"{qty(limit)}")
        case pb.REJECT_CODE_GLOBAL_HALT:
            return "trading is halted globally"
        case pb.REJECT_CODE_ACCOUNT_HALT:
            return "trading is halted for this account"
        case pb.REJECT_CODE_SYMBOL_HALT:
            return "trading is halted for this symbol"
        case pb.REJECT_CODE_REDUCE_ONLY:
            return (f"{scope} halt is REDUCE_ONLY and this order does not reduce the "
                    "position")
        case pb.REJECT_CODE_INVALID_STATE:
            return f"the {scope}'s state in Redis could not be parsed; see the server log"
        case pb.REJECT_CODE_TICK_SIZE:
            return (f"price {money(observed)} is not a multiple of the tick size "
                    f"{money(limit)}")
        case pb.REJECT_CODE_PRICE_COLLAR:
            return (f"limit price is {observed} bp from the last price, outside the "
                    f"{limit} bp collar")
        case pb.REJECT_CODE_MIN_ORDER_QUANTITY:
            return f"order quantity {qty(observed)} is below the minimum {qty(limit)}"
        case pb.REJECT_CODE_ORDER_EXPIRED:
            if observed == 0:
                return "a GTD order needs expire_at_unix_ms"
            return (f"the GTD order expires at {format_unix_ms(observed)}, not after "
                    f"the server's time {format_unix_ms(limit)}")
        case pb.REJECT_CODE_MIN_ORDER_NOTIONAL:
            return (f"order notional {money(observed)} is below the minimum "
                    f"{money(limit)}")
        case pb.REJECT_CODE_LOT_SIZE:
            return f"order quantity {qty(observed)} is not a multiple of the lot size {qty(limit)}"
        case pb.REJECT_CODE_MAX_GROSS_EXPOSURE:
            return (f"gross exposure would be {money(observed)}, over "
                    f"{money(limit)}")
        case pb.REJECT_CODE_MAX_NET_EXPOSURE:
            return (f"net exposure would be {money(observed)}, over "
                    f"{money(limit)}")
        case pb.REJECT_CODE_BUYING_POWER:
            return (f"order needs {money(observed)} but buying power is "
                    f"{money(limit)}")
        case pb.REJECT_CODE_MARGIN_SHORTFALL:
            return (f"initial margin would be {money(observed)}, over the equity "
                    f"{money(limit)}")
        case pb.REJECT_CODE_GROUP_MISMATCH:
            what = {1: "symbol", 2: "venue", 3: "counterparty"}.get(observed, "terms")
            return (f"a working order of the same group_id has another {what}: the legs of "
                    "an order group are of one symbol, venue and counterparty")
        case pb.REJECT_CODE_GROUP_MAX_GROSS_EXPOSURE:
            return (f"the gross exposure of a group of the account would be {money(observed)}, "
                    f"over the group's {money(limit)}")
        case pb.REJECT_CODE_GROUP_MAX_NET_EXPOSURE:
            return (f"the net exposure of a group of the account would be {money(observed)}, "
                    f"over the group's {money(limit)}")
        case pb.REJECT_CODE_GROUP_MAX_LONG_POSITION:
            return (f"the long position of a group of the account would be {qty(observed)}, "
                    f"over the group's max long position {qty(limit)}")
        case pb.REJECT_CODE_GROUP_MAX_SHORT_POSITION:
            return (f"the short position of a group of the account would be {qty(observed)}, "
                    f"over the group's max short position {qty(limit)}")
        case pb.REJECT_CODE_GROUP_ORDER_RATE:
            return (f"{observed} orders of a group of the account in the group's window, over "
                    f"its limit of {limit}")
        case pb.REJECT_CODE_GROUP_NOTIONAL_RATE:
            if observed == INT64_MAX:
                return ("too many orders of a group of the account in the group's window to "
                        "total their notional; refused until the window clears")
            return (f"notional of a group of the account in the group's window would be "
                    f"{money(observed)}, over {money(limit)}")
        case pb.REJECT_CODE_GROUP_LOSS_LIMIT:
            return (f"day P&L of a group of the account {money(observed)} is below the group's "
                    f"loss limit {money(limit)}; only reducing orders may go")
        case pb.REJECT_CODE_GROUP_UNAVAILABLE:
            if observed == 2:
                return ("the account's groups cannot be resolved (a bad group id in "
                        f"groups:{{ACC}}, a cycle of parents, or more than {MAX_ACCOUNT_GROUPS} "
                        "groups); see the server log")
            why = _GROUP_UNAVAILABLE.get(observed, "cannot be checked")
            return (f"group {limit} of the account (its groups sorted by id) {why}: its "
                    "orders are refused")
        case pb.REJECT_CODE_ORDER_RATE:
            return f"{observed} orders in the window, over the limit of {limit}"
        case pb.REJECT_CODE_NOTIONAL_RATE:
            if observed == INT64_MAX:
                return ("too many orders in the window to total their notional; "
                        "refused until the window clears")
            return (f"notional in the window would be {money(observed)}, over "
                    f"{money(limit)}")
        case pb.REJECT_CODE_MAX_WORKING_ORDERS:
            return f"{observed} working orders, over the limit of {limit}"
        case pb.REJECT_CODE_DUPLICATE_ORDER_ID:
            if observed == ORDER_ID_EXPIRED:
                return ("order_id may have been decided before and its record left the "
                        "engine's table; its decision could not be read back: send it again")
            return "order_id was already used for a different order on this account"
        case pb.REJECT_CODE_SHORT_SALE_NOT_MARKED:
            return (f"the sell would leave the position at {qty(observed)}: a sale below zero "
                    "must be marked SELL_SHORT")
        case pb.REJECT_CODE_SHORT_SALE_RESTRICTED:
            return "the symbol is on the short-sale restricted list"
        case pb.REJECT_CODE_NO_LOCATE:
            return f"short sale of {qty(observed)} but only {qty(limit)} located"
        case pb.REJECT_CODE_ISSUER_CONCENTRATION:
            return f"issuer would be {observed} bp of gross exposure, over {limit} bp"
        case pb.REJECT_CODE_SECTOR_CONCENTRATION:
            return f"sector would be {observed} bp of gross exposure, over {limit} bp"
        case pb.REJECT_CODE_VENUE_EXPOSURE:
            return (f"working notional at the venue would be {money(observed)}, "
                    f"over {money(limit)}")
        case pb.REJECT_CODE_COUNTERPARTY_EXPOSURE:
            return (f"working notional with the counterparty would be "
                    f"{money(observed)}, over {money(limit)}")
        case pb.REJECT_CODE_LOSS_LIMIT:
            return (f"day P&L {money(observed)} is below the loss limit "
                    f"{money(limit)}; only reducing orders may go")
        case pb.REJECT_CODE_CAPACITY_EXHAUSTED:
            return _capacity(observed, limit)
        case pb.REJECT_CODE_INVALID_REQUEST:
            return "the order is malformed"
        case pb.REJECT_CODE_AUDIT_UNAVAILABLE:
            return (f"the decision could not be recorded: the audit queue is full ({observed} "
                    f"of {limit} records waiting for Redis); the order was not decided, "
                    "send it again later")
        case pb.REJECT_CODE_UNKNOWN_ORIGINAL_ORDER:
            return "original_order_id names no order of this account: nothing to replace"
        case pb.REJECT_CODE_ORIGINAL_NOT_WORKING:
            why = {ORDER_REJECTED: "it was rejected", ORDER_DONE: "it was filled or cancelled",
                   ORDER_REPLACED: "it was already replaced"}.get(
                observed, "it no longer works")
            return f"the original order is not working ({why}): nothing to replace"
        case pb.REJECT_CODE_REPLACE_BELOW_FILLED:
            return (f"new quantity {qty(observed)} is not above the {qty(limit)} the original "
                    "already filled")
    return f"rejected with code {code}"


def rejection_message(code: int, observed: int, limit: int, currency: str = ""
                      ) -> pb.Rejection:
    return pb.Rejection(code=cast(pb.RejectCode, code),
                        message=describe_rejection(code, observed, limit, currency),
                        observed=observed, limit=limit)
