# cython: freethreading_compatible = False
"""What an id or a tag may hold, written once, in the core.

* an **id** (account id, symbol) is 1 to ``MAX_ID_LENGTH`` characters of
  ``A-Z a-z 0-9 . _ / - + = # @ $ & ! ~ ^``;
* a **tag** (venue, counterparty) and an **order id** are 1 to ``longest``
  printable ASCII characters without spaces (``!`` to ``~``).

Each order pays these checks, so they are a table lookup per character, not
a regular expression. The Python layer (:mod:`pretrade.engine.text`: request
validation, the halt RPC, the Redis schema, the tokens file) asks them and
words the message for what they refuse.
"""

cimport pretrade._core.layout as L

cdef bint ID_CHARACTER[128]


cdef void _fill_id_characters() noexcept:
    cdef int c
    for c in range(128):
        ID_CHARACTER[c] = (b"0"[0] <= c <= b"9"[0] or b"A"[0] <= c <= b"Z"[0]
                           or b"a"[0] <= c <= b"z"[0])
    for c in b"._/-+=#@$&!~^":
        ID_CHARACTER[c] = True


_fill_id_characters()


cdef inline bint _id_character(Py_UCS4 c) noexcept:
    return c < 128 and ID_CHARACTER[c]


cdef inline bint _tag_character(Py_UCS4 c) noexcept:
    return 0x21 <= c <= 0x7e


cdef bint _is_id(str text) noexcept:
    cdef Py_ssize_t n = len(text)
    cdef Py_UCS4 c
    if n < 1 or n > L.MAX_ID_LENGTH:
        return False
    for c in text:
        if not _id_character(c):
            return False
    return True


cdef bint _is_tag(str text, Py_ssize_t longest) noexcept:
    cdef Py_ssize_t n = len(text)
    cdef Py_UCS4 c
    if n < 1 or n > longest:
        return False
    for c in text:
        if not _tag_character(c):
            return False
    return True


def id_bytes(str text):
    """``text`` as the ASCII bytes of a valid id, or None."""
    return text.encode("ascii") if _is_id(text) else None


def tag_bytes(str text, Py_ssize_t longest):
    """``text`` as ASCII bytes when it is 1 to ``longest`` printable characters, or None."""
    return text.encode("ascii") if _is_tag(text, longest) else None


cdef bint _valid_bytes(bytes value, Py_ssize_t longest, bint tag) noexcept:
    cdef Py_ssize_t n = len(value), i
    cdef const unsigned char* p = value
    if n < 1 or n > longest:
        return False
    for i in range(n):
        if not (_tag_character(p[i]) if tag else _id_character(p[i])):
            return False
    return True


def is_valid_id(bytes value not None):
    """True for bytes that are a valid id (account id, symbol)."""
    return _valid_bytes(value, L.MAX_ID_LENGTH, False)


def is_valid_tag(bytes value not None):
    """True for bytes that are a valid venue or counterparty name."""
    return _valid_bytes(value, L.MAX_TAG_LENGTH, True)


def order_ids(str order_id, str account, str symbol, str venue, str counterparty):
    """An order's five texts as bytes when every one is valid (venue and
    counterparty may be empty), else None: the caller then finds and words
    the first one refused."""
    if not (_is_tag(order_id, L.MAX_ORDER_ID_LENGTH) and _is_id(account) and _is_id(symbol)
            and (not venue or _is_tag(venue, L.MAX_TAG_LENGTH))
            and (not counterparty or _is_tag(counterparty, L.MAX_TAG_LENGTH))):
        return None
    return (order_id.encode("ascii"), account.encode("ascii"), symbol.encode("ascii"),
            venue.encode("ascii"), counterparty.encode("ascii"))
