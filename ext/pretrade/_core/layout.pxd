# The fixed layout of the memory-mapped position table, shared by every
# server process that maps the same file.
#
# Invariants this file protects:
#   * Every struct is plain old data with an explicit width per field, so two
#     processes built from the same source agree on every offset. The header
#     records each record size; attach() refuses a file whose sizes differ.
#   * Money is int64 in 1/10,000 of the currency (wire: pretrade.v1 prices and
#     notionals). Quantities are int64 units.
#   * The enum values below equal the pretrade.v1 enum numbers on the wire
#     (RejectCode, Side, OrderType, HaltMode, HaltScope); a test asserts it.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass


cdef extern from "shared_sync.h" nogil:
    int pt_mutex_init_shared(pthread_mutex_t* m)
    int pt_mutex_lock(pthread_mutex_t* m)
    void pt_mutex_unlock(pthread_mutex_t* m)
    int32_t pt_load_i32(const int32_t* p)
    void pt_store_i32(int32_t* p, int32_t v)
    int64_t pt_load_i64(const int64_t* p)
    void pt_store_i64(int64_t* p, int64_t v)
    int64_t pt_add_i64(int64_t* p, int64_t v)
    bint pt_mul_overflow(int64_t a, int64_t b, int64_t* out)
    bint pt_add_overflow(int64_t a, int64_t b, int64_t* out)
    bint pt_sub_overflow(int64_t a, int64_t b, int64_t* out)


# -- SIZES AND MARKERS --

cdef enum:
    TABLE_MAGIC = 0x50524554        # "PRET"
    LAYOUT_VERSION = 1
    ID_CAPACITY = 40                # bytes for an account id or symbol, NUL included
    MAX_ID_LENGTH = 39
    LIMIT_SLOTS = 16                # room for the limit catalogue to grow
    MAX_REJECTIONS = 24
    NO_INDEX = -1


# -- WIRE ENUMS (values equal pretrade.v1) --

cdef enum Side:
    SIDE_UNSPECIFIED = 0
    SIDE_BUY = 1
    SIDE_SELL = 2
    SIDE_SELL_SHORT = 3

cdef enum OrderType:
    ORDER_TYPE_UNSPECIFIED = 0
    ORDER_TYPE_LIMIT = 1
    ORDER_TYPE_MARKET = 2

cdef enum HaltMode:
    # 0 in the table means "no halt"; ACTIVE on the wire lifts a halt.
    HALT_NONE = 0
    HALT_MODE_ACTIVE = 1
    HALT_MODE_REDUCE_ONLY = 2
    HALT_MODE_HALTED = 3

cdef enum HaltScope:
    HALT_SCOPE_GLOBAL = 1
    HALT_SCOPE_ACCOUNT = 2
    HALT_SCOPE_SYMBOL = 3

cdef enum RejectCode:
    REJECT_STALE_DATA = 1
    REJECT_UNKNOWN_ACCOUNT = 2
    REJECT_UNKNOWN_SYMBOL = 3
    REJECT_LIMITS_NOT_CONFIGURED = 4
    REJECT_INVALID_QUANTITY = 5
    REJECT_INVALID_PRICE = 6
    REJECT_PRICE_UNAVAILABLE = 7
    REJECT_ARITHMETIC_OVERFLOW = 8
    REJECT_MAX_ORDER_QUANTITY = 9
    REJECT_MAX_ORDER_NOTIONAL = 10
    REJECT_MAX_NET_POSITION = 11
    REJECT_MAX_LONG_POSITION = 12
    REJECT_MAX_SHORT_POSITION = 13
    REJECT_GLOBAL_HALT = 14
    REJECT_ACCOUNT_HALT = 15
    REJECT_SYMBOL_HALT = 16
    REJECT_REDUCE_ONLY = 17
    REJECT_INVALID_STATE = 18


# -- LIMITS --

# Index of each limit in LimitSet.values. Account records hold the account's
# defaults; an OverrideRecord holds per-(account, symbol) overrides.
cdef enum LimitKind:
    LIMIT_MAX_ORDER_QUANTITY = 0
    LIMIT_MAX_ORDER_NOTIONAL = 1
    LIMIT_MAX_NET_POSITION = 2
    LIMIT_MAX_LONG_POSITION = 3
    LIMIT_MAX_SHORT_POSITION = 4
    LIMIT_KIND_COUNT = 5

cdef struct LimitSet:
    uint32_t present                # bit k set: values[k] is configured
    uint32_t reserved
    int64_t values[LIMIT_SLOTS]


# -- RECORD FLAGS --

cdef enum:
    ACCOUNT_KNOWN = 1               # has holdings or limits in Redis
    ACCOUNT_HAS_LIMITS = 2          # limits:{ACC} exists
    ACCOUNT_STATE_INVALID = 4       # its Redis state failed to parse: fail closed
    INSTRUMENT_KNOWN = 1            # instrument:<SYM> exists
    INSTRUMENT_HAS_PRICE = 2        # price:<SYM> holds a valid last price
    INSTRUMENT_STATE_INVALID = 4


# -- RECORDS --

cdef struct TableHeader:
    uint32_t magic
    uint32_t layout_version
    uint32_t header_size
    uint32_t account_size
    uint32_t instrument_size
    uint32_t position_size
    uint32_t override_size
    uint32_t lock_stride
    uint32_t lock_stripes           # a power of two
    uint32_t max_accounts
    uint32_t max_instruments
    uint32_t max_positions
    uint32_t max_overrides
    uint32_t account_index_mask     # index capacity - 1 (a power of two)
    uint32_t instrument_index_mask
    uint32_t position_index_mask
    int32_t account_count           # records in use; grow only, under the registry lock
    int32_t instrument_count
    int32_t position_count
    int32_t override_count
    int32_t global_halt             # HaltMode
    int32_t sync_live               # 1 while the sync link trusts the table
    int64_t sync_version            # bumped on every applied change
    int64_t recovered_locks         # locks taken over from a dead owner
    uint64_t total_size
    uint64_t locks_offset
    uint64_t accounts_offset
    uint64_t instruments_offset
    uint64_t positions_offset
    uint64_t overrides_offset
    uint64_t account_index_offset
    uint64_t instrument_index_offset
    uint64_t position_index_offset

cdef struct AccountRecord:
    char account_id[ID_CAPACITY]
    uint32_t id_hash
    uint32_t id_length
    uint32_t flags
    int32_t halt_mode               # HaltMode
    int32_t first_position          # head of this account's PositionSlot list
    int32_t reserved
    LimitSet limits                 # the account-wide defaults

cdef struct InstrumentRecord:
    char symbol[ID_CAPACITY]
    uint32_t id_hash
    uint32_t id_length
    uint32_t flags
    int32_t halt_mode               # HaltMode
    int64_t last_price              # 1/10,000 of the currency
    int64_t tick_size               # 1/10,000 of the currency
    int64_t lot_size                # units

# One (account, instrument) pair; 64 bytes.
cdef struct PositionSlot:
    int32_t account_index
    int32_t instrument_index
    int32_t override_index          # OverrideRecord with per-symbol limits, or NO_INDEX
    int32_t next_in_account         # singly linked list from AccountRecord.first_position
    int64_t quantity                # net position: sum of lot quantities
    int64_t cost_basis              # sum of lot quantity x lot price
    int64_t working_buy             # reserved by approved, unfilled buy orders
    int64_t working_sell            # reserved by approved, unfilled sell orders
    int64_t realized_pnl
    int64_t reserved

cdef struct OverrideRecord:
    int32_t account_index
    int32_t instrument_index
    LimitSet limits
