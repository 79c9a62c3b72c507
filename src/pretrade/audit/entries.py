"""The audit trail's records: how they are written to the Redis stream ``audit``, and read back.

Stream entries
--------------
One entry per batch of records a server process queued (:func:`encode_batch`):
fields ``v`` (``3``; ``2`` is read too), ``pid``, ``n`` (records in it) and ``data``, the
protobuf message ``pretrade.v1.AuditBatch`` (proto/pretrade/v1/records.proto).
One XADD per batch instead of one per decision keeps the writer far ahead
of the batch path. Entries of the first version (one text entry per record,
with the fields below) are still read.

Rows
----
A reader (``pretrade audit``, the archiver) sees one row per record
(:func:`rows_of`), ``id`` ``<stream entry id>/<n>``, with these fields, every
value text (UTF-8). Common fields: ``event`` (``decision`` or
``halt``), ``ts`` (Unix epoch milliseconds when the gateway decided or
applied it; the stream id is when Redis received the batch, a few
milliseconds later), ``pid`` (the server process) and ``principal`` (the
name of the authenticated caller whose call made the entry, which the
servicer passes in; empty with ``auth = "none"`` and for changes seen in
Redis).

``decision``: ``order_id``, ``account``, ``symbol``, ``side`` (``BUY``,
``SELL``, ``SELL_SHORT``), ``order_type`` (``LIMIT``, ``MARKET``),
``quantity`` (units), ``price`` (1/10,000), ``venue``, ``counterparty``,
``verdict`` (``APPROVED`` or ``REJECTED``), ``codes`` (the reject codes
without ``REJECT_CODE_``, comma-separated, empty when approved),
``notional`` (1/10,000), ``latency_ns`` and ``replayed`` (``1`` when the
order id was decided before and this is that decision replayed, else
``0``), ``replaces`` (a ReplaceOrder: the original order id the
decision's order replaces; empty for an order), ``time_in_force``
(``UNSPECIFIED``, ``DAY``, ``IOC``, ``GTC`` or ``GTD``),
``expire_at`` (a GTD order's expiry, Unix ms; ``0`` for none) and
``group_id`` (the OCO group of a leg; empty for none). Text fields are cut to
:data:`MAX_TEXT` characters (only a malformed order in a batch can have
longer ones).

``halt``: ``source`` (``rpc``: the Halt RPC; ``breaker``: an automatic halt
of the circuit breakers; ``redis``: a change this process did not make but
saw in Redis, such as an operator's ``HSET``/``DEL`` or an expired TTL),
``scope`` (``GLOBAL``, ``ACCOUNT``, ``SYMBOL``), ``target`` (account or
symbol, empty for GLOBAL), ``mode`` (``HALTED``, ``REDUCE_ONLY`` or
``ACTIVE`` for a lift), ``reason``, ``by`` (who; empty when a lift was seen
in Redis) and ``expires_at`` (Unix epoch milliseconds, ``0`` for never).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.message import DecodeError

from pretrade.engine.names import short_name
from pretrade.engine.text import as_text
from pretrade.v1 import records_pb2
from pretrade.v1 import risk_pb2 as pb

#: The Redis stream of audit entries (on a standalone Redis: every node's).
AUDIT_STREAM = b"audit"
#: On a Redis Cluster each node writes its own stream, ``audit:{NODE}`` (its
#: name is the hash tag: one stream in one slot per node, spread over the primaries).
NODE_STREAMS = b"audit:{*}"


def node_stream(node: str) -> bytes:
    """``audit:{NODE}``: the audit stream of the node named ``node`` on a Redis Cluster."""
    return b"audit:{" + node.encode() + b"}"
#: Longest text kept in a record's field (characters).
MAX_TEXT = 256
#: The ``v`` field of a batch entry. Version 3 keeps a well-formed order whole
#: (``AuditDecision.order``); version 2 set its fields one by one. Both are read.
BATCH_VERSION = b"3"
READABLE_BATCH_VERSIONS = frozenset({b"2", BATCH_VERSION})

DECISION, HALT = "decision", "halt"
SOURCE_RPC, SOURCE_BREAKER, SOURCE_REDIS = "rpc", "breaker", "redis"


# -- WRITING --

def encode_batch(entries: Iterable[tuple[Any, ...]]) -> bytes:
    """The ``data`` of one stream entry: queued entries as one AuditBatch message."""
    batch = records_pb2.AuditBatch()
    add = batch.records.add
    for entry in entries:
        record = add()
        if entry[0] == DECISION:
            (_, at_ns, principal, order, approved, rejections, latency_ns, replayed, notional,
             replaces) = entry
            record.ts_unix_ms = at_ns // 1_000_000
            # Only what is set (a fresh record holds the defaults): each
            # assignment costs about 70 ns, a third of them are defaults.
            if principal:
                record.principal = principal
            decision = record.decision
            if order.ByteSize() <= MAX_TEXT:
                # no text of it can be longer than MAX_TEXT: kept whole
                decision.order.CopyFrom(order)
            else:
                _set_order_fields(decision, order)
            if approved:
                decision.approved = True
            if rejections:
                decision.codes.extend([rejection[0] for rejection in rejections])
            decision.notional = notional
            decision.latency_ns = latency_ns
            if replayed:
                decision.replayed = True
            if replaces:
                decision.replaces = replaces[:MAX_TEXT]
        else:
            _, at_ns, principal, source, scope, target, mode, reason, by, expires_at_ms = entry
            record.ts_unix_ms = at_ns // 1_000_000
            record.principal = principal
            halt = record.halt
            halt.source = source
            halt.scope = scope
            halt.target = target.decode("utf-8", "replace")
            # 0 is the table's "no halt": a lift, like HALT_MODE_ACTIVE.
            halt.mode = mode or pb.HALT_MODE_ACTIVE
            halt.reason = reason[:MAX_TEXT * 2]
            halt.by = by[:MAX_TEXT]
            halt.expires_at_unix_ms = expires_at_ms
    return batch.SerializeToString()


def _set_order_fields(decision: records_pb2.AuditDecision, order: pb.Order) -> None:
    """A large (malformed) order's fields, each text cut to :data:`MAX_TEXT`."""
    decision.order_id = order.order_id[:MAX_TEXT]
    decision.account = order.account_id[:MAX_TEXT]
    decision.symbol = order.symbol[:MAX_TEXT]
    decision.side = order.side
    decision.order_type = order.order_type
    decision.quantity = order.quantity
    decision.price = order.price
    decision.venue = order.venue[:MAX_TEXT]
    decision.counterparty = order.counterparty[:MAX_TEXT]
    decision.time_in_force = order.time_in_force
    decision.expire_at_unix_ms = order.expire_at_unix_ms
    decision.group_id = order.group_id[:MAX_TEXT]


def encode(entry: tuple[Any, ...], pid: str) -> list[Any]:
    """One queued entry as the flat ``field, value, ...`` list of its row."""
    record = records_pb2.AuditBatch.FromString(encode_batch([entry])).records[0]
    return [item for pair in row_of(record, pid).items() for item in pair]


# -- READING --

def order_of(d: records_pb2.AuditDecision) -> tuple[str, str, str, int, int, int, int, str, str,
                                                     int, int, str]:
    """The decided order: ``(order_id, account, symbol, side, order_type, quantity, price,
    venue, counterparty, time_in_force, expire_at_unix_ms, group_id)``, from the order kept
    whole or from the fields a large one was cut into."""
    if d.HasField("order"):
        o = d.order
        return (o.order_id, o.account_id, o.symbol, o.side, o.order_type, o.quantity, o.price,
                o.venue, o.counterparty, o.time_in_force, o.expire_at_unix_ms, o.group_id)
    return (d.order_id, d.account, d.symbol, d.side, d.order_type, d.quantity, d.price,
            d.venue, d.counterparty, d.time_in_force, d.expire_at_unix_ms, d.group_id)


def row_of(record: records_pb2.AuditRecord, pid: str) -> dict[str, str]:
    """One record as a row: the documented fields, every value text."""
    common = {"ts": str(record.ts_unix_ms), "pid": pid, "principal": record.principal}
    if record.WhichOneof("event") == "decision":
        d = record.decision
        (order_id, account, symbol, side, order_type, quantity, price, venue, counterparty,
         time_in_force, expire_at, group_id) = order_of(d)
        return {
            "event": DECISION, **common, "order_id": order_id, "account": account,
            "symbol": symbol, "side": short_name(pb.Side, side),
            "order_type": short_name(pb.OrderType, order_type),
            "quantity": str(quantity), "price": str(price), "venue": venue,
            "counterparty": counterparty, "verdict": "APPROVED" if d.approved else "REJECTED",
            "codes": ",".join(short_name(pb.RejectCode, code) for code in d.codes),
            "notional": str(d.notional), "latency_ns": str(d.latency_ns),
            "replayed": "1" if d.replayed else "0", "replaces": d.replaces,
            "time_in_force": short_name(pb.TimeInForce, time_in_force),
            "expire_at": str(expire_at), "group_id": group_id,
        }
    h = record.halt
    return {
        "event": HALT, **common, "source": h.source, "scope": short_name(pb.HaltScope, h.scope),
        "target": h.target, "mode": short_name(pb.HaltMode, h.mode), "reason": h.reason,
        "by": h.by, "expires_at": str(h.expires_at_unix_ms),
    }


def rows_of(entry_id: bytes | str, fields: Mapping[bytes, bytes] | Mapping[str, str]
            ) -> list[tuple[str, dict[str, str]]]:
    """The rows of one stream entry, in order, each ``(row id, fields)``.

    A batch entry gives one row per record (ids ``<entry id>/<n>``); an entry
    of the first version is one row of its own text fields. A batch that does
    not parse is one row ``{"event": "unreadable", ...}``: shown, never skipped.
    """
    stream_id = as_text(entry_id)
    text = {as_text(key): value for key, value in fields.items()}
    if as_text(text.get("v")).encode() not in READABLE_BATCH_VERSIONS:
        return [(stream_id, {key: as_text(value) for key, value in text.items()})]
    pid = as_text(text.get("pid"))
    data = text.get("data", b"")
    try:
        batch = records_pb2.AuditBatch.FromString(
            data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape"))
    except DecodeError as error:
        return [(stream_id, {"event": "unreadable", "pid": pid,
                             "reason": f"the batch does not parse: {error}"[:MAX_TEXT]})]
    return [(f"{stream_id}/{n}", row_of(record, pid)) for n, record in enumerate(batch.records)]
