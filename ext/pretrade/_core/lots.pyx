# cython: language_level=3, boundscheck=False, wraparound=False
"""Lots into positions in compiled code: the sync's loop for an account's every re-read.

An account may hold 100,000 lots, and a keyspace notification names a hash,
not the field that changed, so one changed lot means all of them are summed
again. :func:`sum_lots` does that loop in C. It decides nothing on its own
about bad input: for anything it does not accept (a value that is not a
plain int64, a negative price, an invalid symbol, a sum that leaves int64
on the way) it returns None, and the caller takes the reference path
(``pretrade.state.schema.aggregate_lots_reference``), which says exactly
what is wrong or, for a sum that only overflowed on the way, computes it.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_Next, PyDict_Size
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsSsize_t
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp


cdef extern from *:
    """
    static inline int pt_add_i64_checked(int64_t a, int64_t b, int64_t *out) {
        return __builtin_add_overflow(a, b, out);
    }
    static inline int pt_mul_i64_checked(int64_t a, int64_t b, int64_t *out) {
        return __builtin_mul_overflow(a, b, out);
    }
    """
    bint pt_add_i64_checked(int64_t a, int64_t b, int64_t* out) noexcept nogil
    bint pt_mul_i64_checked(int64_t a, int64_t b, int64_t* out) noexcept nogil


cdef bint _parse_int64(bytes raw, int64_t* out) noexcept:
    # Exactly [+-]?[0-9]{1,19} whose value fits in int64.
    cdef const unsigned char* text = raw
    cdef Py_ssize_t length = len(raw)
    cdef Py_ssize_t at = 0
    cdef bint negative = False
    cdef uint64_t value = 0
    if length == 0:
        return False
    if text[0] == 43 or text[0] == 45:  # '+' or '-'
        negative = text[0] == 45
        at = 1
    if length - at < 1 or length - at > 19:
        return False
    while at < length:
        if text[at] < 48 or text[at] > 57:
            return False
        value = value * 10 + (text[at] - 48)  # 19 digits stay below 2**64
        at += 1
    if negative:
        if value > <uint64_t>9223372036854775808:
            return False
        out[0] = <int64_t>(0 - value)
    else:
        if value > <uint64_t>9223372036854775807:
            return False
        out[0] = <int64_t>value
    return True


cdef inline Py_ssize_t _new_slot(dict slots, list symbols, object symbol, int64_t* sums):
    # The next pair of sums, for a symbol seen for the first time.
    cdef Py_ssize_t slot = len(symbols)
    slots[symbol] = slot
    symbols.append(symbol)
    sums[2 * slot] = 0
    sums[2 * slot + 1] = 0
    return slot


cdef inline bint _add_lot(int64_t* sums, Py_ssize_t slot, int64_t quantity,
                          int64_t price) noexcept:
    # One lot into its symbol's sums; False when a sum leaves int64 on the way.
    cdef int64_t cost
    if pt_add_i64_checked(sums[2 * slot], quantity, &sums[2 * slot]):
        return False
    if pt_mul_i64_checked(quantity, price, &cost) \
            or pt_add_i64_checked(sums[2 * slot + 1], cost, &sums[2 * slot + 1]):
        return False
    return True


cdef dict _positions(list symbols, const int64_t* sums):
    # {symbol: (net quantity, cost basis)}, a symbol's sums at its slot
    return {symbol: (sums[2 * slot], sums[2 * slot + 1]) for slot, symbol in enumerate(symbols)}


def sum_lots(dict tickers, dict quantities, dict prices, object valid_symbol):
    """``{symbol: (net quantity, cost basis)}``, or None for the reference path to decide.

    None also when the three dicts do not have the same keys: equal sizes,
    and every lot of ``tickers`` found in the other two. ``valid_symbol``
    is called once per distinct symbol. The sums are kept in a C array, one
    pair per symbol (a symbol's slot is a dict lookup per lot): no Python
    object is made per lot.
    """
    cdef Py_ssize_t count = PyDict_Size(tickers)
    if PyDict_Size(quantities) != count or PyDict_Size(prices) != count:
        return None
    cdef dict slots = {}
    cdef list symbols = []
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t slot
    cdef PyObject* lot
    cdef PyObject* symbol
    cdef PyObject* found
    cdef PyObject* raw_quantity
    cdef PyObject* raw_price
    cdef int64_t quantity, price
    # Two int64 per distinct symbol, at most one symbol per lot.
    cdef int64_t* sums = <int64_t*>malloc(<size_t>(count if count > 0 else 1) * 2 * sizeof(int64_t))
    if sums == NULL:
        raise MemoryError()
    try:
        while PyDict_Next(tickers, &pos, &lot, &symbol):
            raw_quantity = PyDict_GetItem(quantities, <object>lot)
            raw_price = PyDict_GetItem(prices, <object>lot)
            if raw_quantity == NULL or raw_price == NULL:
                return None  # the lot is not in all three hashes
            if type(<object>raw_quantity) is not bytes or type(<object>raw_price) is not bytes:
                return None
            if not _parse_int64(<bytes>raw_quantity, &quantity):
                return None
            if not _parse_int64(<bytes>raw_price, &price) or price < 0:
                return None
            found = PyDict_GetItem(slots, <object>symbol)
            if found == NULL:
                if not valid_symbol(<object>symbol):
                    return None
                slot = _new_slot(slots, symbols, <object>symbol, sums)
            else:
                slot = PyLong_AsSsize_t(<object>found)
            if not _add_lot(sums, slot, quantity, price):
                return None
        return _positions(symbols, sums)
    finally:
        free(sums)


cdef inline bint _same_bytes(object a, object b) noexcept:
    # Both bytes (the caller checked a), of equal content.
    cdef Py_ssize_t n = PyBytes_GET_SIZE(a)
    if type(b) is not bytes or PyBytes_GET_SIZE(b) != n:
        return False
    return memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), n) == 0


def sum_lots_flat(list tickers, list quantities, list prices, object valid_symbol):
    """:func:`sum_lots` over the three hashes' flat HGETALL replies (RESP2:
    field, value, field, value, ...), or None for the caller to pair them up
    and take the dict path.

    The replies are summed as they are only when all three list the same
    lots in the same order, which is how Redis answers for three hashes
    written lot by lot alike; any other order, an odd length, or anything
    :func:`sum_lots` would not take is None. So no dict is built per hash
    (pairing 100,000 fields into one costs about 9 ms).
    """
    cdef Py_ssize_t length = PyList_GET_SIZE(tickers)
    if length % 2 != 0 or PyList_GET_SIZE(quantities) != length \
            or PyList_GET_SIZE(prices) != length:
        return None
    cdef dict slots = {}
    cdef list symbols = []
    cdef Py_ssize_t at, slot
    cdef object lot, symbol, raw_quantity, raw_price, last_symbol = None
    cdef Py_ssize_t last_slot = -1
    cdef PyObject* found
    cdef int64_t quantity, price
    cdef int64_t* sums = <int64_t*>malloc(<size_t>(length // 2 + 1) * 2 * sizeof(int64_t))
    if sums == NULL:
        raise MemoryError()
    try:
        for at in range(0, length, 2):
            lot = <object>PyList_GET_ITEM(tickers, at)
            if type(lot) is not bytes or not _same_bytes(lot, <object>PyList_GET_ITEM(
                    quantities, at)) or not _same_bytes(lot, <object>PyList_GET_ITEM(prices, at)):
                return None  # another order (or other lots): the dict path decides
            symbol = <object>PyList_GET_ITEM(tickers, at + 1)
            raw_quantity = <object>PyList_GET_ITEM(quantities, at + 1)
            raw_price = <object>PyList_GET_ITEM(prices, at + 1)
            if type(symbol) is not bytes or type(raw_quantity) is not bytes \
                    or type(raw_price) is not bytes:
                return None
            if not _parse_int64(<bytes>raw_quantity, &quantity):
                return None
            if not _parse_int64(<bytes>raw_price, &price) or price < 0:
                return None
            # Lots of one symbol often come together: the last one's slot first.
            if last_slot >= 0 and _same_bytes(symbol, last_symbol):
                slot = last_slot
            else:
                found = PyDict_GetItem(slots, symbol)
                if found == NULL:
                    if not valid_symbol(symbol):
                        return None
                    slot = _new_slot(slots, symbols, symbol, sums)
                else:
                    slot = PyLong_AsSsize_t(<object>found)
                last_symbol, last_slot = symbol, slot
            if not _add_lot(sums, slot, quantity, price):
                return None
        return _positions(symbols, sums)
    finally:
        free(sums)
