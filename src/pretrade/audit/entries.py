"""The audit trail's entries: the Redis stream ``audit`` and the fields of each entry.

Entry format
------------
Every value is text (UTF-8). Common fields: ``event`` (``decision`` or
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
``0``). Text fields are cut to :data:`MAX_TEXT` characters (only a malformed
order in a batch can have longer ones).

``halt``: ``source`` (``rpc``: the Halt RPC; ``breaker``: an automatic halt
of the circuit breakers; ``redis``: a change this process did not make but
saw in Redis, such as an operator's ``HSET``/``DEL`` or an expired TTL),
``scope`` (``GLOBAL``, ``ACCOUNT``, ``SYMBOL``), ``target`` (account or
symbol, empty for GLOBAL), ``mode`` (``HALTED``, ``REDUCE_ONLY`` or
``ACTIVE`` for a lift), ``reason``, ``by`` (who; empty when a lift was seen
in Redis) and ``expires_at`` (Unix epoch milliseconds, ``0`` for never).
"""

from __future__ import annotations

from typing import Any

from pretrade.engine.names import short_name
from pretrade.v1 import risk_pb2 as pb

#: The Redis stream of audit entries.
AUDIT_STREAM = b"audit"
#: Longest text kept in an entry's field (characters).
MAX_TEXT = 256

DECISION, HALT = "decision", "halt"
SOURCE_RPC, SOURCE_BREAKER, SOURCE_REDIS = "rpc", "breaker", "redis"


def _mode_name(mode: int) -> str:
    # 0 is the table's "no halt": a lift, like HALT_MODE_ACTIVE.
    return short_name(pb.HaltMode, mode or pb.HALT_MODE_ACTIVE)


def encode(entry: tuple[Any, ...], pid: str) -> list[Any]:
    """The stream fields of one queued entry, as a flat ``field, value, ...`` list."""
    if entry[0] == DECISION:
        _, at_ns, principal, order, approved, rejections, latency_ns, replayed, notional = entry
        return [
            "event", DECISION, "ts", at_ns // 1_000_000, "pid", pid,
            "principal", principal,
            "order_id", order.order_id[:MAX_TEXT], "account", order.account_id[:MAX_TEXT],
            "symbol", order.symbol[:MAX_TEXT], "side", short_name(pb.Side, order.side),
            "order_type", short_name(pb.OrderType, order.order_type),
            "quantity", order.quantity, "price", order.price,
            "venue", order.venue[:MAX_TEXT], "counterparty", order.counterparty[:MAX_TEXT],
            "verdict", "APPROVED" if approved else "REJECTED",
            "codes", ",".join([short_name(pb.RejectCode, r[0]) for r in rejections]),
            "notional", notional, "latency_ns", latency_ns, "replayed", 1 if replayed else 0,
        ]
    _, at_ns, principal, source, scope, target, mode, reason, by, expires_at_ms = entry
    return [
        "event", HALT, "ts", at_ns // 1_000_000, "pid", pid,
        "principal", principal, "source", source,
        "scope", short_name(pb.HaltScope, scope), "target", target, "mode", _mode_name(mode),
        "reason", reason[:MAX_TEXT * 2], "by", by[:MAX_TEXT], "expires_at", expires_at_ms,
    ]
