"""Reading the audit trail back: the ``pretrade audit`` command's query.

Reads the Redis stream ``audit`` (:mod:`pretrade.audit.entries` has its
fields) with a synchronous client, newest first, and keeps the entries that
match an :class:`AuditQuery` (:func:`read_audit`). With the archive
(:mod:`pretrade.audit.archive`), history comes from PostgreSQL
(:func:`read_archive`) and the last moments, not archived yet, from the
stream: :func:`read_history` merges both, each record once. It needs nothing
of the server: no access control, no table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from pretrade.audit.entries import AUDIT_STREAM, DECISION, NODE_STREAMS, rows_of
from pretrade.engine.text import as_text

#: How much earlier than an entry's ``ts`` Redis may have received it: the
#: stream id of an entry written late (Redis was away) is later than its
#: ``ts``, so a time range reads ids this much wider and filters on ``ts``.
WRITE_DELAY_SLACK_MS = 60_000
_PAGE = 1_000
_BOUNDED_PAGE = 50
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
    #: A reject code (``BUYING_POWER``): decisions rejected with it among their codes.
    code: str | None = None
    #: The authenticated caller whose call made the entry.
    principal: str | None = None
    #: Decisions only, and only rejected ones.
    rejected_only: bool = False
    #: Entries of any of these accounts (as ``account`` matches one); None: any.
    accounts: frozenset[str] | None = None
    #: Records read at most, newest first (0: the whole range): bounds the work
    #: of a query that finds few matches.
    max_rows: int = 0

    def matches(self, fields: dict[str, str]) -> bool:
        if self.event is not None and fields.get("event") != self.event:
            return False
        if self.rejected_only and (fields.get("event") != DECISION
                                   or fields.get("verdict") != "REJECTED"):
            return False
        if self.accounts is not None and not any(
                AuditQuery(account=account).matches(fields) for account in self.accounts):
            return False
        if self.principal is not None and fields.get("principal") != self.principal:
            return False
        if self.code is not None and (fields.get("event") != DECISION or self.code not in
                                      fields.get("codes", "").split(",")):
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


def _is_cluster(client: Any) -> bool:
    return isinstance(client, (RedisCluster, AsyncRedisCluster))


def read_audit(client: Any, query: AuditQuery,
               stream: bytes | None = None) -> list[tuple[str, dict[str, str]]]:
    """The entries matching ``query``, oldest first, as ``(stream id, fields)``.

    ``client`` is a synchronous ``redis.Redis`` (or ``redis.RedisCluster``).
    Reads newest first with ``XREVRANGE`` in pages, from the time range's
    end, until ``limit`` matches are found or the range is exhausted.
    ``stream``: that stream only; by default ``audit``, and on a Redis
    Cluster every node's ``audit:{NODE}`` as well, merged in time order.
    """
    streams = [stream] if stream is not None else [AUDIT_STREAM]
    if stream is None and _is_cluster(client):
        streams += sorted(client.scan_iter(match=NODE_STREAMS, count=1000, _type="stream"))
    found = []
    for name in streams:
        scan = _Scan(query)
        while not scan.done:
            scan.take(client.xrevrange(name, max=scan.high, min=scan.low,
                                       count=scan.page_size))
        found.append(scan.found[::-1])
    return _merged(found, query)


async def read_audit_async(client: Any, query: AuditQuery,
                           stream: bytes | None = None) -> list[tuple[str, dict[str, str]]]:
    """:func:`read_audit` with an asyncio ``redis.asyncio.Redis`` (the gateway's own)."""
    streams = [stream] if stream is not None else [AUDIT_STREAM]
    if stream is None and _is_cluster(client):
        streams += sorted([name async for name in client.scan_iter(
            match=NODE_STREAMS, count=1000, _type="stream")])
    found = []
    for name in streams:
        scan = _Scan(query)
        while not scan.done:
            scan.take(await client.xrevrange(name, max=scan.high, min=scan.low,
                                             count=scan.page_size))
        found.append(scan.found[::-1])
    return _merged(found, query)


def _merged(streams: list[list[tuple[str, dict[str, str]]]],
            query: AuditQuery) -> list[tuple[str, dict[str, str]]]:
    """Several streams' matches (each oldest first) as one, in time order, the newest
    ``limit``. One stream is returned as it is (the order a standalone Redis gives)."""
    if len(streams) == 1:
        return streams[0]
    ordered = sorted((row for rows in streams for row in rows), key=_when)
    return ordered[-query.limit:] if query.limit else ordered


def _when(item: tuple[str, dict[str, str]]) -> tuple[int, tuple[int, int, int]]:
    """When a row was written: its ``ts``, then its stream id and index."""
    row_id, fields = item
    entry, _, idx = row_id.partition("/")
    ms, _, seq = entry.partition("-")
    key = (int(ms or 0), int(seq or 0), int(idx or 0))
    try:
        return int(fields.get("ts", "")), key
    except ValueError:
        return key[0], key


class _Scan:
    """Where a read of the stream stands: the ids left, the matches, the rows read."""

    def __init__(self, query: AuditQuery) -> None:
        self.query = query
        self.high = "+" if query.until_ms is None else str(query.until_ms
                                                           + WRITE_DELAY_SLACK_MS)
        self.low = "-" if query.since_ms is None else str(
            max(query.since_ms - WRITE_DELAY_SLACK_MS, 0))
        #: Matches, newest first.
        self.found: list[tuple[str, dict[str, str]]] = []
        self.rows = 0
        self.done = False
        #: Entries per XREVRANGE: fewer when the rows are bounded (a batch entry holds
        #: up to 1,000), so a bounded read overshoots its bound by little.
        self.page_size = _BOUNDED_PAGE if query.max_rows else _PAGE

    def take(self, page: list[Any]) -> None:
        """One page, newest first: its matching rows to ``found``; ``done`` once ``limit``
        matches are found, the range is exhausted, or ``max_rows`` rows were read."""
        query = self.query
        for raw_id, raw_fields in page:
            for row_id, fields in reversed(rows_of(raw_id, raw_fields)):
                self.rows += 1
                if query.matches(fields):
                    self.found.append((row_id, fields))
                    if query.limit and len(self.found) >= query.limit:
                        self.done = True
                        return
                if query.max_rows and self.rows >= query.max_rows:
                    self.done = True
                    return
        self.done = len(page) < self.page_size
        if page:
            self.high = "(" + as_text(page[-1][0])


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


def reject_code_name(text: str) -> str:
    """``buying_power`` or ``REJECT_CODE_BUYING_POWER`` as the name rows carry."""
    return text.strip().upper().removeprefix("REJECT_CODE_")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ARCHIVE_COLUMNS = (
    "stream_ms, stream_seq, idx, event, (extract(epoch from ts) * 1000)::bigint, pid, "
    "principal, order_id, account, symbol, side, order_type, quantity, price, venue, "
    "counterparty, approved, codes, notional, latency_ns, replayed, source, scope, target, "
    "mode, reason, halted_by, expires_at_ms, replaces, time_in_force, expire_at_ms, group_id")


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _archived_row(row: tuple[Any, ...]) -> tuple[str, dict[str, str]]:
    """One ``audit_record`` row as ``(row id, fields)``, the fields :func:`rows_of` gives."""
    (ms, seq, idx, event, ts, pid, principal, order_id, account, symbol, side, order_type,
     quantity, price, venue, counterparty, approved, codes, notional, latency_ns, replayed,
     source, scope, target, mode, reason, by, expires_at, replaces, time_in_force,
     expire_at, group_id) = row
    common = {"event": event, "ts": _text(ts), "pid": _text(pid), "principal": principal}
    if event == DECISION:
        fields = {**common, "order_id": _text(order_id), "account": _text(account),
                  "symbol": _text(symbol), "side": _text(side),
                  "order_type": _text(order_type), "quantity": _text(quantity),
                  "price": _text(price), "venue": _text(venue),
                  "counterparty": _text(counterparty),
                  "verdict": "APPROVED" if approved else "REJECTED",
                  "codes": ",".join(codes or ()), "notional": _text(notional),
                  "latency_ns": _text(latency_ns), "replayed": "1" if replayed else "0",
                  "replaces": _text(replaces), "time_in_force": _text(time_in_force),
                  "expire_at": _text(expire_at), "group_id": _text(group_id)}
    elif event == "halt":
        fields = {**common, "source": _text(source), "scope": _text(scope),
                  "target": _text(target), "mode": _text(mode), "reason": _text(reason),
                  "by": _text(by), "expires_at": _text(expires_at)}
    else:
        fields = {"event": event, "pid": _text(pid), "reason": _text(reason)}
    return f"{ms}-{seq}/{idx}", fields


def read_archive(connection: Any, query: AuditQuery) -> list[tuple[str, dict[str, str]]]:
    """The archived records matching ``query``, oldest first, as ``(row id, fields)``.

    ``connection`` is a psycopg connection to the archive. Each filter is a
    condition an index of ``audit_record`` serves (account and time, order
    id, reject code, principal and time, time).
    """
    where: list[str] = []
    params: list[Any] = []
    if query.event is not None:
        where.append("event = %s")
        params.append(query.event)
    if query.account is not None:
        where.append("account = %s")  # a decision's account, or an account halt's target
        params.append(query.account)
    if query.order_id is not None:
        where.append("event = 'decision' AND order_id = %s")
        params.append(query.order_id)
    if query.code is not None:
        where.append("codes @> ARRAY[%s]::text[]")
        params.append(query.code)
    if query.principal is not None:
        where.append("principal = %s")
        params.append(query.principal)
    if query.since_ms is not None:
        where.append("ts >= %s")
        params.append(_EPOCH + timedelta(milliseconds=query.since_ms))
    if query.until_ms is not None:
        where.append("ts <= %s")
        params.append(_EPOCH + timedelta(milliseconds=query.until_ms))
    sql = (f"SELECT {_ARCHIVE_COLUMNS} FROM audit_record"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + " ORDER BY ts DESC, stream_ms DESC, stream_seq DESC, idx DESC")
    if query.limit:
        sql += " LIMIT %s"
        params.append(query.limit)
    rows = connection.execute(sql, params).fetchall()
    return [_archived_row(row) for row in reversed(rows)]


def read_history(client: Any, connection: Any, query: AuditQuery,
                 stream: bytes | None = None) -> list[tuple[str, dict[str, str]]]:
    """The archive and the stream together: every matching record once, oldest first.

    The stream holds what is not archived yet (and what was, for a while);
    a record in both is the same row id, and shown once. (Rows of two
    nodes' streams on a Redis Cluster may share an id: both are kept.)
    """
    merged = read_archive(connection, query)
    archived = {row_id for row_id, _ in merged}
    merged += [row for row in read_audit(client, query, stream) if row[0] not in archived]
    ordered = sorted(merged, key=_when)
    return ordered[-query.limit:] if query.limit else ordered
