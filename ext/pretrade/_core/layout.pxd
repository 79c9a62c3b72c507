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
    int pt_mutex_trylock(pthread_mutex_t* m)
    void pt_mutex_unlock(pthread_mutex_t* m)
    int32_t pt_load_i32(const int32_t* p)
    void pt_store_i32(int32_t* p, int32_t v)
    int64_t pt_load_i64(const int64_t* p)
    void pt_store_i64(int64_t* p, int64_t v)
    int64_t pt_add_i64(int64_t* p, int64_t v)
    int32_t pt_add_i32(int32_t* p, int32_t v)
    bint pt_cas_i64(int64_t* p, int64_t expected, int64_t desired)
    bint pt_cas_i32(int32_t* p, int32_t expected, int32_t desired)
    bint pt_mul_overflow(int64_t a, int64_t b, int64_t* out)
    bint pt_add_overflow(int64_t a, int64_t b, int64_t* out)
    bint pt_sub_overflow(int64_t a, int64_t b, int64_t* out)
    uint32_t pt_key_slot(const char* key, int64_t length)
    int32_t pt_shard_of_slot(uint32_t slot, uint32_t shard_count)


# -- SIZES AND MARKERS --

cdef enum:
    TABLE_MAGIC = 0x50524554        # "PRET"
    LAYOUT_VERSION = 14
    ID_CAPACITY = 40                # bytes for an account id or symbol, NUL included
    MAX_ID_LENGTH = 39
    ORDER_ID_CAPACITY = 64          # client order ids, NUL included
    MAX_ORDER_ID_LENGTH = 63
    TAG_CAPACITY = 16               # venue and counterparty names, NUL included
    MAX_TAG_LENGTH = 15
    TAG_LIMIT_SLOTS = 8             # named venue / counterparty limits per account
    LIMIT_SLOTS = 32                # room for the limit catalogue to grow
    MAX_REJECTIONS = 24
    STORED_REJECTIONS = 8           # kept with an order for idempotent replay
    MAX_MARGIN_BPS = 100_000        # a margin rate is at most 1,000% of notional: the
                                    # 128-bit margin sums of a full table cannot overflow
    RATE_RING_CAPACITY = 256        # approved orders remembered for the velocity windows
    REJECT_RING_CAPACITY = 256      # rejections remembered for the reject-storm breaker
    NO_INDEX = -1
    MAX_CAPACITY = 0x3FFFFFFF       # most records of one kind a table holds (2**30 - 1)
    MAX_LOCK_STRIPES = 4096         # a power of two
    # Order ids of an account whose records left the table (their durable copy
    # in orders:{ACC} stays): a Bloom filter of this many 64-bit words, probed
    # at this many bits per id. A hit means "maybe": the caller reads Redis.
    EVICTED_FILTER_WORDS = 256      # 16,384 bits per account
    EVICTED_FILTER_HASHES = 4
    # An account at its share that needs a record looks at most this many of
    # its oldest non-working records for one that may leave (is durable).
    EVICT_SCAN = 16
    # The default share of the order table one account may hold: max_orders / this.
    ACCOUNT_SHARE_DIVISOR = 8
    # DUPLICATE_ORDER_ID with observed = ORDER_ID_EXPIRED: the id may have been
    # decided before and its record left the table; the caller must read its
    # durable copy (limit = the account's eviction count to quote back).
    ORDER_ID_EXPIRED = 1
    # The table's clock (when a record stopped working) moves in steps of at
    # least this, so decisions in several processes rarely write its cache line.
    TABLE_CLOCK_STEP_NS = 1_000_000
    # Account ownership (shards of the Redis Cluster slot of {ACC}): the most
    # shards a table keeps a lease deadline for, and the slots they split.
    MAX_SHARDS = 1024
    CLUSTER_SLOTS = 16384
    LOST_SLOT_WORDS = 256           # CLUSTER_SLOTS / 64: the bitmap of lost slots
    # Account groups (a desk, a firm): the most groups one account is in
    # (its groups and their parents, flattened), the most group records a
    # table holds (max_accounts, up to this), and the mutexes that guard
    # them (a group's is its index & (GROUP_LOCK_STRIPES - 1)).
    MAX_ACCOUNT_GROUPS = 8
    MAX_GROUPS = 4096
    GROUP_LOCK_STRIPES = 256


# Window lengths the velocity checks and the reject-storm breaker use when a
# rate limit is set without its window.
cdef enum:
    DEFAULT_ORDER_WINDOW_MS = 1_000
    DEFAULT_NOTIONAL_WINDOW_MS = 60_000
    DEFAULT_REJECT_WINDOW_MS = 60_000
    # How long a decided order that no longer works (rejected, filled,
    # cancelled) stays in the table once it is durable, unless set.
    DEFAULT_ORDER_EXPIRY_MS = 60_000


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
    REJECT_TICK_SIZE = 19
    REJECT_PRICE_COLLAR = 20
    REJECT_MIN_ORDER_QUANTITY = 21
    REJECT_LOT_SIZE = 22
    REJECT_MAX_GROSS_EXPOSURE = 23
    REJECT_MAX_NET_EXPOSURE = 24
    REJECT_BUYING_POWER = 25
    REJECT_ORDER_RATE = 26
    REJECT_NOTIONAL_RATE = 27
    REJECT_MAX_WORKING_ORDERS = 28
    REJECT_DUPLICATE_ORDER_ID = 29
    REJECT_SHORT_SALE_NOT_MARKED = 30
    REJECT_SHORT_SALE_RESTRICTED = 31
    REJECT_NO_LOCATE = 32
    REJECT_ISSUER_CONCENTRATION = 33
    REJECT_SECTOR_CONCENTRATION = 34
    REJECT_VENUE_EXPOSURE = 35
    REJECT_COUNTERPARTY_EXPOSURE = 36
    REJECT_LOSS_LIMIT = 37
    REJECT_CAPACITY_EXHAUSTED = 38
    # 39, 40 (INVALID_REQUEST, AUDIT_UNAVAILABLE) are decided before the engine
    REJECT_MIN_ORDER_NOTIONAL = 41
    REJECT_ORDER_EXPIRED = 42
    REJECT_MARGIN_SHORTFALL = 43
    REJECT_GROUP_MISMATCH = 44
    # Account groups: a group limit (observed, limit as for the account's
    # control of the same name), or a group that cannot be checked.
    REJECT_GROUP_MAX_GROSS_EXPOSURE = 48
    REJECT_GROUP_MAX_NET_EXPOSURE = 49
    REJECT_GROUP_MAX_LONG_POSITION = 50
    REJECT_GROUP_MAX_SHORT_POSITION = 51
    REJECT_GROUP_ORDER_RATE = 52
    REJECT_GROUP_NOTIONAL_RATE = 53
    REJECT_GROUP_LOSS_LIMIT = 54
    REJECT_GROUP_UNAVAILABLE = 55

# Why a group cannot be checked (GROUP_UNAVAILABLE's observed; the smallest
# that applies).
cdef enum GroupUnavailable:
    GROUP_NOT_CONFIGURED = 1        # no group:<G> hash
    GROUP_TREE_INVALID = 2          # the account's groups could not be resolved
    GROUP_HASH_INVALID = 3
    GROUP_SHARD_NOT_HELD = 4        # a member's shard is not held by this node
    GROUP_SLOT_LOST = 5             # a member's or the group's key is in a lost slot
    GROUP_MEMBER_INVALID = 6        # a member's state is invalid or did not fit

# How long an order may work (pretrade.v1 TimeInForce). UNSPECIFIED works
# until its fill or cancel is reported, as before time in force existed.
cdef enum TimeInForce:
    TIME_IN_FORCE_UNSPECIFIED = 0
    TIME_IN_FORCE_DAY = 1           # stops counting at the session end the caller gave
    TIME_IN_FORCE_IOC = 2           # as DAY: its fill or cancel is reported, at the latest then
    TIME_IN_FORCE_GTC = 3           # until its fill or cancel is reported
    TIME_IN_FORCE_GTD = 4           # stops counting at its expire_at (Unix ms)
    # ReplaceOrder (cancel/replace): the original order id names no order
    # the account decided; the original is not working (observed: its
    # OrderStatus, 0 when its record left the table); the new quantity is not
    # above what the original already filled (observed: the new quantity,
    # limit: the filled units).
    REJECT_UNKNOWN_ORIGINAL_ORDER = 45
    REJECT_ORIGINAL_NOT_WORKING = 46
    REJECT_REPLACE_BELOW_FILLED = 47

# What did not fit, in a CAPACITY_EXHAUSTED rejection's observed (its limit is
# that capacity); equal to pretrade.v1 Capacity.
cdef enum Capacity:
    CAPACITY_ORDER_TABLE = 1        # max_orders: decided orders the table holds
    CAPACITY_ACCOUNT_ORDERS = 2     # max_orders_per_account: the account's share of them
    CAPACITY_ACCOUNTS = 3           # max_accounts
    CAPACITY_INSTRUMENTS = 4        # max_instruments
    CAPACITY_POSITIONS = 5          # max_positions
    CAPACITY_OVERRIDES = 6          # max_overrides: per-symbol limit records
    CAPACITY_GROUPS = 7             # max_groups: account groups

# What the engine asks the Python layer to do after a decision.
cdef enum AutoHalt:
    AUTO_HALT_NONE = 0
    AUTO_HALT_LOSS_LIMIT = 1        # move the account to REDUCE_ONLY
    AUTO_HALT_REJECT_STORM = 2      # HALT the account

# Lifecycle of an order record.
cdef enum OrderStatus:
    ORDER_REJECTED = 1              # kept only so a replayed id gets its decision
    ORDER_WORKING = 2               # approved, quantity reserved
    ORDER_DONE = 3                  # filled or cancelled: nothing reserved
    ORDER_REPLACED = 4              # an approved replacement took over its reservation


# -- ENGINE COUNTERS (per Engine, so per process: never in the shared table) --

# What Engine.evaluate counts for the metrics exporter, read at scrape time.
# Written only by the thread that holds the GIL and calls evaluate, so plain
# increments suffice: no cache line is shared with another process.
cdef enum:
    VERDICT_APPROVED = 0            # the order may go
    VERDICT_REJECTED = 1            # decided now, rejected
    VERDICT_REPLAYED = 2            # a re-sent id answered with its stored decision
    VERDICT_KINDS = 3
    # Engine-time histogram buckets: upper bounds in ns (checks.pyx
    # LATENCY_BOUNDS_NS), plus one bucket past the last bound.
    LATENCY_BOUNDS = 16
    # Rejection counters are indexed by RejectCode; room for the catalogue to grow.
    REJECT_CODE_SLOTS = 64

cdef struct EngineCounters:
    int64_t checks[VERDICT_KINDS]
    int64_t latency[VERDICT_KINDS][LATENCY_BOUNDS + 1]   # not cumulative: one bucket each
    int64_t latency_sum_ns[VERDICT_KINDS]
    int64_t rejections[REJECT_CODE_SLOTS]                # by code, decisions made now


# -- LIMITS --

# Index of each limit in LimitSet.values (pretrade.limits.LimitKind mirrors
# it). Account records hold the account's defaults; an OverrideRecord holds
# per-(account, symbol) overrides. Kinds below LIMIT_REQUIRED_COUNT must be
# configured (else LIMITS_NOT_CONFIGURED); the rest switch a control on.
cdef enum LimitKind:
    LIMIT_MAX_ORDER_QUANTITY = 0
    LIMIT_MAX_ORDER_NOTIONAL = 1
    LIMIT_MAX_NET_POSITION = 2
    LIMIT_MAX_LONG_POSITION = 3
    LIMIT_MAX_SHORT_POSITION = 4
    LIMIT_PRICE_COLLAR_BPS = 5
    LIMIT_REQUIRED_COUNT = 6
    LIMIT_MIN_ORDER_QUANTITY = 6
    LIMIT_MAX_GROSS_EXPOSURE = 7
    LIMIT_MAX_NET_EXPOSURE = 8
    LIMIT_MAX_ORDERS_PER_WINDOW = 9
    LIMIT_ORDER_WINDOW_MS = 10
    LIMIT_MAX_NOTIONAL_PER_WINDOW = 11
    LIMIT_NOTIONAL_WINDOW_MS = 12
    LIMIT_MAX_WORKING_ORDERS = 13
    LIMIT_MAX_ISSUER_CONCENTRATION_BPS = 14
    LIMIT_MAX_SECTOR_CONCENTRATION_BPS = 15
    LIMIT_CONCENTRATION_MIN_GROSS = 16
    LIMIT_LOSS_LIMIT = 17
    LIMIT_MAX_REJECTS_PER_WINDOW = 18
    LIMIT_REJECT_WINDOW_MS = 19
    LIMIT_AUTO_HALT_SECONDS = 20
    LIMIT_MAX_VENUE_EXPOSURE = 21
    LIMIT_MAX_COUNTERPARTY_EXPOSURE = 22
    LIMIT_MIN_ORDER_NOTIONAL = 23
    LIMIT_KIND_COUNT = 24

# The limits a group (group:<G>) may set; the rest are the account's own.
cdef enum:
    GROUP_LIMIT_MASK = ((1 << LIMIT_MAX_LONG_POSITION) | (1 << LIMIT_MAX_SHORT_POSITION)
                        | (1 << LIMIT_MAX_GROSS_EXPOSURE) | (1 << LIMIT_MAX_NET_EXPOSURE)
                        | (1 << LIMIT_MAX_ORDERS_PER_WINDOW) | (1 << LIMIT_ORDER_WINDOW_MS)
                        | (1 << LIMIT_MAX_NOTIONAL_PER_WINDOW) | (1 << LIMIT_NOTIONAL_WINDOW_MS)
                        | (1 << LIMIT_LOSS_LIMIT))

cdef struct LimitSet:
    uint32_t present                # bit k set: values[k] is configured
    uint32_t reserved
    int64_t values[LIMIT_SLOTS]


# -- RECORD FLAGS --

cdef enum:
    ACCOUNT_KNOWN = 1               # has holdings or limits in Redis
    ACCOUNT_HAS_LIMITS = 2          # limits:{ACC} exists
    ACCOUNT_STATE_INVALID = 4       # its Redis state failed to parse: fail closed
    ACCOUNT_HAS_BALANCES = 8        # balances:{ACC} exists: buying power is checked
    ACCOUNT_OVER_CAPACITY = 16      # part of its state did not fit: its orders are refused
    ACCOUNT_GROUPS_INVALID = 32     # its groups could not be resolved: its orders are refused
    GROUP_KNOWN = 1                 # group:<G> exists
    GROUP_STATE_INVALID = 2         # its hash failed to parse
    INSTRUMENT_KNOWN = 1            # instrument:<SYM> exists
    INSTRUMENT_HAS_PRICE = 2        # price:<SYM> holds a valid last price
    INSTRUMENT_STATE_INVALID = 4
    INSTRUMENT_SHORT_RESTRICTED = 8 # on the restricted:short set
    ORDER_IN_USE = 1                # OrderRecord.flags: the record holds a decided order
    ORDER_DURABLE = 2               # its decision is in orders:{ACC}: it may leave the table


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
    uint32_t order_index_mask
    uint32_t max_orders
    uint32_t order_size
    uint32_t activity_size
    uint32_t group_size
    uint32_t max_groups
    uint32_t group_index_mask
    int32_t group_count             # records in use; grow only, under the registry lock
    uint32_t max_orders_per_account # one account's share of the order records
    int32_t order_next              # records the bump allocator handed out (grow only)
    int32_t orders_in_use           # records holding a decided order
    int32_t order_free_head         # freed records, linked by next_working (order lock)
    int32_t order_index_used        # order index entries not empty: live + tombstones
    int32_t order_tombstones        # order index entries of records that left
    int32_t order_index_rebuilding  # 1 while a rebuild waits for every stripe
    int32_t account_count           # records in use; grow only, under the registry lock
    int32_t instrument_count
    int32_t position_count
    int32_t override_count
    int32_t global_halt             # HaltMode
    int32_t sync_live               # 1 while the sync link trusts the table
    int32_t header_pad
    int64_t sync_live_until_ns      # CLOCK_MONOTONIC; 0: no deadline. Orders decided
                                    # after it are STALE_DATA: a table writer that stops
                                    # (killed, frozen) fails closed without saying so
    int64_t sync_version            # bumped on every applied change
    int64_t recovered_locks         # locks taken over from a dead owner
    int64_t order_expiry_ns         # non-working durable records leave after this long
    int64_t clock_ns                # the latest clock reading the table was given
    int64_t orders_evicted          # records that left the table for their durable copy
    int64_t order_index_rebuilds
    # Account ownership. shard_count 0: off (this table decides every account).
    # Else an order decides only while its account's shard has a lease this
    # node holds: shard_epoch != 0 (the lease's fencing epoch) and now <=
    # shard_live_until_ns (CLOCK_MONOTONIC: the renewal's start + ttl - a
    # margin, so this node stops before the lease can have expired in Redis).
    # Past it, or never held: STALE_DATA. The table writer renews them.
    uint32_t shard_count
    uint32_t shard_pad
    int64_t shard_live_until_ns[MAX_SHARDS]
    int64_t shard_epoch[MAX_SHARDS]
    # Redis Cluster slots whose primary the sync lost (its notifications
    # stopped) and that are not re-read yet: an order whose account or
    # symbol keys live in one is STALE_DATA, the rest of the table trades.
    # The writer sets the bits before the count, and clears the count first.
    int32_t lost_slot_count
    int32_t lost_pad
    uint64_t lost_slots[LOST_SLOT_WORDS]
    uint64_t total_size
    uint64_t locks_offset
    uint64_t accounts_offset
    uint64_t instruments_offset
    uint64_t positions_offset
    uint64_t overrides_offset
    uint64_t account_index_offset
    uint64_t instrument_index_offset
    uint64_t position_index_offset
    uint64_t orders_offset
    uint64_t order_index_offset
    uint64_t activity_offset
    uint64_t groups_offset
    uint64_t group_index_offset

# A limit for one named venue or counterparty.
cdef struct TagLimit:
    char name[TAG_CAPACITY]         # empty: slot unused
    int64_t limit

cdef struct AccountRecord:
    char account_id[ID_CAPACITY]
    uint32_t id_hash
    uint32_t id_length
    uint32_t flags
    int32_t halt_mode               # HaltMode
    int32_t first_position          # head of this account's PositionSlot list
    int32_t first_working_order     # head of this account's working OrderRecord list
    int32_t working_order_count
    uint32_t tag_overflow           # bit 0: venues, bit 1: counterparties had no free total
    int32_t order_count             # its decided orders the table holds (<= the share)
    int32_t idle_count              # of which not working: rejected, filled, cancelled
    int32_t first_idle_order        # oldest of those (they leave the table first)
    int32_t last_idle_order
    int32_t capacity_kind           # Capacity that did not fit, with ACCOUNT_OVER_CAPACITY
    int32_t first_grouped           # head of its working records that are legs of an
                                    # order group (linked by next_grouped), NO_INDEX: none
    int64_t next_lapse_ms           # Unix ms: no working order of the account lapses
                                    # before it (0: none may lapse); the sweep's shortcut
    int64_t cash                    # balances:{ACC}, 1/10,000 of the currency
    int64_t credit_line
    int64_t realized_pnl            # pnl:{ACC} field realized: the day's realized P&L
    int64_t state_version           # version:{ACC} of the last snapshot applied (0: none)
    # Its groups (GroupRecord indexes, flattened, in check order: sorted by
    # id) and, for each, the next member of that group (NO_INDEX: the last).
    # Written under the locks of its old and new groups and its stripe.
    int32_t group_count
    int32_t group_pad
    int32_t groups[MAX_ACCOUNT_GROUPS]
    int32_t next_member[MAX_ACCOUNT_GROUPS]
    LimitSet limits                 # the account-wide defaults
    TagLimit venue_limits[TAG_LIMIT_SLOTS]
    TagLimit counterparty_limits[TAG_LIMIT_SLOTS]
    # Working notional per venue / counterparty, so their exposure checks
    # cost O(1); only when more than TAG_LIMIT_SLOTS names work at once does
    # the check fall back to walking the working orders.
    TagLimit venue_working[TAG_LIMIT_SLOTS]
    TagLimit counterparty_working[TAG_LIMIT_SLOTS]

cdef struct InstrumentRecord:
    char symbol[ID_CAPACITY]
    uint32_t id_hash
    uint32_t id_length
    uint32_t flags
    int32_t halt_mode               # HaltMode
    int64_t last_price              # 1/10,000 of the currency
    int64_t tick_size               # 1/10,000 of the currency
    int64_t lot_size                # units
    int32_t issuer_id               # 0: no issuer given (the symbol is its own issuer)
    int32_t sector_id               # 0: no sector given
    # ISO 4217 code packed little-endian: c0 | c1 << 8 | c2 << 16; 0: none
    # given (readers use the default_currency setting). Only the portfolio
    # streams read it (Holding.currency): no check depends on it.
    uint32_t currency
    uint32_t reserved
    # Margin rates in basis points of notional (instrument:<SYM>; 0: none):
    # initial margin for orders and positions, long and short; maintenance
    # for the MARGIN_CALL alert of the portfolio streams.
    int64_t initial_margin_long_bps
    int64_t initial_margin_short_bps
    int64_t maintenance_margin_long_bps
    int64_t maintenance_margin_short_bps

# One (account, instrument) pair; 96 bytes.
cdef struct PositionSlot:
    int32_t account_index
    int32_t instrument_index
    int32_t override_index          # OverrideRecord with per-symbol limits, or NO_INDEX
    int32_t next_in_account         # singly linked list from AccountRecord.first_position
    int64_t quantity                # net position: sum of lot quantities
    int64_t cost_basis              # sum of lot quantity x lot price
    int64_t working_buy             # units reserved by approved, unfilled buys
    int64_t working_sell            # units reserved by approved, unfilled sells (incl. short)
    int64_t working_buy_notional    # their notional at the price they were valued at
    int64_t working_sell_notional
    int64_t working_short_notional  # the SELL_SHORT part of working_sell_notional
    int64_t located                 # locates:{ACC} quantity granted for short sales
    int64_t locate_used             # consumed by approved SELL_SHORT orders

cdef struct OverrideRecord:
    int32_t account_index
    int32_t instrument_index
    LimitSet limits

cdef struct StoredRejection:
    int32_t code
    int32_t reserved
    int64_t observed
    int64_t limit

# One decided order: the idempotency record of its id and, while it works,
# its reservation. Lives in the order region of the table. Records are
# reused: one that no longer works and whose decision is durable leaves the
# table (its id goes to the account's evicted-id filter) and its slot takes
# another order. account_index comes first and is written first, so a
# lock-free reader of another account never sees a record of its own there.
cdef struct OrderRecord:
    int32_t account_index
    uint32_t flags                  # ORDER_IN_USE, ORDER_DURABLE
    char order_id[ORDER_ID_CAPACITY]
    char venue[TAG_CAPACITY]
    char counterparty[TAG_CAPACITY]
    uint32_t id_hash
    uint32_t id_length
    int32_t instrument_index
    int32_t position_index          # the slot holding its reservation (NO_INDEX if rejected)
    int32_t next_working            # next in the account's working list (or the free list)
    int32_t next_idle               # next in the account's list of non-working records
    uint32_t group_hash             # of group (never 0 with one; 0: none)
    int32_t next_grouped            # next working leg of a group of the account
    int32_t side
    int32_t order_type
    int32_t status                  # OrderStatus
    int32_t approved
    int32_t rejection_count
    int32_t time_in_force           # TimeInForce, as sent
    int64_t quantity
    int64_t price                   # as sent
    int64_t valuation_price         # what its notional was computed at
    int64_t notional
    int64_t remaining               # reserved units still working
    int64_t idle_since_ns           # when it stopped working (table clock)
    int64_t expire_at_ms            # Order.expire_at_unix_ms as sent (GTD)
    int64_t working_until_ms        # Unix ms at which it stops counting; 0: until its
                                    # fill or cancel is reported (end_lapsed_orders)
    # A replacement (ReplaceOrder) of the order ``replaces`` (NUL-padded; empty:
    # a new order). FIX cumulative quantity: its quantity includes what the
    # chain filled before it, so its filled units are carried (fills of the
    # chain before the original, fixed at the replace) + the original's fills
    # + its own. own_filled is its own id's fills in the last snapshot.
    int64_t carried
    int64_t own_filled
    char replaces[ORDER_ID_CAPACITY]
    # An OCO group (Order.group_id, NUL-padded; empty: none). What a working
    # record counts on its slot's sums and its venue's and counterparty's
    # totals: remaining units and remaining x valuation price, except that
    # the legs of one group count together the worst leg of each side (the
    # most units, the most notional), held by whichever legs are the worst
    # (regroup). A record that is not working counts nothing.
    char group[ORDER_ID_CAPACITY]
    int64_t counted
    int64_t counted_notional
    StoredRejection rejections[STORED_REJECTIONS]

cdef struct RateEntry:
    int64_t at_ns
    int64_t cumulative_notional

# Sliding windows: a ring of the last approved orders (of an account, or of
# a group's accounts), with a running notional sum, so both "orders per
# window" and "notional per window" are exact (binary search for the window
# start).
cdef struct RateRing:
    int32_t head                    # next write position
    int32_t count
    int64_t cumulative_notional     # total notional approved since the table started
    RateEntry entries[RATE_RING_CAPACITY]

# An account group (group:<G>): its limits, its members (a list through
# AccountRecord.next_member) and the ring of its members' approved orders for
# its velocity windows. Guarded by its group lock.
cdef struct GroupRecord:
    char group_id[ID_CAPACITY]
    uint32_t id_hash
    uint32_t id_length
    uint32_t flags                  # GROUP_KNOWN, GROUP_STATE_INVALID
    int32_t first_member            # AccountRecord index, NO_INDEX: none
    int32_t member_count
    LimitSet limits
    RateRing rate

# An account's velocity ring, reject-storm ring and evicted-id filter.
cdef struct AccountActivity:
    RateRing rate
    int32_t reject_head
    int32_t reject_count
    int64_t rejects_at_ns[REJECT_RING_CAPACITY]
    int64_t evictions               # its records that left the table
    uint64_t evicted[EVICTED_FILTER_WORDS]  # Bloom filter of their order ids
