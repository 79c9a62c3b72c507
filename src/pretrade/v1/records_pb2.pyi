from pretrade.v1 import risk_pb2 as _risk_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecidedOrderRecord(_message.Message):
    __slots__ = ("symbol", "side", "order_type", "quantity", "price", "valuation_price", "notional", "venue", "counterparty", "approved", "rejections", "decided_at_unix_ms")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    ORDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    VALUATION_PRICE_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTY_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    side: _risk_pb2.Side
    order_type: _risk_pb2.OrderType
    quantity: int
    price: int
    valuation_price: int
    notional: int
    venue: bytes
    counterparty: bytes
    approved: bool
    rejections: _containers.RepeatedCompositeFieldContainer[StoredRejection]
    decided_at_unix_ms: int
    def __init__(self, symbol: _Optional[str] = ..., side: _Optional[_Union[_risk_pb2.Side, str]] = ..., order_type: _Optional[_Union[_risk_pb2.OrderType, str]] = ..., quantity: _Optional[int] = ..., price: _Optional[int] = ..., valuation_price: _Optional[int] = ..., notional: _Optional[int] = ..., venue: _Optional[bytes] = ..., counterparty: _Optional[bytes] = ..., approved: _Optional[bool] = ..., rejections: _Optional[_Iterable[_Union[StoredRejection, _Mapping]]] = ..., decided_at_unix_ms: _Optional[int] = ...) -> None: ...

class StoredRejection(_message.Message):
    __slots__ = ("code", "observed", "limit")
    CODE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    code: _risk_pb2.RejectCode
    observed: int
    limit: int
    def __init__(self, code: _Optional[_Union[_risk_pb2.RejectCode, str]] = ..., observed: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...
