"""The ``pretrade`` command: run the gateway, send it an order, halt trading.

::

    pretrade serve [--config FILE] [--redis-url URL] [--listen HOST:PORT] [--demo]
    pretrade order --account A1 --symbol AAPL --side buy --qty 100 --price 68.3378
    pretrade order ... --tif gtd --expire-at 2026-12-31T21:00:00Z
    pretrade halt --scope symbol --symbol AAPL --mode halted --reason "news pending"
    pretrade audit --redis-url redis://127.0.0.1:6379/0 --account A1 --since 10m
    pretrade archive --redis-url redis://127.0.0.1:6379/0 --database-url postgresql://...
    pretrade status
    pretrade desk --listen 127.0.0.1:8080 --gateway 127.0.0.1:50051
    pretrade portfolio --account A1 [--follow]
    pretrade portfolio --group DESK-1 [--follow]
    pretrade token --name oms-1 --role trader --account A1 >> tokens.toml
    pretrade cluster [--ports 50051,50052,50053] [--data-dir .pretrade-cluster]

``order`` exits 0 when the order is approved, 1 when it is rejected and 2
when the call itself fails; ``halt`` and ``status`` exit 0 or 2. Usage errors
exit 2 (argparse's convention). ``serve`` exits 0 after a clean stop, and
with a status of its own for each reason it cannot start (the ``EXIT_*``
constants; README, "Exit statuses"), after one line on stderr that says what
to do. Any command whose output is cut short (``pretrade audit | head``)
exits :data:`EXIT_BROKEN_PIPE`.

The client commands talk plaintext without a token unless told otherwise:
``--token`` (``$PRETRADE_TOKEN``) sends ``authorization: Bearer <token>``;
``--tls-ca`` (``$PRETRADE_TLS_CA``), ``--tls-cert`` and ``--tls-key``
(``$PRETRADE_CLIENT_CERT``, ``$PRETRADE_CLIENT_KEY``: not ``PRETRADE_TLS_*``,
which name the server's own settings) or ``--tls`` switch to TLS.

Argument parsing and the commands live here; the tables in
:mod:`pretrade.cli.format` (pure functions, tested without a server) and the
channel and call in :mod:`pretrade.cli.client`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from pretrade import __version__
from pretrade.api.roles import AUTH_MODES, ROLES
from pretrade.app.config import DEFAULT_DESK_LISTEN, LOG_FORMATS, ConfigError, load_settings
from pretrade.cli.client import (
    RPC_TIMEOUT_SECONDS,
    ClientError,
    GatewayClient,
    describe_rpc_error,
)
from pretrade.cli.format import (
    EPOCH,
    audit_json,
    format_audit_entries,
    format_decision,
    format_halt_state,
    format_portfolio,
    format_status,
    to_json,
)
from pretrade.client import CallFailed, RiskClient
from pretrade.engine.errors import (
    CannotListen,
    CapacityRefused,
    DataDirInUse,
    RedisUnreachable,
    StartupError,
    TableInUse,
    WorkerFailed,
)
from pretrade.engine.fixedpoint import parse_price, parse_quantity
from pretrade.shards.slots import DEFAULT_SHARD_COUNT
from pretrade.v1 import risk_pb2

if TYPE_CHECKING:  # imported by `pretrade audit` itself: the other commands start fast
    import redis

__all__ = [
    "DEFAULT_TARGET",
    "EXIT_APPROVED",
    "EXIT_BROKEN_PIPE",
    "EXIT_CANNOT_LISTEN",
    "EXIT_CAPACITY_REFUSED",
    "EXIT_DATA_DIR_IN_USE",
    "EXIT_FAILED",
    "EXIT_NOTIFICATIONS",
    "EXIT_REDIS_UNREACHABLE",
    "EXIT_REJECTED",
    "EXIT_TABLE_IN_USE",
    "EXIT_WORKER_FAILED",
    "TARGET_ENV",
    "build_halt_request",
    "build_order",
    "build_parser",
    "format_audit_entries",
    "format_decision",
    "format_halt_state",
    "format_status",
    "main",
    "parse_args",
]

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "PRETRADE_TARGET"
TOKEN_ENV = "PRETRADE_TOKEN"
TLS_CA_ENV = "PRETRADE_TLS_CA"
CLIENT_CERT_ENV = "PRETRADE_CLIENT_CERT"
CLIENT_KEY_ENV = "PRETRADE_CLIENT_KEY"
CLIENT_ENVIRONMENT = (TARGET_ENV, TOKEN_ENV, TLS_CA_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV)
"""What the client commands read; none is a server setting's variable."""

EXIT_APPROVED = 0
"""``order``: approved; ``halt`` and ``serve``: success."""
EXIT_REJECTED = 1
"""``order``: the gateway rejected the order."""
EXIT_FAILED = 2
"""The call failed (gRPC error) or the settings are invalid (a malformed Redis URL too)."""
EXIT_NOTIFICATIONS = 3
"""``serve``: Redis keyspace notifications are off and pretrade may not turn them on."""
EXIT_CANNOT_LISTEN = 4
"""``serve``: the listen address is in use (by whom, when visible) or cannot be bound."""
EXIT_TABLE_IN_USE = 5
"""``serve``: another live server holds the table file (its pid is named)."""
EXIT_REDIS_UNREACHABLE = 6
"""``serve``: Redis does not answer at the URL, or refuses the credentials."""
EXIT_CAPACITY_REFUSED = 7
"""``serve``: the table the capacities ask for cannot be made (larger than its filesystem)."""
EXIT_DATA_DIR_IN_USE = 8
"""``serve``: the embedded redis-server's data directory is held by another one."""
EXIT_WORKER_FAILED = 9
"""``serve --workers N``: a worker process ended before it served."""
EXIT_BROKEN_PIPE = 141
"""Stdout closed before the output ended (``| head``): 128 + SIGPIPE, as a shell reports it."""

#: What ``serve`` exits with for each reason it cannot start.
STARTUP_EXITS: dict[type[StartupError], int] = {
    CannotListen: EXIT_CANNOT_LISTEN,
    TableInUse: EXIT_TABLE_IN_USE,
    RedisUnreachable: EXIT_REDIS_UNREACHABLE,
    CapacityRefused: EXIT_CAPACITY_REFUSED,
    DataDirInUse: EXIT_DATA_DIR_IN_USE,
    WorkerFailed: EXIT_WORKER_FAILED,
}

SIDES = {
    "buy": risk_pb2.SIDE_BUY,
    "sell": risk_pb2.SIDE_SELL,
    "sell_short": risk_pb2.SIDE_SELL_SHORT,
}
ORDER_TYPES = {"limit": risk_pb2.ORDER_TYPE_LIMIT, "market": risk_pb2.ORDER_TYPE_MARKET}
TIMES_IN_FORCE = {
    "day": risk_pb2.TIME_IN_FORCE_DAY,
    "ioc": risk_pb2.TIME_IN_FORCE_IOC,
    "gtc": risk_pb2.TIME_IN_FORCE_GTC,
    "gtd": risk_pb2.TIME_IN_FORCE_GTD,
}
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


def _one_line_error(message: str) -> None:
    """A mistake with no use for the usage text: ``pretrade: <message>``, exit 2 (usage's)."""
    print(f"pretrade: {message}", file=sys.stderr)
    raise SystemExit(EXIT_FAILED)


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
    access = parser.add_argument_group("access (default: plaintext, no token)")
    access.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                        help=f"bearer token (default: ${TOKEN_ENV})")
    access.add_argument("--tls", action="store_true",
                        help="use TLS, trusting the system's CAs (implied by the --tls-* flags)")
    access.add_argument("--tls-ca", metavar="PEM", default=os.environ.get(TLS_CA_ENV) or None,
                        help=f"CA certificates to trust for the gateway (default: ${TLS_CA_ENV})")
    access.add_argument("--tls-cert", metavar="PEM",
                        default=os.environ.get(CLIENT_CERT_ENV) or None,
                        help=f"client certificate for mutual TLS (default: ${CLIENT_CERT_ENV})")
    access.add_argument("--tls-key", metavar="PEM",
                        default=os.environ.get(CLIENT_KEY_ENV) or None,
                        help=f"its private key (default: ${CLIENT_KEY_ENV})")


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
    serve.add_argument("--stream-listen", metavar="HOST:PORT",
                       help="serve portfolio streams on this address only, in processes of "
                       "their own at a lower CPU priority (stream_listen; default: streams on "
                       "--listen beside the orders)")
    serve.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help="load a demo book (accounts, limits, instruments) at start",
    )
    serve.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="log level")
    serve.add_argument("--log-format", type=str.lower, choices=LOG_FORMATS,
                       help="text lines (default) or one JSON object per line")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="serve Prometheus /metrics here (default: off); with --workers N, "
                       "process i serves on PORT + i")
    serve.add_argument("--reconcile-interval", type=int, metavar="SECONDS",
                       help="compare the table with Redis this often (default 300; 0: never)")
    serve.add_argument("--archive", action="store_true", default=None,
                       help="run the audit archiver beside the gateway (an embedded PostgreSQL "
                       "unless --database-url or $DATABASE_URL is set)")
    serve.add_argument("--database-url", metavar="URL",
                       help="PostgreSQL of the audit archive ($DATABASE_URL)")
    serve.add_argument("--desk", metavar="HOST:PORT",
                       help="run the risk desk (`pretrade desk`) beside the gateway, its web "
                       "page on HOST:PORT (desk_listen; default: no desk)")
    access = serve.add_argument_group(
        "access", "TLS (or --insecure) and auth are required; see README, Access control")
    access.add_argument("--insecure", action="store_true", default=None,
                        help="serve plaintext: local development only")
    access.add_argument("--tls-cert", metavar="PEM", help="server certificate chain")
    access.add_argument("--tls-key", metavar="PEM", help="server private key (unencrypted)")
    access.add_argument("--tls-client-ca", metavar="PEM",
                        help="CA that issues client certificates (mutual TLS)")
    access.add_argument("--tls-require-client-cert", action="store_true", default=None,
                        help="refuse clients without a certificate from --tls-client-ca")
    access.add_argument("--auth", type=str.lower, choices=AUTH_MODES,
                        help="tokens (default) or none (local development, loopback only)")
    access.add_argument("--tokens-file", metavar="TOML", help="token hashes and principals")

    order = commands.add_parser(
        "order",
        help="send one order to EvaluateOrder (or a cancel/replace to ReplaceOrder) and "
        "print the decision",
        description="Ask the gateway whether an order may go; with --replace ORIGINAL, "
        "whether a working order may be replaced (new --qty and/or --price; symbol, side and "
        "type are the original's). Exit status: 0 approved, 1 rejected, 2 call failed.",
    )
    _add_target(order)
    order.add_argument("--account", required=True, help="account id")
    order.add_argument("--symbol", help="instrument symbol (required unless --replace)")
    order.add_argument("--side", choices=SIDES, help="required unless --replace")
    order.add_argument(
        "--qty",
        type=_argument_type(parse_quantity),
        metavar="N",
        help="quantity in whole units (required unless --replace; with it the new total, "
        "filled units included)",
    )
    order.add_argument("--replace", metavar="ORDER_ID",
                       help="cancel/replace this working order (ReplaceOrder) instead")
    order.add_argument(
        "--price",
        type=_argument_type(parse_price),
        metavar="DECIMAL",
        help="limit price, e.g. 68.3378 (at most 4 decimal places); required for limit orders",
    )
    order.add_argument("--type", dest="order_type", choices=ORDER_TYPES, default="limit")
    order.add_argument("--order-id", help="client order id (default: cli-<random>)")
    order.add_argument("--venue", default="", help="execution venue (informational)")
    order.add_argument("--tif", dest="time_in_force", choices=TIMES_IN_FORCE,
                       help="time in force (default: none sent, the order counts until its "
                       "fill or cancel is reported); gtd needs --expire-at")
    order.add_argument("--expire-at", type=_argument_type(parse_expire_at), metavar="WHEN",
                       help="when a --tif gtd order expires: ISO 8601 UTC "
                       "(2026-12-31T21:00:00Z) or Unix epoch milliseconds")
    order.add_argument("--oco", metavar="GROUP_ID",
                       help="a leg of the one-cancels-other group GROUP_ID: its working legs "
                       "reserve their worst leg, not their sum")

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
    halt.add_argument("--force", action="store_true",
                      help="halt an account or symbol even if the gateway has never seen it "
                      "(without it, such a halt is refused: a mistyped name halts nothing)")

    _add_audit_command(commands)
    _add_reconcile_command(commands)

    archive = commands.add_parser(
        "archive",
        help="move the audit stream into PostgreSQL, until stopped",
        description="Read the Redis stream `audit` as the consumer group `archiver` and write "
        "every record to PostgreSQL exactly once; trim the stream behind what is archived. "
        "Runs until SIGTERM or SIGINT; several may run at once.")
    archive.add_argument("--config", metavar="FILE", help="TOML settings file ($PRETRADE_CONFIG)")
    archive.add_argument("--redis-url", metavar="URL",
                         help="the gateway's Redis (default: $PRETRADE_REDIS_URL or $REDIS_URL)")
    archive.add_argument("--database-url", metavar="URL",
                         help="PostgreSQL (default: $PRETRADE_DATABASE_URL or $DATABASE_URL)")
    archive.add_argument("--consumer", help="this archiver's name in the group (default: "
                         "<host>-<pid>)")
    archive.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="log level")

    desk = commands.add_parser(
        "desk",
        help="serve the risk desk: a live web page over a running gateway",
        description="Serve the risk desk: accounts and P&L, halts, alerts, rejections and a "
        "chart of decisions, pushed live to the browser, and the kill switch. It calls the "
        "gateway over gRPC with each signed-in user's bearer token.")
    desk.add_argument("--config", metavar="FILE", help="TOML settings file ($PRETRADE_CONFIG)")
    desk.add_argument("--listen", metavar="HOST:PORT",
                      help=f"the web page's address (desk_listen; default {DEFAULT_DESK_LISTEN})")
    desk.add_argument("--gateway", metavar="HOST:PORT",
                      help="the gateway to call (desk_gateway; default: the listen setting)")
    desk.add_argument("--tls-ca", metavar="PEM",
                      help="CA of the gateway's certificate: call it over TLS (desk_tls_ca)")
    desk.add_argument("--tls-cert", metavar="PEM",
                      help="client certificate for a gateway with mutual TLS (desk_client_cert)")
    desk.add_argument("--tls-key", metavar="PEM", help="its key (desk_client_key)")
    desk.add_argument("--auth", type=str.lower, choices=AUTH_MODES,
                      help="tokens (default: users sign in) or none (everybody is admin; "
                      "loopback only, as the gateway's --auth none)")
    desk.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="log level")
    portfolio = commands.add_parser(
        "portfolio",
        help="print an account's or a group's holdings, value and P&L (StreamPortfolio)",
        description="Open StreamPortfolio for one account (or one account group: its "
        "accounts summed) and print its snapshot: each "
        "holding's quantity, average cost, last price, market value and unrealized P&L in "
        "its currency, the totals, and the alerts in force. With --follow, every update "
        "after it too, until Ctrl-C. Exit 0, or 2 when the call fails (an account with no "
        "holdings or limits, or a group with no hash and no accounts, is NOT_FOUND).",
    )
    _add_target(portfolio)
    whose = portfolio.add_mutually_exclusive_group(required=True)
    whose.add_argument("--account", help="account id")
    whose.add_argument("--group", help="account group id (groups:{ACC}, group:<G>)")
    portfolio.add_argument("--follow", action="store_true",
                           help="keep printing the updates (heartbeats are not printed)")

    status = commands.add_parser(
        "status",
        help="print the gateway's sync state, lag, table use and counters",
        description="Call GetStatus (risk_operator or admin) and print the answer.",
    )
    _add_target(status)

    token = commands.add_parser(
        "token",
        help="make a bearer token and its tokens-file entry",
        description="Make a random bearer token. The [[token]] entry for the tokens file "
        "(its sha256, never the token) goes to stdout, so `>> tokens.toml` appends it; the "
        "token itself goes to stderr, once: give it to the client.",
    )
    token.add_argument("--name", required=True, help="principal name, shown in logs")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--account", action="append", default=[], metavar="ACCOUNT",
                       help="an account the trader may use (repeat; '*' for every account)")

    cluster = commands.add_parser(
        "cluster",
        help="run a local sharded deployment: a Redis Cluster and 2 owning nodes + 1 standby",
        description="Start a 3-primary + 3-replica Redis Cluster from the embedded "
        "redis-server, two pretrade nodes that own half the shards each and a standby of "
        "both, with the demo book; print how to send orders; stop everything on Ctrl-C.",
    )
    cluster.add_argument("--ports", type=_three_ports,
                         default=(50051, 50052, 50053), metavar="A,B,C",
                         help="gRPC ports of node-a, node-b and the standby node-c "
                         "(default: 50051,50052,50053)")
    cluster.add_argument("--data-dir", type=Path, default=Path(".pretrade-cluster"),
                         help="the Redis nodes' and the pretrade nodes' files "
                         "(default: .pretrade-cluster)")
    cluster.add_argument("--shard-count", type=int, default=DEFAULT_SHARD_COUNT,
                         help=f"shards of the 16,384 slots (default: {DEFAULT_SHARD_COUNT})")
    cluster.add_argument("--lease-ttl-ms", type=int, default=3_000,
                         help="lease lifetime: how soon the standby can take a dead "
                         "owner's shards (default: 3000)")

    commands_by_name = {"serve": serve, "order": order, "halt": halt, "status": status,
                        "portfolio": portfolio, "token": token}
    return parser, commands_by_name


def build_parser() -> argparse.ArgumentParser:
    """The ``pretrade`` argument parser (without cross-argument checks).

    Returns
    -------
    argparse.ArgumentParser
        Subcommands ``serve``, ``order``, ``halt``, ``status``, ``portfolio``,
        ``token``, ``audit``, ``reconcile`` and ``archive``.
        ``--target`` (and ``--token``, ``--tls-*``) default to their
        environment variables as read when the parser is built.
    """
    return _build_parsers()[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check a ``pretrade`` command line.

    Beyond what argparse checks per argument: a limit order needs
    ``--price`` and a market order must not have one; ``--scope account``
    needs ``--account`` (``symbol`` needs ``--symbol``) and neither goes
    with another scope; a halt needs ``--reason`` unless it lifts one;
    ``--tif gtd`` needs ``--expire-at`` and ``--expire-at`` needs ``--tif gtd``
    (these two say so in one line, without the usage text).
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
    if args.command in ("order", "halt", "status", "portfolio") and (args.tls_cert is None) != (
            args.tls_key is None):
        commands[args.command].error("--tls-cert and --tls-key go together")
    if args.command == "token":
        token = commands["token"]
        if args.role == "trader" and not args.account:
            token.error("a trader needs at least one --account ('*' for every account)")
        if args.role != "trader" and args.account:
            token.error(f"--account only applies to a trader; a {args.role} may use every "
                        "account")
    if args.command == "order":
        order = commands["order"]
        if args.replace is not None:
            if not args.replace:
                order.error("--replace must not be empty")
            for given, flag in ((args.symbol, "--symbol"), (args.side, "--side"),
                                (args.order_type != "limit" or None, "--type")):
                if given is not None:
                    order.error(f"{flag} is the original's in a replace; leave it out")
            if args.qty is None and args.price is None:
                order.error("a replace needs a new --qty or --price (or both)")
            if args.time_in_force is not None or args.expire_at is not None:
                _one_line_error("a replacement keeps its original's time in force: leave "
                                "out --tif and --expire-at with --replace")
            if args.oco is not None:
                _one_line_error("a replacement stays in its original's group: leave out "
                                "--oco with --replace")
        else:
            for given, flag in ((args.symbol, "--symbol"), (args.side, "--side"),
                                (args.qty, "--qty")):
                if given is None:
                    order.error(f"an order needs {flag} (or --replace ORDER_ID)")
        if args.replace is None and args.order_type == "limit" and args.price is None:
            order.error("a limit order needs --price (or use --type market)")
        if args.order_type == "market" and args.price is not None:
            order.error("a market order is valued at the reference price; leave out --price")
        if args.time_in_force == "gtd" and args.expire_at is None:
            _one_line_error("--tif gtd needs --expire-at (ISO 8601 UTC, e.g. "
                            "2026-12-31T21:00:00Z, or Unix epoch milliseconds)")
        if args.expire_at is not None and args.time_in_force != "gtd":
            _one_line_error("--expire-at only goes with --tif gtd (an order with another "
                            "time in force has no expiry time)")
        if args.oco is not None and not args.oco:
            order.error("--oco must not be empty")
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
        Price in 1/10,000 of the currency; 0 for a market order. Time in
        force unspecified unless ``--tif`` is given; ``expire_at_unix_ms``
        0 unless it is ``gtd``; ``group_id`` and a one-cancels-other
        contingency with ``--oco``.
    """
    order = risk_pb2.Order(
        order_id=args.order_id,
        account_id=args.account,
        symbol=args.symbol,
        side=SIDES[args.side],
        quantity=args.qty,
        price=args.price if args.price is not None else 0,
        order_type=ORDER_TYPES[args.order_type],
        venue=args.venue,
        time_in_force=(TIMES_IN_FORCE[args.time_in_force] if args.time_in_force
                       else risk_pb2.TIME_IN_FORCE_UNSPECIFIED),
        expire_at_unix_ms=args.expire_at or 0,
    )
    if args.oco:
        order.group_id, order.contingency = args.oco, risk_pb2.CONTINGENCY_ONE_CANCELS_OTHER
    return order


def build_replace(args: argparse.Namespace) -> risk_pb2.ReplaceRequest:
    """The ``ReplaceRequest`` for ``pretrade order --replace ORIGINAL`` arguments.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parse_args` with ``command == "order"`` and ``replace`` set.

    Returns
    -------
    risk_pb2.ReplaceRequest
        ``order_id`` the replacement's; quantity and price 0 when not given
        (the original's stay).
    """
    return risk_pb2.ReplaceRequest(
        account_id=args.account, original_order_id=args.replace, order_id=args.order_id,
        quantity=args.qty if args.qty is not None else 0,
        price=args.price if args.price is not None else 0)


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
        only_if_known=not args.force,
    )


# -- commands ------------------------------------------------------------------


def _run_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            config_file=args.config,
            overrides={
                "redis_url": args.redis_url,
                "listen": args.listen,
                "table_path": args.table_path,
                "workers": args.workers,
                "stream_listen": args.stream_listen,
                "demo_book": args.demo,
                "log_level": args.log_level,
                "log_format": args.log_format,
                "metrics_listen": args.metrics_listen,
                "reconcile_interval_seconds": args.reconcile_interval,
                "insecure": args.insecure,
                "tls_cert": args.tls_cert,
                "tls_key": args.tls_key,
                "tls_client_ca": args.tls_client_ca,
                "tls_require_client_cert": args.tls_require_client_cert,
                "auth": args.auth,
                "tokens_file": args.tokens_file,
                "archive": args.archive,
                "database_url": args.database_url,
                "desk_listen": args.desk,
            },
        )
    except ConfigError as error:
        print(f"pretrade: bad settings: {error}", file=sys.stderr)
        return EXIT_FAILED
    from pretrade.app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, settings.log_rate_limit)
    # Imported here so that the client commands start fast: they need no
    # server, table or Redis client.
    from pretrade.app.server import serve_forever
    from pretrade.desk.process import desk_beside

    try:
        with desk_beside(settings):  # the risk desk, when asked for
            status = serve_forever(settings)
    except ConfigError as error:  # the TLS and auth settings, checked before anything starts
        print(f"pretrade: bad settings: {error}", file=sys.stderr)
        return EXIT_FAILED
    except StartupError as error:
        print(f"pretrade: {error}", file=sys.stderr)
        return STARTUP_EXITS.get(type(error), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    return status if isinstance(status, int) else 0


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(args.target, token=args.token, tls=args.tls, tls_ca=args.tls_ca,
                         tls_cert=args.tls_cert, tls_key=args.tls_key)


def _call(args: argparse.Namespace, method: str, request: Message) -> Message | int:
    """One call with the command's client: the reply, or EXIT_FAILED after one line on stderr."""
    try:
        return _client(args).call(method, request)
    except ClientError as error:
        print(f"pretrade: {error}", file=sys.stderr)
        return EXIT_FAILED


def _decide(args: argparse.Namespace, request: risk_pb2.Order | risk_pb2.ReplaceRequest
            ) -> risk_pb2.Decision | int:
    """One order (or cancel/replace) through the client library: sent to ``--target``,
    and to the owner it names when that node does not own the account (a redirect);
    the decision, or EXIT_FAILED after one line on stderr."""
    gateway = _client(args)
    try:
        gateway.check()
        credentials = gateway.credentials()
    except ClientError as error:
        print(f"pretrade: {error}", file=sys.stderr)
        return EXIT_FAILED
    with RiskClient([args.target], token=args.token, credentials=credentials,
                    timeout=RPC_TIMEOUT_SECONDS) as client:
        try:
            if isinstance(request, risk_pb2.ReplaceRequest):
                return client.replace(request)
            return client.evaluate(request)
        except CallFailed as failed:
            method = ("ReplaceOrder" if isinstance(request, risk_pb2.ReplaceRequest)
                      else "EvaluateOrder")
            message = (describe_rpc_error(method, failed.target, failed.error)
                       if failed.error is not None else str(failed))
            print(f"pretrade: {message}", file=sys.stderr)
            return EXIT_FAILED


def _run_order(args: argparse.Namespace) -> int:
    order: risk_pb2.Order | None = None
    if args.replace is not None:
        decision = _decide(args, build_replace(args))
    else:
        order = build_order(args)
        decision = _decide(args, order)
    if isinstance(decision, int):
        return decision
    print(to_json(decision) if args.json else format_decision(decision, order))
    return EXIT_APPROVED if decision.approved else EXIT_REJECTED


def _run_halt(args: argparse.Namespace) -> int:
    try:
        state = _client(args).call("Halt", build_halt_request(args))
    except ClientError as error:
        if error.reason in ("UNKNOWN_ACCOUNT", "UNKNOWN_SYMBOL"):
            what = "account" if error.reason == "UNKNOWN_ACCOUNT" else "symbol"
            name = args.account if what == "account" else args.symbol
            print(f"pretrade: warning: the gateway has never seen {what} {name!r}, so nothing "
                  f"was halted; check the spelling, or add --force to halt it anyway",
                  file=sys.stderr)
        else:
            print(f"pretrade: {error}", file=sys.stderr)
        return EXIT_FAILED
    assert isinstance(state, risk_pb2.HaltState)
    print(to_json(state) if args.json else format_halt_state(state))
    return EXIT_APPROVED


def _run_status(args: argparse.Namespace) -> int:
    status = _call(args, "GetStatus", risk_pb2.StatusRequest())
    if isinstance(status, int):
        return status
    assert isinstance(status, risk_pb2.ServerStatus)
    print(to_json(status) if args.json else format_status(status))
    return EXIT_APPROVED


def _run_portfolio(args: argparse.Namespace) -> int:
    request = risk_pb2.PortfolioRequest(account_id=args.account or "",
                                        group_id=args.group or "")
    updates = _client(args).stream("StreamPortfolio", request,
                                   timeout=None if args.follow else RPC_TIMEOUT_SECONDS)
    try:
        for update in updates:
            assert isinstance(update, risk_pb2.PortfolioUpdate)
            if update.kind == risk_pb2.PORTFOLIO_UPDATE_KIND_HEARTBEAT:
                continue
            if args.json:
                print(to_json(update, one_line=True), flush=True)
            else:
                print(format_portfolio(update) + ("\n" if args.follow else ""), flush=True)
            if not args.follow:
                break
    except ClientError as error:
        print(f"pretrade: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_APPROVED
    finally:
        updates.close()
    return EXIT_APPROVED


def _run_token(args: argparse.Namespace) -> int:
    from pretrade.api.access import new_token, token_entry

    token = new_token()
    try:
        entry = token_entry(args.name, args.role, args.account, token)
    except ValueError as error:
        print(f"pretrade: {error}", file=sys.stderr)
        return EXIT_FAILED
    # The entry (a hash) to stdout, the token to stderr: `>> tokens.toml`
    # appends the entry and never writes the token to the file.
    print(entry, end="", flush=True)
    print(f"token for {args.name} ({args.role}), shown once; give it to the client "
          f"(--token or ${TOKEN_ENV}):\n{token}", file=sys.stderr)
    return EXIT_APPROVED


# -- the audit trail -------------------------------------------------------------

_DURATION = re.compile(r"([0-9]{1,12})(ms|s|m|h|d)", re.ASCII)
_DURATION_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_when(text: str, now: datetime | None = None) -> int:
    """A point in time for ``pretrade audit --since``/``--until``, in Unix epoch ms.

    Parameters
    ----------
    text : str
        A duration ago (``500ms``, ``30s``, ``10m``, ``2h``, ``1d``), ``now``,
        or an ISO 8601 time (``2025-11-21T14:30:00Z``, ``2025-11-21 14:30``);
        a time without an offset is UTC.
    now : datetime, optional
        What a duration counts back from (default: the current time).

    Raises
    ------
    ValueError
        For any other text.
    """
    spec = text.strip()
    now_ms = (datetime.now(UTC) if now is None else now) - EPOCH
    if spec == "now":
        return now_ms // timedelta(milliseconds=1)
    duration = _DURATION.fullmatch(spec)
    if duration is not None:
        ago = int(duration[1]) * _DURATION_MS[duration[2]]
        return now_ms // timedelta(milliseconds=1) - ago
    unix_ms = _iso_unix_ms(spec)
    if unix_ms is None:
        raise ValueError(f"{text!r} is neither a duration ago (10m, 2h, 1d), 'now', nor an "
                         "ISO 8601 time (2025-11-21T14:30:00Z)")
    return unix_ms


def _iso_unix_ms(spec: str) -> int | None:
    """An ISO 8601 time (UTC unless it says) in Unix epoch ms; None when it is not one."""
    try:
        moment = datetime.fromisoformat(spec)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


def parse_expire_at(text: str) -> int:
    """When a GTD order expires (``pretrade order --expire-at``), in Unix epoch ms.

    Parameters
    ----------
    text : str
        Unix epoch milliseconds (digits only: ``1798750800000``) or an ISO
        8601 time (``2026-12-31T21:00:00Z``); a time without an offset is UTC.
        A time already past is sent as it is: the gateway rejects it
        ``ORDER_EXPIRED``.

    Raises
    ------
    ValueError
        For any other text, or a time before the epoch.
    """
    spec = text.strip()
    unix_ms = int(spec) if spec.isascii() and spec.isdigit() else _iso_unix_ms(spec)
    if unix_ms is None:
        raise ValueError(f"{text!r} is neither Unix epoch milliseconds (1798750800000) nor "
                         "an ISO 8601 UTC time (2026-12-31T21:00:00Z)")
    if not 0 < unix_ms < 2**63:
        raise ValueError(f"{text!r} is not after the Unix epoch (or is too far after it)")
    return unix_ms


def _parse_limit(text: str) -> int:
    limit = parse_quantity(text)
    if limit < 0:
        raise ValueError(f"limit {text!r} is negative; use 0 for every entry")
    return limit


def _add_audit_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit",
        help="read the audit trail of decisions and halt changes (PostgreSQL and Redis)",
        description="Read the audit trail directly (not through the gateway): with a database "
        "URL, the archive in PostgreSQL and the Redis stream `audit` merged (each record once); "
        "without one, the stream alone. The newest entries that match every filter given, "
        "printed oldest first. Times are UTC.",
    )
    audit.add_argument("--redis-url", metavar="URL",
                       help="the gateway's Redis (default: $PRETRADE_REDIS_URL or $REDIS_URL)")
    audit.add_argument("--database-url", metavar="URL",
                       help="the audit archive (default: $PRETRADE_DATABASE_URL or "
                       "$DATABASE_URL; none: the stream only)")
    audit.add_argument("--config", metavar="FILE",
                       help="TOML settings file, for redis_url and credentials "
                       "($PRETRADE_CONFIG)")
    audit.add_argument("--account", help="decisions of this account, and its halts")
    audit.add_argument("--order-id", help="decisions of this order id")
    audit.add_argument("--event", choices=("decision", "halt"), help="one kind of entry only")
    audit.add_argument("--code", help="decisions rejected with this reject code, e.g. "
                       "BUYING_POWER")
    audit.add_argument("--principal", help="entries made by this authenticated caller")
    audit.add_argument("--since", type=_argument_type(parse_when), metavar="WHEN",
                       help="from this time: 10m, 2h, 1d ago, or ISO 8601 (UTC unless it says)")
    audit.add_argument("--until", type=_argument_type(parse_when), metavar="WHEN",
                       help="up to this time (same forms as --since)")
    audit.add_argument("--limit", type=_argument_type(_parse_limit), default=100, metavar="N",
                       help="at most N entries, the newest (0: all; default 100)")
    audit.add_argument("--json", action="store_true",
                       help="one JSON object per entry (JSON Lines) instead of a table")


def _run_audit(args: argparse.Namespace) -> int:
    # Imported here: only this command needs a Redis client.
    import redis

    from pretrade.audit.query import (
        AuditQuery,
        entry_as_json,
        read_audit,
        read_history,
        reject_code_name,
    )
    from pretrade.state.connection import sync_client

    try:
        settings = load_settings(config_file=args.config,
                                 overrides={"redis_url": args.redis_url,
                                            "database_url": args.database_url})
    except ConfigError as error:
        print(f"pretrade: bad settings: {error}", file=sys.stderr)
        return EXIT_FAILED
    if settings.redis_url is None:
        print("pretrade: audit needs --redis-url (or $PRETRADE_REDIS_URL, $REDIS_URL): the "
              "Redis that `pretrade serve` names in its banner", file=sys.stderr)
        return EXIT_FAILED
    query = AuditQuery(account=args.account, order_id=args.order_id, event=args.event,
                       since_ms=args.since, until_ms=args.until, limit=args.limit,
                       code=reject_code_name(args.code) if args.code else None,
                       principal=args.principal)
    client = sync_client(
        settings.redis_url, username=settings.redis_username or None,
        password=settings.redis_password or None, socket_timeout=RPC_TIMEOUT_SECONDS,
        socket_connect_timeout=RPC_TIMEOUT_SECONDS)
    try:
        if settings.database_url is None:
            entries = read_audit(client, query)
        else:
            import psycopg

            try:
                with psycopg.connect(settings.database_url,
                                     connect_timeout=int(RPC_TIMEOUT_SECONDS) or 1) as archive:
                    entries = read_history(client, archive, query)
            except psycopg.Error as error:
                print(f"pretrade: reading the audit archive failed: {error}".rstrip(),
                      file=sys.stderr)
                return EXIT_FAILED
        currencies = {} if args.json else _currencies(client, entries, settings.default_currency)
    except redis.RedisError as error:
        print(f"pretrade: reading the audit stream failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()
    if args.json:
        for entry_id, fields in entries:
            print(json.dumps(audit_json(entry_as_json(entry_id, fields)), ensure_ascii=False))
    else:
        print(format_audit_entries(entries, currencies))
    return EXIT_APPROVED


def _currencies(client: redis.Redis, entries: Sequence[tuple[str, dict[str, str]]],
                default: str) -> dict[str, str]:
    """The currency of each symbol the entries name, from ``instrument:<SYM>`` (one round trip)."""
    from pretrade.engine.text import is_currency_code, is_valid_id
    from pretrade.state.schema import instrument_key

    symbols = sorted({fields["symbol"] for _, fields in entries
                      if is_valid_id(fields.get("symbol", "").encode())})
    with client.pipeline(transaction=False) as pipe:
        for symbol in symbols:
            pipe.hget(instrument_key(symbol.encode()), "currency")
        replies = pipe.execute(raise_on_error=False)
    found = {}
    for symbol, reply in zip(symbols, replies, strict=True):
        if reply is None:
            found[symbol] = default
        elif isinstance(reply, bytes) and is_currency_code(reply):
            found[symbol] = reply.decode()
        # else unreadable: its prices are shown without a currency
    return found


def _add_reconcile_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        help="compare the table of a running server with Redis; exit 1 on any difference",
        description="Map the shared table of a `pretrade serve` running on this machine "
        "(read only: nothing is written to it or to Redis), load Redis the way a starting "
        "server does, and list every field on which they differ: per account its state, "
        "halt, limits, balances, P&L and working orders; per position its quantity, cost "
        "basis, working quantities and locates; per instrument its reference data, price and "
        "halt; the global halt. A difference must be there twice, CONFIRM seconds apart, to "
        "count (the sync follows Redis within its lag bound). Exit 0: none; 1: differences; "
        "2: could not compare.",
    )
    reconcile.add_argument("--config", metavar="FILE",
                           help="the server's TOML settings file ($PRETRADE_CONFIG): "
                           "redis_url, credentials, listen and table_path")
    reconcile.add_argument("--redis-url", metavar="URL",
                           help="the server's Redis (default: $PRETRADE_REDIS_URL or $REDIS_URL)")
    reconcile.add_argument("--listen", metavar="HOST:PORT",
                           help="the server's gRPC address, which names its table file when "
                           "--table-path is not given")
    reconcile.add_argument("--table-path", metavar="PATH", help="the server's table file")
    reconcile.add_argument("--confirm", type=float, default=None, metavar="SECONDS",
                           help="wait this long before the second look (default: the "
                           "max_sync_lag_ms setting)")
    reconcile.add_argument("--json", action="store_true",
                           help="one JSON object per difference instead of a table")


def _run_reconcile(args: argparse.Namespace) -> int:
    import asyncio

    from pretrade.cli.reconcile import reconcile_running_server

    try:
        settings = load_settings(config_file=args.config,
                                 overrides={"redis_url": args.redis_url, "listen": args.listen,
                                            "table_path": args.table_path})
    except ConfigError as error:
        print(f"pretrade: bad settings: {error}", file=sys.stderr)
        return EXIT_FAILED
    confirm = args.confirm if args.confirm is not None else settings.max_sync_lag_ms / 1000
    if not 0 <= confirm <= 3600:
        print("pretrade: --confirm must be between 0 and 3600 seconds", file=sys.stderr)
        return EXIT_FAILED
    return asyncio.run(reconcile_running_server(settings, confirm, as_json=args.json))


def _run_desk(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(config_file=args.config, overrides={
            "desk_listen": args.listen, "desk_gateway": args.gateway,
            "desk_tls_ca": args.tls_ca, "desk_client_cert": args.tls_cert,
            "desk_client_key": args.tls_key, "auth": args.auth, "log_level": args.log_level})
        from pretrade.app.logs import configure_logging

        configure_logging(settings.log_level, settings.log_format, settings.log_rate_limit)
        from pretrade.desk.process import run_desk

        return run_desk(settings)
    except ConfigError as error:
        print(f"pretrade: bad settings: {error}", file=sys.stderr)
        return EXIT_FAILED
    except StartupError as error:
        print(f"pretrade: {error}", file=sys.stderr)
        return STARTUP_EXITS.get(type(error), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


def _run_archive(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(config_file=args.config, overrides={
            "redis_url": args.redis_url, "database_url": args.database_url,
            "log_level": args.log_level})
    except ConfigError as error:
        print(f"pretrade: bad settings: {error}", file=sys.stderr)
        return EXIT_FAILED
    if settings.redis_url is None or settings.database_url is None:
        print("pretrade: archive needs --redis-url (or $PRETRADE_REDIS_URL, $REDIS_URL) and "
              "--database-url (or $PRETRADE_DATABASE_URL, $DATABASE_URL)", file=sys.stderr)
        return EXIT_FAILED
    from pretrade.state.connection import is_cluster_url

    if is_cluster_url(settings.redis_url):
        print("pretrade: archive reads the one `audit` stream of a standalone Redis, not the "
              "per-node audit:{NODE} streams of a Redis Cluster", file=sys.stderr)
        return EXIT_FAILED
    from pretrade.app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, settings.log_rate_limit)
    from pretrade.app.archiving import run_archiver

    return run_archiver(settings, args.consumer)


def _three_ports(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(part.isdigit() and 0 < int(part) < 65536 for part in parts) \
            or len(set(parts)) != 3:
        raise argparse.ArgumentTypeError(f"need three distinct ports, comma-separated, "
                                         f"got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _run_cluster(args: argparse.Namespace) -> int:
    # Imported here, as for serve: the client commands need no server.
    from pretrade.app.localcluster import serve_until_signalled
    from pretrade.app.logs import configure_logging

    configure_logging("INFO")
    return serve_until_signalled(args.ports, args.data_dir, shard_count=args.shard_count,
                                 lease_ttl_ms=args.lease_ttl_ms)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _run_serve,
    "order": _run_order,
    "halt": _run_halt,
    "audit": _run_audit,
    "reconcile": _run_reconcile,
    "archive": _run_archive,
    "desk": _run_desk,
    "status": _run_status,
    "portfolio": _run_portfolio,
    "token": _run_token,
    "cluster": _run_cluster,
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
    try:
        status = _COMMANDS[args.command](args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (``| head``) has what it wanted: no traceback, and no
        # second failure when the interpreter flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("pretrade: the output was cut short (the reading end of the pipe closed)",
              file=sys.stderr)
        return EXIT_BROKEN_PIPE
    return status
