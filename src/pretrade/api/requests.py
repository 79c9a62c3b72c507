"""What a well-formed request looks like: the shape checks before the engine sees an order.

A request that fails here ends with INVALID_ARGUMENT (or, inside a batch,
an INVALID_REQUEST rejection of that one order); everything about the order
itself (quantity, price, limits, halts) is a coded rejection from the
pipeline. The id and text rules are :mod:`pretrade.engine.text`'s, and the
lengths the compiled core's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pretrade._core.constants import MAX_ORDER_ID_LENGTH, MAX_TAG_LENGTH
from pretrade._core.text import order_ids
from pretrade.engine.errors import InvalidRequest
from pretrade.engine.text import require_id, require_printable
from pretrade.v1 import risk_pb2 as pb

#: Orders one EvaluateOrders call may carry.
MAX_BATCH = 10_000
SIDES = frozenset((pb.SIDE_BUY, pb.SIDE_SELL, pb.SIDE_SELL_SHORT))
ORDER_TYPES = frozenset((pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_MARKET))
TIMES_IN_FORCE = frozenset((pb.TIME_IN_FORCE_UNSPECIFIED, pb.TIME_IN_FORCE_DAY,
                            pb.TIME_IN_FORCE_IOC, pb.TIME_IN_FORCE_GTC, pb.TIME_IN_FORCE_GTD))
CONTINGENCIES = frozenset((pb.CONTINGENCY_UNSPECIFIED, pb.CONTINGENCY_ONE_CANCELS_OTHER))


class ValidOrder(NamedTuple):
    """The byte-string fields of an Order that passed :func:`validate_order` (a
    tuple: built once per order, so it must cost next to nothing)."""

    order_id: bytes
    account: bytes
    symbol: bytes
    venue: bytes
    counterparty: bytes
    group: bytes = b""          # Order.group_id (an OCO group), b"" for none


def validate_order(order: pb.Order) -> ValidOrder:
    """Check the request's shape; return its ids as bytes, or raise InvalidRequest.

    The five texts are checked at once by the core (:func:`order_ids`); only
    when one is refused are they checked in turn, for the message naming it.
    """
    ids = order_ids(order.order_id, order.account_id, order.symbol, order.venue,
                    order.counterparty)
    if ids is None:
        return _refuse_order(order)
    _check_order_enums(order)
    if order.group_id or order.contingency:
        return ValidOrder(*ids)._replace(group=_group(order))
    return ValidOrder(*ids)


def _refuse_order(order: pb.Order) -> ValidOrder:
    # The texts one by one, in the order the fields are documented: the first
    # refused raises (enums between, as before, so the message names the same field).
    order_id = require_printable(order.order_id, "order_id", MAX_ORDER_ID_LENGTH, required=True)
    account = require_id(order.account_id, "account_id")
    symbol = require_id(order.symbol, "symbol")
    _check_order_enums(order)
    venue = require_printable(order.venue, "venue", MAX_TAG_LENGTH, required=False)
    counterparty = require_printable(order.counterparty, "counterparty", MAX_TAG_LENGTH,
                                     required=False)
    return ValidOrder(order_id, account, symbol, venue, counterparty, _group(order))


def _group(order: pb.Order) -> bytes:
    # An order group needs both its id (the order id's alphabet and length)
    # and its contingency; one without the other is malformed.
    if order.contingency not in CONTINGENCIES:
        raise InvalidRequest(f"contingency must be CONTINGENCY_ONE_CANCELS_OTHER (or "
                             f"unspecified), got {order.contingency}", "contingency")
    group = require_printable(order.group_id, "group_id", MAX_ORDER_ID_LENGTH, required=False)
    if group and not order.contingency:
        raise InvalidRequest("group_id needs a contingency (CONTINGENCY_ONE_CANCELS_OTHER)",
                             "contingency")
    if order.contingency and not group:
        raise InvalidRequest("a contingency needs the group_id of its order group", "group_id")
    return group


def _check_order_enums(order: pb.Order) -> None:
    if order.side not in SIDES:
        raise InvalidRequest(f"side must be SIDE_BUY, SIDE_SELL or SIDE_SELL_SHORT, "
                             f"got {order.side}", "side")
    if order.order_type not in ORDER_TYPES:
        raise InvalidRequest(f"order_type must be ORDER_TYPE_LIMIT or ORDER_TYPE_MARKET, "
                             f"got {order.order_type}", "order_type")
    if order.time_in_force not in TIMES_IN_FORCE:
        raise InvalidRequest(f"time_in_force must be TIME_IN_FORCE_DAY, _IOC, _GTC or _GTD "
                             f"(or unspecified), got {order.time_in_force}", "time_in_force")
    if order.expire_at_unix_ms < 0:
        raise InvalidRequest(f"expire_at_unix_ms must not be negative, got "
                             f"{order.expire_at_unix_ms}", "expire_at_unix_ms")
    if order.expire_at_unix_ms and order.time_in_force != pb.TIME_IN_FORCE_GTD:
        raise InvalidRequest("expire_at_unix_ms is for TIME_IN_FORCE_GTD orders only",
                             "expire_at_unix_ms")


@dataclass(frozen=True)
class ValidReplace:
    """The byte-string ids of a ReplaceRequest that passed :func:`validate_replace`."""

    order_id: bytes
    account: bytes
    original: bytes


def validate_replace(request: pb.ReplaceRequest) -> ValidReplace:
    """Check a cancel/replace's shape; return its ids as bytes, or raise InvalidRequest.

    A negative quantity or price is malformed (0 keeps the original's); whether
    the original works, and everything else, is the pipeline's coded answer.
    """
    order_id = require_printable(request.order_id, "order_id", MAX_ORDER_ID_LENGTH,
                                 required=True)
    account = require_id(request.account_id, "account_id")
    original = require_printable(request.original_order_id, "original_order_id",
                                 MAX_ORDER_ID_LENGTH, required=True)
    if request.quantity < 0:
        raise InvalidRequest(f"quantity must be > 0 (or 0: unchanged), got {request.quantity}",
                             "quantity")
    if request.price < 0:
        raise InvalidRequest(f"price must be > 0 (or 0: unchanged), got {request.price}",
                             "price")
    return ValidReplace(order_id, account, original)


def validate_portfolio_request(request: pb.PortfolioRequest) -> tuple[bytes, bool]:
    """The id a StreamPortfolio request names, and whether it is a group's.

    Exactly one of account_id and group_id: both or neither is malformed, and
    a group id follows the account-id rules.
    """
    if request.account_id and request.group_id:
        raise InvalidRequest("set account_id or group_id, not both: a stream follows one "
                             "account or one group", "group_id")
    if not request.account_id and not request.group_id:
        raise InvalidRequest("account_id or group_id is required", "account_id")
    if request.group_id:
        return require_id(request.group_id, "group_id"), True
    return require_id(request.account_id, "account_id"), False


def validate_batch(batch: pb.OrderBatch) -> None:
    """Refuse a batch larger than :data:`MAX_BATCH` (its orders are checked one by one)."""
    if len(batch.orders) > MAX_BATCH:
        raise InvalidRequest(f"a batch holds at most {MAX_BATCH} orders, got {len(batch.orders)}",
                             "orders")
