from pretrade.v1 import risk_pb2 as _risk_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecidedOrderRecord(_message.Message):
    __slots__ = ("symbol", "side", "order_type", "quantity", "price", "valuation_price", "notional", "venue", "counterparty", "approved", "rejections", "decided_at_unix_ms", "time_in_force", "expire_at_unix_ms", "working_until_unix_ms", "replaces", "carried", "group_id")
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
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    WORKING_UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    CARRIED_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
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
    time_in_force: _risk_pb2.TimeInForce
    expire_at_unix_ms: int
    working_until_unix_ms: int
    replaces: bytes
    carried: int
    group_id: bytes
    def __init__(self, symbol: _Optional[str] = ..., side: _Optional[_Union[_risk_pb2.Side, str]] = ..., order_type: _Optional[_Union[_risk_pb2.OrderType, str]] = ..., quantity: _Optional[int] = ..., price: _Optional[int] = ..., valuation_price: _Optional[int] = ..., notional: _Optional[int] = ..., venue: _Optional[bytes] = ..., counterparty: _Optional[bytes] = ..., approved: _Optional[bool] = ..., rejections: _Optional[_Iterable[_Union[StoredRejection, _Mapping]]] = ..., decided_at_unix_ms: _Optional[int] = ..., time_in_force: _Optional[_Union[_risk_pb2.TimeInForce, str]] = ..., expire_at_unix_ms: _Optional[int] = ..., working_until_unix_ms: _Optional[int] = ..., replaces: _Optional[bytes] = ..., carried: _Optional[int] = ..., group_id: _Optional[bytes] = ...) -> None: ...

class StoredRejection(_message.Message):
    __slots__ = ("code", "observed", "limit")
    CODE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    code: _risk_pb2.RejectCode
    observed: int
    limit: int
    def __init__(self, code: _Optional[_Union[_risk_pb2.RejectCode, str]] = ..., observed: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("ts_unix_ms", "principal", "decision", "halt")
    TS_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    HALT_FIELD_NUMBER: _ClassVar[int]
    ts_unix_ms: int
    principal: str
    decision: AuditDecision
    halt: AuditHalt
    def __init__(self, ts_unix_ms: _Optional[int] = ..., principal: _Optional[str] = ..., decision: _Optional[_Union[AuditDecision, _Mapping]] = ..., halt: _Optional[_Union[AuditHalt, _Mapping]] = ...) -> None: ...

class AuditDecision(_message.Message):
    __slots__ = ("order_id", "account", "symbol", "side", "order_type", "quantity", "price", "venue", "counterparty", "approved", "codes", "notional", "latency_ns", "replayed", "replaces", "time_in_force", "expire_at_unix_ms", "order", "group_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    ORDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTY_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_NS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    account: str
    symbol: str
    side: _risk_pb2.Side
    order_type: _risk_pb2.OrderType
    quantity: int
    price: int
    venue: str
    counterparty: str
    approved: bool
    codes: _containers.RepeatedScalarFieldContainer[_risk_pb2.RejectCode]
    notional: int
    latency_ns: int
    replayed: bool
    replaces: str
    time_in_force: _risk_pb2.TimeInForce
    expire_at_unix_ms: int
    order: _risk_pb2.Order
    group_id: str
    def __init__(self, order_id: _Optional[str] = ..., account: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[_risk_pb2.Side, str]] = ..., order_type: _Optional[_Union[_risk_pb2.OrderType, str]] = ..., quantity: _Optional[int] = ..., price: _Optional[int] = ..., venue: _Optional[str] = ..., counterparty: _Optional[str] = ..., approved: _Optional[bool] = ..., codes: _Optional[_Iterable[_Union[_risk_pb2.RejectCode, str]]] = ..., notional: _Optional[int] = ..., latency_ns: _Optional[int] = ..., replayed: _Optional[bool] = ..., replaces: _Optional[str] = ..., time_in_force: _Optional[_Union[_risk_pb2.TimeInForce, str]] = ..., expire_at_unix_ms: _Optional[int] = ..., order: _Optional[_Union[_risk_pb2.Order, _Mapping]] = ..., group_id: _Optional[str] = ...) -> None: ...

class AuditHalt(_message.Message):
    __slots__ = ("source", "scope", "target", "mode", "reason", "by", "expires_at_unix_ms")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    source: str
    scope: _risk_pb2.HaltScope
    target: str
    mode: _risk_pb2.HaltMode
    reason: str
    by: str
    expires_at_unix_ms: int
    def __init__(self, source: _Optional[str] = ..., scope: _Optional[_Union[_risk_pb2.HaltScope, str]] = ..., target: _Optional[str] = ..., mode: _Optional[_Union[_risk_pb2.HaltMode, str]] = ..., reason: _Optional[str] = ..., by: _Optional[str] = ..., expires_at_unix_ms: _Optional[int] = ...) -> None: ...

class TableChanges(_message.Message):
    __slots__ = ("sequence", "accounts", "invalid_changed", "symbols", "halts", "reloaded", "status", "writer", "update_lag_counts", "update_lag_seconds_sum", "groups")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    INVALID_CHANGED_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    HALTS_FIELD_NUMBER: _ClassVar[int]
    RELOADED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_LAG_COUNTS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_LAG_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    accounts: _containers.RepeatedScalarFieldContainer[bytes]
    invalid_changed: _containers.RepeatedScalarFieldContainer[bytes]
    symbols: _containers.RepeatedScalarFieldContainer[bytes]
    halts: _containers.RepeatedCompositeFieldContainer[_risk_pb2.Halt]
    reloaded: bool
    status: _risk_pb2.ServerStatus
    writer: str
    update_lag_counts: _containers.RepeatedScalarFieldContainer[int]
    update_lag_seconds_sum: float
    groups: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, sequence: _Optional[int] = ..., accounts: _Optional[_Iterable[bytes]] = ..., invalid_changed: _Optional[_Iterable[bytes]] = ..., symbols: _Optional[_Iterable[bytes]] = ..., halts: _Optional[_Iterable[_Union[_risk_pb2.Halt, _Mapping]]] = ..., reloaded: _Optional[bool] = ..., status: _Optional[_Union[_risk_pb2.ServerStatus, _Mapping]] = ..., writer: _Optional[str] = ..., update_lag_counts: _Optional[_Iterable[int]] = ..., update_lag_seconds_sum: _Optional[float] = ..., groups: _Optional[_Iterable[bytes]] = ...) -> None: ...
