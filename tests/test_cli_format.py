"""The pretrade command line: argument checks and the tables it prints.

No server is needed here; end-to-end CLI tests live beside the gRPC fixtures.
"""

import json
import socket
import subprocess
import sys

import pytest
from google.protobuf import json_format

from pretrade.cli import commands as cli
from pretrade.cli.commands import build_halt_request, build_order, parse_args, parse_expire_at
from pretrade.cli.format import format_decision, format_halt_state, to_json
from pretrade.v1 import risk_pb2

ORDER = ["order", "--account", "A1", "--symbol", "AAPL", "--side", "buy", "--qty", "100"]
MS_2025_01_02_03_04_05 = 1_735_787_045_000


@pytest.fixture
def unused_tcp_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


# -- order arguments -----------------------------------------------------------


def test_limit_order_price_is_parsed_into_ten_thousandths():
    order = build_order(parse_args([*ORDER, "--price", "68.3378", "--venue", "XNAS"]))
    assert order.price == 683378
    assert order.quantity == 100
    assert order.side == risk_pb2.SIDE_BUY
    assert order.order_type == risk_pb2.ORDER_TYPE_LIMIT
    assert (order.account_id, order.symbol, order.venue) == ("A1", "AAPL", "XNAS")


def test_limit_order_without_price_is_a_usage_error(capsys):
    err = _usage_error(capsys, ORDER)
    assert "a limit order needs --price" in err
    assert "pretrade order" in err


def test_market_order_needs_no_price_and_sends_zero():
    order = build_order(parse_args([*ORDER, "--type", "market"]))
    assert order.order_type == risk_pb2.ORDER_TYPE_MARKET
    assert order.price == 0


def test_market_order_with_a_price_is_a_usage_error(capsys):
    assert "leave out --price" in _usage_error(capsys, [*ORDER, "--type", "market", "--price", "1"])


def test_price_with_five_decimal_places_is_a_usage_error(capsys):
    err = _usage_error(capsys, [*ORDER, "--price", "68.33781"])
    assert "more than 4 decimal places" in err


@pytest.mark.parametrize("bad_price", ["1e3", "nan", "12,5", ""])
def test_price_that_is_not_plain_decimal_is_a_usage_error(capsys, bad_price):
    assert "argument --price" in _usage_error(capsys, [*ORDER, "--price", bad_price])


def test_fractional_quantity_is_a_usage_error(capsys):
    argv = ["order", "--account", "A1", "--symbol", "S", "--side", "buy", "--qty", "1.5"]
    assert "not a whole number" in _usage_error(capsys, [*argv, "--price", "1"])


def test_sell_short_maps_to_its_side():
    argv = [*ORDER[:5], "--side", "sell_short", "--qty", "5", "--price", "10"]
    assert build_order(parse_args(argv)).side == risk_pb2.SIDE_SELL_SHORT


def test_unknown_side_is_a_usage_error(capsys):
    argv = [*ORDER[:5], "--side", "short", "--qty", "5", "--price", "10"]
    assert "invalid choice" in _usage_error(capsys, argv)


def test_order_id_is_generated_when_not_given_and_kept_when_given():
    generated = parse_args([*ORDER, "--price", "1"]).order_id
    assert generated.startswith("cli-") and len(generated) == len("cli-") + 12
    assert parse_args([*ORDER, "--price", "1"]).order_id != generated
    assert parse_args([*ORDER, "--price", "1", "--order-id", "X-7"]).order_id == "X-7"


@pytest.mark.parametrize("text", ["2026-12-31T21:00:00Z", "2026-12-31T21:00:00",
                                  "2026-12-31T22:00:00+01:00", "1798750800000"])
def test_expire_at_is_iso_8601_utc_or_unix_epoch_milliseconds(text):
    assert parse_expire_at(text) == 1_798_750_800_000  # 2026-12-31T21:00:00Z


@pytest.mark.parametrize("text", ["tomorrow", "", "1.5e12", "-1", "0", "12:00:00Z"])
def test_expire_at_that_is_no_point_in_time_is_refused(text):
    with pytest.raises(ValueError, match=repr(text).replace("+", "[+]")):
        parse_expire_at(text)


@pytest.mark.parametrize(("tif", "expected"), [
    ("day", risk_pb2.TIME_IN_FORCE_DAY), ("ioc", risk_pb2.TIME_IN_FORCE_IOC),
    ("gtc", risk_pb2.TIME_IN_FORCE_GTC)])
def test_tif_maps_to_its_time_in_force_with_no_expiry(tif, expected):
    order = build_order(parse_args([*ORDER, "--price", "1", "--tif", tif]))
    assert (order.time_in_force, order.expire_at_unix_ms) == (expected, 0)


def test_gtd_sends_its_expiry_and_no_tif_sends_none():
    gtd = build_order(parse_args([*ORDER, "--price", "1", "--tif", "gtd",
                                  "--expire-at", "2026-12-31T21:00:00Z"]))
    assert (gtd.time_in_force, gtd.expire_at_unix_ms) == (risk_pb2.TIME_IN_FORCE_GTD,
                                                          1_798_750_800_000)
    plain = build_order(parse_args([*ORDER, "--price", "1"]))
    assert (plain.time_in_force, plain.expire_at_unix_ms) == (
        risk_pb2.TIME_IN_FORCE_UNSPECIFIED, 0)


def test_decision_shows_the_time_in_force_that_was_sent_after_the_verdict():
    decision = risk_pb2.Decision(order_id="o1", account_id="A1", symbol="AAPL", approved=True)
    gtd = risk_pb2.Order(time_in_force=risk_pb2.TIME_IN_FORCE_GTD,
                         expire_at_unix_ms=MS_2025_01_02_03_04_05)
    lines = format_decision(decision, gtd).splitlines()
    assert lines[3].split() == ["verdict", "APPROVED"]
    assert lines[4] == "time in force  GTD until 2025-01-02T03:04:05Z"
    ioc = format_decision(decision, risk_pb2.Order(time_in_force=risk_pb2.TIME_IN_FORCE_IOC))
    assert "time in force  IOC" in ioc.splitlines()
    assert "time in force" not in format_decision(decision, risk_pb2.Order())
    assert format_decision(decision, risk_pb2.Order()) == format_decision(decision)


def test_target_defaults_to_the_environment_then_localhost(monkeypatch):
    monkeypatch.delenv("PRETRADE_TARGET", raising=False)
    assert parse_args([*ORDER, "--price", "1"]).target == "127.0.0.1:50051"
    monkeypatch.setenv("PRETRADE_TARGET", "gateway:7000")
    assert parse_args([*ORDER, "--price", "1"]).target == "gateway:7000"
    assert parse_args([*ORDER, "--price", "1", "--target", "h:1"]).target == "h:1"


def test_a_command_is_required(capsys):
    assert "required" in _usage_error(capsys, [])


# -- halt arguments ------------------------------------------------------------


def test_account_halt_request_carries_every_field():
    args = parse_args(
        ["halt", "--scope", "account", "--account", "A1", "--mode", "reduce_only",
         "--reason", "margin call", "--ttl", "300", "--by", "alice"]
    )  # fmt: skip
    assert build_halt_request(args) == risk_pb2.HaltRequest(
        scope=risk_pb2.HALT_SCOPE_ACCOUNT,
        account_id="A1",
        mode=risk_pb2.HALT_MODE_REDUCE_ONLY,
        reason="margin call",
        ttl_seconds=300,
        requested_by="alice",
        only_if_known=True,
    )
    args.force = True
    assert build_halt_request(args).only_if_known is False


def test_halt_is_recorded_as_the_user_by_default(monkeypatch):
    argv = ["halt", "--scope", "global", "--mode", "halted", "--reason", "fat finger"]
    monkeypatch.setenv("USER", "bob")
    assert build_halt_request(parse_args(argv)).requested_by == "bob"
    monkeypatch.delenv("USER")
    assert build_halt_request(parse_args(argv)).requested_by == "cli"


def test_lifting_a_halt_needs_no_reason():
    request = build_halt_request(
        parse_args(["halt", "--scope", "symbol", "--symbol", "AAPL", "--mode", "active"])
    )
    assert (request.scope, request.symbol, request.mode) == (
        risk_pb2.HALT_SCOPE_SYMBOL,
        "AAPL",
        risk_pb2.HALT_MODE_ACTIVE,
    )


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--scope", "account", "--mode", "active"], "--scope account needs --account"),
        (["--scope", "symbol", "--mode", "active"], "--scope symbol needs --symbol"),
        (["--scope", "global", "--symbol", "X", "--mode", "active"], "--symbol only goes with"),
        (["--scope", "global", "--mode", "halted"], "--mode halted needs --reason"),
        (["--scope", "global", "--mode", "reduce_only", "--reason", " "], "needs --reason"),
        (["--scope", "global", "--mode", "active", "--ttl", "-5"], "negative"),
        (["--scope", "world", "--mode", "active"], "invalid choice"),
    ],
)
def test_inconsistent_halt_arguments_are_usage_errors(capsys, argv, complaint):
    assert complaint in _usage_error(capsys, ["halt", *argv])


# -- serve arguments -----------------------------------------------------------


def test_serve_flags_that_were_not_given_are_none_so_config_decides():
    args = parse_args(["serve"])
    assert (args.redis_url, args.listen, args.table_path, args.demo, args.log_level) == (
        None,
        None,
        None,
        None,
        None,
    )
    args = parse_args(["serve", "--demo", "--log-level", "debug", "--listen", "0.0.0.0:1"])
    assert (args.demo, args.log_level, args.listen) == (True, "DEBUG", "0.0.0.0:1")


def test_serve_with_bad_settings_exits_2_without_starting(capsys):
    assert cli.main(["serve", "--listen", "no-port"]) == cli.EXIT_FAILED
    assert "listen='no-port'" in capsys.readouterr().err


# -- decision table ------------------------------------------------------------


def test_approved_decision_table():
    decision = risk_pb2.Decision(
        order_id="cli-0123456789ab",
        account_id="A1",
        symbol="AAPL",
        approved=True,
        notional=68337800,
        latency_ns=12345,
    )
    decision.currency = "USD"
    assert format_decision(decision) == "\n".join(
        [
            "order id  cli-0123456789ab",
            "account   A1",
            "symbol    AAPL",
            "verdict   APPROVED",
            "notional  $6,833.78",
            "latency   12.3 µs",
        ]
    )


def test_rejected_decision_lists_every_rejection_without_the_code_prefix():
    decision = risk_pb2.Decision(
        order_id="o-9",
        account_id="A1",
        symbol="AAPL",
        approved=False,
        notional=-15000,
        latency_ns=800,
        rejections=[
            risk_pb2.Rejection(
                code=risk_pb2.REJECT_CODE_MAX_ORDER_NOTIONAL,
                message="notional 6833.7800 above limit 5000.0000",
            ),
            risk_pb2.Rejection(code=risk_pb2.REJECT_CODE_SYMBOL_HALT, message="AAPL\nhalted"),
        ],
    )
    text = format_decision(decision)
    assert "verdict   REJECTED" in text
    assert "notional  -1.50" in text
    assert "latency   0.8 µs" in text
    assert text.splitlines()[-3:] == [
        "rejections (2)",
        "  MAX_ORDER_NOTIONAL  notional 6833.7800 above limit 5000.0000",
        "  SYMBOL_HALT         AAPL halted",
    ]


def test_a_reject_code_this_client_does_not_know_is_shown_by_number():
    decision = risk_pb2.Decision(order_id="o", rejections=[risk_pb2.Rejection(code=99)])
    assert "  UNKNOWN(99)  -" in format_decision(decision).splitlines()


def test_decision_table_has_no_trailing_blanks():
    decision = risk_pb2.Decision(rejections=[risk_pb2.Rejection(code=1, message="")])
    assert all(line == line.rstrip() for line in format_decision(decision).splitlines())


# -- halt table ----------------------------------------------------------------


def test_no_halts_in_force():
    assert format_halt_state(risk_pb2.HaltState()) == "No halts in force."


def test_halt_table_shows_scope_target_mode_reason_by_and_utc_times():
    state = risk_pb2.HaltState(
        halts=[
            risk_pb2.Halt(
                scope=risk_pb2.HALT_SCOPE_GLOBAL,
                mode=risk_pb2.HALT_MODE_HALTED,
                reason="fat finger",
                halted_by="alice",
                halted_at_unix_ms=MS_2025_01_02_03_04_05,
            ),
            risk_pb2.Halt(
                scope=risk_pb2.HALT_SCOPE_ACCOUNT,
                target="A1",
                mode=risk_pb2.HALT_MODE_REDUCE_ONLY,
                reason="margin call",
                halted_by="bob",
                halted_at_unix_ms=MS_2025_01_02_03_04_05,
                expires_at_unix_ms=MS_2025_01_02_03_04_05 + 300_000,
            ),
        ]
    )
    assert format_halt_state(state) == "\n".join(
        [
            "SCOPE    TARGET  MODE         REASON       BY     SINCE                 EXPIRES",
            "GLOBAL   -       HALTED       fat finger   alice  2025-01-02T03:04:05Z  never",
            "ACCOUNT  A1      REDUCE_ONLY  margin call  bob    2025-01-02T03:04:05Z  "
            "2025-01-02T03:09:05Z",
        ]
    )


def test_halt_time_beyond_the_calendar_is_shown_raw():
    state = risk_pb2.HaltState(halts=[risk_pb2.Halt(halted_at_unix_ms=2**62)])
    assert f"{2**62} ms after epoch (out of range)" in format_halt_state(state)


# -- json and entry points -----------------------------------------------------


def test_json_output_keeps_false_and_zero_fields():
    decision = risk_pb2.Decision(order_id="o", approved=False)
    parsed = json.loads(to_json(decision))
    assert parsed["approved"] is False
    assert parsed["order_id"] == "o"
    assert json_format.Parse(json.dumps(parsed), risk_pb2.Decision()) == decision


def test_json_is_the_proto_field_names_with_int64_as_numbers_at_any_depth():
    update = risk_pb2.PortfolioUpdate(
        account_id="A1", sequence=7, holdings=[risk_pb2.Holding(symbol="AAPL", quantity=2**62,
                                                                currency="USD")],
        totals=risk_pb2.PortfolioTotals(market_value=-5, currency=""))
    parsed = json.loads(to_json(update))
    assert parsed["sequence"] == 7
    assert parsed["holdings"][0]["quantity"] == 2**62  # exact: Python's json keeps big ints
    assert parsed["holdings"][0]["currency"] == "USD"
    assert parsed["totals"]["market_value"] == -5
    assert parsed["kind"] == "PORTFOLIO_UPDATE_KIND_UNSPECIFIED"
    assert json_format.Parse(json.dumps(parsed), risk_pb2.PortfolioUpdate()) == update


def test_unreachable_gateway_exits_2_with_the_status_code(capsys, unused_tcp_port):
    argv = [*ORDER, "--price", "1", "--target", f"127.0.0.1:{unused_tcp_port}"]
    assert cli.main(argv) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "EvaluateOrder" in err and "UNAVAILABLE" in err


def test_python_dash_m_pretrade_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "pretrade", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pretrade ")


def test_status_counts_have_separators_and_times_their_unit():
    from pretrade.cli.format import format_status

    text = format_status(risk_pb2.ServerStatus(sync_live=True, events_applied=1_234_567,
                                               lag_ms=1500))
    rows = {label.strip(): value for label, value in
            (line.rsplit("  ", 1) for line in text.splitlines())}
    assert rows["events applied"].strip() == "1,234,567"
    assert rows["lag"].strip() == "1,500 ms"
    assert rows["sync live"].strip() == "yes"
