"""Server settings: defaults, a TOML file, the environment, command-line flags.

Later sources override earlier ones, field by field::

    defaults < TOML file < environment < overrides (CLI flags)

The TOML file is ``config_file`` or, when that is not given, the file named
by ``$PRETRADE_CONFIG``. Its keys are the :class:`Settings` field names,
either at the top level or under a ``[pretrade]`` table::

    [pretrade]
    redis_url = "redis://10.0.0.5:6379/0"
    listen = "0.0.0.0:50051"
    lock_stripes = 128

Each field has an environment variable, ``PRETRADE_`` and the field name in
capitals (``PRETRADE_MAX_ACCOUNTS``); ``redis_url`` also falls back to plain
``REDIS_URL``. An empty environment variable counts as unset.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrade._core.constants import (
    ACCOUNT_SHARE_DIVISOR,
    DEFAULT_ORDER_EXPIRY_MS,
    MAX_CAPACITY,
    MAX_ID_LENGTH,
    MAX_LOCK_STRIPES,
    MAX_SHARDS,
)
from pretrade.api.roles import AUTH_MODES
from pretrade.engine.errors import ConfigError
from pretrade.engine.sessions import parse_time_of_day
from pretrade.engine.table import Capacities
from pretrade.engine.text import is_currency_code, is_valid_id
from pretrade.shards.slots import DEFAULT_SHARD_COUNT, parse_shards

#: The table's own capacity defaults: the settings' defaults are these.
_TABLE = Capacities()

__all__ = [
    "CONFIG_FILE_ENV",
    "DEFAULT_DESK_LISTEN",
    "ConfigError",
    "Settings",
    "child_environment",
    "default_table_path",
    "environment_variable",
    "is_loopback",
    "load_settings",
    "parse_listen",
    "redacted_url",
]

CONFIG_FILE_ENV = "PRETRADE_CONFIG"
"""Environment variable naming the TOML file when none is passed."""
DEFAULT_DESK_LISTEN = "127.0.0.1:8080"
"""Where ``pretrade desk`` serves its page when ``desk_listen`` is not set."""

_ENV_PREFIX = "PRETRADE_"
_REDIS_URL_FALLBACK_ENV = "REDIS_URL"
CLUSTER_URL_SCHEME = "redis+cluster://"
_REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://", CLUSTER_URL_SCHEME)
_DATABASE_URL_FALLBACK_ENV = "DATABASE_URL"
_DATABASE_URL_SCHEMES = ("postgresql://", "postgres://")
#: The shortest lease TTL: renewed every third of it, it must outlast a few round trips.
MIN_LEASE_TTL_MS = 300
#: What the servicer does with an order when the audit queue is full.
AUDIT_WHEN_FULL = ("reject", "drop")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: ``log_format``: classic text lines, or one JSON object per line.
LOG_FORMATS = ("text", "json")
#: ``price_source``: ``price:<SYM>`` strings (and the ``prices`` stream), or
#: RedisTimeSeries series ``price_history:<SYM>``.
PRICE_SOURCES = ("keys", "timeseries")
# The table's capacities: bounded by what the compiled core accepts.
_CAPACITY_FIELDS = frozenset({"max_accounts", "max_instruments", "max_positions", "max_orders",
                              "max_orders_per_account"})
# Every other integer setting is a positive int32.
_MAX_INTEGER = 2**31 - 1
_INT_FIELDS = frozenset({"max_accounts", "max_instruments", "max_positions", "lock_stripes",
                         "max_orders", "max_orders_per_account", "order_expiry_ms",
                         "max_sync_lag_ms", "workers", "max_concurrent_rpcs",
                         "max_portfolio_streams", "max_control_calls", "max_open_calls",
                         "max_order_sessions", "order_session_window",
                         "max_read_calls", "shutdown_grace_ms", "audit_retain_ms",
                         "audit_queue_size", "archive_claim_idle_ms", "log_rate_limit",
                         "keepalive_time_ms", "keepalive_timeout_ms",
                         "keepalive_min_ping_interval_ms", "stream_workers", "shard_count",
                         "lease_ttl_ms"})
# Integers where 0 means "off".
_COUNT_FIELDS = frozenset({"reconcile_interval_seconds", "stream_nice"})
#: The most a process's niceness can be raised (``nice(2)``: 19 is the lowest priority).
MAX_NICE = 19
_BOOL_FIELDS = frozenset({"insecure", "tls_require_client_cert", "prefault_table",
                          "lock_table_memory",
                          "demo_book", "durable_decisions", "archive",
                          "audit_before_answer"})
_OPTIONAL_FIELDS = frozenset({"redis_url", "redis_read_url", "database_url", "table_path",
                              "redis_username",
                              "redis_password", "metrics_listen", "archive_metrics_listen",
                              "tls_cert", "tls_key",
                              "tls_client_ca", "tokens_file",
                              "max_orders_per_account", "desk_listen", "desk_gateway",
                              "stream_listen", "desk_stream_gateway",
                              "desk_tls_ca", "desk_client_cert", "desk_client_key",
                              "day_session_end_utc", "node_id", "advertised_address",
                              "owned_shards"})
_PATH_FIELDS = frozenset({"table_path", "data_dir", "tls_cert", "tls_key", "tls_client_ca",
                          "tokens_file", "desk_tls_ca", "desk_client_cert", "desk_client_key"})
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_URL_USERINFO = re.compile(r"//[^/@]*@")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _split_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT``; a ``ValueError`` says what is wrong, without the value."""
    host, separator, port_text = listen.rpartition(":")
    if not separator or not host:
        raise ValueError("expected HOST:PORT, e.g. '127.0.0.1:50051'")
    if host.startswith("["):
        if not host.endswith("]") or len(host) == 2:
            raise ValueError("expected [IPV6]:PORT, e.g. '[::]:50051'")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 host needs brackets, e.g. '[::1]:50051'")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"port {port_text!r} is not a number in 0..65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, as :func:`parse_listen` gives it) is loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(listen: str) -> tuple[str, int]:
    """Split a ``HOST:PORT`` listen address.

    Parameters
    ----------
    listen : str
        ``"127.0.0.1:50051"``, ``"0.0.0.0:50051"``, ``"[::]:50051"`` or
        ``"localhost:0"`` (port 0: the server picks a free port).

    Returns
    -------
    tuple of (str, int)
        The host (IPv6 without brackets) and the port.

    Raises
    ------
    ConfigError
        If there is no host, no port, or the port is not in 0..65535.
    """
    try:
        return _split_listen(listen)
    except ValueError as error:
        raise ConfigError(f"listen={listen!r}: {error}") from None


def default_table_path(listen: str) -> Path:
    """Where the shared memory table lives when ``table_path`` is not set.

    Parameters
    ----------
    listen : str
        The server's ``HOST:PORT``; the port names the file, so that two
        servers on one machine do not share a table by accident.

    Returns
    -------
    pathlib.Path
        ``/dev/shm/pretrade-<port>.table`` when ``/dev/shm`` exists (memory
        backed on Linux), else the same name in the temporary directory.
        For port 0 the process id stands in for the port.
    """
    _, port = parse_listen(listen)
    name = f"pretrade-{port}.table" if port else f"pretrade-pid{os.getpid()}.table"
    shm = Path("/dev/shm")
    directory = shm if shm.is_dir() else Path(tempfile.gettempdir())
    return directory / name


def redacted_url(url: str) -> str:
    """A Redis URL for a message: any user and password in it masked."""
    return _URL_USERINFO.sub("//***@", url)


def _url_problem(url: str) -> str | None:
    """Why redis-py could not connect to ``url`` as written, or None."""
    from redis.connection import parse_url

    from pretrade.state.connection import is_cluster_url, parse_cluster_url

    try:
        if is_cluster_url(url):
            parse_cluster_url(url)
            return None
        parsed = parse_url(url)
    except ValueError as error:
        return str(error)
    if url.startswith("unix://") and not parsed.get("path"):
        return "a unix:// URL needs the socket's path, e.g. unix:///run/redis.sock"
    return None


def _redacted(name: str, value: object) -> str:
    """``repr(value)`` for an error message, with any password masked."""
    if name == "redis_password":
        return "'***'"
    if name in ("redis_url", "redis_read_url", "database_url") and isinstance(value, str):
        return repr(redacted_url(value))
    return repr(value)


def _check_value(name: str, value: object, source: str | None = None) -> object:
    """Check one field's value; return it normalised or raise :class:`ConfigError`."""

    def problem(reason: str) -> ConfigError:
        where = f" ({source})" if source else ""
        return ConfigError(f"{name}={_redacted(name, value)}{where}: {reason}")

    if value is None:
        if name in _OPTIONAL_FIELDS:
            return None
        raise problem("must be set")
    if name in _INT_FIELDS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise problem("expected an integer")
        if name in _CAPACITY_FIELDS and not 1 <= value <= MAX_CAPACITY:
            raise problem(f"must be a positive integer, at most {MAX_CAPACITY} (2**30 - 1, "
                          "the most records of one kind a table holds)")
        if not 1 <= value <= _MAX_INTEGER:
            raise problem("must be a positive integer below 2**31")
        if name == "lock_stripes" and (value & (value - 1) or value > MAX_LOCK_STRIPES):
            raise problem(f"must be a power of two, at most {MAX_LOCK_STRIPES}")
        if name == "shard_count" and value > MAX_SHARDS:
            raise problem(f"must be at most {MAX_SHARDS} (the shards a table keeps a lease for)")
        if name == "lease_ttl_ms" and value < MIN_LEASE_TTL_MS:
            raise problem(f"must be at least {MIN_LEASE_TTL_MS} (renewed every third of it)")
        return value
    if name in _COUNT_FIELDS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise problem("expected an integer")
        if not 0 <= value <= _MAX_INTEGER:
            raise problem("must be 0 (off) or a positive integer below 2**31")
        if name == "stream_nice" and value > MAX_NICE:
            raise problem(f"must be 0..{MAX_NICE} (how much lower the stream processes' CPU "
                          "priority is)")
        return value
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise problem("expected true or false")
        return value
    if not isinstance(value, str):
        raise problem("expected a string")
    if name in ("listen", "metrics_listen", "archive_metrics_listen", "desk_listen",
                "desk_gateway", "stream_listen", "desk_stream_gateway", "advertised_address"):
        try:
            _split_listen(value)
        except ValueError as error:
            raise problem(str(error)) from None
    elif name in ("redis_url", "redis_read_url"):
        if not value.startswith(_REDIS_URL_SCHEMES):
            raise problem(f"must start with one of {', '.join(_REDIS_URL_SCHEMES)}")
        reason = _url_problem(value)
        if reason is not None:
            raise problem(f"not a usable Redis URL: {reason}")
    elif name == "database_url":
        if not value.startswith(_DATABASE_URL_SCHEMES):
            raise problem(f"must start with one of {', '.join(_DATABASE_URL_SCHEMES)}")
    elif name == "audit_when_full":
        if value.lower() not in AUDIT_WHEN_FULL:
            raise problem(f"must be one of {', '.join(AUDIT_WHEN_FULL)}")
        return value.lower()
    elif name in _PATH_FIELDS and not value.strip():
        raise problem("must name a path")
    elif name == "auth":
        if value.lower() not in AUTH_MODES:
            raise problem(f"must be one of {', '.join(AUTH_MODES)}")
        return value.lower()
    elif name == "log_format":
        if value.lower() not in LOG_FORMATS:
            raise problem(f"must be one of {', '.join(LOG_FORMATS)}")
        return value.lower()
    elif name == "price_source":
        if value.lower() not in PRICE_SOURCES:
            raise problem(f"must be one of {', '.join(PRICE_SOURCES)}")
        return value.lower()
    elif name == "day_session_end_utc":
        try:
            end_of_day_ms = parse_time_of_day(value.strip())
        except ValueError as error:
            raise problem(str(error)) from None
        seconds = end_of_day_ms // 1000
        return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    elif name == "node_id":
        if not is_valid_id(value.encode("utf-8", "replace")):
            raise problem(f"must be 1 to {MAX_ID_LENGTH} characters of A-Z a-z 0-9 . _ / - "
                          "+ = # @ $ & ! ~ ^")
    elif name == "owned_shards" and not value.strip():
        raise problem("must name shards: 'all' or e.g. '0-7,9' (unset: ownership off)")
    elif name == "default_currency":
        if not is_currency_code(value.upper().encode("utf-8")):
            raise problem("must be an ISO 4217 code: three letters A-Z, e.g. USD")
        return value.upper()
    elif name == "log_level":
        if value.upper() not in _LOG_LEVELS:
            raise problem(f"must be one of {', '.join(_LOG_LEVELS)}")
        return value.upper()
    return value


@dataclass(frozen=True)
class Settings:
    """Everything a pretrade server process needs to start.

    A ``Settings`` is always valid: construction checks every field and
    raises :class:`ConfigError`. Build one with :func:`load_settings`.

    Attributes
    ----------
    redis_url : str or None
        ``redis://``, ``rediss://`` or ``unix://`` URL of the Redis holding
        accounts, limits, instruments and halts; or
        ``redis+cluster://HOST:PORT[,HOST:PORT...]``, seed nodes of a Redis
        Cluster (the mode is chosen by the URL). ``None`` starts an embedded
        redis-server (:mod:`pretrade.app.devredis`) with its data in
        ``data_dir``.
    redis_read_url : str or None
        A replica of ``redis_url`` (standalone only) on which the sync re-reads
        accounts of more than ``LARGE_ACCOUNT_LOTS`` lots, so one MULTI/EXEC of
        a huge account holds the replica, not the primary that takes every
        durable decision. A read counts only once the replica is proven to
        hold the change that caused it (a fence key written on the primary
        and read back with the account); else the primary is read, as with
        ``None``.
    price_source : str
        Where last prices are read: ``keys`` (``price:<SYM>`` strings and the
        ``prices`` stream of ticks) or ``timeseries`` (the RedisTimeSeries
        series ``price_history:<SYM>``: its latest sample, followed through the
        series' keyspace notifications; a standalone Redis with the module).
        See docs/redis-schema.md, "Last prices".
    listen : str
        gRPC listen address, ``HOST:PORT``.
    table_path : str or None
        File backing the shared memory table; ``None`` means
        :func:`default_table_path` of ``listen``.
    max_accounts, max_instruments, max_positions : int
        Capacities of the shared memory table (slots; positive).
    lock_stripes : int
        Number of locks guarding position rows; a power of two, at most 4096.
    max_orders : int
        Decided orders the shared table remembers (idempotency and working
        reservations); when it is full, orders get CAPACITY_EXHAUSTED.
    max_orders_per_account : int or None
        One account's share of those: past it, the account's oldest decided
        order that no longer works (rejected, filled, cancelled) and is
        durable leaves the table for the new one, and when none may, the
        account's orders get CAPACITY_EXHAUSTED; other accounts are not
        affected. ``None``: ``max_orders / 8``.
    order_expiry_ms : int
        How long a decided order that no longer works stays in the table
        once its decision is in Redis; then it leaves, and a re-sent id is
        answered from ``orders:{ACC}``. Without ``durable_decisions`` nothing
        is in Redis, so nothing leaves: each account keeps at most its share.
    prefault_table : bool
        Fault every page of the table in when it is created or mapped, so no
        order pays a page fault on its first use of a record (the p99 of the
        engine), and a table that does not fit in memory fails at start, not
        with SIGBUS later. Off: the file stays sparse until written.
    lock_table_memory : bool
        Also ``mlock`` the table, so the kernel never swaps or reclaims its
        pages; needs ``ulimit -l`` (RLIMIT_MEMLOCK) or CAP_IPC_LOCK for its size.
    max_sync_lag_ms : int
        Past this many milliseconds without hearing from Redis the table is
        stale: orders get STALE_DATA and health reports NOT_SERVING.
    workers : int
        Server processes sharing one table and one port (SO_REUSEPORT).
    stream_listen : str or None
        When set, ``pretrade serve`` runs ``stream_workers`` more server
        processes on this address, at a lower CPU priority (``stream_nice``),
        for portfolio streams: StreamPortfolio is served there only, and
        orders only on ``listen``, so stream fan-out never competes with a
        decision for its process. Both addresses answer the other calls.
    stream_workers : int
        The processes serving ``stream_listen`` (SO_REUSEPORT when several).
    stream_nice : int
        How much lower their CPU priority is (``nice``, 0..19; 0: the same).
    max_concurrent_rpcs : int
        Order calls (EvaluateOrder, EvaluateOrders) one server process runs at
        once; the next is refused at once with RESOURCE_EXHAUSTED rather than
        queued. Each class of call has its own budget (below), so no other
        class of call can use these up.
    max_portfolio_streams : int
        StreamPortfolio streams one process keeps open at once.
    max_order_sessions : int
        OrderSession streams one process keeps open at once (each holds its
        slot for as long as it is open; unary order calls have their own).
    order_session_window : int
        Orders an OrderSession decides ahead of the decisions its client has
        read: past it the server stops reading the stream, and gRPC's flow
        control holds the sender.
    max_control_calls : int
        Halt and GetStatus calls one process runs at once: order flow can
        never keep the kill switch out.
    max_open_calls : int
        Health checks, health Watch streams and reflection calls (the services
        open without a token) one process runs at once.
    keepalive_time_ms : int
        The server pings each connection after this long without activity and
        closes it when the ping is not answered within ``keepalive_timeout_ms``:
        a client that vanished (power loss, a cable pulled, a frozen process)
        does not hold a portfolio stream and its budget slot forever.
    keepalive_timeout_ms : int
        How long that ping may go unanswered.
    keepalive_min_ping_interval_ms : int
        The shortest interval at which a client may ping the server (its own
        keepalive). A client that pings more often while nothing else is sent
        is told GOAWAY ``too_many_pings`` after two such pings, and its calls
        end UNAVAILABLE.
    max_read_calls : int
        The risk desk's reads (ListAccounts, ListHalts, ListRejections) one
        process runs at once: a desk, or a trader calling them in a loop, can
        never keep Halt or GetStatus out.
    shutdown_grace_ms : int
        On SIGTERM, how long in-flight calls may take to finish; one still
        running then ends UNAVAILABLE. Writing the queued audit entries may
        take as long again.
    audit_queue_size : int
        Audit records held in memory while Redis is slow or unreachable; past
        it, what ``audit_when_full`` says.
    audit_when_full : str
        ``reject`` (default): while the queue is full, new orders are refused
        AUDIT_UNAVAILABLE before the engine sees them, so no decision goes
        unrecorded. ``drop``: they are decided and their records dropped and
        counted (GetStatus ``audit_dropped``). Halt changes are always applied
        (and dropped and counted when there is no room).
    audit_before_answer : bool
        An answer waits until the audit records of its decisions are in Redis
        (group-committed: one write per batch of calls), so a server killed
        with ``kill -9`` has recorded every decision it answered (STALE_DATA
        answers, given while Redis is away, do not wait). Off, the records
        are written just after the answer.
    audit_retain_ms : int
        How long the archiver leaves entries it archived in the stream
        ``audit`` (for ``pretrade audit``'s view of the last moments). It never
        trims an entry it has not archived, and nothing else trims the stream.
    database_url : str or None
        ``postgresql://`` URL of the audit archive. With ``archive`` and no
        URL, ``pretrade serve`` starts an embedded PostgreSQL with its data in
        ``data_dir`` (:mod:`pretrade.app.devpostgres`).
    archive : bool
        ``pretrade serve`` runs the archiver (``pretrade archive``) as a child
        process beside the gateway.
    archive_claim_idle_ms : int
        Entries delivered to an archiver that have not been acknowledged for
        this long are taken over by another (its process died).
    archive_metrics_listen : str or None
        ``HOST:PORT`` of the archiver's own Prometheus ``/metrics`` (archived
        entries and rows, lag, trims, errors); None: off.
    durable_decisions : bool
        Write every decided order to Redis (``orders:{ACC}``) before answering,
        so a restarted server replays order ids and keeps working orders. Off
        trades that guarantee for one Redis round trip less per call.
    demo_book : bool
        Load a small demo book (accounts, limits, instruments) at start.
    day_session_end_utc : str or None
        When the trading day ends, UTC (``HH:MM`` or ``HH:MM:SS``; stored as
        ``HH:MM:SS``): a DAY or IOC order stops counting against the limits at
        the first such time after it was decided. None: they count until
        their fill or cancel is reported, like GTC.
    default_currency : str
        The ISO 4217 currency of an instrument whose ``instrument:<SYM>`` hash
        has no ``currency`` field (StreamPortfolio's ``Holding.currency``);
        any case in, stored in capitals.
    data_dir : str
        Directory for the embedded redis-server's data and logs.
    log_level : str
        ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL``
        (any case in; stored in capitals).
    log_format : str
        ``text`` (one readable line per record) or ``json`` (one JSON object
        per line: time in UTC ISO 8601, level, logger, message, and the
        account and order id where there is one).
    log_rate_limit : int
        Lines per second one logger may write with one message template
        (a token bucket, bursts of as many); the rest are counted and one
        ``suppressed K similar lines`` line follows. A client cannot flood the log.
    metrics_listen : str or None
        ``HOST:PORT`` of the Prometheus ``/metrics`` endpoint; None: off.
        With ``workers`` N, server process i (from 0) serves on PORT + i (port
        0: each picks a free one and logs it).
    reconcile_interval_seconds : int
        Compare the shared table with a fresh load of Redis this often (0:
        never); a difference found twice in a row is logged as an alert and
        shown in GetStatus and the metrics.
    redis_username, redis_password : str or None
        Redis ACL credentials, when not in ``redis_url``. The password is
        left out of ``repr``.
    insecure : bool
        Serve plaintext gRPC: the explicit switch for local development.
        Without it the server needs ``tls_cert`` and ``tls_key``.
    tls_cert, tls_key : str or None
        PEM files: the server's certificate chain and its unencrypted key.
    tls_client_ca : str or None
        PEM CA certificates that issue client certificates (mutual TLS);
        goes with ``tls_require_client_cert``.
    tls_require_client_cert : bool
        Refuse clients without a certificate from ``tls_client_ca``.
    auth : str
        ``tokens`` (every PreTradeRisk call needs a bearer token from
        ``tokens_file``) or ``none`` (local development, loopback only).
    tokens_file : str or None
        TOML file of token hashes and their principals (format in
        :mod:`pretrade.api.access`).
    desk_listen : str or None
        ``HOST:PORT`` of the risk desk's web page (``pretrade desk``, or
        ``pretrade serve --desk``); None: ``pretrade serve`` starts no desk and
        ``pretrade desk`` listens on 127.0.0.1:8080.
    desk_gateway : str or None
        ``HOST:PORT`` of the gateway the desk calls; None: this server's
        ``listen`` (a wildcard host as the loopback address).
    desk_stream_gateway : str or None
        ``HOST:PORT`` where the desk opens portfolio streams; None: this
        server's ``stream_listen`` when it has one (and no ``desk_gateway``
        is set), else the desk's gateway.
    desk_tls_ca : str or None
        PEM CA that issued the gateway's certificate: the desk calls it over
        TLS (plaintext when unset).
    desk_client_cert, desk_client_key : str or None
        PEM certificate and key the desk presents to a gateway that requires
        client certificates (mutual TLS).
    owned_shards : str or None
        Account ownership: the shards (of ``shard_count``) whose leases this
        node holds in Redis and whose accounts it alone decides: ``all`` or
        shards and ranges, ``0-7,9``. An order for an account of another
        shard is refused FAILED_PRECONDITION ``NOT_OWNER``, naming its owner.
        None (the default): ownership off, this node decides every account.
    shard_count : int
        Shards the 16,384 Redis Cluster slots are split into, in contiguous
        ranges (at most 1,024); every node of a deployment must agree.
    lease_ttl_ms : int
        TTL of a shard's lease in Redis (milliseconds, at least 300); renewed
        every third of it. A node stops approving a shard's orders a tenth of
        it before its lease can expire, and another node takes the shard
        once it has expired.
    node_id : str or None
        This node's name: in its leases and refusals, and on a Redis Cluster
        its audit stream ``audit:{NODE}`` (one stream per node, in the slot of
        its name; two nodes of one name share a stream, their entries
        interleave and none is lost). None: :meth:`node_name`,
        ``<hostname>-<port>``.
    advertised_address : str or None
        ``HOST:PORT`` other nodes' refusals and clients send this node's
        accounts to; None: ``listen`` (with the port bound).

    Whether the transport and auth settings fit together is checked, with
    their files, when a server starts (:meth:`pretrade.api.access.ServerAccess.from_settings`).
    """

    redis_url: str | None = None
    redis_read_url: str | None = None
    price_source: str = "keys"
    listen: str = "127.0.0.1:50051"
    table_path: str | None = None
    max_accounts: int = _TABLE.max_accounts
    max_instruments: int = _TABLE.max_instruments
    max_positions: int = _TABLE.max_positions
    lock_stripes: int = _TABLE.lock_stripes
    max_orders: int = _TABLE.max_orders
    max_orders_per_account: int | None = None
    order_expiry_ms: int = DEFAULT_ORDER_EXPIRY_MS
    prefault_table: bool = True
    lock_table_memory: bool = False
    max_sync_lag_ms: int = 2_000
    workers: int = 1
    stream_listen: str | None = None
    stream_workers: int = 1
    stream_nice: int = 10
    max_concurrent_rpcs: int = 10_000
    max_portfolio_streams: int = 10_000
    max_order_sessions: int = 64
    order_session_window: int = 1_024
    max_control_calls: int = 100
    max_open_calls: int = 100
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    keepalive_min_ping_interval_ms: int = 10_000
    max_read_calls: int = 100
    shutdown_grace_ms: int = 5_000
    audit_queue_size: int = 100_000
    audit_when_full: str = "reject"
    audit_before_answer: bool = True
    audit_retain_ms: int = 60_000
    database_url: str | None = field(default=None, repr=False)
    archive: bool = False
    archive_claim_idle_ms: int = 30_000
    durable_decisions: bool = True
    demo_book: bool = False
    default_currency: str = "USD"
    day_session_end_utc: str | None = None
    data_dir: str = ".run"
    log_level: str = "INFO"
    log_format: str = "text"
    log_rate_limit: int = 10
    metrics_listen: str | None = None
    archive_metrics_listen: str | None = None
    reconcile_interval_seconds: int = 300
    redis_username: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    insecure: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_require_client_cert: bool = False
    auth: str = "tokens"
    tokens_file: str | None = None
    desk_listen: str | None = None
    desk_gateway: str | None = None
    desk_stream_gateway: str | None = None
    desk_tls_ca: str | None = None
    desk_client_cert: str | None = None
    desk_client_key: str | None = None
    owned_shards: str | None = None
    shard_count: int = DEFAULT_SHARD_COUNT
    lease_ttl_ms: int = 3_000
    node_id: str | None = None
    advertised_address: str | None = None

    def __post_init__(self) -> None:
        for settings_field in dataclasses.fields(self):
            value = getattr(self, settings_field.name)
            checked = _check_value(settings_field.name, value)
            if checked != value:
                # Frozen: the documented way to normalise a field after __init__.
                object.__setattr__(self, settings_field.name, checked)
        if self.owned_shards is not None:
            try:
                parse_shards(self.owned_shards, self.shard_count)
            except ValueError as error:
                raise ConfigError(f"owned_shards={self.owned_shards!r}: {error}") from None
        if self.stream_listen is not None:
            streams = parse_listen(self.stream_listen)
            if streams[1] != 0 and streams == parse_listen(self.listen):
                raise ConfigError(f"stream_listen={self.stream_listen}: must differ from listen "
                                  "(orders and portfolio streams are served apart)")
        if self.redis_read_url is not None:
            if self.redis_url is None or self.redis_url.startswith(CLUSTER_URL_SCHEME):
                raise ConfigError("redis_read_url: a replica of a standalone redis_url (the sync "
                                  "reads large accounts there); it needs redis_url set to that "
                                  "Redis, and a Redis Cluster's replicas are not used for it")
            if self.redis_read_url.startswith(CLUSTER_URL_SCHEME):
                raise ConfigError("redis_read_url: one replica (redis://, rediss:// or unix://), "
                                  "not a Redis Cluster")
        if self.price_source == "timeseries" and self.redis_url \
                and self.redis_url.startswith(CLUSTER_URL_SCHEME):
            raise ConfigError("price_source=timeseries: a standalone Redis only; on a Redis "
                              "Cluster the engine's lost-slot checks follow the price:<SYM> "
                              "keys, not price_history:<SYM>")
        if self.archive and self.redis_url and self.redis_url.startswith(CLUSTER_URL_SCHEME):
            raise ConfigError("archive: the audit archiver reads the one `audit` stream of a "
                              "standalone Redis, not the per-node audit:{NODE} streams of a "
                              "Redis Cluster; run without --archive (pretrade audit reads them)")

    @property
    def account_share(self) -> int:
        """``max_orders_per_account``, or its default: an eighth of ``max_orders``."""
        if self.max_orders_per_account is not None:
            return self.max_orders_per_account
        return max(1, self.max_orders // ACCOUNT_SHARE_DIVISOR)

    @property
    def shards_owned(self) -> tuple[int, ...] | None:
        """The shards this node tries to hold; None: ownership off (it decides every account)."""
        if self.owned_shards is None:
            return None
        return parse_shards(self.owned_shards, self.shard_count)

    @property
    def embedded_redis(self) -> bool:
        """Whether the server must start its own redis-server (no ``redis_url``)."""
        return self.redis_url is None

    @property
    def embedded_postgres(self) -> bool:
        """Whether the archiver needs an embedded PostgreSQL (no ``database_url``)."""
        return self.database_url is None

    @property
    def listen_host(self) -> str:
        """The host part of ``listen`` (IPv6 without brackets)."""
        return parse_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        """The port part of ``listen`` (0: the server picks one)."""
        return parse_listen(self.listen)[1]

    def node_name(self, port: int | None = None) -> str:
        """``node_id``, or ``<hostname>-<port>``: ``port`` (the one bound, when
        ``listen`` has 0), else ``listen``'s."""
        if self.node_id is not None:
            return self.node_id
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:24] or "node"
        return f"{host}-{self.listen_port if port is None else port}"

    def resolved_table_path(self) -> Path:
        """``table_path``, or :func:`default_table_path` when it is unset."""
        if self.table_path is not None:
            return Path(self.table_path)
        return default_table_path(self.listen)


_FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}


def environment_variable(field_name: str) -> str:
    """The environment variable for a :class:`Settings` field.

    Parameters
    ----------
    field_name : str
        A field name, e.g. ``"max_accounts"``.

    Returns
    -------
    str
        ``"PRETRADE_"`` and the name in capitals: ``"PRETRADE_MAX_ACCOUNTS"``.
    """
    return _ENV_PREFIX + field_name.upper()


def child_environment(settings: Settings, names: Iterable[str],
                      values: Mapping[str, object]) -> dict[str, str]:
    """The environment of a child process (the archiver, the desk) of ``pretrade serve``.

    This process's environment with the settings ``names`` copied from
    ``settings`` and ``values`` on top, each as its variable; without
    ``$PRETRADE_CONFIG``: everything the child needs is in its environment.
    """
    env = dict(os.environ)
    for name in names:
        value = getattr(settings, name)
        if value is not None:
            env[environment_variable(name)] = str(value)
    for name, value in values.items():
        env[environment_variable(name)] = str(value)
    env.pop(CONFIG_FILE_ENV, None)
    return env


def _coerce(name: str, value: object, source: str) -> object:
    """Convert one raw value (text from the environment) and check it."""
    converted = value
    if isinstance(value, str) and name in _INT_FIELDS | _COUNT_FIELDS:
        if _INTEGER_TEXT.fullmatch(value.strip()) is None:
            raise ConfigError(f"{name}={value!r} ({source}): expected an integer")
        converted = int(value)
    elif isinstance(value, str) and name in _BOOL_FIELDS:
        word = value.strip().lower()
        if word not in _TRUE_WORDS | _FALSE_WORDS:
            raise ConfigError(f"{name}={value!r} ({source}): expected true or false")
        converted = word in _TRUE_WORDS
    elif isinstance(value, os.PathLike) and name in _PATH_FIELDS:
        converted = os.fspath(value)
    return _check_value(name, converted, source)


def _read_config_file(path: Path) -> dict[str, object]:
    source = f"config file {path}"
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from error
    section: dict[str, object]
    if "pretrade" in document:
        table = document.pop("pretrade")
        if not isinstance(table, dict):
            raise ConfigError(f"pretrade={table!r} ({source}): expected a [pretrade] table")
        if document:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(sorted(document))} beside the "
                f"[pretrade] table; put every setting inside it"
            )
        section = table
    else:
        section = document
    values: dict[str, object] = {}
    for key, value in section.items():
        if key not in _FIELDS:
            raise ConfigError(
                f"{key}={value!r} ({source}): unknown setting; known settings are "
                f"{', '.join(_FIELDS)}"
            )
        # TOML is typed: no text conversion, "100" is not an integer here.
        values[key] = _check_value(key, value, source)
    return values


def _read_environment(env: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for name in _FIELDS:
        variable = environment_variable(name)
        raw = env.get(variable)
        if not raw and name == "redis_url":
            variable, raw = _REDIS_URL_FALLBACK_ENV, env.get(_REDIS_URL_FALLBACK_ENV)
        if not raw and name == "database_url":
            variable, raw = _DATABASE_URL_FALLBACK_ENV, env.get(_DATABASE_URL_FALLBACK_ENV)
        if raw:
            values[name] = _coerce(name, raw, f"environment variable {variable}")
    return values


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file, env and overrides.

    Parameters
    ----------
    config_file : str or pathlib.Path, optional
        A TOML file; when omitted, ``env["PRETRADE_CONFIG"]`` if set, else
        no file.
    env : Mapping[str, str], default os.environ
        Environment to read ``PRETRADE_*`` (and ``REDIS_URL``) from.
    overrides : Mapping[str, object], optional
        Highest precedence, typically command-line flags; keys are field
        names, and ``None`` values are ignored (the flag was not given).

    Returns
    -------
    Settings
        The merged, validated settings.

    Raises
    ------
    ConfigError
        If the file is missing or not TOML, a key is unknown, or a value
        has the wrong type or is out of range. The message names the key,
        the value and its source.
    """
    values: dict[str, object] = {}
    if config_file is None:
        config_file = env.get(CONFIG_FILE_ENV) or None
    if config_file is not None:
        values.update(_read_config_file(Path(config_file)))
    values.update(_read_environment(env))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _FIELDS:
            raise ConfigError(f"{key}={value!r} (override): unknown setting")
        values[key] = _coerce(key, value, "override")
    return Settings(**values)  # type: ignore[arg-type]
