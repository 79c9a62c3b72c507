"""Text at pretrade's edges: what an id or a tag may hold, and text read back from Redis.

One rule each, used by request validation, the halt RPC, the Redis schema,
the tokens file and the portfolio stream:

* an **id** (account id, symbol) is 1 to ``MAX_ID_LENGTH`` characters of
  ``A-Z a-z 0-9 . _ / - + = # @ $ & ! ~ ^``: no braces (they delimit the
  Redis Cluster hash tag), no colons (they separate key parts), no spaces;
* a **tag** (venue, counterparty) and an **order id** are printable ASCII
  without spaces, up to ``MAX_TAG_LENGTH`` and ``MAX_ORDER_ID_LENGTH``;
* a **currency** is an ISO 4217 code: three ASCII letters ``A-Z``.

The rules themselves (which characters, how many) are the compiled core's
(:mod:`pretrade._core.text`, a table lookup per character); this module
words what they refuse. Messages quote at most :data:`QUOTED_CHARACTERS`
characters of what they refuse, so no input can make an error message or a
log line long.
"""

from __future__ import annotations

import re

from pretrade._core.constants import MAX_ID_LENGTH
from pretrade._core.text import id_bytes, is_valid_id, is_valid_tag, tag_bytes
from pretrade.engine.errors import InvalidRequest

__all__ = ["QUOTED_CHARACTERS", "as_text", "clipped", "is_currency_code", "is_valid_id",
           "is_valid_tag", "quoted", "require_id", "require_printable"]

#: Longest part of a refused value that an error message quotes.
QUOTED_CHARACTERS = 64

CURRENCY_PATTERN = re.compile(rb"[A-Z]{3}")


def quoted(text: str | bytes | None, limit: int = QUOTED_CHARACTERS) -> str:
    """``repr`` of at most ``limit`` characters of ``text``, marked when cut (None: ``None``)."""
    if text is None:
        return "None"
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def clipped(text: str, limit: int = QUOTED_CHARACTERS) -> str:
    """``text`` itself when short, else its first ``limit`` characters marked as cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def is_currency_code(value: bytes) -> bool:
    """True for an ISO 4217 code as the table stores it: three ASCII letters A-Z."""
    return CURRENCY_PATTERN.fullmatch(value) is not None


def require_id(text: str, field: str) -> bytes:
    """``text`` as the bytes of a valid id, or :class:`InvalidRequest` naming ``field``."""
    if not text:
        raise InvalidRequest(f"{field} is required", field)
    raw = id_bytes(text)
    if raw is None:
        raise InvalidRequest(f"{field} {quoted(text)} is not a valid id (1 to {MAX_ID_LENGTH} "
                             "characters of A-Z a-z 0-9 . _ / - and a few symbols)", field)
    return raw


def require_printable(text: str, field: str, longest: int, *, required: bool) -> bytes:
    """``text`` as ASCII bytes when it is printable, without spaces and short enough.

    An empty ``text`` is ``b""`` unless ``required``; anything else refused is
    :class:`InvalidRequest` naming ``field``.
    """
    if not text:
        if required:
            raise InvalidRequest(f"{field} is required", field)
        return b""
    raw = tag_bytes(text, longest)
    if raw is None:
        raise InvalidRequest(f"{field} must be 1 to {longest} printable ASCII characters "
                             f"without spaces, got {quoted(text)}", field)
    return raw


def as_text(value: bytes | str | None) -> str:
    """A Redis reply as text: bytes decoded as UTF-8 (bad bytes replaced), None as ``""``."""
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
