"""How the ``pretrade`` command shows things to a person: aligned tables, times in UTC.

Pure functions of the reply messages (and of audit entries), so they are
tested without a server. Money is fixed point (:mod:`pretrade.engine.fixedpoint`
formats it: ``$6,891.00``, all four decimals when the sub-cent digits are not
zero, ``$68.3378``); quantities have thousands separators; a duration may be
shown as a float, money never. ``--json`` prints the raw integers instead
(:func:`to_json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from pretrade.engine.fixedpoint import format_money, format_quantity
from pretrade.engine.names import names_of
from pretrade.v1 import risk_pb2

if TYPE_CHECKING:  # `pretrade audit` must not load the sync: only the type is needed here
    from pretrade.state.reconcile import Difference

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_time(unix_ms: int, *, milliseconds: bool = False) -> str:
    """Unix epoch milliseconds as ISO 8601 UTC (``2025-11-21T14:30:00Z``).

    With ``milliseconds`` the time keeps them (``...:00.123Z``). A time
    out of range is said so, never raised.
    """
    try:
        moment = EPOCH + timedelta(milliseconds=unix_ms)
    except OverflowError:
        return f"{unix_ms} ms after epoch (out of range)"
    if milliseconds:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _label(enum: EnumTypeWrapper, value: int) -> str:
    """``REJECT_CODE_MAX_NET_POSITION`` -> ``MAX_NET_POSITION``; unknown numbers survive."""
    # A newer server may send a value this client's contract does not know.
    return names_of(enum).get(value) or f"UNKNOWN({value})"


def _cell(text: str) -> str:
    """One table cell: control characters and runs of blanks become one space."""
    return " ".join(text.split()) or "-"


def _utc_time(unix_ms: int) -> str:
    return utc_time(unix_ms) if unix_ms else "-"


def _format_latency(latency_ns: int) -> str:
    # Display only: a float is fine for a duration, never for money.
    return f"{latency_ns / 1000:.1f} µs"


def _align(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-align columns two spaces apart, without trailing blanks."""
    if not rows:
        return []
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append((indent + "  ".join([*padded, row[-1]])).rstrip())
    return lines


def format_decision(decision: risk_pb2.Decision, order: risk_pb2.Order | None = None) -> str:
    """A ``Decision`` as an aligned, human-readable table.

    Parameters
    ----------
    decision : risk_pb2.Decision
        The gateway's answer to ``EvaluateOrder``.
    order : risk_pb2.Order, optional
        The order it answers. When it was sent with a time in force, a
        ``time in force`` line follows the verdict (``GTD until
        2026-12-31T21:00:00Z``): the decision itself does not echo it.

    Returns
    -------
    str
        One ``label  value`` line each for order id, account, symbol,
        verdict (``APPROVED`` or ``REJECTED``), notional (money in the
        decision's currency: :func:`~pretrade.engine.fixedpoint.format_money`)
        and latency (µs);
        then, for a rejection, one line per
        failed check: its code without ``REJECT_CODE_`` and its message.
        No trailing newline.

    Examples
    --------
    >>> print(format_decision(risk_pb2.Decision(
    ...     order_id="o1", account_id="A1", symbol="AAPL", approved=True,
    ...     notional=68337800, latency_ns=12300, currency="USD")))
    order id  o1
    account   A1
    symbol    AAPL
    verdict   APPROVED
    notional  $6,833.78
    latency   12.3 µs
    """
    lines = _align(
        [
            ("order id", _cell(decision.order_id)),
            ("account", _cell(decision.account_id)),
            ("symbol", _cell(decision.symbol)),
            ("verdict", "APPROVED" if decision.approved else "REJECTED"),
            *_time_in_force_row(order),
            *([("oco group", _cell(order.group_id))] if order is not None and order.group_id
              else []),
            ("notional", format_money(decision.notional, decision.currency)),
            ("latency", _format_latency(decision.latency_ns)),
        ]
    )
    if decision.rejections:
        lines.append(f"rejections ({len(decision.rejections)})")
        lines += _align(
            [
                (
                    _label(risk_pb2.RejectCode, rejection.code),
                    _cell(rejection.message),
                )
                for rejection in decision.rejections
            ],
            indent="  ",
        )
    return "\n".join(lines)


def _time_in_force_row(order: risk_pb2.Order | None) -> list[tuple[str, str]]:
    """``time in force  GTD until <UTC>`` for an order sent with one; none otherwise."""
    if order is None or order.time_in_force == risk_pb2.TIME_IN_FORCE_UNSPECIFIED:
        return []
    text = _label(risk_pb2.TimeInForce, order.time_in_force)
    if order.expire_at_unix_ms:
        text += f" until {utc_time(order.expire_at_unix_ms)}"
    return [("time in force", text)]


def format_halt_state(state: risk_pb2.HaltState) -> str:
    """A ``HaltState`` as an aligned table, one halt per line.

    Parameters
    ----------
    state : risk_pb2.HaltState
        Every halt in force, as returned by ``Halt``.

    Returns
    -------
    str
        ``"No halts in force."`` when there are none; else a header line
        (SCOPE, TARGET, MODE, REASON, BY, SINCE, EXPIRES) and one line per
        halt, times in UTC ISO 8601 and ``never`` for a halt without expiry.
        No trailing newline.
    """
    if not state.halts:
        return "No halts in force."
    rows = [("SCOPE", "TARGET", "MODE", "REASON", "BY", "SINCE", "EXPIRES")]
    for halt in state.halts:
        rows.append(
            (
                _label(risk_pb2.HaltScope, halt.scope),
                _cell(halt.target),
                _label(risk_pb2.HaltMode, halt.mode),
                _cell(halt.reason),
                _cell(halt.halted_by),
                _utc_time(halt.halted_at_unix_ms),
                _utc_time(halt.expires_at_unix_ms) if halt.expires_at_unix_ms else "never",
            )
        )
    return "\n".join(_align(rows))


def _valued(holding: risk_pb2.Holding, units: int) -> str:
    """A holding's figure that needs its last price: ``-`` when it has no valuation."""
    if holding.valuation != risk_pb2.VALUATION_PRICED:
        return "-"
    return format_money(units, holding.currency)


def format_portfolio(update: risk_pb2.PortfolioUpdate) -> str:
    """A ``PortfolioUpdate`` as a person reads it: a header, holdings, totals, alerts.

    Parameters
    ----------
    update : risk_pb2.PortfolioUpdate
        A SNAPSHOT or UPDATE of ``StreamPortfolio``.

    Returns
    -------
    str
        ``ACCOUNT KIND #sequence at TIME`` (``group GROUP ...`` on a group's
        stream); a table of the holdings (SYMBOL,
        QTY, AVG COST, LAST, MARKET VALUE, UNREALIZED, VALUATION), money in
        each holding's currency; the totals (in their currency, bare amounts
        when the holdings are in several); one line per alert. No trailing
        newline.
    """
    kind = _label(risk_pb2.PortfolioUpdateKind, update.kind)
    at = _utc_time(update.timestamp_unix_ns // 1_000_000)
    whose = _cell(update.account_id) if not update.group_id else f"group {_cell(update.group_id)}"
    lines = [f"{whose}  {kind} #{update.sequence} at {at}"]
    if update.holdings:
        rows = [("SYMBOL", "QTY", "AVG COST", "LAST", "MARKET VALUE", "UNREALIZED",
                 "VALUATION")]
        for holding in update.holdings:
            rows.append((
                _cell(holding.symbol), format_quantity(holding.quantity),
                format_money(holding.average_cost, holding.currency) if holding.quantity
                else "-",
                _valued(holding, holding.last_price), _valued(holding, holding.market_value),
                _valued(holding, holding.unrealized_pnl),
                _label(risk_pb2.Valuation, holding.valuation) if holding.quantity
                else "CLOSED"))
        lines += _align(rows)
    elif update.kind == risk_pb2.PORTFOLIO_UPDATE_KIND_SNAPSHOT:
        lines.append("No holdings.")
    if update.HasField("totals"):
        totals = update.totals
        money = totals.currency
        lines.append(
            f"totals  market value {format_money(totals.market_value, money)}, cost basis "
            f"{format_money(totals.cost_basis, money)}, unrealized "
            f"{format_money(totals.unrealized_pnl, money)}, realized "
            f"{format_money(totals.realized_pnl, money)}"
            + ("" if money else " (several currencies: not one amount)")
            + f"; {_label(risk_pb2.Valuation, totals.valuation)}"
            + (f", {format_quantity(totals.unvalued_holdings)} unvalued"
               if totals.unvalued_holdings else ""))
    for alert in update.alerts:
        lines.append(f"alert  {_label(risk_pb2.AlertKind, alert.kind)}: {_cell(alert.message)}")
    return "\n".join(lines)


_STATUS_LABELS = {
    "sync_live": "sync live",
    "lag_ms": "lag",
    "max_lag_ms": "max lag",
    "last_full_load_unix_ms": "last full load at",
    "full_loads": "full loads",
    "last_full_load_ms": "last full load took",
    "events_applied": "events applied",
    "invalid_entities": "invalid entities",
    "last_error": "last error",
    "max_orders": "max orders",
    "automatic_halts": "automatic halts",
    "price_ticks": "price ticks",
}


def format_status(status: risk_pb2.ServerStatus) -> str:
    """A ``ServerStatus`` as an aligned ``label  value`` table, one line per field.

    Parameters
    ----------
    status : risk_pb2.ServerStatus
        The gateway's answer to ``GetStatus``.

    Returns
    -------
    str
        Every field of the message, in its order: booleans as ``yes``/``no``,
        ``*_unix_ms`` as UTC times, other ``*_ms`` with their unit, counts
        with thousands separators (``1,234,567``). Fields
        this client does not know by name still show, labelled by their
        name. No trailing newline.
    """
    rows = []
    for field in status.DESCRIPTOR.fields:
        value = getattr(status, field.name)
        label = _STATUS_LABELS.get(field.name, field.name.replace("_", " "))
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif field.name.endswith("_unix_ms") and isinstance(value, int):
            text = _utc_time(value)
        elif field.name.endswith("_ms") and isinstance(value, int):
            text = f"{format_quantity(value)} ms"
        elif isinstance(value, int):
            text = format_quantity(value)
        else:
            text = _cell(str(value))
        rows.append((label, text))
    return "\n".join(_align(rows))


#: Field types whose protobuf JSON is a string; pretrade's JSON writes them as numbers.
_INT64_TYPES = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                          FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                          FieldDescriptor.TYPE_SFIXED64})


def json_object(message: Message) -> dict[str, Any]:
    """A message as pretrade's one JSON dialect (every ``--json``).

    ``google.protobuf.json_format`` with the proto's own field names
    (``order_id``, not ``orderId``), every field present (zeros and false
    too), enums by their full names (``SIDE_BUY``), and 64-bit integers as
    JSON **numbers**, not strings: money stays an exact integer in 1/10,000
    of the currency (a reader in JavaScript must parse them as big integers).
    """
    raw = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True)
    return _numbers(message.DESCRIPTOR, raw)


def _numbers(descriptor: Any, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a message's dict) with its 64-bit integer fields, at any depth, as ints."""
    for field in descriptor.fields:
        value = raw.get(field.name)
        if value is None:
            continue
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            raw[field.name] = ([_numbers(field.message_type, item) for item in value]
                               if isinstance(value, list) else _numbers(field.message_type, value))
        elif field.type in _INT64_TYPES:
            raw[field.name] = ([int(item) for item in value] if isinstance(value, list)
                               else int(value))
    return raw


def to_json(message: Message, *, one_line: bool = False) -> str:
    """:func:`json_object` as indented text, or as one line (a stream's JSON Lines)."""
    return json.dumps(json_object(message), indent=None if one_line else 2,
                      ensure_ascii=False)


#: Audit row fields renamed to their AuditRecord / AuditDecision / AuditHalt names.
_AUDIT_NAMES = {"ts": "ts_unix_ms", "expires_at": "expires_at_unix_ms"}
#: Audit row fields holding an enum's short name, and the prefix of its full name.
_AUDIT_ENUMS = {"side": "SIDE_", "order_type": "ORDER_TYPE_", "scope": "HALT_SCOPE_",
                "mode": "HALT_MODE_"}


def _named(value: str) -> bool:
    """A short enum name (``BUY``); a number the contract does not name stays as it is."""
    return bool(value) and not value.lstrip("-").isdigit()


def audit_json(typed: Mapping[str, Any]) -> dict[str, Any]:
    """An audit entry (:func:`pretrade.audit.query.entry_as_json`) in the same dialect.

    Flat, with the names of the ``AuditRecord`` fields (``ts_unix_ms``,
    ``expires_at_unix_ms``), enums and reject codes by their full names
    (``SIDE_BUY``, ``REJECT_CODE_BUYING_POWER``), integers as numbers; and
    ``id``, ``pid``, ``event`` and ``verdict`` beside them.
    """
    out: dict[str, Any] = {}
    for name, value in typed.items():
        if name in _AUDIT_ENUMS and isinstance(value, str) and _named(value):
            value = _AUDIT_ENUMS[name] + value
        elif name == "codes" and isinstance(value, list):
            value = ["REJECT_CODE_" + code if _named(code) else code for code in value if code]
        out[_AUDIT_NAMES.get(name, name)] = value
    if "verdict" in typed:
        out["approved"] = typed["verdict"] == "APPROVED"
    return out


def _number(text: str | None) -> int | None:
    try:
        return int(text or "")
    except ValueError:
        return None


def _utc_time_ms(unix_ms: int | None) -> str:
    return "?" if unix_ms is None else utc_time(unix_ms, milliseconds=True)


def _audit_row(fields: dict[str, str], currencies: Mapping[str, str]) -> tuple[str, ...]:
    get = fields.get
    if get("event") == "decision":
        price, quantity = _number(get("price")), _number(get("quantity"))
        currency = currencies.get(str(get("symbol")), "")
        at = ("MARKET" if get("order_type") == "MARKET"
              else format_money(price, currency) if price is not None else str(get("price")))
        amount = format_quantity(quantity) if quantity is not None else str(get("quantity"))
        latency = _number(get("latency_ns"))
        event = str(get("verdict")) + (" (replayed)" if get("replayed") == "1" else "")
        return (event, str(get("account")), str(get("order_id")),
                f"{get('side')} {amount} {get('symbol')} @ {at}",
                _format_latency(latency) if latency is not None else "?",
                ", ".join(str(get("codes")).split(",")))
    mode, scope, expires = get("mode"), get("scope"), _number(get("expires_at"))
    subject = "global" if scope == "GLOBAL" else f"{str(scope).lower()} {get('target')}"
    detail = str(get("reason") or "")
    if expires:
        detail += f" (until {_utc_time_ms(expires)})"
    return ("LIFTED" if mode == "ACTIVE" else f"HALT {mode}", subject, "",
            f"by {get('by') or 'unknown'} via {get('source')}", "", detail)


def format_audit_entries(entries: Sequence[tuple[str, dict[str, str]]],
                         currencies: Mapping[str, str] | None = None) -> str:
    """Audit entries as an aligned table, one line each.

    Parameters
    ----------
    entries : sequence of (str, dict)
        ``(stream id, fields)`` as :func:`pretrade.audit.query.read_audit` returns them.
    currencies : mapping of str to str, optional
        Each symbol's currency, for its prices (``$68.3378``); a symbol not
        in it has its price without a currency.

    Returns
    -------
    str
        ``"No audit entries match."`` when there are none; else a header
        (TIME, PID, CALLER, EVENT, SUBJECT, ORDER ID, WHAT, LATENCY, DETAIL)
        and one line per entry; CALLER is the authenticated principal. A
        decision shows its verdict, account, order id,
        ``SIDE QTY SYMBOL @ PRICE`` and its reject codes; a halt change its
        mode (``HALT HALTED``, ``HALT REDUCE_ONLY``, ``LIFTED``), scope and
        target, who and through what (``rpc``, ``breaker``, ``redis``) and
        why. No trailing newline.
    """
    if not entries:
        return "No audit entries match."
    rows: list[tuple[str, ...]] = [
        ("TIME", "PID", "CALLER", "EVENT", "SUBJECT", "ORDER ID", "WHAT", "LATENCY",
         "DETAIL")]
    for _, fields in entries:
        row = (_utc_time_ms(_number(fields.get("ts"))), str(fields.get("pid")),
               fields.get("principal", ""),
               *_audit_row(fields, currencies or {}))
        rows.append(tuple(_cell(cell) for cell in row))
    return "\n".join(_align(rows))


def _difference_value(field: str, value: object) -> str:
    if field == "halt_mode" and isinstance(value, int):
        return "NONE" if value == 0 else _label(risk_pb2.HaltMode, value)
    if field == "limits" and isinstance(value, dict):
        return ", ".join(f"{kind}={limit}" for kind, limit in sorted(value.items())) or "none"
    return "-" if value is None else str(value)


def format_differences(differences: Sequence[Difference]) -> str:
    """What ``pretrade reconcile`` prints: one line per field that differs, or that there are none.

    Columns ENTITY, FIELD, TABLE (the running server's table), REDIS (a fresh
    load of Redis). No trailing newline.
    """
    if not differences:
        return "The table equals Redis: no differences."
    rows: list[tuple[str, ...]] = [("ENTITY", "FIELD", "TABLE", "REDIS")]
    for difference in differences:
        rows.append(tuple(_cell(cell) for cell in (
            difference.entity, difference.field,
            _difference_value(difference.field, difference.live),
            _difference_value(difference.field, difference.redis))))
    noun = "difference" if len(differences) == 1 else "differences"
    return "\n".join([*_align(rows), f"{len(differences)} {noun}."])
