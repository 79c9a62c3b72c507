"""StreamPortfolio over a real gRPC channel, fed by a real redis-server and its price stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import grpc
import pytest
import redis

from book import (
    GENEROUS_LIMITS,
    codes,
    order,
    redis_cli,
    seed_account,
    seed_instrument,
    seed_limits,
    seed_lots,
    wait_until,
)
from conftest import GatewayThread
from pretrade._core import PositionTable
from pretrade.api.access import new_token, token_entry
from pretrade.engine.fixedpoint import average_cost
from pretrade.engine.limits import LimitKind
from pretrade.engine.table import new_private_table
from pretrade.state.schema import lot_keys, pnl_key
from pretrade.stream.portfolio import (
    MAX_ACTIVE_STREAMS,
    PortfolioHub,
    position_breaches,
    sum_totals,
    value_holding,
)
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

STREAM_TIMEOUT = 20.0
WORKED_EXAMPLE_LOTS = [("L1", "AAPL", 10, 683_378), ("L2", "AAPL", 10, 688_200)]
#: A client channel whose HTTP/2 windows stay small, so a reader that stops
#: reading holds the server back after a few messages (no BDP window growth).
SMALL_WINDOW = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]

Stream = Iterator[pb.PortfolioUpdate]


@pytest.fixture
def book(redis_client: redis.Redis) -> redis.Redis:
    """ACC-1 holds the worked example: 10 @ 68.3378 and 10 @ 68.82 of AAPL, last 68.3378."""
    seed_account(redis_client)
    seed_lots(redis_client, "ACC-1", WORKED_EXAMPLE_LOTS)
    return redis_client


def subscribe(stub: risk_pb2_grpc.PreTradeRiskStub, account: str = "ACC-1",
              heartbeat_ms: int = 300_000) -> Stream:
    """A stream that fails with DEADLINE_EXCEEDED rather than hang a broken test."""
    request = pb.PortfolioRequest(account_id=account, heartbeat_interval_ms=heartbeat_ms)
    return stub.StreamPortfolio(request, timeout=STREAM_TIMEOUT)


def next_change(stream: Stream) -> pb.PortfolioUpdate:
    """The next SNAPSHOT or UPDATE, skipping heartbeats."""
    for update in stream:
        if update.kind != pb.PORTFOLIO_UPDATE_KIND_HEARTBEAT:
            return update
    raise AssertionError("the stream ended")


def tick(r: redis.Redis, symbol: str, price: int | str) -> None:
    """A market-data writer's tick: the latest-price key and the stream entry, atomically."""
    with r.pipeline(transaction=True) as pipe:
        pipe.set(f"price:{symbol}", price)
        pipe.xadd("prices", {"symbol": symbol, "price": price})
        pipe.execute()


def next_matching(stream: Stream, accept: Callable[[pb.PortfolioUpdate], bool]
                  ) -> pb.PortfolioUpdate:
    """The first SNAPSHOT or UPDATE ``accept`` holds for (bounded by the stream's deadline)."""
    while True:
        update = next_change(stream)
        if accept(update):
            return update


def holdings(update: pb.PortfolioUpdate) -> dict[str, pb.Holding]:
    return {holding.symbol: holding for holding in update.holdings}


# -- SNAPSHOT --


def test_first_message_is_a_snapshot_valued_as_the_worked_example(book, stub):
    book.hset(pnl_key(b"ACC-1"), "realized", 125_000)
    snapshot = wait_until(lambda: next(subscribe(stub)),
                          lambda s: s.totals.realized_pnl == 125_000)
    assert snapshot.kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
    assert (snapshot.account_id, snapshot.sequence) == ("ACC-1", 1)
    assert snapshot.timestamp_unix_ns > 0
    [aapl] = snapshot.holdings
    assert average_cost(20, 13_715_780) == 685_789
    assert (aapl.symbol, aapl.quantity, aapl.average_cost, aapl.cost_basis) == (
        "AAPL", 20, 685_789, 13_715_780)
    assert (aapl.last_price, aapl.market_value) == (683_378, 20 * 683_378)
    assert aapl.unrealized_pnl == 20 * 683_378 - 13_715_780 == -48_220
    assert aapl.valuation == pb.VALUATION_PRICED
    totals = snapshot.totals
    assert (totals.market_value, totals.cost_basis, totals.unrealized_pnl) == (
        13_667_560, 13_715_780, -48_220)
    assert totals.realized_pnl == 125_000
    assert (totals.unvalued_holdings, totals.valuation) == (0, pb.VALUATION_PRICED)
    assert list(snapshot.alerts) == []


def test_holding_without_a_last_price_says_so_and_is_left_out_of_the_totals(book, stub):
    seed_instrument(book, "NOPX")
    seed_lots(book, "ACC-1", [("L3", "NOPX", 7, 120_000)])
    snapshot = wait_until(lambda: next(subscribe(stub)), lambda s: "NOPX" in holdings(s))
    nopx = holdings(snapshot)["NOPX"]
    assert nopx.valuation == pb.VALUATION_NO_PRICE
    assert (nopx.quantity, nopx.average_cost, nopx.cost_basis) == (7, 120_000, 840_000)
    assert (nopx.last_price, nopx.market_value, nopx.unrealized_pnl) == (0, 0, 0)
    totals = snapshot.totals
    assert (totals.valuation, totals.unvalued_holdings) == (pb.VALUATION_NO_PRICE, 1)
    assert totals.market_value == 20 * 683_378  # AAPL only
    assert totals.cost_basis == 13_715_780 + 840_000


def test_account_with_limits_but_no_holdings_gets_an_empty_snapshot(redis_client, stub):
    seed_limits(redis_client, "ACC-2", **GENEROUS_LIMITS)
    snapshot = wait_until(lambda: _first_or_code(stub, "ACC-2"),
                          lambda s: isinstance(s, pb.PortfolioUpdate))
    assert isinstance(snapshot, pb.PortfolioUpdate)
    assert list(snapshot.holdings) == []
    assert (snapshot.totals.market_value, snapshot.totals.valuation) == (0, pb.VALUATION_PRICED)


def _first_or_code(stub, account: str) -> pb.PortfolioUpdate | grpc.StatusCode:
    try:
        return next(subscribe(stub, account))
    except grpc.RpcError as error:
        return error.code()


# -- UPDATES --


def test_price_tick_on_the_stream_pushes_an_update_with_the_new_values(book, stub):
    stream = subscribe(stub)
    assert next(stream).kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
    tick(book, "AAPL", 700_000)
    update = next_change(stream)
    assert (update.kind, update.sequence) == (pb.PORTFOLIO_UPDATE_KIND_UPDATE, 2)
    [aapl] = update.holdings
    assert (aapl.last_price, aapl.market_value) == (700_000, 14_000_000)
    assert aapl.unrealized_pnl == 14_000_000 - 13_715_780
    assert (update.totals.market_value, update.totals.unrealized_pnl) == (14_000_000, 284_220)


def test_tick_for_a_symbol_the_account_does_not_hold_sends_nothing(book, stub):
    seed_instrument(book, "MSFT", price=4_000_000)
    stream = subscribe(stub)
    next(stream)
    tick(book, "MSFT", 4_100_000)
    tick(book, "AAPL", 690_000)
    # Ticks apply in order: had the MSFT tick produced a message, it would come first.
    update = next_change(stream)
    assert [h.symbol for h in update.holdings] == ["AAPL"]
    assert update.sequence == 2


def test_a_fill_added_to_the_lot_hashes_pushes_the_new_holding(book, stub):
    stream = subscribe(stub)
    next(stream)
    seed_lots(book, "ACC-1", [("L3", "AAPL", 10, 690_000)])
    [aapl] = next_change(stream).holdings
    assert (aapl.quantity, aapl.cost_basis) == (30, 13_715_780 + 6_900_000)
    assert aapl.average_cost == average_cost(30, 20_615_780) == 687_193
    assert aapl.market_value == 30 * 683_378


def test_an_unparseable_lot_is_shown_as_invalid_with_an_alert_never_as_flat(book, stub):
    book.hset("quantities_by_lot:{ACC-1}", "L2", "ten")
    stream = subscribe(stub)
    snapshot = next_change(stream)
    assert snapshot.totals.valuation == pb.VALUATION_INVALID_STATE
    assert (snapshot.totals.market_value, snapshot.totals.cost_basis) == (0, 0)
    [alert] = [a for a in snapshot.alerts if a.kind == pb.ALERT_KIND_INVALID_STATE]
    assert alert.code == pb.REJECT_CODE_INVALID_STATE
    # its orders are rejected as they always were
    assert codes(stub.EvaluateOrder(order())) == [pb.REJECT_CODE_INVALID_STATE]
    # fixed in Redis: valued again, and the alert cleared
    book.hset("quantities_by_lot:{ACC-1}", "L2", 10)
    update = next_matching(stream, lambda u: u.totals.valuation == pb.VALUATION_PRICED)
    assert [a.kind for a in update.alerts] == [pb.ALERT_KIND_INVALID_STATE_CLEARED]
    assert holdings(update)["AAPL"].quantity == 20


def test_limits_that_stop_parsing_mark_a_subscribed_account_invalid(book, stub):
    stream = subscribe(stub)
    assert next_change(stream).totals.valuation == pb.VALUATION_PRICED
    book.hset("limits:{ACC-1}", "max_order_quantity", "lots")
    update = next_matching(stream, lambda u: u.totals.valuation == pb.VALUATION_INVALID_STATE)
    assert [a.kind for a in update.alerts] == [pb.ALERT_KIND_INVALID_STATE]


def test_a_new_symbol_is_followed_and_a_closed_one_is_sent_with_quantity_zero(book, stub):
    seed_instrument(book, "MSFT", price=4_000_000)
    stream = subscribe(stub)
    next(stream)
    seed_lots(book, "ACC-1", [("L3", "MSFT", 5, 3_900_000)])
    # The lots and MSFT's price may reach the sync in one batch, lots first.
    update = next_matching(stream, lambda u: "MSFT" in holdings(u) and
                           holdings(u)["MSFT"].valuation == pb.VALUATION_PRICED)
    assert holdings(update)["MSFT"].market_value == 20_000_000
    tick(book, "MSFT", 4_200_000)  # the stream now follows MSFT's price too
    assert holdings(next_change(stream))["MSFT"].market_value == 21_000_000
    with book.pipeline(transaction=True) as pipe:
        for key in lot_keys(b"ACC-1"):
            pipe.hdel(key, "L1", "L2")
        pipe.execute()
    update = next_change(stream)
    closed = holdings(update)["AAPL"]
    assert (closed.quantity, closed.market_value, closed.cost_basis) == (0, 0, 0)
    assert update.totals.market_value == 21_000_000


def test_realized_pnl_change_pushes_new_totals(book, stub):
    stream = subscribe(stub)
    next(stream)
    book.hset(pnl_key(b"ACC-1"), "realized", -31_500)
    update = next_change(stream)
    assert list(update.holdings) == []
    assert update.totals.realized_pnl == -31_500
    assert update.totals.market_value == 20 * 683_378


def test_a_price_key_written_without_the_stream_also_reaches_subscribers(book, stub):
    stream = subscribe(stub)
    next(stream)
    book.set("price:AAPL", 650_000)  # followed by the sync's keyspace notifications
    assert next_change(stream).holdings[0].last_price == 650_000


def test_one_tick_reaches_every_account_holding_the_symbol(book, stub):
    seed_lots(book, "ACC-2", [("L1", "AAPL", 3, 600_000)])
    second = wait_until(lambda: _first_or_code(stub, "ACC-2"),
                        lambda s: isinstance(s, pb.PortfolioUpdate))
    assert isinstance(second, pb.PortfolioUpdate)
    first, other = subscribe(stub, "ACC-1"), subscribe(stub, "ACC-2")
    next(first), next(other)
    tick(book, "AAPL", 700_000)
    assert next_change(first).holdings[0].market_value == 20 * 700_000
    assert next_change(other).holdings[0].market_value == 3 * 700_000


# -- SLOW CONSUMERS --


def test_a_slow_reader_gets_the_latest_state_and_never_holds_back_others(book, gateway, stub):
    ticks = 300
    with grpc.insecure_channel(gateway.target, options=SMALL_WINDOW) as slow_channel:
        slow = subscribe(risk_pb2_grpc.PreTradeRiskStub(slow_channel))
        fast = subscribe(stub)
        next(slow), next(fast)
        for n in range(ticks):
            # Stream only: the sync's re-read of price:AAPL may land after a newer
            # tick and briefly undo it (see the report), which would break the count.
            book.xadd("prices", {"symbol": "AAPL", "price": 700_000 + n})
            # The fast reader sees every tick while the slow one reads nothing.
            assert next_change(fast).holdings[0].last_price == 700_000 + n

        pending = gateway.run(_pending_changes(gateway.gateway.portfolio))
        # The stalled stream holds at most one dirty symbol, whatever the tick count.
        assert max(dirty for dirty, _ in pending) <= 1
        assert min(sent for _, sent in pending) < ticks // 2

        received = []
        for update in slow:
            received.append(update)
            if update.holdings and update.holdings[0].last_price == 700_000 + ticks - 1:
                break
        assert len(received) < ticks // 2, "the slow reader got a backlog, not the latest"
        assert [u.sequence for u in received] == list(range(2, 2 + len(received)))


async def _pending_changes(hub: PortfolioHub) -> list[tuple[int, int]]:
    return [(len(s.dirty), s.messages) for state in hub.accounts.values()
            for s in state.subscribers]


def test_listener_callbacks_conflate_into_one_update_per_symbol():
    table = new_private_table(max_accounts=8, max_instruments=8, max_positions=16,
                              max_overrides=8, lock_stripes=2)
    table.set_account_state(b"ACC-1", known=True)
    table.replace_positions(b"ACC-1", {b"AAPL": (20, 13_715_780), b"MSFT": (5, 19_500_000)})

    async def scenario() -> tuple[pb.PortfolioUpdate, int]:
        ready = asyncio.Event()
        ready.set()
        hub = PortfolioHub(table, ready)
        hub.price_changed(b"AAPL", 683_378)
        stream = hub.stream(b"ACC-1")
        await anext(stream)
        for n in range(10_000):
            hub.price_changed(b"AAPL", 700_000 + n)
        hub.price_changed(b"MSFT", 4_000_000)
        hub.price_changed(b"NVDA", 1_000_000)  # held by nobody: touches no subscriber
        [subscriber] = hub.accounts[b"ACC-1"].subscribers
        pending = len(subscriber.dirty)
        update = await anext(stream)
        await stream.aclose()
        assert hub.subscriber_count == 0 and hub.holders == {}
        return update, pending

    update, pending = asyncio.run(scenario())
    assert pending == 2
    assert update.sequence == 2
    assert {h.symbol: h.last_price for h in update.holdings} == {
        "AAPL": 709_999, "MSFT": 4_000_000}


def test_a_market_value_that_does_not_fit_in_int64_is_flagged_not_wrapped():
    big = value_holding(b"BIG", 2**62, 2**62, 10)
    assert (big.valuation, big.last_price, big.market_value, big.unrealized_pnl) == (
        pb.VALUATION_OVERFLOW, 10, 0, 0)
    small = value_holding(b"AAPL", 20, 13_715_780, 683_378)
    totals = sum_totals([big, small], realized_pnl=5)
    assert (totals.valuation, totals.unvalued_holdings) == (pb.VALUATION_NO_PRICE, 1)
    assert totals.market_value == 20 * 683_378  # the priced holding only
    assert totals.cost_basis == 2**62 + 13_715_780


def test_totals_whose_sum_does_not_fit_in_int64_are_flagged_and_zero():
    halves = [value_holding(symbol, 1, 2**62, 2**62) for symbol in (b"A", b"B")]
    assert all(h.valuation == pb.VALUATION_PRICED for h in halves)
    totals = sum_totals(halves, realized_pnl=-7)
    assert (totals.valuation, totals.market_value, totals.cost_basis) == (
        pb.VALUATION_OVERFLOW, 0, 0)
    assert totals.realized_pnl == -7


def test_position_limits_are_checked_as_the_order_checks_measure_them():
    limits = {LimitKind.MAX_NET_POSITION: 100, LimitKind.MAX_LONG_POSITION: 50,
              LimitKind.MAX_SHORT_POSITION: 30}
    positions = {b"LONG": (60, 0), b"SHORT": (-40, 0), b"OK": (50, 0), b"HUGE": (-101, 0)}
    assert position_breaches(positions, limits) == {
        (b"LONG", pb.REJECT_CODE_MAX_LONG_POSITION): (60, 50),
        (b"SHORT", pb.REJECT_CODE_MAX_SHORT_POSITION): (40, 30),
        (b"HUGE", pb.REJECT_CODE_MAX_NET_POSITION): (101, 100),
        (b"HUGE", pb.REJECT_CODE_MAX_SHORT_POSITION): (101, 30),
    }
    assert position_breaches(positions, {}) == {}  # no limit configured, no alert


# -- ERRORS, HEARTBEATS, SHUTDOWN --


def test_unknown_account_ends_the_stream_with_not_found(book, stub):
    with pytest.raises(grpc.RpcError) as raised:
        next(subscribe(stub, "NOBODY"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "NOBODY" in raised.value.details()


@pytest.mark.parametrize(("account", "heartbeat_ms", "field"), [
    ("", 0, "account_id"),
    ("BAD ID", 0, "account_id"),
    ("x" * 40, 0, "account_id"),
    ("ACC-1", -1, "heartbeat_interval_ms"),
])
def test_malformed_request_is_invalid_argument(book, stub, account, heartbeat_ms, field):
    with pytest.raises(grpc.RpcError) as raised:
        next(subscribe(stub, account, heartbeat_ms))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()


def test_an_idle_stream_gets_heartbeats_carrying_the_sequence(book, stub):
    stream = subscribe(stub, heartbeat_ms=100)
    assert next(stream).kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
    first, second = next(stream), next(stream)
    assert (first.kind, first.sequence) == (pb.PORTFOLIO_UPDATE_KIND_HEARTBEAT, 2)
    assert (second.kind, second.sequence) == (pb.PORTFOLIO_UPDATE_KIND_HEARTBEAT, 3)
    assert first.account_id == "ACC-1"
    assert not first.HasField("totals") and list(first.holdings) == []


def test_server_shutdown_ends_streams_with_unavailable_after_what_was_sent(book, gateway,
                                                                          stub):
    streams = [subscribe(stub) for _ in range(3)]
    for stream in streams:
        assert next(stream).kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
    gateway.stop()
    for stream in streams:
        with pytest.raises(grpc.RpcError) as raised:
            next_change(stream)
        # Our own status, not a transport failure or the grace period running out.
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in raised.value.details()


def test_a_cancelled_stream_is_unsubscribed(book, gateway, stub):
    stream = subscribe(stub)
    next(stream)
    hub = gateway.gateway.portfolio
    assert gateway.run(_subscribers(hub)) == 1
    stream.cancel()
    wait_until(lambda: gateway.run(_subscribers(hub)), lambda n: n == 0)
    assert gateway.run(_holders(hub)) == {}


def test_a_stream_cancelled_while_it_waits_its_turn_ends_cleanly(book, gateway, stub, caplog):
    # Under fan-out (5,000 streams) most woken streams wait their turn in the
    # Waker, and a client that goes away then cancels one there. That ended
    # as "internal error in StreamPortfolio" (AttributeError) for 32 streams
    # of the isolation bench. Every active slot is taken here, so the woken
    # stream waits its turn for as long as the test needs.
    stream = subscribe(stub)
    next(stream)
    hub = gateway.gateway.portfolio
    gateway.run(_set_max_active(hub, 0))
    try:
        tick(book, "AAPL", 690_000)
        wait_until(lambda: gateway.run(_queued(hub)), lambda n: n == 1)
        stream.cancel()
        wait_until(lambda: gateway.run(_subscribers(hub)), lambda n: n == 0)
    finally:
        gateway.run(_set_max_active(hub, MAX_ACTIVE_STREAMS))
    assert "internal error in StreamPortfolio" not in caplog.text
    assert hub.waker.active == 0  # its turn was never taken, nor left taken


async def _set_max_active(hub: PortfolioHub, value: int) -> None:
    hub.waker.max_active = value
    hub.waker.done()  # as if a stream's turn ended: the Waker looks at its room again
    hub.waker.active += 1


async def _queued(hub: PortfolioHub) -> int:
    return len(hub.waker._queue)  # noqa: SLF001 (the streams waiting their turn)


async def _subscribers(hub: PortfolioHub) -> int:
    return hub.subscriber_count


async def _holders(hub: PortfolioHub) -> dict[bytes, object]:
    return dict(hub.holders)


# -- ALERTS --


async def _limits(table: PositionTable, account: bytes) -> dict[int, int]:
    return dict(table.account_info(account)["limits"])


def test_account_halt_and_its_lifting_ride_on_the_stream(book, stub):
    stream = subscribe(stub)
    next(stream)
    stub.Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id="ACC-1",
                             mode=pb.HALT_MODE_HALTED, reason="risk check"))
    [halted] = next_change(stream).alerts
    assert (halted.kind, halted.code, halted.halt_mode) == (
        pb.ALERT_KIND_HALT, pb.REJECT_CODE_ACCOUNT_HALT, pb.HALT_MODE_HALTED)
    assert "risk check" in halted.message
    stub.Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id="ACC-1",
                             mode=pb.HALT_MODE_ACTIVE))
    # The sync re-reads each halt key after the RPC: that must not raise it twice.
    [lifted] = next_change(stream).alerts
    assert (lifted.kind, lifted.code) == (pb.ALERT_KIND_HALT_LIFTED, pb.REJECT_CODE_ACCOUNT_HALT)


def test_a_global_halt_in_force_is_in_the_snapshot(book, stub):
    stub.Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_GLOBAL, mode=pb.HALT_MODE_REDUCE_ONLY,
                             reason="market-wide volatility"))
    [alert] = next(subscribe(stub)).alerts
    assert (alert.kind, alert.code, alert.halt_mode) == (
        pb.ALERT_KIND_HALT, pb.REJECT_CODE_REDUCE_ONLY, pb.HALT_MODE_REDUCE_ONLY)
    assert alert.message == "global halt REDUCE_ONLY: market-wide volatility"


def test_a_position_over_its_limit_raises_an_alert_and_clears_it(book, gateway, stub):
    book.hset("limits:{ACC-1}", "max_long_position", 25)
    wait_until(lambda: gateway.run(_limits(gateway.gateway.table, b"ACC-1")),
               lambda limits: limits.get(LimitKind.MAX_LONG_POSITION) == 25)
    stream = subscribe(stub)
    assert list(next(stream).alerts) == []  # 20 held, within 25
    seed_lots(book, "ACC-1", [("L3", "AAPL", 10, 690_000)])
    [breach] = next_change(stream).alerts
    assert (breach.kind, breach.code, breach.symbol) == (
        pb.ALERT_KIND_LIMIT_BREACH, pb.REJECT_CODE_MAX_LONG_POSITION, "AAPL")
    assert (breach.observed, breach.limit) == (30, 25)
    assert breach.message == "AAPL position 30 is over max_long_position 25"
    with book.pipeline(transaction=True) as pipe:
        for key in lot_keys(b"ACC-1"):
            pipe.hdel(key, "L3")
        pipe.execute()
    [cleared] = next_change(stream).alerts
    assert (cleared.kind, cleared.code) == (pb.ALERT_KIND_LIMIT_CLEARED,
                                            pb.REJECT_CODE_MAX_LONG_POSITION)


# -- GROUPS --

#: DESK-1's members: ACC-1 (the worked example) and ACC-2 (5 AAPL @ 70.00, 3 MSFT @ 390.00).
ACC_2_LOTS = [("M1", "AAPL", 5, 700_000), ("M2", "MSFT", 3, 3_900_000)]
DESK_COST_AAPL = 13_715_780 + 5 * 700_000


@pytest.fixture
def desk(book: redis.Redis, redis_url: str) -> redis.Redis:
    """ACC-1 and ACC-2 in DESK-1 (max_long_position 1,000); realized 100 and 20."""
    seed_instrument(book, "MSFT", price=4_000_000)
    seed_limits(book, "ACC-2", **GENEROUS_LIMITS)
    seed_lots(book, "ACC-2", ACC_2_LOTS)
    book.hset(pnl_key(b"ACC-1"), "realized", 100)
    book.hset(pnl_key(b"ACC-2"), "realized", 20)
    redis_cli(redis_url,
              "SADD groups:{ACC-1} DESK-1\n"
              "SADD groups:{ACC-2} DESK-1\n"
              "HSET group:DESK-1 max_long_position 1000\n")
    return book


def subscribe_group(stub: risk_pb2_grpc.PreTradeRiskStub, group: str = "DESK-1",
                    metadata: list[tuple[str, str]] | None = None) -> Stream:
    request = pb.PortfolioRequest(group_id=group, heartbeat_interval_ms=300_000)
    return stub.StreamPortfolio(request, timeout=STREAM_TIMEOUT, metadata=metadata)


def group_snapshot(stub: risk_pb2_grpc.PreTradeRiskStub,
                   accept: Callable[[pb.PortfolioUpdate], bool],
                   group: str = "DESK-1") -> tuple[Stream, pb.PortfolioUpdate]:
    """A group stream whose SNAPSHOT ``accept`` holds for (the sync may still be loading)."""
    def first() -> tuple[Stream, pb.PortfolioUpdate | None]:
        stream = subscribe_group(stub, group)
        try:
            return stream, next(stream)
        except grpc.RpcError:
            return stream, None

    stream, snapshot = wait_until(first, lambda found: found[1] is not None
                                  and accept(found[1]))
    assert snapshot is not None
    return stream, snapshot


def both_members(update: pb.PortfolioUpdate) -> bool:
    return update.totals.realized_pnl == 120 and set(holdings(update)) == {"AAPL", "MSFT"}


def test_a_group_snapshot_sums_its_members_holdings_and_totals(desk, stub):
    _, snapshot = group_snapshot(stub, both_members)
    assert snapshot.kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
    assert (snapshot.group_id, snapshot.account_id, snapshot.sequence) == ("DESK-1", "", 1)
    aapl, msft = holdings(snapshot)["AAPL"], holdings(snapshot)["MSFT"]
    assert (aapl.quantity, aapl.cost_basis) == (25, DESK_COST_AAPL)
    assert aapl.average_cost == average_cost(25, DESK_COST_AAPL)
    assert (aapl.last_price, aapl.market_value) == (683_378, 25 * 683_378)
    assert aapl.unrealized_pnl == 25 * 683_378 - DESK_COST_AAPL
    assert (msft.quantity, msft.cost_basis, msft.market_value) == (3, 11_700_000, 12_000_000)
    # the totals are the two accounts' own totals summed
    accounts = [next(subscribe(stub, account)).totals for account in ("ACC-1", "ACC-2")]
    totals = snapshot.totals
    for figure in ("market_value", "cost_basis", "unrealized_pnl", "realized_pnl"):
        assert getattr(totals, figure) == sum(getattr(t, figure) for t in accounts), figure
    assert (totals.valuation, totals.margined) == (pb.VALUATION_PRICED, False)
    assert list(snapshot.alerts) == []


def test_a_price_tick_updates_the_group_stream(desk, stub):
    stream, _ = group_snapshot(stub, both_members)
    tick(desk, "AAPL", 700_000)
    update = next_change(stream)
    assert (update.kind, update.group_id, update.sequence) == (
        pb.PORTFOLIO_UPDATE_KIND_UPDATE, "DESK-1", 2)
    [aapl] = update.holdings
    assert (aapl.quantity, aapl.market_value) == (25, 25 * 700_000)
    assert update.totals.market_value == 25 * 700_000 + 12_000_000


def test_a_fill_of_one_member_updates_the_group_stream(desk, stub):
    stream, _ = group_snapshot(stub, both_members)
    seed_lots(desk, "ACC-2", [("M3", "AAPL", 10, 690_000)])
    [aapl] = next_change(stream).holdings
    assert (aapl.quantity, aapl.cost_basis) == (35, DESK_COST_AAPL + 6_900_000)
    assert aapl.market_value == 35 * 683_378


def test_an_account_joining_and_leaving_the_group_changes_its_holdings(desk, redis_url, stub):
    seed_instrument(desk, "NVDA", price=1_000_000)
    seed_limits(desk, "ACC-3", **GENEROUS_LIMITS)
    seed_lots(desk, "ACC-3", [("N1", "NVDA", 4, 900_000), ("N2", "AAPL", -5, 690_000)])
    desk.hset(pnl_key(b"ACC-3"), "realized", 3)
    stream, snapshot = group_snapshot(stub, both_members)
    before = snapshot.totals
    redis_cli(redis_url, "SADD groups:{ACC-3} DESK-1\n")
    joined = next_matching(stream, lambda u: "NVDA" in holdings(u))
    nvda, aapl = holdings(joined)["NVDA"], holdings(joined)["AAPL"]
    assert (nvda.quantity, nvda.market_value) == (4, 4_000_000)
    assert (aapl.quantity, aapl.cost_basis) == (20, DESK_COST_AAPL - 5 * 690_000)
    assert joined.totals.realized_pnl == 123
    redis_cli(redis_url, "SREM groups:{ACC-3} DESK-1\n")
    left = next_matching(stream, lambda u: "NVDA" in holdings(u))
    assert (holdings(left)["NVDA"].quantity, holdings(left)["NVDA"].cost_basis) == (0, 0)
    assert holdings(left)["AAPL"].quantity == 25
    assert (left.totals.market_value, left.totals.cost_basis, left.totals.realized_pnl) == (
        before.market_value, before.cost_basis, 120)


def test_a_parent_group_streams_the_accounts_of_the_groups_inside_it(desk, redis_url, stub):
    redis_cli(redis_url, "HSET group:DESK-1 parent FIRM\nHSET group:FIRM max_long_position 9\n")
    _, snapshot = group_snapshot(stub, lambda u: both_members(u) and len(u.alerts) == 1,
                                 group="FIRM")
    assert holdings(snapshot)["AAPL"].quantity == 25
    [breach] = snapshot.alerts
    assert (breach.kind, breach.code, breach.symbol, breach.observed, breach.limit) == (
        pb.ALERT_KIND_LIMIT_BREACH, pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, "AAPL", 25, 9)


def test_a_group_position_over_its_limit_raises_an_alert_and_clears_it(desk, redis_url, stub):
    redis_cli(redis_url, "HSET group:DESK-1 max_long_position 30 max_short_position 50\n")
    stream, snapshot = group_snapshot(stub, both_members)
    assert list(snapshot.alerts) == []  # 25 AAPL held together, within 30
    seed_lots(desk, "ACC-2", [("M3", "AAPL", 10, 690_000)])
    [breach] = next_change(stream).alerts
    assert (breach.kind, breach.code, breach.symbol) == (
        pb.ALERT_KIND_LIMIT_BREACH, pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, "AAPL")
    assert (breach.observed, breach.limit) == (35, 30)
    assert breach.message == "AAPL position 35 is over group_max_long_position 30"
    with desk.pipeline(transaction=True) as pipe:
        for key in lot_keys(b"ACC-2"):
            pipe.hdel(key, "M3")
        pipe.execute()
    [cleared] = next_change(stream).alerts
    assert (cleared.kind, cleared.code) == (pb.ALERT_KIND_LIMIT_CLEARED,
                                            pb.REJECT_CODE_GROUP_MAX_LONG_POSITION)


def test_a_group_that_cannot_be_checked_raises_invalid_state_until_it_can(desk, redis_url,
                                                                          stub):
    redis_cli(redis_url, "DEL group:DESK-1\n")
    stream, snapshot = group_snapshot(stub, lambda u: both_members(u) and len(u.alerts) == 1)
    [alert] = snapshot.alerts
    assert (alert.kind, alert.code, alert.observed) == (
        pb.ALERT_KIND_INVALID_STATE, pb.REJECT_CODE_GROUP_UNAVAILABLE, 1)
    assert snapshot.totals.valuation == pb.VALUATION_PRICED  # the figures are known
    redis_cli(redis_url, "HSET group:DESK-1 max_long_position oops\n")
    invalid = next_matching(stream, lambda u: bool(u.alerts))
    assert [(a.kind, a.observed) for a in invalid.alerts] == [(pb.ALERT_KIND_INVALID_STATE, 3)]
    # a member whose state does not parse: the sums are unknown
    redis_cli(redis_url, "HSET group:DESK-1 max_long_position 1000\n"
                         "HSET quantities_by_lot:{ACC-2} M1 five\n")
    member = next_matching(stream, lambda u: any(a.observed == 6 for a in u.alerts))
    assert member.totals.valuation == pb.VALUATION_INVALID_STATE
    desk.hset("quantities_by_lot:{ACC-2}", "M1", 5)
    fixed = next_matching(stream, lambda u: bool(u.alerts))
    assert [(a.kind, a.code) for a in fixed.alerts] == [
        (pb.ALERT_KIND_INVALID_STATE_CLEARED, pb.REJECT_CODE_GROUP_UNAVAILABLE)]
    assert fixed.totals.valuation == pb.VALUATION_PRICED


def test_an_unknown_group_ends_the_stream_with_not_found_as_an_unknown_account_does(desk, stub):
    group_snapshot(stub, both_members)  # loaded
    with pytest.raises(grpc.RpcError) as raised:
        next(subscribe_group(stub, "NOBODY"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "NOBODY" in raised.value.details()


def test_members_netting_out_keep_their_cost_basis_in_the_group_totals(desk, stub):
    seed_lots(desk, "ACC-2", [("M3", "AAPL", -25, 690_000)])  # the desk is flat in AAPL
    _, snapshot = group_snapshot(stub, lambda u: both_members(u)
                                 and holdings(u)["AAPL"].quantity == 0)
    aapl = holdings(snapshot)["AAPL"]
    cost = DESK_COST_AAPL - 25 * 690_000
    assert (aapl.cost_basis, aapl.market_value, aapl.unrealized_pnl) == (cost, 0, -cost)
    assert snapshot.totals.unrealized_pnl == -cost + 12_000_000 - 11_700_000


@pytest.mark.parametrize(("account", "group", "field"), [
    ("ACC-1", "DESK-1", "group_id"),
    ("", "", "account_id"),
    ("", "BAD ID", "group_id"),
    ("", "x" * 40, "group_id"),
])
def test_naming_both_or_neither_account_and_group_is_invalid_argument(desk, stub, account,
                                                                      group, field):
    request = pb.PortfolioRequest(account_id=account, group_id=group)
    with pytest.raises(grpc.RpcError) as raised:
        next(stub.StreamPortfolio(request, timeout=STREAM_TIMEOUT))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()


def test_only_a_principal_that_may_use_every_account_may_stream_a_group(desk, tmp_path,
                                                                       start_gateway):
    principals = {"desk-trader": ("trader", ["ACC-1", "ACC-2"]), "oms-all": ("trader", ["*"]),
                  "risk-desk": ("risk_operator", [])}
    tokens = {name: new_token() for name in principals}
    path = tmp_path / "tokens.toml"
    path.write_text("\n".join(token_entry(name, role, accounts, tokens[name])
                              for name, (role, accounts) in principals.items()))
    gateway: GatewayThread = start_gateway("auth", auth="tokens", tokens_file=str(path))
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)

        def first(name: str) -> pb.PortfolioUpdate:
            return next(subscribe_group(stub, metadata=[("authorization",
                                                         f"Bearer {tokens[name]}")]))

        # a trader of every member still may not: members change while it streams
        with pytest.raises(grpc.RpcError) as raised:
            first("desk-trader")
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert raised.value.details() == ("'desk-trader' may not use group 'DESK-1' in "
                                          "StreamPortfolio: a group is for principals that "
                                          "may use every account")
        for name in ("oms-all", "risk-desk"):
            snapshot = wait_until(lambda name=name: first(name), both_members)
            assert snapshot.group_id == "DESK-1"
