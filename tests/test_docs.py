"""docs/redis-schema.md against the code, so the schema document cannot silently drift.

Every key constant, limit field, halt field, instrument field, notification
flag and marker key the code uses must be named in the document, with the
Redis type the sync reads it as; the limit table must say which limits are
required, which may be set per symbol, their units and window defaults;
every reject code and Redis key the document names must exist in the code;
the worked examples, run through redis-cli against a real redis-server (and a
running gateway, for the fill and cancel contract), must give the figures the
text quotes; and every row of the document's fail-closed tables (which code
an order gets when a key is missing, unparseable or of the wrong type) must
hold against a running gateway.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis

from book import codes, order, seed_account, seed_instrument, seed_lots, wait_until
from conftest import GatewayThread
from pretrade._core.constants import (
    DEFAULT_NOTIONAL_WINDOW_MS,
    DEFAULT_ORDER_WINDOW_MS,
    DEFAULT_REJECT_WINDOW_MS,
    RATE_RING_CAPACITY,
    REJECT_RING_CAPACITY,
    TAG_LIMIT_SLOTS,
)
from pretrade.app.demo import DEMO_MARKER
from pretrade.app.demo import LIMITS as DEMO_LIMITS
from pretrade.app.devredis import find_redis_cli
from pretrade.audit.entries import AUDIT_STREAM, node_stream
from pretrade.engine.fixedpoint import average_cost, format_price
from pretrade.engine.limits import (
    NAMED_LIMITS,
    PER_SYMBOL_LIMITS,
    REQUIRED_COUNT,
    REQUIRED_LIMITS,
    LimitKind,
)
from pretrade.engine.reference import _NOT_CLIENT_CAUSED
from pretrade.state import schema as redis_schema
from pretrade.state.halts import DEFAULT_AUTO_HALT_SECONDS, RISK_ENGINE
from pretrade.state.prices import PRICE_STREAM, PriceFeed
from pretrade.state.schema import (
    HALT_MODE_NAMES,
    REQUIRED_NOTIFY_FLAGS,
    SCAN_PATTERNS,
    HaltRecord,
    InstrumentRef,
    ParsedLimits,
    account_snapshot_keys,
    aggregate_lots,
    classify,
    lot_keys,
)
from pretrade.v1 import risk_pb2 as pb

DOC = Path(__file__).resolve().parent.parent / "docs" / "redis-schema.md"

#: The key constants of redis_schema, and the Redis type the sync reads each with
#: (HGETALL: hash, GET: string, SMEMBERS: set).
KEY_CONSTANTS = {
    "TICKERS_BY_LOT": "hash",
    "QUANTITIES_BY_LOT": "hash",
    "PRICES_BY_LOT": "hash",
    "PNL": "hash",
    "ORDERS_BY_LOT": "hash",
    "CANCELS": "hash",
    "BALANCES": "hash",
    "LOCATES": "hash",
    "RESTRICTED_SHORT": "set",
    "LIMITS": "hash",
    "GROUPS": "set",
    "GROUP": "hash",
    "INSTRUMENT": "hash",
    "PRICE": "string",
    "PRICE_HISTORY": "TSDB-TYPE",
    "HALT_ALL": "hash",
    "HALT_ACCOUNT": "hash",
    "HALT_SYMBOL": "hash",
    "ORDERS": "hash",
    "CANARY": "string",
    "FENCE": "string",
    "VERSION": "string",
    "LOT_LOG": "stream",
    "MARK": "string",
    "LEASE": "string",
    "LEASE_EPOCH": "string",
}
#: The Redis type each writing command of the fail-closed cases leaves behind.
TYPE_WRITTEN_BY = {"HSET": "hash", "SET": "string", "SADD": "set"}
REDIS_COMMANDS_WITH_A_KEY = frozenset({
    "HSET", "HDEL", "HGET", "HGETALL", "HINCRBY", "SET", "GET", "DEL", "EXPIRE", "PEXPIRE",
    "TTL", "PTTL", "SADD", "SREM", "SMEMBERS", "XADD"})
#: Window and halt-length defaults the limit table must quote.
DEFAULTS = {
    LimitKind.ORDER_WINDOW_MS: DEFAULT_ORDER_WINDOW_MS,
    LimitKind.NOTIONAL_WINDOW_MS: DEFAULT_NOTIONAL_WINDOW_MS,
    LimitKind.REJECT_WINDOW_MS: DEFAULT_REJECT_WINDOW_MS,
    LimitKind.AUTO_HALT_SECONDS: DEFAULT_AUTO_HALT_SECONDS,
}
#: Limits whose value is capped by a ring of the core, and the cap.
RING_CAPS = {
    LimitKind.MAX_ORDERS_PER_WINDOW: RATE_RING_CAPACITY,
    LimitKind.MAX_REJECTS_PER_WINDOW: REJECT_RING_CAPACITY,
}
NUMBER_WORDS = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
LIMITS_HEADING = "Limits: `limits:{ACC}`"
FILL_CONTRACT_HEADING = "The fill and cancel contract"
LIMIT_TABLE_HEADER = ["field", "unit", "required", "per symbol"]

_FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_TABLE_ROW_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)
_CELL_BORDER = re.compile(r"(?<!\\)\|")
_TABLE_RULE = re.compile(r"\|(\s*:?-+:?\s*\|)+")
_REJECT_CODE = re.compile(r"REJECT_CODE_[A-Z_]+[A-Z]")
_HEREDOC = re.compile(r"redis-cli <<'EOF'\n(.*)EOF\n", re.DOTALL)


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


# -- reading the document --


def section(text: str, heading: str) -> str:
    """The text under one ``## heading``, up to the next ``##`` heading."""
    marker = f"\n## {heading}\n"
    assert marker in text, f"{DOC.name} has no section '## {heading}'"
    return text.split(marker, 1)[1].split("\n## ", 1)[0]


def after_marker(text: str, name: str) -> str:
    marker = f"<!-- doc-test: {name} -->"
    assert marker in text, f"{DOC.name} lost its marker {marker}"
    return text.split(marker, 1)[1]


def flat(text: str) -> str:
    """Text with every run of whitespace as one space, so line wrapping does not matter."""
    return " ".join(text.split())


def code_blocks(text: str) -> list[str]:
    return _FENCE.findall(text)


def code_words(text: str) -> set[str]:
    """Every inline code span, and every whitespace-separated word of the code blocks."""
    prose = _FENCE.sub("", text)
    words = set(_INLINE_CODE.findall(prose))
    for block in code_blocks(text):
        words.update(block.split())
    return words


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in _CELL_BORDER.split(inner)]


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every table outside code blocks: ``(header cells, body rows of cells)``."""
    lines = _FENCE.sub("", text).splitlines()
    tables = []
    n = 0
    while n < len(lines):
        if (lines[n].startswith("|") and n + 1 < len(lines)
                and _TABLE_RULE.fullmatch(lines[n + 1].strip())):
            header, body = _cells(lines[n]), []
            n += 2
            while n < len(lines) and lines[n].startswith("|"):
                body.append(_cells(lines[n]))
                n += 1
            tables.append((header, body))
        else:
            n += 1
    return tables


def glance_table(text: str) -> dict[str, str]:
    """The "Every key at a glance" table: ``{key pattern: Redis type}``."""
    (header, rows), = markdown_tables(section(text, "Every key at a glance"))
    assert header[:2] == ["key", "type"], header
    return {cells[0].strip("`"): cells[1] for cells in rows}


def table_keys(text: str, heading: str) -> set[str]:
    """The first-column code spans of the tables under one ``##`` heading."""
    return set(_TABLE_ROW_KEY.findall(section(text, heading)))


def limit_table(text: str) -> dict[str, dict[str, str]]:
    """The limit catalogue table: ``{field: {column: cell}}``."""
    found = [(header, rows) for header, rows in markdown_tables(section(text, LIMITS_HEADING))
             if header[:len(LIMIT_TABLE_HEADER)] == LIMIT_TABLE_HEADER]
    assert len(found) == 1, f"one table with columns {LIMIT_TABLE_HEADER} expected"
    header, rows = found[0]
    return {cells[0].strip("`"): dict(zip(header, cells, strict=True)) for cells in rows}


def fail_closed_rows(text: str) -> dict[str, set[str]]:
    """Rows of every "state in Redis" table: ``{state: reject code names of the outcome}``."""
    rows: dict[str, set[str]] = {}
    for header, body in markdown_tables(text):
        if header[0] == "state in Redis":
            for cells in body:
                assert cells[0] not in rows, f"two fail-closed rows read {cells[0]!r}"
                rows[cells[0]] = set(_REJECT_CODE.findall(cells[1]))
    return rows


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


def expected_unit(kind: LimitKind) -> str:
    """The unit a limit's name implies (the naming rules of limits.py)."""
    name = kind.field
    if name.endswith("_bps"):
        return "basis points"
    if name.endswith("_ms"):
        return "milliseconds"
    if name.endswith("_seconds"):
        return "seconds"
    if any(word in name for word in ("notional", "exposure", "gross", "loss")):
        return "1/10,000 of the currency"
    if name.endswith(("orders_per_window", "working_orders")):
        return "orders"
    if name.endswith("rejects_per_window"):
        return "rejections"
    return "units"


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


def test_every_key_in_the_glance_table_is_one_pretrade_uses(doc):
    for pattern in glance_table(doc):
        key = (pattern.replace("{ACC}", "{ACC-1}").replace("<ACC>", "ACC-1")
               .replace("<SYM>", "AAPL").replace("<G>", "DESK-1"))
        assert (classify(key.encode()) is not None
                or redis_schema.account_of_orders_key(key.encode()) is not None
                or key.encode().startswith((redis_schema.CANARY, redis_schema.FENCE))
                or redis_schema.parse_mark(
                    key.replace("<sync>", "ab12").replace("<n>", "1").encode()) is not None
                or key.replace("<N>", "0").encode() in (redis_schema.lease_key(0),
                                                        redis_schema.lease_epoch_key(0))
                or key.encode() in (DEMO_MARKER, PRICE_STREAM, AUDIT_STREAM,
                                    node_stream("NODE"))), (
            f"{pattern!r} is not a key pretrade reads or writes")


def test_the_demo_marker_key_is_documented(doc):
    marker = DEMO_MARKER.decode()
    assert marker in code_words(doc)
    assert glance_table(doc).get(marker) == "string"


def test_the_price_stream_is_documented_and_its_example_entry_is_a_valid_tick(doc):
    assert glance_table(doc).get(PRICE_STREAM.decode()) == "stream"

    class Recorder:
        def __init__(self) -> None:
            self.applied: list[tuple[bytes, int]] = []

        def apply_price(self, symbol: bytes, price: int) -> None:
            self.applied.append((symbol, price))

    xadds = [command for command in redis_cli_commands(doc) if command[0].upper() == "XADD"]
    assert xadds, f"{DOC.name} shows no XADD to the price stream"
    for command in xadds:
        assert command[1] == PRICE_STREAM.decode() and command[2] == "*", command
        fields = {k.encode(): v.encode() for k, v in zip(command[3::2], command[4::2],
                                                         strict=True)}
        recorder = Recorder()
        feed = PriceFeed(None, recorder)
        feed.apply_entries([(b"1-0", fields)])
        assert feed.stats.bad_entries == 0 and len(recorder.applied) == 1, command


@pytest.mark.parametrize("kind", list(LimitKind), ids=lambda kind: kind.field)
def test_every_limit_field_is_in_the_limit_table_with_its_unit_and_rules(doc, kind):
    row = limit_table(doc).get(kind.field)
    assert row is not None, f"{kind.field} has no row in the limit table"
    assert row["unit"].startswith(expected_unit(kind)), row["unit"]
    assert row["required"] == ("required" if kind in REQUIRED_LIMITS else "optional")
    assert row["per symbol"].startswith("yes") == (kind in PER_SYMBOL_LIMITS), row["per symbol"]
    if kind in NAMED_LIMITS:
        assert f"`{kind.field}:<" in row["per symbol"], row["per symbol"]
    if kind in DEFAULTS:
        assert f"absent or 0: `{DEFAULTS[kind]}`" in " ".join(row.values()), row
    if kind in RING_CAPS:
        assert f"`{RING_CAPS[kind]}`" in row["unit"], row["unit"]


def test_the_limit_table_has_no_field_the_code_lacks(doc):
    assert set(limit_table(doc)) == {kind.field for kind in LimitKind}


def test_the_required_limits_and_their_mask_are_documented(doc):
    assert [kind.value for kind in REQUIRED_LIMITS] == list(range(REQUIRED_COUNT))
    count = NUMBER_WORDS[REQUIRED_COUNT]
    limits = flat(section(doc, LIMITS_HEADING))
    assert f"The first {count} are **required**" in limits
    assert f"the mask of all {count} as `limit` (`{(1 << REQUIRED_COUNT) - 1}`)" in limits
    assert f"one of the {count} required fields missing" in fail_closed_rows(doc)


def test_the_per_symbol_override_syntax_is_documented(doc):
    assert "max_long_position:AAPL" in code_words(doc)
    parsed = redis_schema.parse_limits({b"max_long_position:AAPL": b"500"})
    assert parsed == ParsedLimits(per_symbol={b"AAPL": {LimitKind.MAX_LONG_POSITION: 500}})


def test_the_named_venue_limit_syntax_is_documented(doc):
    assert "max_venue_exposure:XNAS" in code_words(doc)
    parsed = redis_schema.parse_limits({b"max_venue_exposure": b"2000000000",
                                        b"max_venue_exposure:XNAS": b"5000000000"})
    assert parsed == ParsedLimits(account={LimitKind.MAX_VENUE_EXPOSURE: 2_000_000_000},
                                  venues={b"XNAS": 5_000_000_000})
    assert f"at most `{TAG_LIMIT_SLOTS}` named venues" in flat(section(doc, LIMITS_HEADING))


def test_the_complete_limits_example_is_the_demo_accounts(doc):
    block = code_blocks(after_marker(doc, "demo-limits"))[0]
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:3] == ["redis-cli", "HSET", "limits:{ACC-1}"], words
    pairs = words[3:]
    example = dict(zip(pairs[::2], (int(v) for v in pairs[1::2]), strict=True))
    assert example == {name.decode(): value for name, value in DEMO_LIMITS[b"DEMO-2"].items()}
    assert set(example) == {kind.field for kind in REQUIRED_LIMITS}


def test_every_halt_field_and_mode_is_documented(doc):
    record = HaltRecord(pb.HALT_SCOPE_GLOBAL, b"", pb.HALT_MODE_HALTED, "why", "who", 1, 2)
    fields = {name.decode() for name in record.to_fields()}
    documented = table_keys(doc, "Halts: `halt:all`, `halt:account:<ACC>`, "
                                 "`halt:symbol:<SYM>`")
    assert fields <= documented, fields - documented
    for mode in HALT_MODE_NAMES.values():
        assert mode.decode() in code_words(doc)


def test_the_circuit_breakers_are_documented(doc):
    halts = section(doc, "Halts: `halt:all`, `halt:account:<ACC>`, `halt:symbol:<SYM>`")
    breakers = halts.split("### Automatic halts: the circuit breakers", 1)[1]
    assert f"`by` = `{RISK_ENGINE}`" in flat(breakers)
    assert f"(absent or 0: `{DEFAULT_AUTO_HALT_SECONDS}` seconds)" in flat(breakers)
    modes = {cells[0]: cells[2] for _, rows in markdown_tables(breakers) for cells in rows}
    assert modes == {"loss limit (`loss_limit`)": "`REDUCE_ONLY`",
                     "reject storm (`max_rejects_per_window`)": "`HALTED`"}


def test_the_rejections_that_do_not_feed_the_reject_storm_are_listed(doc):
    paragraph = after_marker(doc, "not-counted").strip().split("\n\n", 1)[0]
    listed = set(_REJECT_CODE.findall(paragraph))
    assert listed == {pb.RejectCode.Name(code) for code in _NOT_CLIENT_CAUSED}


def test_every_instrument_field_is_documented(doc):
    names = {field.name for field in dataclasses.fields(InstrumentRef)}
    documented = table_keys(doc, "Instruments: `instrument:<SYM>`")
    assert names <= documented, names - documented


def test_notification_flags_and_scan_patterns_are_documented(doc):
    words = code_words(doc)
    assert REQUIRED_NOTIFY_FLAGS in words
    assert f"notify-keyspace-events {REQUIRED_NOTIFY_FLAGS}" in doc
    assert f"CONFIG SET notify-keyspace-events '{REQUIRED_NOTIFY_FLAGS}'" in doc
    assert table_keys(doc, "Keyspace notifications") == set(REQUIRED_NOTIFY_FLAGS)
    for pattern in SCAN_PATTERNS:
        assert pattern.decode() in words, pattern


def test_the_account_snapshot_is_documented_as_one_read(doc):
    snapshot = [key.decode() for key in account_snapshot_keys(b"ACC")]
    reads = section(doc, "How pretrade reads Redis")
    assert set(snapshot) <= code_words(reads), snapshot
    assert f"{NUMBER_WORDS[len(snapshot)]} `HGETALL`s" in flat(reads)
    contract = section(doc, FILL_CONTRACT_HEADING)
    lot_prefixes = {key.split(b":")[0].decode() for key in lot_keys(b"ACC")}
    others = {key.split(":")[0] for key in snapshot} - lot_prefixes
    assert others <= code_words(contract), others
    assert f"the {NUMBER_WORDS[len(lot_prefixes)]} lot hashes" in flat(contract)


def test_the_fill_contract_names_its_keys_and_writes_a_fill_in_one_transaction(doc):
    contract = section(doc, FILL_CONTRACT_HEADING)
    words = code_words(contract)
    assert {"orders_by_lot:{ACC}", "cancels:{ACC}"} <= words
    assert "in one MULTI/EXEC" in flat(contract)
    script = _HEREDOC.fullmatch(code_blocks(after_marker(doc, "fill"))[0])
    assert script is not None
    lines = script.group(1).splitlines()
    assert lines[0] == "MULTI" and lines[-1] == "EXEC", lines
    written = {words[1]: words[2] for words in map(str.split, lines[1:-1])}
    tag = b"{ACC-1}"
    expected_keys = {key.decode() for key in (*lot_keys(b"ACC-1"),
                                              redis_schema.ORDERS_BY_LOT + tag)}
    assert set(written) == expected_keys, written
    assert len(set(written.values())) == 1, f"one lot id in every hash: {written}"


# -- what the document names exists in the code --


def test_every_reject_code_in_the_document_exists(doc):
    named = set(_REJECT_CODE.findall(doc))
    assert named, "the document names no reject code"
    unknown = named - set(pb.RejectCode.keys())
    assert not unknown, f"{DOC.name} names reject codes the contract does not have: {unknown}"


def test_every_key_in_the_examples_is_one_pretrade_reads(doc):
    commands = redis_cli_commands(doc)
    assert len(commands) >= 10, commands
    for command in commands:
        key = command[1]
        assert classify(key.encode()) is not None or key.encode() in (
            DEMO_MARKER, PRICE_STREAM) or key.encode().startswith(redis_schema.LEASE), (
            f"example {' '.join(command)!r} writes {key!r}, which pretrade ignores")


# -- the worked examples, for real --


@pytest.fixture
def redis_cli(redis_url: str, redis_client: redis.Redis) -> list[str]:
    """redis-cli aimed at the session's Redis, over an empty database."""
    return [find_redis_cli(), "-u", redis_url]


def run_example(redis_cli: list[str], block: str) -> str:
    """Run one example block: a ``redis-cli <<'EOF'`` script or ``redis-cli ...`` lines."""
    script = _HEREDOC.fullmatch(block)
    if script is not None:
        run = subprocess.run(redis_cli, input=script.group(1), capture_output=True,
                             text=True, timeout=10, check=True)
        return run.stdout
    output = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line.split(" #", 1)[0])
        if not words:
            continue
        assert words[0] == "redis-cli", line
        run = subprocess.run([*redis_cli, *words[1:]], capture_output=True, text=True,
                             timeout=10, check=True)
        output.append(run.stdout)
    return "".join(output)


def test_worked_example_through_redis_cli_gives_the_quoted_position(doc, redis_cli,
                                                                    redis_client):
    block = code_blocks(after_marker(doc, "worked-example"))[0]
    output = run_example(redis_cli, block)
    assert "QUEUED" in output, output  # a transaction, as the text recommends

    tickers, quantities, prices = (redis_client.hgetall(key) for key in lot_keys(b"ACC-1"))
    positions = aggregate_lots(tickers, quantities, prices)
    assert positions == {b"AAPL": (20, 13_715_780)}
    quantity, cost_basis = positions[b"AAPL"]
    average = average_cost(quantity, cost_basis)
    assert average == 685_789
    for figure in (f"{cost_basis}", f"{quantity} @ ${format_price(average)}"):
        assert figure in doc, figure


# -- the fill and cancel contract, against a running gateway --

#: The order of the fill example: ORD-7 buys 100 AAPL at its limit of $68.91.
ORD_7 = {"order_id": "ORD-7", "quantity": 100, "price": 689_100}


def position_and_working(gateway: GatewayThread) -> tuple[int, int, int]:
    """ACC-1's AAPL ``(position, working buy, working sell)`` in the gateway's table."""
    async def read() -> tuple[int, int, int]:
        return gateway.gateway.table.position_and_working(b"ACC-1", b"AAPL")

    return gateway.run(read())


def fill_figures(doc: str) -> list[tuple[int, int]]:
    """The document's table of ``(position, working buy)`` after each step."""
    (header, rows), *_ = markdown_tables(after_marker(doc, "fill-figures"))
    assert header == ["after", "AAPL position", "AAPL working buy"], header
    return [(int(position), int(working)) for _, position, working in rows]


@pytest.fixture
def ord_7_working(doc, redis_cli, redis_client, gateway, stub) -> GatewayThread:
    """The worked example's 20 AAPL in ACC-1, and ORD-7 approved and working."""
    seed_account(redis_client, "ACC-1", price=ORD_7["price"])
    run_example(redis_cli, code_blocks(after_marker(doc, "worked-example"))[0])
    wait_until(lambda: position_and_working(gateway), lambda found: found == (20, 0, 0))
    decision = stub.EvaluateOrder(order(**ORD_7))
    assert decision.approved, decision
    return gateway


def test_the_fill_and_cancel_examples_move_quantity_from_working_to_position(
        doc, redis_cli, ord_7_working):
    approved, filled, cancelled = fill_figures(doc)
    assert position_and_working(ord_7_working) == (*approved, 0)

    output = run_example(redis_cli, code_blocks(after_marker(doc, "fill"))[0])
    assert "QUEUED" in output, output
    found = wait_until(lambda: position_and_working(ord_7_working),
                       lambda found: found[0] != approved[0])
    assert found == (*filled, 0), "the fill must move from working to position in one step"

    run_example(redis_cli, code_blocks(after_marker(doc, "cancel"))[0])
    found = wait_until(lambda: position_and_working(ord_7_working),
                       lambda found: found[1] != filled[1])
    assert found == (*cancelled, 0)


def test_the_fill_written_through_the_lot_log_moves_quantity_as_the_fill_example_does(
        doc, redis_cli, ord_7_working):
    approved, filled, _ = fill_figures(doc)
    assert position_and_working(ord_7_working) == (*approved, 0)
    output = run_example(redis_cli, code_blocks(after_marker(doc, "lot-log-fill"))[0])
    assert output.split()[-1] == "1", output  # the account's new version
    found = wait_until(lambda: position_and_working(ord_7_working),
                       lambda found: found[0] != approved[0])
    assert found == (*filled, 0)


def test_the_replace_figures_hold_for_a_replaced_order_and_its_replacement(
        doc, redis_cli, redis_client, ord_7_working, stub):
    (header, rows), *_ = markdown_tables(after_marker(doc, "replace-figures"))
    assert header == ["after", "AAPL position", "AAPL working buy"], header
    figures = [(int(position), int(working)) for _, position, working in rows]
    run_example(redis_cli, code_blocks(after_marker(doc, "fill"))[0])
    steps = [
        lambda: None,
        lambda: stub.ReplaceOrder(pb.ReplaceRequest(
            account_id="ACC-1", original_order_id="ORD-7", order_id="ORD-8", quantity=120)),
        lambda: _fill(redis_client, "L4", "ORD-7", 10),
        lambda: _fill(redis_client, "L5", "ORD-8", 30),
        lambda: redis_client.hset("cancels:{ACC-1}", "ORD-8", 1767225600000),
    ]
    assert len(steps) == len(figures)
    for step, expected in zip(steps, figures, strict=True):
        step()
        wait_until(lambda: position_and_working(ord_7_working),
                   lambda found, expected=expected: found == (*expected, 0))


def test_the_oco_figures_hold_for_two_exits_the_fill_of_one_and_the_cancel_of_the_other(
        doc, redis_cli, ord_7_working, stub):
    (header, rows), *_ = markdown_tables(after_marker(doc, "oco-figures"))
    assert header == ["after", "AAPL position", "AAPL working sell"], header
    figures = [(int(position), int(working)) for _, position, working in rows]
    for order_id, price in (("TP-1", 720_000), ("SL-1", 660_000)):
        exit_order = order(order_id=order_id, side=pb.SIDE_SELL, quantity=20, price=price)
        exit_order.group_id = "EXIT-1"
        exit_order.contingency = pb.CONTINGENCY_ONE_CANCELS_OTHER
        decision = stub.EvaluateOrder(exit_order)
        assert decision.approved, decision
    steps = [lambda: None,
             lambda: run_example(redis_cli, code_blocks(after_marker(doc, "oco-fill"))[0]),
             lambda: run_example(redis_cli, code_blocks(after_marker(doc, "oco-cancel"))[0])]
    assert len(steps) == len(figures)
    for step, (position, selling) in zip(steps, figures, strict=True):
        step()
        wait_until(lambda: position_and_working(ord_7_working),
                   lambda found, expected=(position, ORD_7["quantity"], selling):
                   found == expected)


def test_the_group_example_gives_its_figures_and_leaving_the_desk_is_followed(
        doc, redis_cli, redis_client, gateway, stub):
    seed_account(redis_client, "ACC-1")
    redis_client.hset("limits:{ACC-2}", mapping=redis_client.hgetall("limits:{ACC-1}"))
    run_example(redis_cli, code_blocks(after_marker(doc, "groups"))[0])
    table = gateway.gateway.table
    wait_until(lambda: (table.account_groups(b"ACC-2"), table.group_info(b"FIRM")),
               lambda found: found[0] == (b"DESK-1", b"FIRM") and found[1]["known"])
    groups = flat(section(doc, "Account groups: `groups:{ACC}` and `group:<G>`"))
    assert "Both accounts' groups, flattened, are `DESK-1`, `FIRM`" in groups
    assert table.account_groups(b"ACC-1") == (b"DESK-1", b"FIRM")
    (header, rows), *_ = markdown_tables(after_marker(doc, "group-figures"))
    assert header == ["order", "decision"], header
    for what, outcome in rows:
        account, _, quantity, _ = what.split()
        decision = stub.EvaluateOrder(order(account=account.strip("`"), quantity=int(quantity)))
        if outcome == "approved":
            assert decision.approved, (what, decision)
            continue
        name, observed, limit = re.fullmatch(r"`(\w+)`, observed (\d+), limit (\d+)",
                                             outcome).groups()
        assert [(r.code, r.observed, r.limit) for r in decision.rejections] == [
            (pb.RejectCode.Value(name), int(observed), int(limit))], what
    leave = re.search(r"`redis-cli (SREM [^`]+)`", groups)
    assert leave is not None
    redis_client.execute_command(*leave.group(1).split())
    wait_until(lambda: table.account_groups(b"ACC-2"), lambda found: found == ())
    assert stub.EvaluateOrder(order(account="ACC-2", quantity=900)).approved


def _fill(client: redis.Redis, lot: str, order_id: str, quantity: int) -> None:
    tickers, quantities, prices = lot_keys(b"ACC-1")
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(tickers, lot, "AAPL")
        pipe.hset(quantities, lot, quantity)
        pipe.hset(prices, lot, ORD_7["price"])
        pipe.hset("orders_by_lot:{ACC-1}", lot, order_id)
        pipe.execute()


def test_a_fill_lot_without_its_attribution_counts_twice_until_the_attribution_lands(
        doc, redis_client, ord_7_working):
    (approved_position, working), (filled_position, filled_working), _ = fill_figures(doc)
    tickers, quantities, prices = lot_keys(b"ACC-1")
    with redis_client.pipeline(transaction=True) as pipe:  # the lot, but not orders_by_lot
        pipe.hset(tickers, "L3", "AAPL")
        pipe.hset(quantities, "L3", filled_position - approved_position)
        pipe.hset(prices, "L3", ORD_7["price"])
        pipe.execute()
    found = wait_until(lambda: position_and_working(ord_7_working),
                       lambda found: found[0] == filled_position)
    assert found == (filled_position, working, 0), "the fill counts as position and working"

    redis_client.hset(redis_schema.ORDERS_BY_LOT + b"{ACC-1}", "L3", ORD_7["order_id"])
    wait_until(lambda: position_and_working(ord_7_working),
               lambda found: found == (filled_position, filled_working, 0))


# -- the fail-closed tables hold against a running gateway --


class Case(NamedTuple):
    row: str  # part of the first cell of the document's row this case checks
    writes: list[list[str]]  # Redis commands, in order
    order: dict[str, Any]  # order() arguments: approved before the writes
    expected: list[int]  # the codes after the writes (empty: approved)


LIMIT_ORDER: dict[str, Any] = {}
MARKET_ORDER: dict[str, Any] = {"order_type": pb.ORDER_TYPE_MARKET, "price": 0}
SHORT_SALE: dict[str, Any] = {"side": pb.SIDE_SELL_SHORT}
LONG_SALE: dict[str, Any] = {"side": pb.SIDE_SELL, "quantity": 2}
LOT_KEYS = [key.decode() for key in lot_keys(b"ACC-1")]
NOTIONAL = 10 * 683_378  # of a default order(): 10 AAPL at 683378
INVALID = [pb.REJECT_CODE_INVALID_STATE]
BROKEN_LIMITS = [pb.REJECT_CODE_INVALID_STATE, pb.REJECT_CODE_LIMITS_NOT_CONFIGURED]
UNPRICED = [pb.REJECT_CODE_PRICE_UNAVAILABLE]
NOT_A_HASH = "not a hash (`WRONGTYPE`)"

FAIL_CLOSED = {
    # -- lots and P&L --
    "no lots, no limits": Case(
        "all three lot hashes missing or empty, and no", [["DEL", *LOT_KEYS, "limits:{ACC-1}"]],
        LIMIT_ORDER, [pb.REJECT_CODE_UNKNOWN_ACCOUNT]),
    "no lots, limits present": Case(
        "all three lot hashes missing or empty, `limits", [["DEL", *LOT_KEYS]], LIMIT_ORDER, []),
    "lot in one hash only": Case(
        "a half-written lot", [["HSET", "tickers_by_lot:{ACC-1}", "L2", "AAPL"]], LIMIT_ORDER,
        INVALID),
    "a negative state version": Case(
        "a `version:{ACC}` that is not", [["SET", "version:{ACC-1}", "-1"]], LIMIT_ORDER,
        INVALID),
    "a state version that is a hash": Case(
        "a `version:{ACC}` that is not", [["HSET", "version:{ACC-1}", "v", "1"]], LIMIT_ORDER,
        INVALID),
    "lot price with a decimal point": Case(
        "a lot quantity or price that is not", [["HSET", "prices_by_lot:{ACC-1}", "L1",
                                                 "68.3378"]], LIMIT_ORDER, INVALID),
    "lot quantity with an exponent": Case(
        "a lot quantity or price that is not", [["HSET", "quantities_by_lot:{ACC-1}", "L1",
                                                 "1e3"]], LIMIT_ORDER, INVALID),
    "negative lot price": Case(
        "a negative lot price", [["HSET", "prices_by_lot:{ACC-1}", "L1", "-1"]], LIMIT_ORDER,
        INVALID),
    "lot ticker not an id": Case(
        "a ticker that is not a valid id", [["HSET", "tickers_by_lot:{ACC-1}", "L1", "A B"]],
        LIMIT_ORDER, INVALID),
    "cost basis beyond int64": Case(
        "a net quantity or cost basis", [["HSET", "quantities_by_lot:{ACC-1}", "L1",
                                          "9223372036854775807"]], LIMIT_ORDER, INVALID),
    "realized P&L with a decimal point": Case(
        "`pnl:{ACC}` field `realized`", [["HSET", "pnl:{ACC-1}", "realized", "-125.00"]],
        LIMIT_ORDER, INVALID),
    "P&L key is a string": Case(
        "a key of the account snapshot", [["SET", "pnl:{ACC-1}", "-1250000"]], LIMIT_ORDER,
        INVALID),
    **{f"{key.split(':')[0]} is a string": Case(
        "a key of the account snapshot", [["DEL", *LOT_KEYS], ["SET", key, "x"]], LIMIT_ORDER,
        INVALID) for key in LOT_KEYS},
    # -- fills and cancels --
    "attribution of a lot that does not exist": Case(
        "an `orders_by_lot:{ACC}` entry whose lot is not",
        [["HSET", "orders_by_lot:{ACC-1}", "L9", "o-1"]], LIMIT_ORDER, INVALID),
    "attribution to an order pretrade never approved": Case(
        "an `orders_by_lot:{ACC}` entry naming an order id",
        [["HSET", "orders_by_lot:{ACC-1}", "L1", "NEVER-SEEN"]], LIMIT_ORDER, []),
    "cancel of an order pretrade never approved": Case(
        "a `cancels:{ACC}` field for an order id",
        [["HSET", "cancels:{ACC-1}", "NEVER-SEEN", "1767225600000"]], LIMIT_ORDER, []),
    "orders_by_lot is a string": Case(
        "`orders_by_lot:{ACC}` or `cancels:{ACC}` not a hash",
        [["SET", "orders_by_lot:{ACC-1}", "x"]], LIMIT_ORDER, INVALID),
    "cancels is a string": Case(
        "`orders_by_lot:{ACC}` or `cancels:{ACC}` not a hash",
        [["SET", "cancels:{ACC-1}", "x"]], LIMIT_ORDER, INVALID),
    # -- limits --
    "limits missing, lots present": Case(
        "`limits:{ACC}` missing, lots present", [["DEL", "limits:{ACC-1}"]], LIMIT_ORDER,
        [pb.REJECT_CODE_LIMITS_NOT_CONFIGURED]),
    "limits missing, then the lots": Case(
        "`limits:{ACC}` missing, no lots either", [["DEL", "limits:{ACC-1}"], ["DEL", *LOT_KEYS]],
        LIMIT_ORDER, [pb.REJECT_CODE_UNKNOWN_ACCOUNT]),
    "one limit missing": Case(
        "one of the six required fields missing", [["HDEL", "limits:{ACC-1}",
                                                    "max_short_position"]], LIMIT_ORDER,
        [pb.REJECT_CODE_LIMITS_NOT_CONFIGURED]),
    "price collar missing": Case(
        "one of the six required fields missing", [["HDEL", "limits:{ACC-1}",
                                                    "price_collar_bps"]], MARKET_ORDER,
        [pb.REJECT_CODE_LIMITS_NOT_CONFIGURED]),
    "limit with a decimal point": Case(
        "a value that is not an integer, or is negative",
        [["HSET", "limits:{ACC-1}", "max_order_quantity", "1.5"]], LIMIT_ORDER, BROKEN_LIMITS),
    "negative limit": Case(
        "a value that is not an integer, or is negative",
        [["HSET", "limits:{ACC-1}", "loss_limit", "-1"]], LIMIT_ORDER, BROKEN_LIMITS),
    "unknown limit field": Case(
        "a field that is not a limit name", [["HSET", "limits:{ACC-1}", "max_foo", "1"]],
        LIMIT_ORDER, BROKEN_LIMITS),
    "limit name in upper case": Case(
        "a field that is not a limit name", [["HSET", "limits:{ACC-1}", "MAX_ORDER_QUANTITY",
                                              "1000"]], LIMIT_ORDER, BROKEN_LIMITS),
    "override for an invalid symbol": Case(
        "a per-symbol field whose symbol", [["HSET", "limits:{ACC-1}",
                                             "max_order_quantity:A B", "1"]], LIMIT_ORDER,
        BROKEN_LIMITS),
    "per-symbol value of an account-wide limit": Case(
        "a per-symbol field whose symbol", [["HSET", "limits:{ACC-1}",
                                             "max_gross_exposure:AAPL", "1"]], LIMIT_ORDER,
        BROKEN_LIMITS),
    "venue name of 16 characters": Case(
        "a named venue or counterparty", [["HSET", "limits:{ACC-1}",
                                           "max_venue_exposure:ABCDEFGHIJKLMNOP", "1"]],
        LIMIT_ORDER, BROKEN_LIMITS),
    "one named counterparty too many": Case(
        "a named venue or counterparty",
        [["HSET", "limits:{ACC-1}", *[word for n in range(TAG_LIMIT_SLOTS + 1)
                                      for word in (f"max_counterparty_exposure:CP{n}", "1")]]],
        LIMIT_ORDER, BROKEN_LIMITS),
    "order window limit beyond the ring": Case(
        "above 256", [["HSET", "limits:{ACC-1}", "max_orders_per_window",
                       str(RATE_RING_CAPACITY + 1)]], LIMIT_ORDER, BROKEN_LIMITS),
    "reject window limit beyond the ring": Case(
        "above 256", [["HSET", "limits:{ACC-1}", "max_rejects_per_window",
                       str(REJECT_RING_CAPACITY + 1)]], LIMIT_ORDER, BROKEN_LIMITS),
    "limits key is a string": Case(
        f"`limits:{{ACC}}` {NOT_A_HASH}", [["DEL", "limits:{ACC-1}"],
                                           ["SET", "limits:{ACC-1}", "x"]], LIMIT_ORDER,
        BROKEN_LIMITS),
    "limits key without braces is ignored": Case(
        "the key spelled without braces", [["HSET", "limits:ACC-1", "max_order_quantity", "1"]],
        LIMIT_ORDER, []),
    # -- account groups --
    "in no group": Case(
        "`groups:{ACC}` missing or empty", [["DEL", "groups:{ACC-1}"]], LIMIT_ORDER, []),
    "in a group without its hash": Case(
        "a group in the account's tree without its", [["SADD", "groups:{ACC-1}", "DESK-1"]],
        LIMIT_ORDER, [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    "in a group whose parent has no hash": Case(
        "a group in the account's tree without its",
        [["HSET", "group:DESK-1", "max_long_position", "1000", "parent", "FIRM"],
         ["SADD", "groups:{ACC-1}", "DESK-1"]], LIMIT_ORDER, [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    "in a group that sets no limit of a group": Case(
        "a `group:<G>` field that is not a group limit",
        [["HSET", "group:DESK-1", "max_order_quantity", "1000"],
         ["SADD", "groups:{ACC-1}", "DESK-1"]], LIMIT_ORDER, [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    "group limit with a decimal point": Case(
        "a `group:<G>` field that is not a group limit",
        [["HSET", "group:DESK-1", "max_long_position", "1000.0"],
         ["SADD", "groups:{ACC-1}", "DESK-1"]], LIMIT_ORDER, [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    "group parent not an id": Case(
        "a `group:<G>` field that is not a group limit",
        [["HSET", "group:DESK-1", "parent", "FIRM:1"],
         ["SADD", "groups:{ACC-1}", "DESK-1"]], LIMIT_ORDER, [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    "group key is a string": Case(
        "`group:<G>` not a hash", [["SET", "group:DESK-1", "x"],
                                   ["SADD", "groups:{ACC-1}", "DESK-1"]], LIMIT_ORDER,
        [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    "group id not an id": Case(
        "a group id in `groups:{ACC}` that is not", [["SADD", "groups:{ACC-1}", "DESK 1"]],
        LIMIT_ORDER, [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    "groups in a cycle": Case(
        "a group id in `groups:{ACC}` that is not",
        [["HSET", "group:DESK-1", "parent", "FIRM"], ["HSET", "group:FIRM", "parent", "DESK-1"],
         ["SADD", "groups:{ACC-1}", "DESK-1"]], LIMIT_ORDER, [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    "nine groups": Case(
        "a group id in `groups:{ACC}` that is not",
        [["SADD", "groups:{ACC-1}", *[f"DESK-{n}" for n in range(9)]]], LIMIT_ORDER,
        [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    "groups key is a string": Case(
        "`groups:{ACC}` not a set", [["SET", "groups:{ACC-1}", "DESK-1"]], LIMIT_ORDER,
        [pb.REJECT_CODE_GROUP_UNAVAILABLE]),
    # -- balances --
    "no balances": Case(
        "`balances:{ACC}` missing or empty", [["DEL", "balances:{ACC-1}"]], LIMIT_ORDER, []),
    "cash and credit cover the working buy and the order": Case(
        "covers what working buys", [["HSET", "balances:{ACC-1}", "cash", str(NOTIONAL),
                                      "credit_line", str(NOTIONAL)]], LIMIT_ORDER, []),
    "cash and credit one short of the working buy and the order": Case(
        "does not cover them", [["HSET", "balances:{ACC-1}", "cash", str(NOTIONAL - 1),
                                 "credit_line", str(NOTIONAL)]], LIMIT_ORDER,
        [pb.REJECT_CODE_BUYING_POWER]),
    "no cash, a buy": Case(
        "does not cover them", [["HSET", "balances:{ACC-1}", "cash", "0"]], LIMIT_ORDER,
        [pb.REJECT_CODE_BUYING_POWER]),
    "no cash, a short sale": Case(
        "does not cover them", [["HSET", "balances:{ACC-1}", "cash", "0"]], SHORT_SALE,
        [pb.REJECT_CODE_BUYING_POWER]),
    "no cash, a sale of a long": Case(
        "does not cover them", [["HSET", "balances:{ACC-1}", "cash", "0"]], LONG_SALE, []),
    "balances without cash": Case(
        "the hash without a `cash` field", [["HSET", "balances:{ACC-1}", "credit_line", "0"]],
        LIMIT_ORDER, INVALID),
    "negative credit line": Case(
        "`cash` or `credit_line` not an int64", [["HSET", "balances:{ACC-1}", "cash", "0",
                                                  "credit_line", "-1"]], LIMIT_ORDER, INVALID),
    "cash with a decimal point": Case(
        "`cash` or `credit_line` not an int64", [["HSET", "balances:{ACC-1}", "cash",
                                                  "100.00"]], LIMIT_ORDER, INVALID),
    "balances key is a string": Case(
        f"`balances:{{ACC}}` {NOT_A_HASH}", [["SET", "balances:{ACC-1}", "1000"]], LIMIT_ORDER,
        INVALID),
    # -- short sales --
    "no locates": Case(
        "`locates:{ACC}` missing, or without the symbol", [["DEL", "locates:{ACC-1}"]],
        SHORT_SALE, [pb.REJECT_CODE_NO_LOCATE]),
    "a locate for another symbol only": Case(
        "`locates:{ACC}` missing, or without the symbol",
        [["DEL", "locates:{ACC-1}"], ["HSET", "locates:{ACC-1}", "BAR", "1000"]], SHORT_SALE,
        [pb.REJECT_CODE_NO_LOCATE]),
    "negative locate": Case(
        "a located quantity that is not", [["HSET", "locates:{ACC-1}", "AAPL", "-1"]],
        LIMIT_ORDER, INVALID),
    "locate for an invalid symbol": Case(
        "a located quantity that is not", [["HSET", "locates:{ACC-1}", "A B", "1"]],
        LIMIT_ORDER, INVALID),
    "locates key is a string": Case(
        f"`locates:{{ACC}}` {NOT_A_HASH}", [["DEL", "locates:{ACC-1}"],
                                            ["SET", "locates:{ACC-1}", "x"]], LIMIT_ORDER,
        INVALID),
    "restricted symbol, short sale": Case(
        "the symbol in `restricted:short`", [["SADD", "restricted:short", "AAPL"]], SHORT_SALE,
        [pb.REJECT_CODE_SHORT_SALE_RESTRICTED]),
    "restricted symbol, buy": Case(
        "the symbol in `restricted:short`", [["SADD", "restricted:short", "AAPL"]], LIMIT_ORDER,
        []),
    "restricted list is a string": Case(
        "`restricted:short` not a set", [["SET", "restricted:short", "GME"]], SHORT_SALE,
        [pb.REJECT_CODE_SHORT_SALE_RESTRICTED]),
    # -- instruments --
    "instrument missing": Case(
        "`instrument:<SYM>` missing or empty", [["DEL", "instrument:AAPL"]], LIMIT_ORDER,
        [pb.REJECT_CODE_UNKNOWN_SYMBOL]),
    "tick_size zero": Case(
        "`tick_size` or `lot_size` not an integer", [["HSET", "instrument:AAPL", "tick_size",
                                                      "0"]], LIMIT_ORDER, INVALID),
    "lot_size with a decimal point": Case(
        "`tick_size` or `lot_size` not an integer", [["HSET", "instrument:AAPL", "lot_size",
                                                      "1.0"]], LIMIT_ORDER, INVALID),
    "currency in lower case": Case(
        "`currency` present but not three letters", [["HSET", "instrument:AAPL", "currency",
                                                      "usd"]], LIMIT_ORDER, INVALID),
    "currency with a sign in it": Case(
        "`currency` present but not three letters", [["HSET", "instrument:AAPL", "currency",
                                                      "US$"]], LIMIT_ORDER, INVALID),
    "margin rate in percent": Case(
        "a margin rate that is not an integer", [["HSET", "instrument:AAPL",
                                                  "initial_margin_long_bps", "50%"]],
        LIMIT_ORDER, INVALID),
    "margin rate past 1,000%": Case(
        "a margin rate that is not an integer", [["HSET", "instrument:AAPL",
                                                  "maintenance_margin_short_bps", "100001"]],
        LIMIT_ORDER, INVALID),
    "instrument key is a string": Case(
        f"`instrument:<SYM>` {NOT_A_HASH}", [["DEL", "instrument:AAPL"],
                                             ["SET", "instrument:AAPL", "x"]], LIMIT_ORDER,
        INVALID),
    # -- prices --
    "last price missing, market order": Case(
        "`price:<SYM>` missing", [["DEL", "price:AAPL"]], MARKET_ORDER, UNPRICED),
    "last price missing, limit order": Case(
        "`price:<SYM>` missing", [["DEL", "price:AAPL"]], LIMIT_ORDER, UNPRICED),
    "last price with a decimal point, market order": Case(
        "`price:<SYM>` not an integer", [["SET", "price:AAPL", "68.91"]], MARKET_ORDER,
        UNPRICED),
    "last price with a decimal point, limit order": Case(
        "`price:<SYM>` not an integer", [["SET", "price:AAPL", "68.91"]], LIMIT_ORDER,
        UNPRICED),
    "last price zero": Case(
        "`price:<SYM>` not an integer", [["SET", "price:AAPL", "0"]], LIMIT_ORDER, UNPRICED),
    "last price key is a hash": Case(
        "`price:<SYM>` not a string", [["DEL", "price:AAPL"],
                                       ["HSET", "price:AAPL", "price", "683378"]],
        MARKET_ORDER, UNPRICED),
    "a held symbol without a price, account valued": Case(
        "a held symbol without a last price",
        [["HSET", "instrument:MSFT", "tick_size", "1"],
         ["HSET", "tickers_by_lot:{ACC-1}", "L2", "MSFT"],
         ["HSET", "quantities_by_lot:{ACC-1}", "L2", "1"],
         ["HSET", "prices_by_lot:{ACC-1}", "L2", "4123300"],
         ["HSET", "limits:{ACC-1}", "max_gross_exposure", "900000000000000"]],
        LIMIT_ORDER, UNPRICED),
    # -- halts --
    "no halt": Case("the halt key missing", [["DEL", "halt:account:ACC-1"]], LIMIT_ORDER, []),
    "global halt": Case(
        "`mode` `HALTED` or `REDUCE_ONLY` (any case)", [["HSET", "halt:all", "mode", "HALTED"]],
        LIMIT_ORDER, [pb.REJECT_CODE_GLOBAL_HALT]),
    "halt mode in lower case": Case(
        "`mode` `HALTED` or `REDUCE_ONLY` (any case)",
        [["HSET", "halt:account:ACC-1", "mode", "halted"]], LIMIT_ORDER,
        [pb.REJECT_CODE_ACCOUNT_HALT]),
    "reduce-only halt, buy on a long": Case(
        "`mode` `HALTED` or `REDUCE_ONLY` (any case)",
        [["HSET", "halt:account:ACC-1", "mode", "REDUCE_ONLY"]], LIMIT_ORDER,
        [pb.REJECT_CODE_REDUCE_ONLY]),
    "reduce-only halt, sale of a long": Case(
        "`mode` `HALTED` or `REDUCE_ONLY` (any case)",
        [["HSET", "halt:symbol:AAPL", "mode", "REDUCE_ONLY"]], LONG_SALE, []),
    "halt mode ACTIVE is a full halt": Case(
        "`mode` missing, or any other word", [["HSET", "halt:account:ACC-1", "mode", "ACTIVE"]],
        LIMIT_ORDER, [pb.REJECT_CODE_ACCOUNT_HALT]),
    "halt without a mode": Case(
        "`mode` missing, or any other word", [["HSET", "halt:account:ACC-1", "reason", "x"]],
        LIMIT_ORDER, [pb.REJECT_CODE_ACCOUNT_HALT]),
    "halt time not an integer": Case(
        "`at` or `expires_at` present", [["HSET", "halt:account:ACC-1", "mode", "HALTED", "at",
                                          "soon"]], LIMIT_ORDER, [pb.REJECT_CODE_ACCOUNT_HALT]),
    "global halt key is a string": Case(
        "the halt key not a hash", [["SET", "halt:all", "1"]], LIMIT_ORDER,
        [pb.REJECT_CODE_GLOBAL_HALT]),
    "account halt key is a string": Case(
        "the halt key not a hash", [["SET", "halt:account:ACC-1", "1"]], LIMIT_ORDER,
        [pb.REJECT_CODE_ACCOUNT_HALT]),
    "symbol halt key is a string": Case(
        "the halt key not a hash", [["SET", "halt:symbol:AAPL", "1"]], LIMIT_ORDER,
        [pb.REJECT_CODE_SYMBOL_HALT]),
    "account halt key with braces is ignored": Case(
        "an account halt spelled with braces", [["HSET", "halt:account:{ACC-1}", "mode",
                                                 "HALTED"]], LIMIT_ORDER, []),
}


def documented_row(doc: str, case: Case) -> tuple[str, set[str]]:
    matches = [(row, named) for row, named in fail_closed_rows(doc).items() if case.row in row]
    assert len(matches) == 1, f"{case.row!r} must match one fail-closed row, matches {matches}"
    return matches[0]


@pytest.mark.parametrize("case", list(FAIL_CLOSED))
def test_each_fail_closed_case_checks_what_its_documented_row_says(doc, case):
    row, named = documented_row(doc, FAIL_CLOSED[case])
    expected = {pb.RejectCode.Name(code) for code in FAIL_CLOSED[case].expected}
    assert expected <= named, f"the row {row!r} names {named}, the case expects {expected}"
    assert named or not expected, f"the row {row!r} names no code, the case expects {expected}"


def test_every_fail_closed_row_is_checked_against_a_gateway(doc):
    unchecked = [row for row in fail_closed_rows(doc)
                 if not any(case.row in row for case in FAIL_CLOSED.values())]
    assert not unchecked, f"fail-closed rows no case in FAIL_CLOSED checks: {unchecked}"


# orders:{ACC} is read only at a full load, so a wrong type there shows at the
# next start, not in a running gateway: tests/test_recovery.py covers it. A
# canary key is never read: each beat's SET replaces it, whatever its type.
# The leases are not the sync's: a lease of another type is nobody's, which
# tests/test_ownership.py checks on nodes that own shards. A fence of another
# type is overwritten by the next SET (tests/test_replica_reads.py). A price
# series is read only with price_source = "timeseries", which the cases here
# do not run: tests/test_price_series.py stores a string under one. A lot log
# of another type is no log: the account is read whole, which needs no
# rejection (tests/test_lot_log.py), and a mark is only written.
@pytest.mark.parametrize("name", [name for name in KEY_CONSTANTS
                                  if name not in ("ORDERS", "CANARY", "LEASE", "LEASE_EPOCH",
                                                  "FENCE", "PRICE_HISTORY", "LOT_LOG",
                                                  "MARK")])
def test_every_key_family_has_a_wrong_type_case(name):
    prefix = getattr(redis_schema, name).decode()
    documented = KEY_CONSTANTS[name]
    wrong = [case for case in FAIL_CLOSED.values() for command in case.writes
             if command[1].startswith(prefix)
             and TYPE_WRITTEN_BY.get(command[0], documented) != documented]
    assert wrong, f"no FAIL_CLOSED case stores another type than {documented} under {prefix}"


@pytest.fixture
def fail_closed_book(redis_client: redis.Redis) -> redis.Redis:
    """ACC-1 long 5 AAPL with the required limits and 1000 AAPL located; BAR to halt."""
    seed_account(redis_client, "ACC-1")
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 5, 683_378)])
    redis_client.hset(redis_schema.locates_key(b"ACC-1"), "AAPL", 1_000)
    seed_instrument(redis_client, "BAR", price=100)
    return redis_client


def applied_everything_before(redis_client: redis.Redis, stub) -> None:
    """Wait until the gateway has applied every write made before this call.

    The sync re-reads halts last in each batch, so once a halt written now is
    in force, every earlier write has been applied too. The probe orders are
    for another account, so they leave nothing working in ACC-1.
    """
    redis_client.hset("halt:symbol:BAR", "mode", "HALTED")
    wait_until(lambda: codes(stub.EvaluateOrder(order(account="PROBE", symbol="BAR",
                                                      price=100))),
               lambda found: pb.REJECT_CODE_SYMBOL_HALT in found)


@pytest.mark.parametrize("case", list(FAIL_CLOSED))
def test_the_documented_fail_closed_outcome_holds(fail_closed_book, stub, case):
    _, writes, order_fields, expected = FAIL_CLOSED[case]
    before = stub.EvaluateOrder(order(**order_fields))
    assert before.approved, [pb.RejectCode.Name(code) for code in codes(before)]
    for command in writes:
        fail_closed_book.execute_command(*command)
    applied_everything_before(fail_closed_book, stub)
    decision = stub.EvaluateOrder(order(**order_fields))
    assert codes(decision) == expected, [pb.RejectCode.Name(code) for code in codes(decision)]
    assert decision.approved == (not expected)
