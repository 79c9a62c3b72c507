"""The ``pretrade`` command: run the gateway, send it an order, halt trading.

::

    pretrade serve [--config FILE] [--redis-url URL] [--listen HOST:PORT] [--demo]
    pretrade order --account A1 --symbol AAPL --side buy --qty 100 --price 68.3378
    pretrade halt --scope symbol --symbol AAPL --mode halted --reason "news pending"

``order`` exits 0 when the order is approved, 1 when it is rejected and 2
when the call itself fails; ``halt`` exits 0 or 2. Usage errors exit 2
(argparse's convention).

The table formatting lives in pure functions (:func:`format_decision`,
:func:`format_halt_state`) so it can be tested without a server.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from pretrade import __version__
from pretrade.config import ConfigError, load_settings
from pretrade.fixedpoint import format_notional, parse_price, parse_quantity
from pretrade.v1 import risk_pb2, risk_pb2_grpc

__all__ = [
    "DEFAULT_TARGET",
    "EXIT_APPROVED",
    "EXIT_FAILED",
    "EXIT_REJECTED",
    "TARGET_ENV",
    "build_halt_request",
    "build_order",
    "build_parser",
    "format_decision",
    "format_halt_state",
    "main",
    "parse_args",
]

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "PRETRADE_TARGET"
RPC_TIMEOUT_SECONDS = 5.0

EXIT_APPROVED = 0
"""``order``: approved; ``halt`` and ``serve``: success."""
EXIT_REJECTED = 1
"""``order``: the gateway rejected the order."""
EXIT_FAILED = 2
"""The call failed (gRPC error) or the settings are invalid."""

SIDES = {
    "buy": risk_pb2.SIDE_BUY,
    "sell": risk_pb2.SIDE_SELL,
    "sell_short": risk_pb2.SIDE_SELL_SHORT,
}
ORDER_TYPES = {"limit": risk_pb2.ORDER_TYPE_LIMIT, "market": risk_pb2.ORDER_TYPE_MARKET}
HALT_SCOPES = {
    "global": risk_pb2.HALT_SCOPE_GLOBAL,
    "account": risk_pb2.HALT_SCOPE_ACCOUNT,
    "symbol": risk_pb2.HALT_SCOPE_SYMBOL,
}
HALT_MODES = {
    "halted": risk_pb2.HALT_MODE_HALTED,
    "reduce_only": risk_pb2.HALT_MODE_REDUCE_ONLY,
    "active": risk_pb2.HALT_MODE_ACTIVE,
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- argument parsing ----------------------------------------------------------


def _argument_type(parse: Callable[[str], int]) -> Callable[[str], int]:
    """Wrap a parser so argparse shows its ValueError message as the usage error."""

    def convert(text: str) -> int:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _parse_ttl_seconds(text: str) -> int:
    seconds = parse_quantity(text)
    if seconds < 0:
        raise ValueError(f"ttl {text!r} is negative; use 0 (or leave it out) for no expiry")
    return seconds


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=os.environ.get(TARGET_ENV, DEFAULT_TARGET),
        help=f"gateway address (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the reply as protobuf JSON instead of a table",
    )


def _build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="pretrade",
        description="Pre-trade risk gateway: serve it, or talk to a running one.",
    )
    parser.add_argument("--version", action="version", version=f"pretrade {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gRPC gateway",
        description="Run the gateway. Settings: defaults < TOML file < PRETRADE_* "
        "environment < these flags. Without a Redis URL an embedded redis-server is started.",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML settings file ($PRETRADE_CONFIG)")
    serve.add_argument("--redis-url", metavar="URL", help="Redis to sync from ($REDIS_URL)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="gRPC listen address")
    serve.add_argument("--table-path", metavar="PATH", help="file backing the shared table")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="server processes sharing the table and the port (SO_REUSEPORT)")
    serve.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help="load a demo book (accounts, limits, instruments) at start",
    )
    serve.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="log level")

    order = commands.add_parser(
        "order",
        help="send one order to EvaluateOrder and print the decision",
        description="Ask the gateway whether an order may go. Exit status: 0 approved, "
        "1 rejected, 2 call failed.",
    )
    _add_target(order)
    order.add_argument("--account", required=True, help="account id")
    order.add_argument("--symbol", required=True, help="instrument symbol")
    order.add_argument("--side", required=True, choices=SIDES)
    order.add_argument(
        "--qty",
        required=True,
        type=_argument_type(parse_quantity),
        metavar="N",
        help="quantity in whole units",
    )
    order.add_argument(
        "--price",
        type=_argument_type(parse_price),
        metavar="DECIMAL",
        help="limit price, e.g. 68.3378 (at most 4 decimal places); required for limit orders",
    )
    order.add_argument("--type", dest="order_type", choices=ORDER_TYPES, default="limit")
    order.add_argument("--order-id", help="client order id (default: cli-<random>)")
    order.add_argument("--venue", default="", help="execution venue (informational)")

    halt = commands.add_parser(
        "halt",
        help="set or lift a halt and print every halt in force",
        description="The kill switch: halt everything, one account or one symbol "
        "(--mode halted or reduce_only), or lift a halt (--mode active).",
    )
    _add_target(halt)
    halt.add_argument("--scope", required=True, choices=HALT_SCOPES)
    halt.add_argument("--account", help="account id (--scope account)")
    halt.add_argument("--symbol", help="symbol (--scope symbol)")
    halt.add_argument("--mode", required=True, choices=HALT_MODES)
    halt.add_argument("--reason", default="", help="why; required unless --mode active")
    halt.add_argument(
        "--ttl",
        type=_argument_type(_parse_ttl_seconds),
        default=0,
        metavar="SECONDS",
        help="lift the halt by itself after this many seconds (default: never)",
    )
    halt.add_argument("--by", help="operator name recorded with the halt (default: $USER)")

    return parser, {"serve": serve, "order": order, "halt": halt}


def build_parser() -> argparse.ArgumentParser:
    """The ``pretrade`` argument parser (without cross-argument checks).

    Returns
    -------
    argparse.ArgumentParser
        Subcommands ``serve``, ``order`` and ``halt``. ``--target`` defaults
        to ``$PRETRADE_TARGET`` as read when the parser is built.
    """
    return _build_parsers()[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check a ``pretrade`` command line.

    Beyond what argparse checks per argument: a limit order needs
    ``--price`` and a market order must not have one; ``--scope account``
    needs ``--account`` (``symbol`` needs ``--symbol``) and neither goes
    with another scope; a halt needs ``--reason`` unless it lifts one.
    Missing defaults are filled in: ``order_id`` (``cli-`` and 12 random hex
    digits) and ``by`` (``$USER``, else ``cli``).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    argparse.Namespace
        The parsed arguments; ``command`` names the subcommand.

    Raises
    ------
    SystemExit
        With status 2 and a usage message on stderr, for any usage error.
    """
    parser, commands = _build_parsers()
    args = parser.parse_args(argv)
    if args.command == "order":
        order = commands["order"]
        if args.order_type == "limit" and args.price is None:
            order.error("a limit order needs --price (or use --type market)")
        if args.order_type == "market" and args.price is not None:
            order.error("a market order is valued at the reference price; leave out --price")
        if args.order_id is None:
            args.order_id = "cli-" + uuid.uuid4().hex[:12]
        elif not args.order_id:
            order.error("--order-id must not be empty")
    elif args.command == "halt":
        halt = commands["halt"]
        for scope in ("account", "symbol"):
            value = getattr(args, scope)
            if args.scope == scope and not value:
                halt.error(f"--scope {scope} needs --{scope}")
            if args.scope != scope and value is not None:
                halt.error(f"--{scope} only goes with --scope {scope}")
        if args.mode != "active" and not args.reason.strip():
            halt.error(f"--mode {args.mode} needs --reason (it is recorded with the halt)")
        if args.by is None:
            args.by = os.environ.get("USER") or "cli"
    return args


def build_order(args: argparse.Namespace) -> risk_pb2.Order:
    """The ``Order`` message for parsed ``pretrade order`` arguments.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parse_args` with ``command == "order"``.

    Returns
    -------
    risk_pb2.Order
        Price in 1/10,000 of the currency; 0 for a market order.
    """
    return risk_pb2.Order(
        order_id=args.order_id,
        account_id=args.account,
        symbol=args.symbol,
        side=SIDES[args.side],
        quantity=args.qty,
        price=args.price if args.price is not None else 0,
        order_type=ORDER_TYPES[args.order_type],
        venue=args.venue,
    )


def build_halt_request(args: argparse.Namespace) -> risk_pb2.HaltRequest:
    """The ``HaltRequest`` message for parsed ``pretrade halt`` arguments.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parse_args` with ``command == "halt"``.

    Returns
    -------
    risk_pb2.HaltRequest
    """
    return risk_pb2.HaltRequest(
        scope=HALT_SCOPES[args.scope],
        account_id=args.account or "",
        symbol=args.symbol or "",
        mode=HALT_MODES[args.mode],
        reason=args.reason,
        ttl_seconds=args.ttl,
        requested_by=args.by,
    )


# -- formatting ----------------------------------------------------------------


def _enum_label(name_of: Callable[[int], str], value: int, prefix: str) -> str:
    """``REJECT_CODE_MAX_NET_POSITION`` -> ``MAX_NET_POSITION``; unknown numbers survive."""
    try:
        return name_of(value).removeprefix(prefix)
    except ValueError:
        # A newer server may send a value this client's contract does not know.
        return f"UNKNOWN({value})"


def _cell(text: str) -> str:
    """One table cell: control characters and runs of blanks become one space."""
    return " ".join(text.split()) or "-"


def _utc_time(unix_ms: int) -> str:
    if unix_ms == 0:
        return "-"
    try:
        moment = _EPOCH + timedelta(milliseconds=unix_ms)
    except OverflowError:
        return f"{unix_ms} ms after epoch (out of range)"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


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


def format_decision(decision: risk_pb2.Decision) -> str:
    """A ``Decision`` as an aligned, human-readable table.

    Parameters
    ----------
    decision : risk_pb2.Decision
        The gateway's answer to ``EvaluateOrder``.

    Returns
    -------
    str
        One ``label  value`` line each for order id, account, symbol,
        verdict (``APPROVED`` or ``REJECTED``), notional (decimal, four
        places) and latency (µs); then, for a rejection, one line per
        failed check: its code without ``REJECT_CODE_`` and its message.
        No trailing newline.

    Examples
    --------
    >>> print(format_decision(risk_pb2.Decision(
    ...     order_id="o1", account_id="A1", symbol="AAPL", approved=True,
    ...     notional=68337800, latency_ns=12300)))
    order id  o1
    account   A1
    symbol    AAPL
    verdict   APPROVED
    notional  6833.7800
    latency   12.3 µs
    """
    lines = _align(
        [
            ("order id", _cell(decision.order_id)),
            ("account", _cell(decision.account_id)),
            ("symbol", _cell(decision.symbol)),
            ("verdict", "APPROVED" if decision.approved else "REJECTED"),
            ("notional", format_notional(decision.notional)),
            ("latency", _format_latency(decision.latency_ns)),
        ]
    )
    if decision.rejections:
        lines.append(f"rejections ({len(decision.rejections)})")
        lines += _align(
            [
                (
                    _enum_label(risk_pb2.RejectCode.Name, rejection.code, "REJECT_CODE_"),
                    _cell(rejection.message),
                )
                for rejection in decision.rejections
            ],
            indent="  ",
        )
    return "\n".join(lines)


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
                _enum_label(risk_pb2.HaltScope.Name, halt.scope, "HALT_SCOPE_"),
                _cell(halt.target),
                _enum_label(risk_pb2.HaltMode.Name, halt.mode, "HALT_MODE_"),
                _cell(halt.reason),
                _cell(halt.halted_by),
                _utc_time(halt.halted_at_unix_ms),
                _utc_time(halt.expires_at_unix_ms) if halt.expires_at_unix_ms else "never",
            )
        )
    return "\n".join(_align(rows))


def _to_json(message: Message) -> str:
    return json_format.MessageToJson(message, always_print_fields_with_no_presence=True)


# -- commands ------------------------------------------------------------------


def _report_rpc_error(method: str, target: str, error: grpc.RpcError) -> int:
    # grpc.RpcError declares nothing, but what a call raises is also a grpc.Call.
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    code_name = code.name if code is not None else "UNKNOWN"
    print(f"pretrade: {method} on {target} failed: {code_name}: {details}", file=sys.stderr)
    return EXIT_FAILED


def _run_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            config_file=args.config,
            overrides={
                "redis_url": args.redis_url,
                "listen": args.listen,
                "table_path": args.table_path,
                "workers": args.workers,
                "demo_book": args.demo,
                "log_level": args.log_level,
            },
        )
    except ConfigError as error:
        print(f"pretrade: bad settings: {error}", file=sys.stderr)
        return EXIT_FAILED
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # Imported here so that `pretrade order` and `pretrade halt` start fast
    # and work without the compiled core.
    from pretrade.server import serve_forever

    try:
        status = serve_forever(settings)
    except KeyboardInterrupt:
        return 130
    return status if isinstance(status, int) else 0


def _run_order(args: argparse.Namespace) -> int:
    order = build_order(args)
    with grpc.insecure_channel(args.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        try:
            decision = stub.EvaluateOrder(order, timeout=RPC_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            return _report_rpc_error("EvaluateOrder", args.target, error)
    print(_to_json(decision) if args.json else format_decision(decision))
    return EXIT_APPROVED if decision.approved else EXIT_REJECTED


def _run_halt(args: argparse.Namespace) -> int:
    request = build_halt_request(args)
    with grpc.insecure_channel(args.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        try:
            state = stub.Halt(request, timeout=RPC_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            return _report_rpc_error("Halt", args.target, error)
    print(_to_json(state) if args.json else format_halt_state(state))
    return EXIT_APPROVED


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _run_serve,
    "order": _run_order,
    "halt": _run_halt,
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``pretrade`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        The exit status: see :data:`EXIT_APPROVED`, :data:`EXIT_REJECTED`,
        :data:`EXIT_FAILED`. Usage errors raise ``SystemExit(2)``.
    """
    args = parse_args(argv)
    return _COMMANDS[args.command](args)
