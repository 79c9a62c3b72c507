# The pre-trade check pipeline: one call per order, no Python objects, no
# allocation. Every check is one function of type check_fn; the pipeline runs
# them all in order, and each failed check appends one Rejection, so a
# decision lists every failure, not only the first.
#
# To add a check: write the function, append it to PIPELINE in checks.pyx,
# mirror it in pretrade/reference.py, and add its tests.

from libc.stdint cimport int32_t, int64_t

from pretrade._core.layout cimport AccountRecord
from pretrade._core.layout cimport InstrumentRecord
from pretrade._core.layout cimport LimitSet
from pretrade._core.layout cimport MAX_REJECTIONS
from pretrade._core.layout cimport PositionSlot
from pretrade._core.layout cimport TableHeader
from pretrade._core.positions cimport PositionTable


cdef struct OrderInput:
    int64_t quantity
    int64_t price                   # 1/10,000 of the currency; ignored for MARKET
    int32_t side                    # Side
    int32_t order_type              # OrderType
    int32_t account_index           # NO_INDEX when the account is not in the table
    int32_t instrument_index        # NO_INDEX when the symbol is not in the table

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
    Rejection rejections[MAX_REJECTIONS]

# Everything a check may read, resolved once per order by prepare_context.
cdef struct CheckContext:
    const TableHeader* header
    const AccountRecord* account            # NULL: unknown account
    const InstrumentRecord* instrument      # NULL: unknown symbol
    const LimitSet* overrides               # NULL: no per-symbol limits
    int64_t position                        # current net position (0 if no slot)
    int64_t valuation_price                 # price the order is valued at
    int64_t notional
    int64_t signed_quantity                 # +quantity for a buy, -quantity for a sell
    int64_t projected_position              # position + signed_quantity
    bint account_known
    bint instrument_known
    bint price_valid                        # valuation_price is usable
    bint notional_valid                     # notional computed without overflow
    bint projection_valid                   # projected_position computed without overflow

ctypedef void (*check_fn)(const CheckContext* ctx, DecisionRecord* out) noexcept nogil


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

    cdef void run_pipeline(self, DecisionRecord* record) noexcept nogil
    cdef DecisionRecord* _decide(self, bytes account_id, bytes symbol, int side, int order_type,
                                 int64_t quantity, int64_t price) except NULL
    cpdef tuple evaluate(self, bytes account_id, bytes symbol, int side, int order_type,
                         int64_t quantity, int64_t price)
    cpdef int evaluate_rejection_count(self, bytes account_id, bytes symbol, int side,
                                       int order_type, int64_t quantity, int64_t price)
