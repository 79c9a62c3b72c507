# The pre-trade check pipeline: one call per order, no Python objects, no
# allocation. Every check is one function of type check_fn; the pipeline runs
# them all in order, and each failed check appends one Rejection, so a
# decision lists every failure, not only the first.
#
# To add a check: write the function, append it to PIPELINE in checks.pyx,
# mirror it in pretrade/reference.py, and add its tests.

from libc.stdint cimport int32_t, int64_t

cimport pretrade._core.layout as L
from pretrade._core.positions cimport PositionTable


# Products of two int64 values, and sums of a few, fit exactly: the checks
# compare in 128 bits, so no limit comparison can wrap.
cdef extern from "shared_sync.h" nogil:
    ctypedef long long int128_t "pt_int128"


cdef struct OrderInput:
    int64_t quantity
    int64_t price                   # 1/10,000 of the currency; ignored for MARKET
    int64_t now_ns                  # a monotonic clock reading, from the caller
    int64_t durable_checked         # -1, or the account's eviction count when the caller
                                    # found no durable copy of this id (see ORDER_ID_EXPIRED)
    int64_t min_state_version       # decide only on an account snapshot at least this new
    # ReplaceOrder only (0 / NULL for a new order): the units the original's
    # chain has filled (the replacement is checked for its quantity less
    # these), and what of them its record carries (OrderRecord.carried).
    int64_t filled_before
    int64_t carried
    const char* replaces            # the original's order id
    Py_ssize_t replaces_length
    int64_t now_unix_ms             # the wall clock, from the caller (GTD expiry)
    int64_t expire_at_ms            # Order.expire_at_unix_ms (GTD)
    int64_t session_end_ms          # Unix ms of the session end a DAY / IOC order works
                                    # until, from the caller; 0: none configured
    int32_t time_in_force           # TimeInForce
    int32_t shard                   # the account's shard (NO_INDEX: ownership off)
    int32_t side                    # Side
    int32_t order_type              # OrderType
    int32_t account_index           # NO_INDEX when the account is not in the table
    int32_t instrument_index        # NO_INDEX when the symbol is not in the table
    const char* order_id
    Py_ssize_t order_id_length
    const char* venue
    Py_ssize_t venue_length
    const char* counterparty
    Py_ssize_t counterparty_length
    Py_ssize_t account_id_length
    Py_ssize_t symbol_length
    const char* group               # Order.group_id (an OCO group); NULL / 0: none
    Py_ssize_t group_length

cdef struct Rejection:
    int32_t code                    # RejectCode
    int32_t reserved
    int64_t observed                # the figure the check measured
    int64_t limit                   # the figure it was held to

cdef struct DecisionRecord:
    OrderInput order
    int64_t notional                # quantity x valuation price; 0 if unknown
    int32_t approved
    int32_t rejection_count
    int32_t replayed                # the stored decision of an earlier identical order
    int32_t auto_halt               # AutoHalt the Python layer must apply
    int32_t stored                  # kept under its order id (so it must be made durable)
    int32_t reserved
    int64_t profit_and_loss         # the account's P&L when auto_halt is LOSS_LIMIT
    Rejection rejections[L.MAX_REJECTIONS]
    # A replacement's venue and counterparty, copied from its original
    # (order.venue and order.counterparty point here then).
    char venue_copy[L.TAG_CAPACITY]
    char counterparty_copy[L.TAG_CAPACITY]
    char group_copy[L.ORDER_ID_CAPACITY]    # and its group (order.group points here)

# One account group of the order's account, resolved by prepare_context
# (resolve_groups, sum_groups) under the group's lock: the group summed over
# its members, the order's account included with the figures its own checks
# use.
cdef struct GroupSums:
    const L.GroupRecord* group
    int32_t unavailable                     # GroupUnavailable; 0: the group is checked
    bint valued                             # it sets an exposure or loss limit
    bint unpriced                           # a member's holding has no last price
    bint overflow                           # a sum does not fit in int64
    int128_t position                       # in the order's symbol
    int128_t working_buy
    int128_t working_sell
    int128_t gross
    int128_t net
    int128_t pnl                            # unrealized + realized

# Everything a check may read, resolved once per order by prepare_context.
cdef struct CheckContext:
    const L.TableHeader* header
    const L.AccountRecord* account            # NULL: no account record
    const L.InstrumentRecord* instrument      # NULL: no instrument record
    const L.PositionSlot* slot                # NULL: no position slot yet
    const L.LimitSet* overrides               # NULL: no per-symbol limits
    const L.AccountActivity* activity         # NULL when account is NULL
    const L.OrderRecord* orders               # the table's order region (venue sums)
    int32_t slot_instrument                 # the order's instrument index
    int64_t position                        # current net position (0 if no slot)
    int64_t working_buy                     # units reserved by working buys
    int64_t working_sell
    int64_t valuation_price                 # price the order is valued at
    int64_t notional
    int64_t signed_quantity                 # +quantity for a buy, -quantity for a sell
    int64_t projected_position              # position + signed_quantity (no working)
    bint account_known
    bint instrument_known
    bint price_valid                        # valuation_price is usable
    bint notional_valid                     # notional computed without overflow
    bint projection_valid                   # projected_position fits in int64
    bint duplicate_conflict                 # the order id was used for another order
    bint account_region_full                # no record for the account, and no room for one
    bint instrument_region_full             # no record for the symbol, and no room for one
    # An order group's leg: what the group's working legs of the order's side
    # count already, up to the order's own units and notional. The group
    # counts its worst leg, so these are not counted again: every sum the
    # checks read (working units, exposure, buying power, margin, venue
    # totals) is taken as if they were not there.
    int64_t group_units
    int64_t group_notional
    int32_t order_side                      # Side
    int32_t group_mismatch                  # a working leg is of another symbol (1),
                                            # venue (2) or counterparty (3); 0: none
    # Account valuation: filled by scan_account when a control needs it.
    bint scan_needed
    bint scan_unpriced                      # a held symbol has no last price
    bint scan_overflow                      # an aggregate does not fit in int64
    int32_t scan_lost_slot                  # a held symbol's key is in a lost slot (-1: none)
    int128_t gross                          # |positions| at last + working both sides
    int128_t net                            # positions at last + working buys - sells
    int128_t unrealized                     # positions at last - cost basis
    int128_t committed                      # working buys + short value + working shorts
    int128_t issuer_exposure                # gross restricted to the order's issuer
    int128_t sector_exposure                # gross restricted to the order's sector
    # Initial margin, in notional x basis points: the worst of each position
    # extended by its working buys or by its working sells (margin_of_slot),
    # summed over the account's other positions; the order's own position
    # (value at last, working notionals) is kept apart for check_margin.
    int128_t initial_margin_bps
    int128_t order_slot_value
    int128_t order_slot_working_buy
    int128_t order_slot_working_sell
    # Account groups (the account's, in check order). group_sums stays
    # last: prepare_context clears the context up to it, and only the
    # entries of the account's groups are written.
    int32_t group_count
    bint groups_invalid                     # ACCOUNT_GROUPS_INVALID
    bint groups_need_scan                   # a group sets an exposure or loss limit
    GroupSums group_sums[L.MAX_ACCOUNT_GROUPS]

ctypedef void (*check_fn)(const CheckContext* ctx, DecisionRecord* out) noexcept nogil


cdef class Verdict:
    # The engine's answer to one order, returned by Engine.evaluate.
    cdef readonly bint approved
    cdef readonly int64_t notional
    cdef readonly tuple rejections
    cdef readonly bint replayed
    cdef readonly int32_t auto_halt
    cdef readonly int64_t profit_and_loss
    cdef readonly bint stored


cdef class DecisionPool:
    # A fixed ring of decision records, preallocated once: the pipeline writes
    # into one and the Python layer reads it out, so no order allocates.
    cdef DecisionRecord* records
    cdef int32_t capacity
    cdef int32_t* free_stack
    cdef int32_t free_count

    cdef DecisionRecord* acquire(self) noexcept nogil
    cdef void release(self, DecisionRecord* record) noexcept nogil


cdef class Engine:
    cdef readonly PositionTable table
    cdef DecisionPool pool
    # The metrics: counted in evaluate while ``counting`` (the default).
    cdef L.EngineCounters counters
    cdef public bint counting

    cdef void run_pipeline(self, DecisionRecord* record) noexcept nogil
    cdef void run_replace(self, DecisionRecord* record) noexcept nogil
    cdef Verdict _verdict(self, DecisionRecord* record, int64_t started)
    cdef void decide_locked(self, DecisionRecord* record) noexcept nogil
    cdef void replay(self, const L.OrderRecord* stored, DecisionRecord* record) noexcept nogil
    cdef void watch_loss_limit(self, const CheckContext* ctx, DecisionRecord* record) noexcept nogil
    cdef void remember(self, const CheckContext* ctx, DecisionRecord* record) noexcept nogil
    cdef bint reservation_fits(self, const CheckContext* ctx, const DecisionRecord* record,
                               const L.PositionSlot* slot) noexcept nogil
    cdef void reserve(self, const CheckContext* ctx, DecisionRecord* record, L.OrderRecord* stored,
                      int32_t position_index) noexcept nogil
    cdef void count_rejection(self, const CheckContext* ctx, DecisionRecord* record) noexcept nogil
    cdef void count_decision(self, const DecisionRecord* record, int64_t elapsed_ns) noexcept nogil
    cdef DecisionRecord* _acquire(self, bytes order_id, bytes account_id, int64_t quantity,
                                  int64_t price, int64_t now_ns, int64_t durable_checked,
                                  int64_t min_state_version, int64_t now_unix_ms) except NULL
    cdef DecisionRecord* _decide(self, bytes order_id, bytes account_id, bytes symbol, int side,
                                 int order_type, int64_t quantity, int64_t price, bytes venue,
                                 bytes counterparty, int64_t now_ns,
                                 int64_t durable_checked,
                                 int64_t min_state_version, int32_t time_in_force,
                                 int64_t expire_at_unix_ms, int64_t now_unix_ms,
                                 int64_t session_end_unix_ms, bytes group_id) except NULL
    cpdef Verdict evaluate(self, bytes order_id, bytes account_id, bytes symbol, int side,
                          int order_type, int64_t quantity, int64_t price, bytes venue=*,
                          bytes counterparty=*, int64_t now_ns=*, int64_t durable_checked=*,
                          int64_t min_state_version=*, int32_t time_in_force=*,
                          int64_t expire_at_unix_ms=*, int64_t now_unix_ms=*,
                          int64_t session_end_unix_ms=*, bytes group_id=*)
    cpdef Verdict replace(self, bytes order_id, bytes account_id, bytes original_order_id,
                          int64_t quantity, int64_t price, int64_t now_ns=*,
                          int64_t durable_checked=*, int64_t min_state_version=*,
                          int64_t now_unix_ms=*)
