"""The archiver: every record of the Redis stream ``audit``, exactly once, in PostgreSQL.

The stream is the audit trail's landing place; PostgreSQL is where it is
kept. :class:`Archiver` (``pretrade archive``) reads the stream as the
consumer group :data:`GROUP` (``XREADGROUP``), writes the rows of each batch
of entries in one transaction (``COPY``), and only then acknowledges the
entries (``XACK``). Delivery is at least once: an archiver that dies between
its commit and its ``XACK`` leaves the entries pending, and whoever takes
them over writes them again. The key of a row is the stream entry id and the
record's place in its batch (``stream_ms, stream_seq, idx``), so the second
write adds nothing (``ON CONFLICT DO NOTHING``): exactly one row per record.

Entries delivered to an archiver that died stay pending under its name;
another archiver takes them over (``XAUTOCLAIM``) once they have been idle
for ``claim_idle_ms``. On start, and after any error, an archiver first
reads its own pending entries again.

Trimming
--------
Nothing else trims the stream (the writer does not). After acknowledging,
the archiver trims with ``XTRIM audit MINID <id>``, where ``<id>`` is the
lowest of: the group's oldest pending entry, the last entry delivered to the
group, and ``retain_ms`` ago. No entry the group has not acknowledged is
ever removed, and archived entries stay ``retain_ms`` (``audit_retain_ms``)
for ``pretrade audit``'s view of the last moments.

Schema
------
Versioned migrations (:data:`MIGRATIONS`), applied at start under an
advisory lock, recorded in ``pretrade_schema_migrations``. The table
``audit_record`` (docs/audit-archive.md) has one row per record, with
indexes for the questions operators ask: by account and time, by order id,
by reject code, by principal and time, by time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import DecodeError

from pretrade.audit.entries import (
    AUDIT_STREAM,
    DECISION,
    HALT,
    MAX_TEXT,
    READABLE_BATCH_VERSIONS,
    order_of,
    rows_of,
)
from pretrade.engine.names import short_name
from pretrade.engine.text import as_text
from pretrade.v1 import records_pb2
from pretrade.v1 import risk_pb2 as pb

log = logging.getLogger("pretrade.archive")

#: The consumer group of the archivers.
GROUP = b"archiver"
#: Stream entries per read (each a batch of up to 1,000 records).
ENTRIES_PER_READ = 64
#: How long a read waits for new entries (ms); also how soon a stop is noticed.
BLOCK_MS = 500
#: Seconds between trims, and between looks for entries of dead archivers.
TRIM_SECONDS = 1.0
CLAIM_SECONDS = 1.0
#: Names of archivers with nothing pending are dropped from the group after this long (ms).
FORGET_IDLE_MS = 600_000
#: Seconds between progress lines in the log.
REPORT_SECONDS = 30.0
#: Pause after an error, doubled per failure up to RETRY_MAX_SECONDS.
RETRY_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
#: The advisory lock key under which migrations run (any constant will do).
MIGRATION_LOCK = 0x7072_6574_7261_6465  # "pretrade"

TABLE = "audit_record"
MIGRATIONS_TABLE = "pretrade_schema_migrations"

#: Columns of ``audit_record``, in the order :func:`rows_of_entry` gives them.
COLUMNS = ("stream_ms", "stream_seq", "idx", "event", "ts", "pid", "principal",
           "order_id", "account", "symbol", "side", "order_type", "quantity", "price",
           "venue", "counterparty", "approved", "codes", "notional", "latency_ns",
           "replayed", "source", "scope", "target", "mode", "reason", "halted_by",
           "expires_at_ms", "replaces", "time_in_force", "expire_at_ms", "group_id")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "audit_record and its indexes", f"""
CREATE TABLE {TABLE} (
    stream_ms     bigint      NOT NULL,
    stream_seq    bigint      NOT NULL,
    idx           integer     NOT NULL,
    event         text        NOT NULL,
    ts            timestamptz NOT NULL,
    pid           integer,
    principal     text        NOT NULL DEFAULT '',
    order_id      text,
    account       text,
    symbol        text,
    side          text,
    order_type    text,
    quantity      bigint,
    price         bigint,
    venue         text,
    counterparty  text,
    approved      boolean,
    codes         text[],
    notional      bigint,
    latency_ns    bigint,
    replayed      boolean,
    source        text,
    scope         text,
    target        text,
    mode          text,
    reason        text,
    halted_by     text,
    expires_at_ms bigint,
    PRIMARY KEY (stream_ms, stream_seq, idx)
);
CREATE INDEX {TABLE}_account_ts ON {TABLE} (account, ts);
CREATE INDEX {TABLE}_order_id ON {TABLE} (order_id);
CREATE INDEX {TABLE}_codes ON {TABLE} USING gin (codes);
CREATE INDEX {TABLE}_principal_ts ON {TABLE} (principal, ts);
CREATE INDEX {TABLE}_ts ON {TABLE} (ts);
"""),
    Migration(2, "audit_record.replaces: the original order id of a ReplaceOrder", f"""
ALTER TABLE {TABLE} ADD COLUMN replaces text;
"""),
    Migration(3, "audit_record.time_in_force and expire_at_ms: a decided order's time in "
              "force and GTD expiry", f"""
ALTER TABLE {TABLE} ADD COLUMN time_in_force text;
ALTER TABLE {TABLE} ADD COLUMN expire_at_ms bigint;
"""),
    Migration(4, "audit_record.group_id: the OCO group of a decided order's leg", f"""
ALTER TABLE {TABLE} ADD COLUMN group_id text;
"""),
)


def migrate(connection: Any) -> list[int]:
    """Apply the migrations this database lacks, in order; return the versions applied.

    One transaction under an advisory lock, so archivers starting together
    apply each migration once.
    """
    applied: list[int] = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute(f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
            version integer PRIMARY KEY, name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())""")
        done = {row[0] for row in connection.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            connection.execute(migration.sql)
            connection.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)",
                               (migration.version, migration.name))
            applied.append(migration.version)
            log.info("audit archive schema: migration %d (%s) applied", migration.version,
                     migration.name)
    return applied


# -- stream entries as rows --

def _names(enum: Any) -> dict[int, str]:
    return {number: short_name(enum, number) for number in enum.values()}


_SIDES, _TYPES, _TIFS = _names(pb.Side), _names(pb.OrderType), _names(pb.TimeInForce)
_CODES, _SCOPES, _MODES = _names(pb.RejectCode), _names(pb.HaltScope), _names(pb.HaltMode)


def _text(value: str) -> str:
    # PostgreSQL text holds no NUL; only a malformed order of a batch can carry one.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _codes_literal(codes: Any, known: dict[tuple[int, ...], str] = {}) -> str:  # noqa: B006
    """Reject codes as a PostgreSQL array literal (``{BUYING_POWER,ORDER_RATE}``), which
    COPY reads as ``text[]``: cheaper than an array adapter per row. Memoised: few
    combinations occur."""
    key = tuple(codes)
    literal = known.get(key)
    if literal is None:
        literal = "{" + ",".join(_CODES.get(code, str(code)) for code in key) + "}"
        if len(known) < 4_096:
            known[key] = literal
    return literal


def parse_entry_id(entry_id: bytes | str) -> tuple[int, int]:
    """``b"1700000000000-3"`` as ``(1700000000000, 3)``."""
    ms, _, seq = as_text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def _pid(value: bytes | str | None) -> int | None:
    text = as_text(value) if value is not None else ""
    return int(text) if text.isdigit() and len(text) < 10 else None


def rows_of_entry(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> list[tuple[Any, ...]]:
    """The ``audit_record`` rows of one stream entry (columns as :data:`COLUMNS`).

    A batch that does not parse is one row ``event = 'unreadable'`` (with why
    in ``reason``), timed by its stream id: kept, never skipped.
    """
    ms, seq = parse_entry_id(entry_id)
    version = fields.get(b"v")
    pid = _pid(fields.get(b"pid"))
    if version not in READABLE_BATCH_VERSIONS:
        return [_row_of_text(ms, seq, n, row) for n, (_, row) in
                enumerate(rows_of(entry_id, fields))]
    try:
        batch = records_pb2.AuditBatch.FromString(fields.get(b"data", b""))
    except DecodeError as error:
        return [_unreadable(ms, seq, 0, pid, f"the batch does not parse: {error}")]
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    last_ms, ts = -1, _EPOCH
    for n, record in enumerate(batch.records):
        if record.ts_unix_ms != last_ms:  # the records of a batch share a few milliseconds
            last_ms = record.ts_unix_ms
            ts = _utc(last_ms)
        principal = _text(record.principal)
        kind = record.WhichOneof("event")
        if kind == "decision":
            d = record.decision
            (order_id, account, symbol, side, order_type, quantity, price, venue,
             counterparty, time_in_force, expire_at, group_id) = order_of(d)
            append((ms, seq, n, DECISION, ts, pid, principal, _text(order_id),
                    _text(account), _text(symbol), _SIDES.get(side, str(side)),
                    _TYPES.get(order_type, str(order_type)), quantity, price,
                    _text(venue), _text(counterparty), d.approved,
                    _codes_literal(d.codes) if d.codes else "{}", d.notional,
                    d.latency_ns, d.replayed, None, None, None, None, None, None, None,
                    _text(d.replaces), _TIFS.get(time_in_force, str(time_in_force)),
                    expire_at, _text(group_id)))
        elif kind == "halt":
            h = record.halt
            target = _text(h.target)
            append((ms, seq, n, HALT, ts, pid, principal, None,
                    target if h.scope == pb.HALT_SCOPE_ACCOUNT else None,
                    target if h.scope == pb.HALT_SCOPE_SYMBOL else None,
                    None, None, None, None, None, None, None, None, None, None, None,
                    _text(h.source), _SCOPES.get(h.scope, str(h.scope)), target,
                    _MODES.get(h.mode, str(h.mode)), _text(h.reason), _text(h.by),
                    h.expires_at_unix_ms, None, None, None, None))
        else:
            append(_unreadable(ms, seq, n, pid, "a record that is neither a decision nor a "
                               "halt (written by a newer version?)"))
    return rows


def _unreadable(ms: int, seq: int, n: int, pid: int | None, reason: str) -> tuple[Any, ...]:
    return (ms, seq, n, "unreadable", _utc(ms), pid, "", *([None] * 18), reason[:MAX_TEXT],
            None, None, None, None, None, None)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _row_of_text(ms: int, seq: int, n: int, row: Mapping[str, str]) -> tuple[Any, ...]:
    """A row of an entry of the first version (one text entry per record)."""
    ts_ms = _int(row.get("ts"))
    get = row.get
    event = get("event", "unreadable")
    codes = [code for code in get("codes", "").split(",") if code] if "codes" in row else None
    verdict = get("verdict")
    return (ms, seq, n, event, _utc(ts_ms if ts_ms is not None else ms), _pid(get("pid")),
            get("principal", ""), get("order_id"), get("account"), get("symbol"), get("side"),
            get("order_type"), _int(get("quantity")), _int(get("price")), get("venue"),
            get("counterparty"), None if verdict is None else verdict == "APPROVED", codes,
            _int(get("notional")), _int(get("latency_ns")),
            None if "replayed" not in row else get("replayed") == "1", get("source"),
            get("scope"), get("target"), get("mode"), get("reason"), get("by"),
            _int(get("expires_at")), get("replaces"), get("time_in_force"),
            _int(get("expire_at")), get("group_id"))


# -- writing rows --

class ArchiveStore:
    """The PostgreSQL side: the schema, and batches of rows written exactly once."""

    def __init__(self, database_url: str, connect_timeout: float = 10.0) -> None:
        self.database_url = database_url
        self.connect_timeout = connect_timeout
        self._connection: Any = None

    def connection(self) -> Any:
        """The open connection (migrated), opened now if there is none."""
        import psycopg

        if self._connection is None or self._connection.closed:
            connection = psycopg.connect(self.database_url,
                                         connect_timeout=max(1, int(self.connect_timeout)))
            try:
                migrate(connection)
                connection.execute(f"CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE {TABLE}) "
                                   "ON COMMIT DELETE ROWS")
                connection.commit()
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def write(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Write ``rows`` in one transaction; rows already there are skipped.

        Returns how many were new. The fast path copies straight into the
        table; only when a row is already there (an entry delivered twice)
        do the rows go through a scratch table and ``ON CONFLICT DO NOTHING``.
        """
        import psycopg

        if not rows:
            return 0
        connection = self.connection()
        columns = ", ".join(COLUMNS)
        try:
            with connection.transaction(), connection.cursor() as cursor:
                with cursor.copy(f"COPY {TABLE} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            return len(rows)
        except psycopg.errors.UniqueViolation:
            pass  # some were written before: once more, skipping those
        with connection.transaction(), connection.cursor() as cursor:
            with cursor.copy(f"COPY incoming ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM incoming ON CONFLICT DO NOTHING")
            return max(cursor.rowcount, 0)


# -- the archiver --

@dataclass
class ArchiveStats:
    entries: int = 0
    rows: int = 0
    #: Rows that were in PostgreSQL already (entries delivered twice).
    duplicates: int = 0
    #: Entries taken over from archivers that stopped acknowledging.
    claimed: int = 0
    #: Entries the stream had lost before they could be archived (should stay 0).
    missing: int = 0
    trimmed: int = 0
    errors: int = 0
    #: Milliseconds between the newest archived entry's id and its archiving.
    lag_ms: int = 0


def _min_id(*ids: str) -> str:
    return min(ids, key=parse_entry_id)


class Archiver:
    """Moves the stream ``audit`` into PostgreSQL; :meth:`run` until stopped.

    Parameters
    ----------
    client
        A synchronous ``redis.Redis`` (bytes, a socket timeout above
        :data:`BLOCK_MS`).
    store
        Where the rows go.
    consumer
        This archiver's name in the group (default ``<host>-<pid>``).
    claim_idle_ms
        Entries pending this long under another name are taken over.
    retain_ms
        Archived entries stay in the stream this long.
    """

    def __init__(self, client: Any, store: ArchiveStore, *, stream: bytes = AUDIT_STREAM,
                 group: bytes = GROUP, consumer: str | None = None,
                 claim_idle_ms: int = 30_000, retain_ms: int = 60_000,
                 entries_per_read: int = ENTRIES_PER_READ, block_ms: int = BLOCK_MS,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.store = store
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.retain_ms = retain_ms
        self.entries_per_read = entries_per_read
        self.block_ms = block_ms
        self.clock = clock
        self.stats = ArchiveStats()
        self._own_pending = True  # read our own pending entries first
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._group_ready = False

    def ensure_group(self) -> None:
        """Create the group (from the stream's first entry) unless it exists."""
        from redis.exceptions import ResponseError

        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("consumer group %s created on stream %s", as_text(self.group),
                     as_text(self.stream))
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    def step(self) -> int:
        """One round: read (or take over) entries, archive, acknowledge, maybe trim.

        Returns how many stream entries were archived.
        """
        if not self._group_ready:
            self.store.connection()  # the schema is there before the first row
            self.ensure_group()
        now = time.monotonic()
        entries: list[tuple[bytes, Any]] = []
        if self._own_pending:
            entries = self._read("0", block=False)
            if not entries:
                self._own_pending = False
        if not entries and now >= self._next_claim:
            self._next_claim = now + CLAIM_SECONDS
            entries = self._claim()
        if not entries:
            entries = self._read(">", block=True)
        archived = self._archive(entries) if entries else 0
        if time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + TRIM_SECONDS
            self.trim()
        return archived

    def _read(self, start: str, block: bool) -> list[tuple[bytes, Any]]:
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: start},
                                       count=self.entries_per_read,
                                       block=self.block_ms if block else None)
        if not reply:
            return []
        # RESP2: [[stream, [(id, fields), ...]]]
        return list(reply[0][1])

    def _claim(self) -> list[tuple[bytes, Any]]:
        reply = self.client.xautoclaim(self.stream, self.group, self.consumer,
                                       min_idle_time=self.claim_idle_ms, start_id="0-0",
                                       count=self.entries_per_read)
        claimed = list(reply[1]) if reply and len(reply) > 1 else []
        if claimed:
            self.stats.claimed += len(claimed)
            log.warning("took over %d audit stream entries another archiver did not "
                        "acknowledge within %d ms", len(claimed), self.claim_idle_ms)
        return claimed

    def _archive(self, entries: Iterable[tuple[bytes | None, Any]]) -> int:
        rows: list[tuple[Any, ...]] = []
        ids: list[bytes] = []
        for entry_id, fields in entries:
            if entry_id is not None:
                ids.append(entry_id)
            if entry_id is None or not fields:
                # Removed from the stream while pending: nothing left to archive.
                self.stats.missing += 1
                log.error("audit stream entry %s was removed before it was archived",
                          as_text(entry_id) if entry_id is not None else "?")
                continue
            rows.extend(rows_of_entry(entry_id, fields))
        written = self.store.write(rows)
        if ids:
            # Only now, with the rows committed: an entry is acknowledged once archived.
            self.client.xack(self.stream, self.group, *ids)
            newest = max(parse_entry_id(entry_id)[0] for entry_id in ids)
            self.stats.lag_ms = max(0, int(self.clock() * 1000) - newest)
        self.stats.entries += len(ids)
        self.stats.rows += written
        self.stats.duplicates += len(rows) - written
        return len(ids)

    def trim(self) -> int:
        """XTRIM MINID up to what the group acknowledged and ``retain_ms`` allows."""
        groups = self.client.xinfo_groups(self.stream)
        mine = next((g for g in groups if as_text(g.get("name")) == as_text(self.group)), None)
        if mine is None:
            return 0
        safe = as_text(mine.get("last-delivered-id") or "0-0")
        if int(mine.get("pending") or 0):
            summary = self.client.xpending(self.stream, self.group)
            if summary and summary.get("min"):
                safe = _min_id(safe, as_text(summary["min"]))
        cutoff = max(0, int(self.clock() * 1000) - self.retain_ms)
        threshold = _min_id(safe, f"{cutoff}-0")
        trimmed = int(self.client.execute_command("XTRIM", self.stream, "MINID", threshold))
        self.stats.trimmed += trimmed
        if int(mine.get("consumers") or 0) > 1:
            self._forget_idle_consumers()
        return trimmed

    def _forget_idle_consumers(self) -> None:
        """Drop the names of archivers gone long ago (each start has a new name): only those
        with nothing pending, so nothing is lost (a live one idle so long is added back by
        its next read)."""
        idle_ms = max(self.claim_idle_ms, FORGET_IDLE_MS)
        for consumer in self.client.xinfo_consumers(self.stream, self.group):
            name = consumer.get("name")
            if as_text(name) == self.consumer or int(consumer.get("pending") or 0):
                continue
            if int(consumer.get("idle") or 0) >= idle_ms:
                self.client.xgroup_delconsumer(self.stream, self.group, name)

    def run(self, stop: threading.Event) -> None:
        """Archive until ``stop`` is set; errors are logged and retried, never fatal."""
        import psycopg
        from redis.exceptions import RedisError

        delay = RETRY_SECONDS
        next_report = time.monotonic() + REPORT_SECONDS
        log.info("archiver %s: stream %s, group %s -> PostgreSQL", self.consumer,
                 as_text(self.stream), as_text(self.group))
        while not stop.is_set():
            try:
                self.step()
            except (RedisError, OSError, psycopg.Error) as error:
                self._failed(error, delay)
                stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            delay = RETRY_SECONDS
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + REPORT_SECONDS
                log.info("archived %d rows (%d entries; %d duplicates skipped, %d taken "
                         "over); lag %d ms", self.stats.rows, self.stats.entries,
                         self.stats.duplicates, self.stats.claimed, self.stats.lag_ms)
        self.store.close()
        log.info("archiver %s stopped: %d rows archived", self.consumer, self.stats.rows)

    def _failed(self, error: Exception, delay: float) -> None:
        self.stats.errors += 1
        # Whatever was read and not acknowledged is ours: read it again first.
        self._own_pending = True
        self._group_ready = False
        self.store.close()
        log.error("archiving failed (%s); retrying in %.1f s", error, delay)
