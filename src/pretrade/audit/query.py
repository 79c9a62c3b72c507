"""Reading the audit trail back: the ``pretrade audit`` command's query.

Reads the Redis stream ``audit`` (:mod:`pretrade.audit.entries` has its
fields) with a synchronous client, newest first, and keeps the entries that
match an :class:`AuditQuery`. It needs nothing of the server: no access
control, no table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pretrade.audit.entries import AUDIT_STREAM, DECISION, rows_of
from pretrade.engine.text import as_text

#: How much earlier than an entry's ``ts`` Redis may have received it: the
#: stream id of an entry written late (Redis was away) is later than its
#: ``ts``, so a time range reads ids this much wider and filters on ``ts``.
WRITE_DELAY_SLACK_MS = 60_000
_PAGE = 1_000
_INTEGER_FIELDS = frozenset({"ts", "pid", "quantity", "price", "notional", "latency_ns",
                             "expires_at"})


@dataclass(frozen=True)
class AuditQuery:
    """Which entries ``pretrade audit`` shows: every given condition must hold.

    ``account`` matches a decision's account and a halt of that account;
    ``since_ms`` and ``until_ms`` bound ``ts`` (Unix ms, inclusive);
    ``limit`` keeps the newest matches (0: all).
    """

    account: str | None = None
    order_id: str | None = None
    event: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 100

    def matches(self, fields: dict[str, str]) -> bool:
        if self.event is not None and fields.get("event") != self.event:
            return False
        if self.order_id is not None and (fields.get("event") != DECISION
                                          or fields.get("order_id") != self.order_id):
            return False
        if self.account is not None:
            if fields.get("event") == DECISION:
                if fields.get("account") != self.account:
                    return False
            elif fields.get("scope") != "ACCOUNT" or fields.get("target") != self.account:
                return False
        if self.since_ms is not None or self.until_ms is not None:
            try:
                at = int(fields.get("ts", ""))
            except ValueError:
                return False
            if self.since_ms is not None and at < self.since_ms:
                return False
            if self.until_ms is not None and at > self.until_ms:
                return False
        return True


def read_audit(client: Any, query: AuditQuery,
               stream: bytes = AUDIT_STREAM) -> list[tuple[str, dict[str, str]]]:
    """The entries matching ``query``, oldest first, as ``(stream id, fields)``.

    ``client`` is a synchronous ``redis.Redis``. Reads newest first with
    ``XREVRANGE`` in pages, from the time range's end, until ``limit``
    matches are found or the range is exhausted.
    """
    high = "+" if query.until_ms is None else str(query.until_ms + WRITE_DELAY_SLACK_MS)
    low = "-" if query.since_ms is None else str(max(query.since_ms - WRITE_DELAY_SLACK_MS,
                                                     0))
    found: list[tuple[str, dict[str, str]]] = []
    while True:
        page = client.xrevrange(stream, max=high, min=low, count=_PAGE)
        for raw_id, raw_fields in page:
            for row_id, fields in reversed(rows_of(raw_id, raw_fields)):
                if query.matches(fields):
                    found.append((row_id, fields))
                    if query.limit and len(found) >= query.limit:
                        return found[::-1]
        if len(page) < _PAGE:
            return found[::-1]
        high = "(" + as_text(page[-1][0])


def entry_as_json(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """An entry with typed values: integers as numbers, ``codes`` a list, ``replayed`` a bool."""
    typed: dict[str, Any] = {"id": entry_id}
    for name, value in fields.items():
        if name in _INTEGER_FIELDS:
            try:
                typed[name] = int(value)
                continue
            except ValueError:
                pass
        if name == "codes":
            typed[name] = value.split(",") if value else []
        elif name == "replayed":
            typed[name] = value == "1"
        else:
            typed[name] = value
    return typed
