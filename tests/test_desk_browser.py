"""The risk desk in a real browser: headless Chromium driven by Playwright.

Debian's ``chromium`` (``/usr/bin/chromium``) opens the page against a real
gateway and Redis, as a person would: it signs in with a token, watches a
price written to Redis change the market value without a reload, sees a
margined account's equity and the margin call a price move raises, halts an
account from the kill switch, and, as a trader, finds no halt control.
Each test saves a screenshot in its temporary directory. ``playwright
install`` is never used (it downloads a browser of its own).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from book import order, seed_account, seed_lots
from conftest import GatewayThread
from desk_parts import CALLING_PRICE, DeskThread, DeskTokens, seed_margin, write_tokens
from pretrade.state.schema import halt_key, price_key
from pretrade.v1 import risk_pb2 as pb

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
#: How long the page may take to show what the desk pushed, milliseconds.
SHOWN_WITHIN_MS = 1_000


def chromium_path() -> str:
    """Debian's Chromium; pytest.fail saying how to install it when it is missing."""
    found = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if found is None:
        pytest.fail("Chromium is missing: the risk desk's browser tests drive Debian's "
                    "chromium (/usr/bin/chromium). Install it as root with "
                    "`apt-get install -y chromium` (`playwright install` cannot download "
                    "here, and is not used).")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> DeskTokens:
    return write_tokens(tmp_path_factory.mktemp("browser-tokens"))


@pytest.fixture
def book(redis_client: redis.Redis) -> redis.Redis:
    """ACC-1 holds 100 AAPL at $68.3378, the last price too: a market value of $6,833.78."""
    seed_account(redis_client, "ACC-1")
    seed_lots(redis_client, "ACC-1", [("lot-1", "AAPL", 100, 683_378)])
    return redis_client


@pytest.fixture
def gateway(book: redis.Redis, start_gateway: Callable[..., GatewayThread],
            tokens: DeskTokens) -> GatewayThread:
    return start_gateway("browser", auth="tokens", tokens_file=str(tokens.path))


@pytest.fixture
def desk(gateway: GatewayThread) -> Iterator[DeskThread]:
    desk = DeskThread(gateway.target)
    yield desk
    desk.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


def sign_in(page: Any, desk: DeskThread, token: str) -> None:
    from playwright.sync_api import expect

    page.goto(desk.url)
    page.fill("#token", token)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#live")).to_have_text("live", timeout=10_000)


def market_value(page: Any, account: str) -> Any:
    return page.locator(f'tr[data-account="{account}"]:not(.holding) td.market-value')


def test_a_price_written_to_redis_changes_the_shown_market_value_within_a_second(
        page, desk, tokens, book, tmp_path):
    from playwright.sync_api import expect

    sign_in(page, desk, tokens["operator"])
    shown = market_value(page, "ACC-1")
    expect(shown).to_contain_text("6,833.78", timeout=10_000)
    written = time.monotonic()
    book.set(price_key(b"AAPL"), 700_000)
    expect(shown).to_contain_text("7,000.00", timeout=SHOWN_WITHIN_MS)
    elapsed = time.monotonic() - written
    holding = page.locator('tr.holding[data-symbol="AAPL"]')
    expect(holding.locator("td.last-price")).to_contain_text("70.00")
    expect(holding.locator("td.unrealized")).to_contain_text("166.22")  # 100 x (70 - 68.3378)
    page.screenshot(path=str(tmp_path / "desk-price.png"), full_page=True)
    assert elapsed < SHOWN_WITHIN_MS / 1000
    # An unmargined book looks as it did before margin: no margin columns.
    assert page.locator("#accounts th.margin:visible").count() == 0
    assert page.locator("#accounts td.equity").count() == 0


def test_a_margined_accounts_equity_is_shown_and_a_price_that_breaks_maintenance_calls_margin(
        page, desk, tokens, book, tmp_path):
    from playwright.sync_api import expect

    seed_margin(book)
    sign_in(page, desk, tokens["operator"])
    row = page.locator('tr[data-account="ACC-1"]:not(.holding)')
    expect(row.locator("td.equity")).to_have_text("$3,416.89", timeout=10_000)
    expect(row.locator("td.margin-used")).to_have_text("$3,416.89")
    expect(row.locator("td.margin-excess")).to_have_text("$0.00")
    # all four decimals when the sub-cent digits are not zero, as the page shows money
    expect(row.locator("td.maintenance-margin")).to_have_text("$1,708.4450")
    assert page.locator("#accounts th.margin:visible").count() == 4
    calls = page.locator('#alerts li[data-account="ACC-1"][data-kind="MARGIN_CALL"]')
    assert calls.count() == 0
    book.set(price_key(b"AAPL"), CALLING_PRICE)  # no reload: pushed over the event stream
    expect(calls).to_have_text("ACC-1: MARGIN_CALL MARGIN_SHORTFALL: equity $583.11 is below "
                               "the maintenance margin $1,000.00", timeout=SHOWN_WITHIN_MS * 5)
    expect(row.locator("td.equity")).to_have_text("$583.11")
    expect(row.locator("td.margin-excess")).to_have_text("-$1,416.89")
    expect(row.locator("td.margin-excess")).to_have_class("margin-excess money negative")
    page.screenshot(path=str(tmp_path / "desk-margin-call.png"), full_page=True)
    book.hset("balances:{ACC-1}", "cash", 40_000_000)  # equity $1,166.22: the call clears
    expect(calls).to_have_count(0, timeout=SHOWN_WITHIN_MS * 5)


def test_an_operators_halt_from_the_page_reaches_redis_and_rejects_the_next_order(
        page, desk, tokens, book, stub, tmp_path):
    from playwright.sync_api import expect

    sign_in(page, desk, tokens["operator"])
    page.select_option("#halt-scope", "ACCOUNT")
    page.fill("#halt-target", "ACC-1")
    page.select_option("#halt-mode", "HALTED")
    page.fill("#halt-reason", "browser test")
    page.click("#halt-review")
    expect(page.locator("#halt-summary")).to_contain_text("Set HALTED on account ACC-1")
    assert not book.exists(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-1"))  # not before confirming
    page.click("#halt-confirm-button")
    expect(page.locator('#halts tr[data-target="ACC-1"]')).to_contain_text("HALTED")
    assert book.hget(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-1"), "reason") == b"browser test"
    page.screenshot(path=str(tmp_path / "desk-halt.png"), full_page=True)
    decision = stub.EvaluateOrder(order(account="ACC-1"), timeout=5,
                                  metadata=[("authorization", f"Bearer {tokens['root']}")])
    assert [r.code for r in decision.rejections] == [pb.REJECT_CODE_ACCOUNT_HALT]


def test_a_trader_sees_its_halt_but_no_halt_control(page, desk, tokens, book, tmp_path):
    from playwright.sync_api import expect

    book.hset(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-1"),
              mapping={"mode": "HALTED", "reason": "seen by the trader", "by": "ops",
                       "at": str(int(time.time() * 1000))})
    sign_in(page, desk, tokens["trader-1"])
    expect(page.locator('#halts tr[data-target="ACC-1"]')).to_contain_text("seen by the trader",
                                                                          timeout=10_000)
    expect(market_value(page, "ACC-1")).to_contain_text("6,833.78")
    assert page.locator("#killswitch").count() == 0
    assert page.locator("#halts button").count() == 0
    page.screenshot(path=str(tmp_path / "desk-trader.png"), full_page=True)
