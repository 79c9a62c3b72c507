"""docs/redis-schema.md against the code, so the schema document cannot silently drift.

Every key prefix, limit field, halt field, instrument field and marker key the
code uses must be named in the document; every reject code and Redis key the
document names must exist in the code; the worked example, run through
redis-cli against a real redis-server, must give the figures the text quotes;
and the document's fail-closed tables (which code an order gets when a key is
missing or unparseable) must hold against a running gateway.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from book import codes, order, seed_account, seed_instrument, seed_lots, wait_until
from pretrade import redis_schema
from pretrade.demo import DEMO_MARKER
from pretrade.devredis import RedisServer, find_redis_cli
from pretrade.fixedpoint import format_price
from pretrade.limits import LimitKind
from pretrade.redis_schema import (
    HALT_MODE_NAMES,
    REQUIRED_NOTIFY_FLAGS,
    SCAN_PATTERNS,
    HaltRecord,
    InstrumentRef,
    aggregate_lots,
    average_cost,
    classify,
    lot_keys,
)
from pretrade.v1 import risk_pb2 as pb

DOC = Path(__file__).resolve().parent.parent / "docs" / "redis-schema.md"

#: The key constants of redis_schema, and the Redis type the sync reads each with
#: (HGETALL: hash, GET: string).
KEY_CONSTANTS = {
    "TICKERS_BY_LOT": "hash",
    "QUANTITIES_BY_LOT": "hash",
    "PRICES_BY_LOT": "hash",
    "PNL": "hash",
    "LIMITS": "hash",
    "INSTRUMENT": "hash",
    "PRICE": "string",
    "HALT_ALL": "hash",
    "HALT_ACCOUNT": "hash",
    "HALT_SYMBOL": "hash",
}
REDIS_COMMANDS_WITH_A_KEY = frozenset(
    {"HSET", "HDEL", "HGET", "HGETALL", "SET", "GET", "DEL", "EXPIRE", "PEXPIRE", "TTL", "PTTL"})

_FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_TABLE_ROW_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def code_blocks(text: str) -> list[str]:
    return _FENCE.findall(text)


def code_words(text: str) -> set[str]:
    """Every inline code span, and every whitespace-separated word of the code blocks."""
    prose = _FENCE.sub("", text)
    words = set(_INLINE_CODE.findall(prose))
    for block in code_blocks(text):
        words.update(block.split())
    return words


def glance_table(text: str) -> dict[str, str]:
    """The "Every key at a glance" table: ``{key pattern: Redis type}``."""
    section = text.split("## Every key at a glance", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def table_keys(text: str, heading: str) -> set[str]:
    """The first-column code spans of the tables under one ``##`` heading."""
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return set(_TABLE_ROW_KEY.findall(section))


def redis_cli_commands(text: str) -> list[list[str]]:
    """The Redis commands of the examples: ``redis-cli CMD ...`` lines and heredoc lines."""
    commands = []
    for block in code_blocks(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            if words[0] == "redis-cli":
                words = words[1:]
            if words and words[0].upper() in REDIS_COMMANDS_WITH_A_KEY:
                commands.append(words)
    return commands


# -- the code's names are all in the document --


@pytest.mark.parametrize("name", list(KEY_CONSTANTS))
def test_every_key_prefix_is_documented_with_its_type(doc, name):
    prefix = getattr(redis_schema, name).decode()
    assert any(word.startswith(prefix) for word in code_words(doc)), (
        f"{name} ({prefix!r}) is not named in {DOC.name}")
    rows = {key: kind for key, kind in glance_table(doc).items() if key.startswith(prefix)}
    assert rows, f"{prefix!r} has no row in the 'Every key at a glance' table"
    assert set(rows.values()) == {KEY_CONSTANTS[name]}, rows


def test_the_key_constants_checked_here_are_all_of_them():
    constants = {name for name, value in vars(redis_schema).items()
                 if name.isupper() and isinstance(value, bytes)}
    assert constants == set(KEY_CONSTANTS), (
        "a key constant was added to or removed from redis_schema.py: document the key in "
        f"{DOC.name} and list it in KEY_CONSTANTS here")


def test_the_demo_marker_key_is_documented(doc):
    marker = DEMO_MARKER.decode()
    assert marker in code_words(doc)
    assert glance_table(doc).get(marker) == "string"


@pytest.mark.parametrize("kind", list(LimitKind), ids=lambda kind: kind.field)
def test_every_limit_field_is_documented(doc, kind):
    assert kind.field in code_words(doc)
    assert kind.field in table_keys(doc, "Limits: `limits:{ACC}`")


def test_the_per_symbol_override_syntax_is_documented(doc):
    assert "max_long_position:AAPL" in code_words(doc)
    account, per_symbol = redis_schema.parse_limits({b"max_long_position:AAPL": b"500"})
    assert (account, per_symbol) == ({}, {b"AAPL": {LimitKind.MAX_LONG_POSITION: 500}})


def test_every_halt_field_and_mode_is_documented(doc):
    record = HaltRecord(pb.HALT_SCOPE_GLOBAL, b"", pb.HALT_MODE_HALTED, "why", "who", 1, 2)
    fields = {name.decode() for name in record.to_fields()}
    documented = table_keys(doc, "Halts: `halt:all`, `halt:account:<ACC>`, "
                                 "`halt:symbol:<SYM>`")
    assert fields <= documented, fields - documented
    for mode in HALT_MODE_NAMES.values():
        assert mode.decode() in code_words(doc)


def test_every_instrument_field_is_documented(doc):
    names = {field.name for field in dataclasses.fields(InstrumentRef)}
    documented = table_keys(doc, "Instruments: `instrument:<SYM>`")
    assert names <= documented, names - documented


def test_notification_flags_and_scan_patterns_are_documented(doc):
    words = code_words(doc)
    assert REQUIRED_NOTIFY_FLAGS in words
    documented_flags = table_keys(doc, "Keyspace notifications")
    assert set(REQUIRED_NOTIFY_FLAGS) <= documented_flags
    for pattern in SCAN_PATTERNS:
        assert pattern.decode() in words


# -- what the document names exists in the code --


def test_every_reject_code_in_the_document_exists(doc):
    named = set(re.findall(r"REJECT_CODE_[A-Z_]+[A-Z]", doc))
    assert named, "the document names no reject code"
    unknown = named - set(pb.RejectCode.keys())
    assert not unknown, f"{DOC.name} names reject codes the contract does not have: {unknown}"


def test_every_key_in_the_examples_is_one_pretrade_reads(doc):
    commands = redis_cli_commands(doc)
    assert len(commands) >= 10, commands
    for command in commands:
        key = command[1]
        assert classify(key.encode()) is not None or key == DEMO_MARKER.decode(), (
            f"example {' '.join(command)!r} writes {key!r}, which pretrade ignores")


# -- the worked example, for real --


@pytest.fixture
def redis_cli(redis_server: RedisServer, redis_client: redis.Redis) -> list[str]:
    """redis-cli aimed at the session's redis-server, over an empty database."""
    return [find_redis_cli(), "-p", str(redis_server.port)]


def test_worked_example_through_redis_cli_gives_the_quoted_position(doc, redis_cli,
                                                                    redis_client):
    marker = "<!-- doc-test: worked-example -->"
    block = code_blocks(doc.split(marker, 1)[1])[0]
    script = re.fullmatch(r"redis-cli <<'EOF'\n(.*)EOF\n", block, re.DOTALL)
    assert script is not None, block
    run = subprocess.run(redis_cli, input=script.group(1), capture_output=True, text=True,
                         timeout=10, check=True)
    assert "QUEUED" in run.stdout, run.stdout  # a transaction, as the text recommends

    tickers, quantities, prices = (redis_client.hgetall(key) for key in lot_keys(b"ACC-1"))
    positions = aggregate_lots(tickers, quantities, prices)
    assert positions == {b"AAPL": (20, 13_715_780)}
    quantity, cost_basis = positions[b"AAPL"]
    average = average_cost(quantity, cost_basis)
    assert average == 685_789
    for figure in (f"{cost_basis}", f"{quantity} @ ${format_price(average)}"):
        assert figure in doc, figure


# -- the fail-closed tables hold against a running gateway --

LIMIT_ORDER: dict[str, Any] = {}
MARKET_ORDER: dict[str, Any] = {"order_type": pb.ORDER_TYPE_MARKET, "price": 0}
LOT_KEYS = [key.decode() for key in lot_keys(b"ACC-1")]
BROKEN_LIMITS = [pb.REJECT_CODE_INVALID_STATE, pb.REJECT_CODE_LIMITS_NOT_CONFIGURED]

# (what is written to Redis, the order, the codes the document says it gets)
FAIL_CLOSED = {
    "lot in one hash only": (
        [["HSET", "tickers_by_lot:{ACC-1}", "L2", "AAPL"]], LIMIT_ORDER,
        [pb.REJECT_CODE_INVALID_STATE]),
    "lot price with a decimal point": (
        [["HSET", "prices_by_lot:{ACC-1}", "L1", "68.3378"]], LIMIT_ORDER,
        [pb.REJECT_CODE_INVALID_STATE]),
    "negative lot price": (
        [["HSET", "prices_by_lot:{ACC-1}", "L1", "-1"]], LIMIT_ORDER,
        [pb.REJECT_CODE_INVALID_STATE]),
    "lot ticker not an id": (
        [["HSET", "tickers_by_lot:{ACC-1}", "L1", "A B"]], LIMIT_ORDER,
        [pb.REJECT_CODE_INVALID_STATE]),
    "realized P&L with a decimal point": (
        [["HSET", "pnl:{ACC-1}", "realized", "-125.00"]], LIMIT_ORDER,
        [pb.REJECT_CODE_INVALID_STATE]),
    "no lots, limits present": ([["DEL", *LOT_KEYS]], LIMIT_ORDER, []),
    "no lots, no limits": (
        [["DEL", *LOT_KEYS, "limits:{ACC-1}"]], LIMIT_ORDER, [pb.REJECT_CODE_UNKNOWN_ACCOUNT]),
    "limits missing, lots present": (
        [["DEL", "limits:{ACC-1}"]], LIMIT_ORDER, [pb.REJECT_CODE_LIMITS_NOT_CONFIGURED]),
    "one limit missing": (
        [["HDEL", "limits:{ACC-1}", "max_short_position"]], LIMIT_ORDER,
        [pb.REJECT_CODE_LIMITS_NOT_CONFIGURED]),
    "limit with a decimal point": (
        [["HSET", "limits:{ACC-1}", "max_order_quantity", "1.5"]], LIMIT_ORDER, BROKEN_LIMITS),
    "negative limit": (
        [["HSET", "limits:{ACC-1}", "max_order_quantity", "-1"]], LIMIT_ORDER, BROKEN_LIMITS),
    "unknown limit field": (
        [["HSET", "limits:{ACC-1}", "max_foo", "1"]], LIMIT_ORDER, BROKEN_LIMITS),
    "override for an invalid symbol": (
        [["HSET", "limits:{ACC-1}", "max_order_quantity:A B", "1"]], LIMIT_ORDER,
        BROKEN_LIMITS),
    "limits key without braces is ignored": (
        [["HSET", "limits:ACC-1", "max_order_quantity", "1"]], LIMIT_ORDER, []),
    "instrument missing": (
        [["DEL", "instrument:AAPL"]], LIMIT_ORDER, [pb.REJECT_CODE_UNKNOWN_SYMBOL]),
    "tick_size zero": (
        [["HSET", "instrument:AAPL", "tick_size", "0"]], LIMIT_ORDER,
        [pb.REJECT_CODE_INVALID_STATE]),
    "last price with a decimal point, limit order": (
        [["SET", "price:AAPL", "68.91"]], LIMIT_ORDER, []),
    "last price with a decimal point, market order": (
        [["SET", "price:AAPL", "68.91"]], MARKET_ORDER, [pb.REJECT_CODE_PRICE_UNAVAILABLE]),
    "last price missing, market order": (
        [["DEL", "price:AAPL"]], MARKET_ORDER, [pb.REJECT_CODE_PRICE_UNAVAILABLE]),
    "halt mode in lower case": (
        [["HSET", "halt:account:ACC-1", "mode", "halted"]], LIMIT_ORDER,
        [pb.REJECT_CODE_ACCOUNT_HALT]),
    "halt mode ACTIVE is a full halt": (
        [["HSET", "halt:account:ACC-1", "mode", "ACTIVE"]], LIMIT_ORDER,
        [pb.REJECT_CODE_ACCOUNT_HALT]),
    "halt without a mode": (
        [["HSET", "halt:account:ACC-1", "reason", "x"]], LIMIT_ORDER,
        [pb.REJECT_CODE_ACCOUNT_HALT]),
    "halt time not an integer": (
        [["HSET", "halt:account:ACC-1", "mode", "HALTED", "at", "soon"]], LIMIT_ORDER,
        [pb.REJECT_CODE_ACCOUNT_HALT]),
    "account halt key with braces is ignored": (
        [["HSET", "halt:account:{ACC-1}", "mode", "HALTED"]], LIMIT_ORDER, []),
    "reduce-only halt, buy on a long": (
        [["HSET", "halt:account:ACC-1", "mode", "REDUCE_ONLY"]], LIMIT_ORDER,
        [pb.REJECT_CODE_REDUCE_ONLY]),
    "global halt": ([["HSET", "halt:all", "mode", "HALTED"]], LIMIT_ORDER,
                    [pb.REJECT_CODE_GLOBAL_HALT]),
}


@pytest.fixture
def fail_closed_book(redis_client: redis.Redis) -> redis.Redis:
    """ACC-1 long 5 AAPL with every limit, and BAR, an instrument to halt as a barrier."""
    seed_account(redis_client, "ACC-1")
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 5, 683_378)])
    seed_instrument(redis_client, "BAR", price=100)
    return redis_client


def applied_everything_before(redis_client: redis.Redis, stub) -> None:
    """Wait until the gateway has applied every write made before this call.

    The sync re-reads halts last in each batch, so once a halt written now is
    in force, every earlier write has been applied too.
    """
    redis_client.hset("halt:symbol:BAR", "mode", "HALTED")
    wait_until(lambda: codes(stub.EvaluateOrder(order(symbol="BAR", price=100))),
               lambda found: pb.REJECT_CODE_SYMBOL_HALT in found)


@pytest.mark.parametrize("case", list(FAIL_CLOSED))
def test_the_documented_fail_closed_outcome_holds(fail_closed_book, stub, case):
    writes, order_fields, expected = FAIL_CLOSED[case]
    assert stub.EvaluateOrder(order(**order_fields)).approved
    for command in writes:
        fail_closed_book.execute_command(*command)
    applied_everything_before(fail_closed_book, stub)
    decision = stub.EvaluateOrder(order(**order_fields))
    assert codes(decision) == expected, [pb.RejectCode.Name(code) for code in codes(decision)]
    assert decision.approved == (not expected)
