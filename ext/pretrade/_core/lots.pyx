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

from libc.stdint cimport int64_t, uint64_t


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


def sum_lots(dict tickers, dict quantities, dict prices, object valid_symbol):
    """``{symbol: (net quantity, cost basis)}``, or None for the reference path to decide.

    The three dicts must have the same keys (the caller checks). ``valid_symbol``
    is called once per distinct symbol.
    """
    cdef dict sums = {}
    cdef list found
    cdef int64_t quantity, price, net, basis, cost
    cdef object raw_quantity, raw_price
    for lot, symbol in tickers.items():
        raw_quantity = quantities[lot]
        raw_price = prices[lot]
        if type(raw_quantity) is not bytes or type(raw_price) is not bytes:
            return None
        if not _parse_int64(<bytes>raw_quantity, &quantity):
            return None
        if not _parse_int64(<bytes>raw_price, &price) or price < 0:
            return None
        found = sums.get(symbol)
        if found is None:
            if not valid_symbol(symbol):
                return None
            found = [0, 0]
            sums[symbol] = found
        net = found[0]
        basis = found[1]
        if pt_add_i64_checked(net, quantity, &net):
            return None
        if pt_mul_i64_checked(quantity, price, &cost) or pt_add_i64_checked(basis, cost, &basis):
            return None
        found[0] = net
        found[1] = basis
    return {symbol: (pair[0], pair[1]) for symbol, pair in sums.items()}
