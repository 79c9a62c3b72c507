from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNSPECIFIED: _ClassVar[Side]
    SIDE_BUY: _ClassVar[Side]
    SIDE_SELL: _ClassVar[Side]
    SIDE_SELL_SHORT: _ClassVar[Side]

class TimeInForce(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIME_IN_FORCE_UNSPECIFIED: _ClassVar[TimeInForce]
    TIME_IN_FORCE_DAY: _ClassVar[TimeInForce]
    TIME_IN_FORCE_IOC: _ClassVar[TimeInForce]
    TIME_IN_FORCE_GTC: _ClassVar[TimeInForce]
    TIME_IN_FORCE_GTD: _ClassVar[TimeInForce]

class OrderType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_TYPE_UNSPECIFIED: _ClassVar[OrderType]
    ORDER_TYPE_LIMIT: _ClassVar[OrderType]
    ORDER_TYPE_MARKET: _ClassVar[OrderType]

class Contingency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTINGENCY_UNSPECIFIED: _ClassVar[Contingency]
    CONTINGENCY_ONE_CANCELS_OTHER: _ClassVar[Contingency]

class RejectCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_CODE_UNSPECIFIED: _ClassVar[RejectCode]
    REJECT_CODE_STALE_DATA: _ClassVar[RejectCode]
    REJECT_CODE_UNKNOWN_ACCOUNT: _ClassVar[RejectCode]
    REJECT_CODE_UNKNOWN_SYMBOL: _ClassVar[RejectCode]
    REJECT_CODE_LIMITS_NOT_CONFIGURED: _ClassVar[RejectCode]
    REJECT_CODE_INVALID_QUANTITY: _ClassVar[RejectCode]
    REJECT_CODE_INVALID_PRICE: _ClassVar[RejectCode]
    REJECT_CODE_PRICE_UNAVAILABLE: _ClassVar[RejectCode]
    REJECT_CODE_ARITHMETIC_OVERFLOW: _ClassVar[RejectCode]
    REJECT_CODE_MAX_ORDER_QUANTITY: _ClassVar[RejectCode]
    REJECT_CODE_MAX_ORDER_NOTIONAL: _ClassVar[RejectCode]
    REJECT_CODE_MAX_NET_POSITION: _ClassVar[RejectCode]
    REJECT_CODE_MAX_LONG_POSITION: _ClassVar[RejectCode]
    REJECT_CODE_MAX_SHORT_POSITION: _ClassVar[RejectCode]
    REJECT_CODE_GLOBAL_HALT: _ClassVar[RejectCode]
    REJECT_CODE_ACCOUNT_HALT: _ClassVar[RejectCode]
    REJECT_CODE_SYMBOL_HALT: _ClassVar[RejectCode]
    REJECT_CODE_REDUCE_ONLY: _ClassVar[RejectCode]
    REJECT_CODE_INVALID_STATE: _ClassVar[RejectCode]
    REJECT_CODE_TICK_SIZE: _ClassVar[RejectCode]
    REJECT_CODE_PRICE_COLLAR: _ClassVar[RejectCode]
    REJECT_CODE_MIN_ORDER_QUANTITY: _ClassVar[RejectCode]
    REJECT_CODE_LOT_SIZE: _ClassVar[RejectCode]
    REJECT_CODE_MAX_GROSS_EXPOSURE: _ClassVar[RejectCode]
    REJECT_CODE_MAX_NET_EXPOSURE: _ClassVar[RejectCode]
    REJECT_CODE_BUYING_POWER: _ClassVar[RejectCode]
    REJECT_CODE_ORDER_RATE: _ClassVar[RejectCode]
    REJECT_CODE_NOTIONAL_RATE: _ClassVar[RejectCode]
    REJECT_CODE_MAX_WORKING_ORDERS: _ClassVar[RejectCode]
    REJECT_CODE_DUPLICATE_ORDER_ID: _ClassVar[RejectCode]
    REJECT_CODE_SHORT_SALE_NOT_MARKED: _ClassVar[RejectCode]
    REJECT_CODE_SHORT_SALE_RESTRICTED: _ClassVar[RejectCode]
    REJECT_CODE_NO_LOCATE: _ClassVar[RejectCode]
    REJECT_CODE_ISSUER_CONCENTRATION: _ClassVar[RejectCode]
    REJECT_CODE_SECTOR_CONCENTRATION: _ClassVar[RejectCode]
    REJECT_CODE_VENUE_EXPOSURE: _ClassVar[RejectCode]
    REJECT_CODE_COUNTERPARTY_EXPOSURE: _ClassVar[RejectCode]
    REJECT_CODE_LOSS_LIMIT: _ClassVar[RejectCode]
    REJECT_CODE_CAPACITY_EXHAUSTED: _ClassVar[RejectCode]
    REJECT_CODE_INVALID_REQUEST: _ClassVar[RejectCode]
    REJECT_CODE_AUDIT_UNAVAILABLE: _ClassVar[RejectCode]
    REJECT_CODE_MIN_ORDER_NOTIONAL: _ClassVar[RejectCode]
    REJECT_CODE_ORDER_EXPIRED: _ClassVar[RejectCode]
    REJECT_CODE_MARGIN_SHORTFALL: _ClassVar[RejectCode]
    REJECT_CODE_GROUP_MISMATCH: _ClassVar[RejectCode]
    REJECT_CODE_UNKNOWN_ORIGINAL_ORDER: _ClassVar[RejectCode]
    REJECT_CODE_ORIGINAL_NOT_WORKING: _ClassVar[RejectCode]
    REJECT_CODE_REPLACE_BELOW_FILLED: _ClassVar[RejectCode]
    REJECT_CODE_GROUP_MAX_GROSS_EXPOSURE: _ClassVar[RejectCode]
    REJECT_CODE_GROUP_MAX_NET_EXPOSURE: _ClassVar[RejectCode]
    REJECT_CODE_GROUP_MAX_LONG_POSITION: _ClassVar[RejectCode]
    REJECT_CODE_GROUP_MAX_SHORT_POSITION: _ClassVar[RejectCode]
    REJECT_CODE_GROUP_ORDER_RATE: _ClassVar[RejectCode]
    REJECT_CODE_GROUP_NOTIONAL_RATE: _ClassVar[RejectCode]
    REJECT_CODE_GROUP_LOSS_LIMIT: _ClassVar[RejectCode]
    REJECT_CODE_GROUP_UNAVAILABLE: _ClassVar[RejectCode]

class Capacity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPACITY_UNSPECIFIED: _ClassVar[Capacity]
    CAPACITY_ORDER_TABLE: _ClassVar[Capacity]
    CAPACITY_ACCOUNT_ORDERS: _ClassVar[Capacity]
    CAPACITY_ACCOUNTS: _ClassVar[Capacity]
    CAPACITY_INSTRUMENTS: _ClassVar[Capacity]
    CAPACITY_POSITIONS: _ClassVar[Capacity]
    CAPACITY_OVERRIDES: _ClassVar[Capacity]
    CAPACITY_GROUPS: _ClassVar[Capacity]

class HaltScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HALT_SCOPE_UNSPECIFIED: _ClassVar[HaltScope]
    HALT_SCOPE_GLOBAL: _ClassVar[HaltScope]
    HALT_SCOPE_ACCOUNT: _ClassVar[HaltScope]
    HALT_SCOPE_SYMBOL: _ClassVar[HaltScope]

class HaltMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HALT_MODE_UNSPECIFIED: _ClassVar[HaltMode]
    HALT_MODE_ACTIVE: _ClassVar[HaltMode]
    HALT_MODE_REDUCE_ONLY: _ClassVar[HaltMode]
    HALT_MODE_HALTED: _ClassVar[HaltMode]

class PortfolioUpdateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PORTFOLIO_UPDATE_KIND_UNSPECIFIED: _ClassVar[PortfolioUpdateKind]
    PORTFOLIO_UPDATE_KIND_SNAPSHOT: _ClassVar[PortfolioUpdateKind]
    PORTFOLIO_UPDATE_KIND_UPDATE: _ClassVar[PortfolioUpdateKind]
    PORTFOLIO_UPDATE_KIND_HEARTBEAT: _ClassVar[PortfolioUpdateKind]

class Valuation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUATION_UNSPECIFIED: _ClassVar[Valuation]
    VALUATION_PRICED: _ClassVar[Valuation]
    VALUATION_NO_PRICE: _ClassVar[Valuation]
    VALUATION_OVERFLOW: _ClassVar[Valuation]
    VALUATION_INVALID_STATE: _ClassVar[Valuation]

class AlertKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_KIND_UNSPECIFIED: _ClassVar[AlertKind]
    ALERT_KIND_HALT: _ClassVar[AlertKind]
    ALERT_KIND_HALT_LIFTED: _ClassVar[AlertKind]
    ALERT_KIND_LIMIT_BREACH: _ClassVar[AlertKind]
    ALERT_KIND_LIMIT_CLEARED: _ClassVar[AlertKind]
    ALERT_KIND_INVALID_STATE: _ClassVar[AlertKind]
    ALERT_KIND_INVALID_STATE_CLEARED: _ClassVar[AlertKind]
    ALERT_KIND_MARGIN_CALL: _ClassVar[AlertKind]
    ALERT_KIND_MARGIN_CALL_CLEARED: _ClassVar[AlertKind]
SIDE_UNSPECIFIED: Side
SIDE_BUY: Side
SIDE_SELL: Side
SIDE_SELL_SHORT: Side
TIME_IN_FORCE_UNSPECIFIED: TimeInForce
TIME_IN_FORCE_DAY: TimeInForce
TIME_IN_FORCE_IOC: TimeInForce
TIME_IN_FORCE_GTC: TimeInForce
TIME_IN_FORCE_GTD: TimeInForce
ORDER_TYPE_UNSPECIFIED: OrderType
ORDER_TYPE_LIMIT: OrderType
ORDER_TYPE_MARKET: OrderType
CONTINGENCY_UNSPECIFIED: Contingency
CONTINGENCY_ONE_CANCELS_OTHER: Contingency
REJECT_CODE_UNSPECIFIED: RejectCode
REJECT_CODE_STALE_DATA: RejectCode
REJECT_CODE_UNKNOWN_ACCOUNT: RejectCode
REJECT_CODE_UNKNOWN_SYMBOL: RejectCode
REJECT_CODE_LIMITS_NOT_CONFIGURED: RejectCode
REJECT_CODE_INVALID_QUANTITY: RejectCode
REJECT_CODE_INVALID_PRICE: RejectCode
REJECT_CODE_PRICE_UNAVAILABLE: RejectCode
REJECT_CODE_ARITHMETIC_OVERFLOW: RejectCode
REJECT_CODE_MAX_ORDER_QUANTITY: RejectCode
REJECT_CODE_MAX_ORDER_NOTIONAL: RejectCode
REJECT_CODE_MAX_NET_POSITION: RejectCode
REJECT_CODE_MAX_LONG_POSITION: RejectCode
REJECT_CODE_MAX_SHORT_POSITION: RejectCode
REJECT_CODE_GLOBAL_HALT: RejectCode
REJECT_CODE_ACCOUNT_HALT: RejectCode
REJECT_CODE_SYMBOL_HALT: RejectCode
REJECT_CODE_REDUCE_ONLY: RejectCode
REJECT_CODE_INVALID_STATE: RejectCode
REJECT_CODE_TICK_SIZE: RejectCode
REJECT_CODE_PRICE_COLLAR: RejectCode
REJECT_CODE_MIN_ORDER_QUANTITY: RejectCode
REJECT_CODE_LOT_SIZE: RejectCode
REJECT_CODE_MAX_GROSS_EXPOSURE: RejectCode
REJECT_CODE_MAX_NET_EXPOSURE: RejectCode
REJECT_CODE_BUYING_POWER: RejectCode
REJECT_CODE_ORDER_RATE: RejectCode
REJECT_CODE_NOTIONAL_RATE: RejectCode
REJECT_CODE_MAX_WORKING_ORDERS: RejectCode
REJECT_CODE_DUPLICATE_ORDER_ID: RejectCode
REJECT_CODE_SHORT_SALE_NOT_MARKED: RejectCode
REJECT_CODE_SHORT_SALE_RESTRICTED: RejectCode
REJECT_CODE_NO_LOCATE: RejectCode
REJECT_CODE_ISSUER_CONCENTRATION: RejectCode
REJECT_CODE_SECTOR_CONCENTRATION: RejectCode
REJECT_CODE_VENUE_EXPOSURE: RejectCode
REJECT_CODE_COUNTERPARTY_EXPOSURE: RejectCode
REJECT_CODE_LOSS_LIMIT: RejectCode
REJECT_CODE_CAPACITY_EXHAUSTED: RejectCode
REJECT_CODE_INVALID_REQUEST: RejectCode
REJECT_CODE_AUDIT_UNAVAILABLE: RejectCode
REJECT_CODE_MIN_ORDER_NOTIONAL: RejectCode
REJECT_CODE_ORDER_EXPIRED: RejectCode
REJECT_CODE_MARGIN_SHORTFALL: RejectCode
REJECT_CODE_GROUP_MISMATCH: RejectCode
REJECT_CODE_UNKNOWN_ORIGINAL_ORDER: RejectCode
REJECT_CODE_ORIGINAL_NOT_WORKING: RejectCode
REJECT_CODE_REPLACE_BELOW_FILLED: RejectCode
REJECT_CODE_GROUP_MAX_GROSS_EXPOSURE: RejectCode
REJECT_CODE_GROUP_MAX_NET_EXPOSURE: RejectCode
REJECT_CODE_GROUP_MAX_LONG_POSITION: RejectCode
REJECT_CODE_GROUP_MAX_SHORT_POSITION: RejectCode
REJECT_CODE_GROUP_ORDER_RATE: RejectCode
REJECT_CODE_GROUP_NOTIONAL_RATE: RejectCode
REJECT_CODE_GROUP_LOSS_LIMIT: RejectCode
REJECT_CODE_GROUP_UNAVAILABLE: RejectCode
CAPACITY_UNSPECIFIED: Capacity
CAPACITY_ORDER_TABLE: Capacity
CAPACITY_ACCOUNT_ORDERS: Capacity
CAPACITY_ACCOUNTS: Capacity
CAPACITY_INSTRUMENTS: Capacity
CAPACITY_POSITIONS: Capacity
CAPACITY_OVERRIDES: Capacity
CAPACITY_GROUPS: Capacity
HALT_SCOPE_UNSPECIFIED: HaltScope
HALT_SCOPE_GLOBAL: HaltScope
HALT_SCOPE_ACCOUNT: HaltScope
HALT_SCOPE_SYMBOL: HaltScope
HALT_MODE_UNSPECIFIED: HaltMode
HALT_MODE_ACTIVE: HaltMode
HALT_MODE_REDUCE_ONLY: HaltMode
HALT_MODE_HALTED: HaltMode
PORTFOLIO_UPDATE_KIND_UNSPECIFIED: PortfolioUpdateKind
PORTFOLIO_UPDATE_KIND_SNAPSHOT: PortfolioUpdateKind
PORTFOLIO_UPDATE_KIND_UPDATE: PortfolioUpdateKind
PORTFOLIO_UPDATE_KIND_HEARTBEAT: PortfolioUpdateKind
VALUATION_UNSPECIFIED: Valuation
VALUATION_PRICED: Valuation
VALUATION_NO_PRICE: Valuation
VALUATION_OVERFLOW: Valuation
VALUATION_INVALID_STATE: Valuation
ALERT_KIND_UNSPECIFIED: AlertKind
ALERT_KIND_HALT: AlertKind
ALERT_KIND_HALT_LIFTED: AlertKind
ALERT_KIND_LIMIT_BREACH: AlertKind
ALERT_KIND_LIMIT_CLEARED: AlertKind
ALERT_KIND_INVALID_STATE: AlertKind
ALERT_KIND_INVALID_STATE_CLEARED: AlertKind
ALERT_KIND_MARGIN_CALL: AlertKind
ALERT_KIND_MARGIN_CALL_CLEARED: AlertKind

class Order(_message.Message):
    __slots__ = ("order_id", "account_id", "symbol", "side", "quantity", "price", "order_type", "venue", "counterparty", "min_state_version", "time_in_force", "expire_at_unix_ms", "group_id", "contingency")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ORDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTY_FIELD_NUMBER: _ClassVar[int]
    MIN_STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CONTINGENCY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    account_id: str
    symbol: str
    side: Side
    quantity: int
    price: int
    order_type: OrderType
    venue: str
    counterparty: str
    min_state_version: int
    time_in_force: TimeInForce
    expire_at_unix_ms: int
    group_id: str
    contingency: Contingency
    def __init__(self, order_id: _Optional[str] = ..., account_id: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., quantity: _Optional[int] = ..., price: _Optional[int] = ..., order_type: _Optional[_Union[OrderType, str]] = ..., venue: _Optional[str] = ..., counterparty: _Optional[str] = ..., min_state_version: _Optional[int] = ..., time_in_force: _Optional[_Union[TimeInForce, str]] = ..., expire_at_unix_ms: _Optional[int] = ..., group_id: _Optional[str] = ..., contingency: _Optional[_Union[Contingency, str]] = ...) -> None: ...

class ReplaceRequest(_message.Message):
    __slots__ = ("account_id", "original_order_id", "order_id", "quantity", "price", "min_state_version")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    MIN_STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    original_order_id: str
    order_id: str
    quantity: int
    price: int
    min_state_version: int
    def __init__(self, account_id: _Optional[str] = ..., original_order_id: _Optional[str] = ..., order_id: _Optional[str] = ..., quantity: _Optional[int] = ..., price: _Optional[int] = ..., min_state_version: _Optional[int] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("code", "message", "observed", "limit")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    code: RejectCode
    message: str
    observed: int
    limit: int
    def __init__(self, code: _Optional[_Union[RejectCode, str]] = ..., message: _Optional[str] = ..., observed: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("order_id", "approved", "rejections", "latency_ns", "account_id", "symbol", "notional", "replayed", "currency")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_NS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    approved: bool
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    latency_ns: int
    account_id: str
    symbol: str
    notional: int
    replayed: bool
    currency: str
    def __init__(self, order_id: _Optional[str] = ..., approved: _Optional[bool] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., latency_ns: _Optional[int] = ..., account_id: _Optional[str] = ..., symbol: _Optional[str] = ..., notional: _Optional[int] = ..., replayed: _Optional[bool] = ..., currency: _Optional[str] = ...) -> None: ...

class HaltRequest(_message.Message):
    __slots__ = ("scope", "account_id", "symbol", "mode", "reason", "ttl_seconds", "requested_by", "only_if_known")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    ONLY_IF_KNOWN_FIELD_NUMBER: _ClassVar[int]
    scope: HaltScope
    account_id: str
    symbol: str
    mode: HaltMode
    reason: str
    ttl_seconds: int
    requested_by: str
    only_if_known: bool
    def __init__(self, scope: _Optional[_Union[HaltScope, str]] = ..., account_id: _Optional[str] = ..., symbol: _Optional[str] = ..., mode: _Optional[_Union[HaltMode, str]] = ..., reason: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., requested_by: _Optional[str] = ..., only_if_known: _Optional[bool] = ...) -> None: ...

class Halt(_message.Message):
    __slots__ = ("scope", "target", "mode", "reason", "halted_by", "halted_at_unix_ms", "expires_at_unix_ms")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HALTED_BY_FIELD_NUMBER: _ClassVar[int]
    HALTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    scope: HaltScope
    target: str
    mode: HaltMode
    reason: str
    halted_by: str
    halted_at_unix_ms: int
    expires_at_unix_ms: int
    def __init__(self, scope: _Optional[_Union[HaltScope, str]] = ..., target: _Optional[str] = ..., mode: _Optional[_Union[HaltMode, str]] = ..., reason: _Optional[str] = ..., halted_by: _Optional[str] = ..., halted_at_unix_ms: _Optional[int] = ..., expires_at_unix_ms: _Optional[int] = ...) -> None: ...

class HaltState(_message.Message):
    __slots__ = ("halts",)
    HALTS_FIELD_NUMBER: _ClassVar[int]
    halts: _containers.RepeatedCompositeFieldContainer[Halt]
    def __init__(self, halts: _Optional[_Iterable[_Union[Halt, _Mapping]]] = ...) -> None: ...

class PortfolioRequest(_message.Message):
    __slots__ = ("account_id", "heartbeat_interval_ms", "group_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    heartbeat_interval_ms: int
    group_id: str
    def __init__(self, account_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., group_id: _Optional[str] = ...) -> None: ...

class Holding(_message.Message):
    __slots__ = ("symbol", "quantity", "average_cost", "cost_basis", "last_price", "market_value", "unrealized_pnl", "valuation", "currency")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_COST_FIELD_NUMBER: _ClassVar[int]
    COST_BASIS_FIELD_NUMBER: _ClassVar[int]
    LAST_PRICE_FIELD_NUMBER: _ClassVar[int]
    MARKET_VALUE_FIELD_NUMBER: _ClassVar[int]
    UNREALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    VALUATION_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    quantity: int
    average_cost: int
    cost_basis: int
    last_price: int
    market_value: int
    unrealized_pnl: int
    valuation: Valuation
    currency: str
    def __init__(self, symbol: _Optional[str] = ..., quantity: _Optional[int] = ..., average_cost: _Optional[int] = ..., cost_basis: _Optional[int] = ..., last_price: _Optional[int] = ..., market_value: _Optional[int] = ..., unrealized_pnl: _Optional[int] = ..., valuation: _Optional[_Union[Valuation, str]] = ..., currency: _Optional[str] = ...) -> None: ...

class PortfolioTotals(_message.Message):
    __slots__ = ("market_value", "cost_basis", "unrealized_pnl", "realized_pnl", "unvalued_holdings", "valuation", "currency", "margined", "equity", "margin_used", "margin_excess", "maintenance_margin")
    MARKET_VALUE_FIELD_NUMBER: _ClassVar[int]
    COST_BASIS_FIELD_NUMBER: _ClassVar[int]
    UNREALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    REALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    UNVALUED_HOLDINGS_FIELD_NUMBER: _ClassVar[int]
    VALUATION_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MARGINED_FIELD_NUMBER: _ClassVar[int]
    EQUITY_FIELD_NUMBER: _ClassVar[int]
    MARGIN_USED_FIELD_NUMBER: _ClassVar[int]
    MARGIN_EXCESS_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    market_value: int
    cost_basis: int
    unrealized_pnl: int
    realized_pnl: int
    unvalued_holdings: int
    valuation: Valuation
    currency: str
    margined: bool
    equity: int
    margin_used: int
    margin_excess: int
    maintenance_margin: int
    def __init__(self, market_value: _Optional[int] = ..., cost_basis: _Optional[int] = ..., unrealized_pnl: _Optional[int] = ..., realized_pnl: _Optional[int] = ..., unvalued_holdings: _Optional[int] = ..., valuation: _Optional[_Union[Valuation, str]] = ..., currency: _Optional[str] = ..., margined: _Optional[bool] = ..., equity: _Optional[int] = ..., margin_used: _Optional[int] = ..., margin_excess: _Optional[int] = ..., maintenance_margin: _Optional[int] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("kind", "code", "message", "observed", "limit", "symbol", "halt_mode")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    HALT_MODE_FIELD_NUMBER: _ClassVar[int]
    kind: AlertKind
    code: RejectCode
    message: str
    observed: int
    limit: int
    symbol: str
    halt_mode: HaltMode
    def __init__(self, kind: _Optional[_Union[AlertKind, str]] = ..., code: _Optional[_Union[RejectCode, str]] = ..., message: _Optional[str] = ..., observed: _Optional[int] = ..., limit: _Optional[int] = ..., symbol: _Optional[str] = ..., halt_mode: _Optional[_Union[HaltMode, str]] = ...) -> None: ...

class PortfolioUpdate(_message.Message):
    __slots__ = ("account_id", "sequence", "timestamp_unix_ns", "kind", "holdings", "totals", "alerts", "group_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HOLDINGS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    sequence: int
    timestamp_unix_ns: int
    kind: PortfolioUpdateKind
    holdings: _containers.RepeatedCompositeFieldContainer[Holding]
    totals: PortfolioTotals
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    group_id: str
    def __init__(self, account_id: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp_unix_ns: _Optional[int] = ..., kind: _Optional[_Union[PortfolioUpdateKind, str]] = ..., holdings: _Optional[_Iterable[_Union[Holding, _Mapping]]] = ..., totals: _Optional[_Union[PortfolioTotals, _Mapping]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., group_id: _Optional[str] = ...) -> None: ...

class OrderBatch(_message.Message):
    __slots__ = ("orders",)
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    def __init__(self, orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ...) -> None: ...

class DecisionBatch(_message.Message):
    __slots__ = ("decisions", "latency_ns")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_NS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    latency_ns: int
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., latency_ns: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerStatus(_message.Message):
    __slots__ = ("sync_live", "lag_ms", "max_lag_ms", "last_full_load_unix_ms", "full_loads", "last_full_load_ms", "events_applied", "invalid_entities", "last_error", "accounts", "instruments", "positions", "orders", "max_orders", "automatic_halts", "price_ticks", "pid", "audit_written", "audit_dropped", "audit_pending", "audit_write_errors", "sync_refreshes", "orders_restored", "automatic_halts_unwritten", "automatic_halt_write_failures", "journal_written", "journal_failures", "journal_pending", "capacity_exhausted", "orders_evicted", "audit_refused", "reconcile_runs", "reconcile_failures", "reconcile_differences", "last_reconcile_unix_ms", "decisions_approved", "decisions_rejected", "decisions_replayed", "engine_latency_bounds_ns", "engine_latency_counts", "shard_count", "node_id", "advertised_address", "shard_leases", "lease_failures", "lost_slots", "primaries_lost", "slots_recovered", "replica_reads", "replica_fallbacks", "groups", "max_groups", "lot_log_reads", "lot_log_whole_reads")
    SYNC_LIVE_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_FULL_LOAD_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FULL_LOADS_FIELD_NUMBER: _ClassVar[int]
    LAST_FULL_LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    INVALID_ENTITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    MAX_ORDERS_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIC_HALTS_FIELD_NUMBER: _ClassVar[int]
    PRICE_TICKS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    AUDIT_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DROPPED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PENDING_FIELD_NUMBER: _ClassVar[int]
    AUDIT_WRITE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    SYNC_REFRESHES_FIELD_NUMBER: _ClassVar[int]
    ORDERS_RESTORED_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIC_HALTS_UNWRITTEN_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIC_HALT_WRITE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_FAILURES_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_PENDING_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    ORDERS_EVICTED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_REFUSED_FIELD_NUMBER: _ClassVar[int]
    RECONCILE_RUNS_FIELD_NUMBER: _ClassVar[int]
    RECONCILE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    RECONCILE_DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    LAST_RECONCILE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_APPROVED_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_REPLAYED_FIELD_NUMBER: _ClassVar[int]
    ENGINE_LATENCY_BOUNDS_NS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_LATENCY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SHARD_LEASES_FIELD_NUMBER: _ClassVar[int]
    LEASE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    LOST_SLOTS_FIELD_NUMBER: _ClassVar[int]
    PRIMARIES_LOST_FIELD_NUMBER: _ClassVar[int]
    SLOTS_RECOVERED_FIELD_NUMBER: _ClassVar[int]
    REPLICA_READS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    MAX_GROUPS_FIELD_NUMBER: _ClassVar[int]
    LOT_LOG_READS_FIELD_NUMBER: _ClassVar[int]
    LOT_LOG_WHOLE_READS_FIELD_NUMBER: _ClassVar[int]
    sync_live: bool
    lag_ms: int
    max_lag_ms: int
    last_full_load_unix_ms: int
    full_loads: int
    last_full_load_ms: int
    events_applied: int
    invalid_entities: int
    last_error: str
    accounts: int
    instruments: int
    positions: int
    orders: int
    max_orders: int
    automatic_halts: int
    price_ticks: int
    pid: int
    audit_written: int
    audit_dropped: int
    audit_pending: int
    audit_write_errors: int
    sync_refreshes: int
    orders_restored: int
    automatic_halts_unwritten: int
    automatic_halt_write_failures: int
    journal_written: int
    journal_failures: int
    journal_pending: int
    capacity_exhausted: int
    orders_evicted: int
    audit_refused: int
    reconcile_runs: int
    reconcile_failures: int
    reconcile_differences: int
    last_reconcile_unix_ms: int
    decisions_approved: int
    decisions_rejected: int
    decisions_replayed: int
    engine_latency_bounds_ns: _containers.RepeatedScalarFieldContainer[int]
    engine_latency_counts: _containers.RepeatedScalarFieldContainer[int]
    shard_count: int
    node_id: str
    advertised_address: str
    shard_leases: _containers.RepeatedCompositeFieldContainer[ShardLease]
    lease_failures: int
    lost_slots: int
    primaries_lost: int
    slots_recovered: int
    replica_reads: int
    replica_fallbacks: int
    groups: int
    max_groups: int
    lot_log_reads: int
    lot_log_whole_reads: int
    def __init__(self, sync_live: _Optional[bool] = ..., lag_ms: _Optional[int] = ..., max_lag_ms: _Optional[int] = ..., last_full_load_unix_ms: _Optional[int] = ..., full_loads: _Optional[int] = ..., last_full_load_ms: _Optional[int] = ..., events_applied: _Optional[int] = ..., invalid_entities: _Optional[int] = ..., last_error: _Optional[str] = ..., accounts: _Optional[int] = ..., instruments: _Optional[int] = ..., positions: _Optional[int] = ..., orders: _Optional[int] = ..., max_orders: _Optional[int] = ..., automatic_halts: _Optional[int] = ..., price_ticks: _Optional[int] = ..., pid: _Optional[int] = ..., audit_written: _Optional[int] = ..., audit_dropped: _Optional[int] = ..., audit_pending: _Optional[int] = ..., audit_write_errors: _Optional[int] = ..., sync_refreshes: _Optional[int] = ..., orders_restored: _Optional[int] = ..., automatic_halts_unwritten: _Optional[int] = ..., automatic_halt_write_failures: _Optional[int] = ..., journal_written: _Optional[int] = ..., journal_failures: _Optional[int] = ..., journal_pending: _Optional[int] = ..., capacity_exhausted: _Optional[int] = ..., orders_evicted: _Optional[int] = ..., audit_refused: _Optional[int] = ..., reconcile_runs: _Optional[int] = ..., reconcile_failures: _Optional[int] = ..., reconcile_differences: _Optional[int] = ..., last_reconcile_unix_ms: _Optional[int] = ..., decisions_approved: _Optional[int] = ..., decisions_rejected: _Optional[int] = ..., decisions_replayed: _Optional[int] = ..., engine_latency_bounds_ns: _Optional[_Iterable[int]] = ..., engine_latency_counts: _Optional[_Iterable[int]] = ..., shard_count: _Optional[int] = ..., node_id: _Optional[str] = ..., advertised_address: _Optional[str] = ..., shard_leases: _Optional[_Iterable[_Union[ShardLease, _Mapping]]] = ..., lease_failures: _Optional[int] = ..., lost_slots: _Optional[int] = ..., primaries_lost: _Optional[int] = ..., slots_recovered: _Optional[int] = ..., replica_reads: _Optional[int] = ..., replica_fallbacks: _Optional[int] = ..., groups: _Optional[int] = ..., max_groups: _Optional[int] = ..., lot_log_reads: _Optional[int] = ..., lot_log_whole_reads: _Optional[int] = ...) -> None: ...

class ShardLease(_message.Message):
    __slots__ = ("shard", "first_slot", "last_slot", "node_id", "address", "epoch", "held_here")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    FIRST_SLOT_FIELD_NUMBER: _ClassVar[int]
    LAST_SLOT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HELD_HERE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    first_slot: int
    last_slot: int
    node_id: str
    address: str
    epoch: int
    held_here: bool
    def __init__(self, shard: _Optional[int] = ..., first_slot: _Optional[int] = ..., last_slot: _Optional[int] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., epoch: _Optional[int] = ..., held_here: _Optional[bool] = ...) -> None: ...

class AccountsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class AccountList(_message.Message):
    __slots__ = ("account_ids", "truncated", "principal", "role")
    ACCOUNT_IDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    account_ids: _containers.RepeatedScalarFieldContainer[str]
    truncated: bool
    principal: str
    role: str
    def __init__(self, account_ids: _Optional[_Iterable[str]] = ..., truncated: _Optional[bool] = ..., principal: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class HaltsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RejectionsRequest(_message.Message):
    __slots__ = ("account_id", "code", "limit")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    code: RejectCode
    limit: int
    def __init__(self, account_id: _Optional[str] = ..., code: _Optional[_Union[RejectCode, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class RejectedOrder(_message.Message):
    __slots__ = ("order_id", "account_id", "symbol", "side", "quantity", "price", "codes", "decided_at_unix_ms", "principal", "audit_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    account_id: str
    symbol: str
    side: Side
    quantity: int
    price: int
    codes: _containers.RepeatedScalarFieldContainer[RejectCode]
    decided_at_unix_ms: int
    principal: str
    audit_id: str
    def __init__(self, order_id: _Optional[str] = ..., account_id: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., quantity: _Optional[int] = ..., price: _Optional[int] = ..., codes: _Optional[_Iterable[_Union[RejectCode, str]]] = ..., decided_at_unix_ms: _Optional[int] = ..., principal: _Optional[str] = ..., audit_id: _Optional[str] = ...) -> None: ...

class RejectionList(_message.Message):
    __slots__ = ("rejections",)
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    rejections: _containers.RepeatedCompositeFieldContainer[RejectedOrder]
    def __init__(self, rejections: _Optional[_Iterable[_Union[RejectedOrder, _Mapping]]] = ...) -> None: ...
