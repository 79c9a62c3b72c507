"""The ``pretrade`` command end to end: a subprocess talking to a real gateway over gRPC.

Exit statuses are part of the interface (0 approved, 1 rejected, 2 the call
failed), so each test runs the installed console script as a user would and
checks its status, its output and, through a second order, its effect.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from book import seed_account, seed_lots, wait_until
from pretrade.cli.commands import CLIENT_ENVIRONMENT

CLI_TIMEOUT_SECONDS = 30


def pretrade_command() -> list[str]:
    """The installed ``pretrade`` console script, else ``python -m pretrade``."""
    script = Path(sys.executable).with_name("pretrade")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "pretrade"]


def run_pretrade(*args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in CLIENT_ENVIRONMENT}
    return subprocess.run([*pretrade_command(), *args], capture_output=True, text=True,
                          env=env, timeout=CLI_TIMEOUT_SECONDS, check=False)


def order_args(target: str, *, account: str = "ACC-1", qty: str = "10",
               price: str = "68.3378", side: str = "buy") -> list[str]:
    return ["order", "--target", target, "--account", account, "--symbol", "AAPL",
            "--side", side, "--qty", qty, "--price", price]


def halt_account_args(target: str, mode: str, *extra: str) -> list[str]:
    return ["halt", "--target", target, "--scope", "account", "--account", "ACC-1",
            "--mode", mode, *extra]


@pytest.fixture
def book(redis_client: redis.Redis) -> redis.Redis:
    """ACC-1 and ACC-2 with generous limits, AAPL at $68.3378; ACC-1 holds 20 AAPL.

    Seeded before the gateway starts: list it before ``gateway`` in a test's args.
    """
    seed_account(redis_client, "ACC-1")
    seed_account(redis_client, "ACC-2")
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 10, 683_378), ("L2", "AAPL", 10, 688_200)])
    return redis_client


@pytest.fixture
def unused_target() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_approved_order_exits_0_and_prints_the_decision(book, gateway):
    run = run_pretrade(*order_args(gateway.target), "--order-id", "cli-ok-1")
    assert run.returncode == 0, run
    assert "APPROVED" in run.stdout
    assert "cli-ok-1" in run.stdout
    assert "683.3780" in run.stdout  # 10 x $68.3378
    assert "time in force" not in run.stdout  # none was sent
    assert run.stderr == ""


def test_rejected_order_exits_1_and_names_each_reject_code(book, gateway):
    # 5,000 x $68.3378 breaks the quantity limit (1,000) and the notional limit at once.
    run = run_pretrade(*order_args(gateway.target, qty="5000"))
    assert run.returncode == 1, run
    assert "REJECTED" in run.stdout
    assert "MAX_ORDER_QUANTITY" in run.stdout
    assert "MAX_ORDER_NOTIONAL" in run.stdout
    assert "REJECT_CODE_" not in run.stdout  # the table drops the prefix


def test_order_json_output_is_the_decision_message(book, gateway):
    run = run_pretrade(*order_args(gateway.target, qty="2", price="68.82"), "--json",
                       "--order-id", "cli-json-1")
    assert run.returncode == 0, run
    decision = json.loads(run.stdout)
    assert decision["approved"] is True
    assert decision["order_id"] == "cli-json-1"  # the proto's field names
    assert decision["notional"] == 2 * 688_200  # int64 as a JSON number, exact


def test_market_order_is_valued_at_the_last_price(book, gateway):
    run = run_pretrade("order", "--target", gateway.target, "--account", "ACC-1",
                       "--symbol", "AAPL", "--side", "sell", "--qty", "3", "--type", "market")
    assert run.returncode == 0, run
    assert "205.0134" in run.stdout  # 3 x $68.3378


def test_account_halt_prints_the_halt_table_and_rejects_that_accounts_next_order(
        book, gateway):
    run = run_pretrade(*halt_account_args(gateway.target, "halted", "--reason",
                                          "suspicious flow", "--by", "alice"))
    assert run.returncode == 0, run
    header, *rows = run.stdout.splitlines()
    assert header.split() == ["SCOPE", "TARGET", "MODE", "REASON", "BY", "SINCE", "EXPIRES"]
    assert len(rows) == 1
    assert rows[0].split()[:3] == ["ACCOUNT", "ACC-1", "HALTED"]
    assert "suspicious flow" in rows[0]
    assert "alice" in rows[0]
    assert rows[0].rstrip().endswith("never")
    assert book.hget("halt:account:ACC-1", "mode") == b"HALTED"

    run = run_pretrade(*order_args(gateway.target))
    assert run.returncode == 1, run
    assert "ACCOUNT_HALT" in run.stdout
    # Other accounts keep trading.
    assert run_pretrade(*order_args(gateway.target, account="ACC-2")).returncode == 0


def test_mode_active_lifts_the_halt_and_orders_are_approved_again(book, gateway):
    halted = run_pretrade(*halt_account_args(gateway.target, "halted", "--reason", "check"))
    assert halted.returncode == 0, halted
    assert run_pretrade(*order_args(gateway.target)).returncode == 1

    lifted = run_pretrade(*halt_account_args(gateway.target, "active"))
    assert lifted.returncode == 0, lifted
    assert lifted.stdout.strip() == "No halts in force."
    assert not book.exists("halt:account:ACC-1")
    run = run_pretrade(*order_args(gateway.target))
    assert run.returncode == 0, run
    assert "APPROVED" in run.stdout


def test_reduce_only_halt_with_ttl_lets_only_reducing_orders_through(book, gateway):
    run = run_pretrade(*halt_account_args(gateway.target, "reduce_only", "--reason", "wind down",
                                          "--ttl", "600"))
    assert run.returncode == 0, run
    row = run.stdout.splitlines()[1]
    assert row.split()[:3] == ["ACCOUNT", "ACC-1", "REDUCE_ONLY"]
    assert not row.rstrip().endswith("never")
    assert 0 < book.ttl("halt:account:ACC-1") <= 600

    bought = run_pretrade(*order_args(gateway.target, qty="1"))
    assert bought.returncode == 1, bought
    assert "REDUCE_ONLY" in bought.stdout
    sold = run_pretrade(*order_args(gateway.target, qty="5", side="sell"))  # 20 held
    assert sold.returncode == 0, sold


@pytest.mark.parametrize("command", ["order", "halt"])
def test_unreachable_gateway_exits_2_with_the_status_on_stderr(unused_target, command):
    args = (order_args(unused_target) if command == "order"
            else halt_account_args(unused_target, "halted", "--reason", "x"))
    run = run_pretrade(*args)
    assert run.returncode == 2, run
    assert run.stdout == ""
    method = "EvaluateOrder" if command == "order" else "Halt"
    [line] = run.stderr.splitlines()
    assert line.startswith(f"pretrade: no gateway answers at {unused_target} ({method}: "
                           "UNAVAILABLE)")
    assert "make serve" in line and "pretrade serve" in line


def test_malformed_order_exits_2_with_invalid_argument_on_stderr(book, gateway):
    run = run_pretrade(*order_args(gateway.target, account="NOT AN ID"))
    assert run.returncode == 2, run
    assert run.stdout == ""
    assert "failed: INVALID_ARGUMENT" in run.stderr
    assert "account_id" in run.stderr


# -- foreseeable mistakes: one line on stderr and an exit status, never a traceback --


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    assert run.stdout == ""
    [line] = run.stderr.splitlines()
    return line


@pytest.mark.parametrize("target", ["127.0.0.1:PORT", "localhost:PORT", "127.0.0.1"])
@pytest.mark.parametrize("command", ["order", "halt", "status"])
def test_a_target_with_port_left_in_is_one_line_and_exit_2(command, target):
    args = {"order": order_args(target),
            "halt": halt_account_args(target, "halted", "--reason", "x"),
            "status": ["status", "--target", target]}[command]
    run = run_pretrade(*args)
    assert run.returncode == 2, run
    line = one_line_error(run)
    assert line.startswith(f"pretrade: --target {target!r}")
    assert "50051" in line  # an example of what belongs there


def test_status_of_a_gateway_that_is_not_running_says_how_to_start_one(unused_target):
    run = run_pretrade("status", "--target", unused_target)
    assert run.returncode == 2, run
    line = one_line_error(run)
    assert f"no gateway answers at {unused_target}" in line
    assert "make serve" in line


def test_money_in_the_table_is_grouped_and_json_keeps_the_raw_integer(book, gateway):
    run = run_pretrade(*order_args(gateway.target, qty="100", price="68.91"))
    assert run.returncode == 0, run
    assert "notional  $6,891.00" in run.stdout  # AAPL names no currency: default_currency
    raw = run_pretrade(*order_args(gateway.target, qty="100", price="68.91"), "--json")
    assert json.loads(raw.stdout)["notional"] == 68_910_000


def test_order_replace_sends_a_cancel_replace_and_exits_by_its_verdict(book, gateway):
    assert run_pretrade(*order_args(gateway.target), "--order-id", "cli-r-1").returncode == 0
    replaced = run_pretrade("order", "--target", gateway.target, "--account", "ACC-1",
                            "--replace", "cli-r-1", "--qty", "12", "--order-id", "cli-r-2")
    assert replaced.returncode == 0, replaced
    assert "APPROVED" in replaced.stdout and "cli-r-2" in replaced.stdout
    assert "AAPL" in replaced.stdout and "820.0536" in replaced.stdout  # 12 x $68.3378
    again = run_pretrade("order", "--target", gateway.target, "--account", "ACC-1",
                         "--replace", "cli-r-1", "--price", "68.40", "--order-id", "cli-r-3")
    assert again.returncode == 1, again
    assert "ORIGINAL_NOT_WORKING" in again.stdout and "already replaced" in again.stdout


@pytest.mark.parametrize("args, complaint", [
    (["--replace", "o-1"], "needs a new --qty or --price"),
    (["--replace", "o-1", "--qty", "5", "--symbol", "AAPL"], "--symbol is the original's"),
    (["--replace", "o-1", "--qty", "5", "--side", "buy"], "--side is the original's"),
    (["--qty", "5", "--price", "1"], "an order needs --symbol"),
])
def test_order_replace_and_order_arguments_that_do_not_go_together_are_usage_errors(
        args, complaint):
    run = run_pretrade("order", "--target", "127.0.0.1:1", "--account", "A", *args)
    assert run.returncode == 2, run
    assert complaint in run.stderr.splitlines()[-1]


@pytest.mark.parametrize("args, complaint", [
    (["--price", "68.9.1"], "not a plain decimal number"),
    (["--price", "68.91234"], "more than 4 decimal places"),
    (["--price", "$68.91"], "not a plain decimal number"),
    (["--side", "purchase"], "invalid choice"),
    (["--type", "stop"], "invalid choice"),
])
def test_bad_money_text_or_an_unknown_enum_word_is_a_usage_error(args, complaint):
    base = ["order", "--target", "127.0.0.1:1", "--account", "A", "--symbol", "AAPL",
            "--side", "buy", "--qty", "1", "--price", "1"]
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in base:
            base[base.index(flag) + 1] = value
        else:
            base += [flag, value]
    run = run_pretrade(*base)
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr
    assert complaint in run.stderr.splitlines()[-1]


@pytest.mark.parametrize("scope, name", [("account", "ACC-TYPO"), ("symbol", "AAPLL")])
def test_halting_what_the_gateway_never_saw_warns_and_needs_force(book, gateway, scope, name):
    args = ["halt", "--target", gateway.target, "--scope", scope, f"--{scope}", name,
            "--mode", "halted", "--reason", "typo?"]
    refused = run_pretrade(*args)
    assert refused.returncode == 2, refused
    line = one_line_error(refused)
    assert f"never seen {scope} {name!r}" in line and "--force" in line
    assert not book.exists(f"halt:{scope}:{name}")

    forced = run_pretrade(*args, "--force")
    assert forced.returncode == 0, forced
    assert book.hget(f"halt:{scope}:{name}", "mode") == b"HALTED"


def test_halting_a_known_symbol_needs_no_force(book, gateway):
    run = run_pretrade("halt", "--target", gateway.target, "--scope", "symbol", "--symbol",
                       "AAPL", "--mode", "halted", "--reason", "news")
    assert run.returncode == 0, run
    assert book.hget("halt:symbol:AAPL", "mode") == b"HALTED"


# -- pretrade portfolio --


def test_portfolio_prints_the_holdings_money_in_their_currency(book, gateway):
    book.hset("instrument:AAPL", "currency", "USD")
    book.hset("pnl:{ACC-1}", "realized", 125_000)
    run = wait_until(lambda: run_pretrade("portfolio", "--target", gateway.target,
                                          "--account", "ACC-1"),
                     lambda r: "$12.50" in r.stdout)
    assert run.returncode == 0, run
    lines = run.stdout.splitlines()
    assert lines[0].startswith("ACC-1  SNAPSHOT #1 at ")
    assert lines[1].split() == ["SYMBOL", "QTY", "AVG", "COST", "LAST", "MARKET", "VALUE",
                                "UNREALIZED", "VALUATION"]
    # 10 @ 68.3378 and 10 @ 68.82, last 68.3378 (the worked example of test_portfolio.py).
    assert lines[2].split() == ["AAPL", "20", "$68.5789", "$68.3378", "$1,366.7560",
                                "-$4.8220", "PRICED"]
    assert "realized $12.50" in lines[3]


def test_portfolio_json_is_one_line_per_message_with_raw_integers(book, gateway):
    run = run_pretrade("portfolio", "--target", gateway.target, "--account", "ACC-1", "--json")
    assert run.returncode == 0, run
    [line] = run.stdout.splitlines()
    update = json.loads(line)
    assert update["kind"] == "PORTFOLIO_UPDATE_KIND_SNAPSHOT"
    assert update["holdings"][0]["market_value"] == 20 * 683_378
    assert update["holdings"][0]["currency"] == "USD"


def test_portfolio_of_a_group_prints_its_accounts_summed(book, redis_client, gateway):
    # ACC-1's 20 AAPL and ACC-2's 5, in DESK: the group's holding is 25.
    seed_lots(redis_client, "ACC-2", [("L3", "AAPL", 5, 683_378)])
    redis_client.hset("group:DESK", "max_long_position", 1_000)
    for account in ("ACC-1", "ACC-2"):
        redis_client.sadd(f"groups:{{{account}}}", "DESK")
    run = wait_until(lambda: run_pretrade("portfolio", "--target", gateway.target,
                                          "--group", "DESK"),
                     lambda r: r.returncode == 0 and " 25 " in r.stdout)
    lines = run.stdout.splitlines()
    assert lines[0].startswith("group DESK  SNAPSHOT #1 at ")
    assert lines[2].split()[:2] == ["AAPL", "25"]
    both = run_pretrade("portfolio", "--target", gateway.target, "--group", "DESK",
                        "--account", "ACC-1")
    assert both.returncode != 0 and "not allowed with" in both.stderr


def test_portfolio_of_an_unknown_account_is_one_line_not_found(book, gateway):
    run = run_pretrade("portfolio", "--target", gateway.target, "--account", "NOBODY")
    assert run.returncode == 2, run
    line = one_line_error(run)
    assert "NOT_FOUND" in line and "NOBODY" in line


def test_portfolio_follow_prints_updates_until_ctrl_c(book, gateway):
    env = {name: value for name, value in os.environ.items() if name not in CLIENT_ENVIRONMENT}
    process = subprocess.Popen(
        [*pretrade_command(), "portfolio", "--target", gateway.target, "--account", "ACC-1",
         "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        assert "SNAPSHOT #1" in process.stdout.readline()
        book.set("price:AAPL", 700_000)
        while "UPDATE #" not in (line := process.stdout.readline()):
            assert line, "the stream ended"
        assert "$70.00" in process.stdout.readline() + process.stdout.readline()
        process.send_signal(signal.SIGINT)
        assert process.wait(CLI_TIMEOUT_SECONDS) == 0
        assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- time in force --


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def full_at_100(book: redis.Redis) -> redis.Redis:
    """``book`` with ACC-1 at most 100 AAPL long: holding 20, an order of 80 fills the limit."""
    book.hset("limits:{ACC-1}", mapping={"max_long_position": 100, "max_net_position": 100})
    return book


def test_gtd_order_with_an_iso_expiry_is_approved_and_shows_its_time_in_force(book, gateway):
    tomorrow = datetime.fromtimestamp(time.time() + 86_400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = run_pretrade(*order_args(gateway.target), "--tif", "gtd", "--expire-at", tomorrow)
    assert run.returncode == 0, run
    assert f"time in force  GTD until {tomorrow}" in run.stdout.splitlines()
    assert run.stderr == ""


def test_two_oco_exits_of_the_cli_both_close_the_holding_and_show_their_group(book, gateway):
    # ACC-1 holds 20: two sells of 20 in one group are both closing orders
    for order_id in ("TP", "SL"):
        run = run_pretrade(*order_args(gateway.target, qty="20", side="sell"), "--oco", "EXIT",
                           "--order-id", order_id)
        assert run.returncode == 0, run
        assert "oco group  EXIT" in run.stdout.splitlines()
    plain = run_pretrade(*order_args(gateway.target, qty="20", side="sell"))
    assert plain.returncode == 1, plain
    assert "SHORT_SALE_NOT_MARKED" in plain.stdout


@pytest.mark.parametrize("tif", ["day", "ioc", "gtc"])
def test_an_order_with_a_time_in_force_and_no_expiry_shows_its_name(book, gateway, tif):
    run = run_pretrade(*order_args(gateway.target, qty="1"), "--tif", tif)
    assert run.returncode == 0, run
    assert f"time in force  {tif.upper()}" in run.stdout.splitlines()


def test_gtd_expiry_in_epoch_ms_holds_the_limit_until_then_and_not_after(full_at_100, gateway):
    expire_at = now_ms() + 2_500
    held = run_pretrade(*order_args(gateway.target, qty="80"), "--tif", "gtd",
                        "--expire-at", str(expire_at))
    assert held.returncode == 0, held
    assert "time in force  GTD until" in held.stdout
    blocked = run_pretrade(*order_args(gateway.target, qty="1"))
    assert blocked.returncode == 1, blocked
    assert "MAX_LONG_POSITION" in blocked.stdout
    # Once the expiry the CLI sent has passed, the order stops counting.
    after = wait_until(lambda: run_pretrade(*order_args(gateway.target, qty="1")),
                       lambda r: r.returncode == 0, timeout=10)
    assert after.returncode == 0, after
    assert now_ms() >= expire_at


@pytest.mark.parametrize("form", ["iso", "epoch_ms"])
def test_gtd_order_whose_expiry_has_passed_exits_1_order_expired(book, gateway, form):
    expire_at = "2026-01-01T00:00:00Z" if form == "iso" else "1767225600000"
    run = run_pretrade(*order_args(gateway.target), "--tif", "gtd", "--expire-at", expire_at)
    assert run.returncode == 1, run
    assert "ORDER_EXPIRED" in run.stdout
    assert "time in force  GTD until 2026-01-01T00:00:00Z" in run.stdout.splitlines()


def test_order_json_with_a_time_in_force_is_still_the_decision_message(book, gateway):
    plain = run_pretrade(*order_args(gateway.target, qty="1"), "--json")
    timed = run_pretrade(*order_args(gateway.target, qty="1"), "--json", "--tif", "gtd",
                         "--expire-at", str(now_ms() + 86_400_000))
    assert plain.returncode == timed.returncode == 0, (plain, timed)
    assert json.loads(timed.stdout).keys() == json.loads(plain.stdout).keys()
    assert "order_id" in json.loads(timed.stdout)  # the proto's field names


@pytest.mark.parametrize("args, complaint", [
    (["--tif", "gtd"], "--tif gtd needs --expire-at"),
    (["--expire-at", "2026-12-31T21:00:00Z"], "--expire-at only goes with --tif gtd"),
    (["--tif", "day", "--expire-at", "1798750800000"], "--expire-at only goes with --tif gtd"),
])
def test_gtd_and_expire_at_without_each_other_are_one_line_and_exit_2(unused_target, args,
                                                                      complaint):
    run = run_pretrade(*order_args(unused_target), *args)
    assert run.returncode == 2, run
    line = one_line_error(run)
    assert line.startswith(f"pretrade: {complaint}")


@pytest.mark.parametrize("args", [["--tif", "day"],
                                  ["--tif", "gtd", "--expire-at", "1798750800000"]])
def test_a_replace_with_a_time_in_force_is_one_line_and_exit_2(unused_target, args):
    # A replacement keeps its original's time in force: nothing is sent.
    run = run_pretrade("order", "--target", unused_target, "--account", "ACC-1",
                       "--replace", "o-1", "--qty", "5", *args)
    assert run.returncode == 2, run
    assert one_line_error(run).startswith(
        "pretrade: a replacement keeps its original's time in force")


@pytest.mark.parametrize("expire_at", ["tomorrow", "2026-13-01T00:00:00Z", "-5", "0"])
def test_an_expire_at_that_is_no_time_is_a_usage_error(unused_target, expire_at):
    run = run_pretrade(*order_args(unused_target), "--tif", "gtd", "--expire-at", expire_at)
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert "argument --expire-at" in run.stderr.splitlines()[-1]
