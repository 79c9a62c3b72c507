"""The compiled pipeline agrees with the pure-Python twin on random inputs.

Both are driven with the same operations (state writes and orders); every
decision must be identical: verdict, notional, and every (code, observed,
limit) rejection in order. A state write that one refuses (a full region:
TableFullError, naming the same capacity) the other refuses too.
"""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_ops import (
    ACCOUNTS,
    DESKS,
    EPOCH_MS,
    SYMBOLS,
    TIMES_IN_FORCE,
    Op,
    RandomWalk,
    operations,
    orders,
    replaces,
)
from pretrade._core import Engine, TableFullError
from pretrade._core.constants import ORDER_ID_EXPIRED
from pretrade.engine.reference import ReferenceBook
from pretrade.engine.table import new_private_table
from pretrade.v1 import risk_pb2 as pb

ROOMY = {"max_accounts": 8, "max_instruments": 8, "max_positions": 64, "max_overrides": 64}
# fewer records than the operations name: every region fills up
TIGHT = {"max_accounts": 2, "max_instruments": 2, "max_positions": 3, "max_overrides": 2}


def fresh_pair(max_orders: int, *, share: int = 0, expiry_ms: int = 5,
               capacities: dict[str, int] = ROOMY) -> tuple[object, Engine, ReferenceBook]:
    """A compiled table and a twin with the same capacities and order policy."""
    table = new_private_table(**capacities, lock_stripes=4, max_orders=max_orders,
                              max_orders_per_account=share, order_expiry_ms=expiry_ms)
    book = ReferenceBook(max_orders=max_orders, **capacities, max_orders_per_account=share,
                         order_expiry_ms=expiry_ms)
    return table, Engine(table), book


def _outcome(call) -> tuple:
    try:
        return ("ok", call())
    except TableFullError as error:
        return ("full", error.capacity, error.limit)
    except (ValueError, OverflowError, TypeError) as error:
        return ("refused", type(error).__name__)


def apply(op: Op, table: object, engine: Engine, book: ReferenceBook) -> tuple | None:
    """Apply one operation to both; return the (identical) decision of an order, or
    the outcome of a state write (``("ok", value)``, ``("full", ...)``, ...)."""
    name, args, kwargs = op
    if name in ("evaluate", "replace"):
        decision = getattr(engine, name)(*args, **kwargs)
        twin = getattr(book, name)(*args, **kwargs)
        assert decision == twin, f"{name} decisions differ for {args} {kwargs}: {decision} {twin}"
        return decision
    core = _outcome(lambda: getattr(table, name)(*args, **kwargs))
    twin = _outcome(lambda: getattr(book, name)(*args, **kwargs))
    assert core == twin, f"{name}{args}: core {core}, twin {twin}"
    return core


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(operations, orders, orders, replaces), min_size=30, max_size=120))
def test_core_and_reference_agree_on_random_operation_sequences(ops: list[Op]) -> None:
    # A tiny order region, so a full one is exercised too.
    table, engine, book = fresh_pair(max_orders=12, share=5)
    table.set_sync_live(True)
    book.set_sync_live(True)
    for op in ops:
        apply(op, table, engine, book)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(operations, orders, orders, replaces), min_size=30, max_size=120))
def test_core_and_reference_agree_when_every_region_of_the_table_is_full(ops: list[Op]) -> None:
    table, engine, book = fresh_pair(max_orders=6, share=3, capacities=TIGHT)
    table.set_sync_live(True)
    book.set_sync_live(True)
    for op in ops:
        apply(op, table, engine, book)


def walk_step(op: Op, table: object, engine: Engine, book: ReferenceBook,
              where: str) -> tuple[tuple | None, int]:
    """One step of a seeded walk: the decision of an order or a replace (None
    for a state write) and how many working orders lapsed in it."""
    try:
        outcome = apply(op, table, engine, book)
    except AssertionError as error:
        raise AssertionError(f"{where}: {error}") from None
    assert outcome is not None
    if op[0] == "end_lapsed_orders":
        return None, outcome[1]
    return (outcome if op[0] in ("evaluate", "replace") else None), 0


def test_core_and_reference_agree_over_a_seeded_random_walk() -> None:
    seed = int(os.environ.get("PRETRADE_SEED", random.randrange(2**32)))
    print(f"random walk seed: {seed} (rerun with PRETRADE_SEED={seed})")
    walk = RandomWalk(random.Random(seed))
    # Room for most of the walk's orders: the region fills up near the end;
    # each account's share fills long before, so records leave the table.
    table, engine, book = fresh_pair(max_orders=9_000, share=600, expiry_ms=50)
    table.set_sync_live(True)
    book.set_sync_live(True)
    decisions = approvals = replays = auto_halts = expired_ids = lapsed = replaced = 0
    lost_slot_refusals = 0
    codes: set[int] = set()
    for step in range(20_000):
        op = walk.operation()
        decision, ended = walk_step(op, table, engine, book, f"seed {seed}, step {step}")
        lapsed += ended
        if decision is not None:
            decisions += 1
            replaced += op[0] == "replace" and decision[0] and not decision[3]
            approvals += decision[0]
            replays += decision[3]
            auto_halts += decision[4] != 0
            expired_ids += decision[2][:1] == ((pb.REJECT_CODE_DUPLICATE_ORDER_ID,
                                                ORDER_ID_EXPIRED, decision[2][0][2]),) \
                if decision[2] else 0
            codes.update(code for code, _, _ in decision[2])
            lost_slot_refusals += any(code == pb.REJECT_CODE_STALE_DATA and observed < 0
                                      for code, observed, _ in decision[2])
        if step % 500 == 0:
            assert_same_reservations(table, book, f"seed {seed}, step {step}")
    # The walk must exercise both verdicts, replays and breakers, or it proves little.
    assert decisions > 5_000
    assert 0 < approvals < decisions
    assert replays > 0 and auto_halts > 0
    # and the minimum notional (item 7), which the walk's limits make reachable
    assert pb.REJECT_CODE_MIN_ORDER_NOTIONAL in codes
    # and time in force: expired GTD orders, and working orders that lapsed
    assert pb.REJECT_CODE_ORDER_EXPIRED in codes and lapsed > 0
    # and margin (item 6)
    assert pb.REJECT_CODE_MARGIN_SHORTFALL in codes
    # and records leaving the table: ids sent again after theirs left
    assert table.counts()["orders_evicted"] > 0 and expired_ids > 0
    # cancel/replace: approved ones, and each of its own rejections
    assert replaced > 0
    # and slots of a lost Redis Cluster primary
    assert lost_slot_refusals > 0
    assert {pb.REJECT_CODE_UNKNOWN_ORIGINAL_ORDER, pb.REJECT_CODE_ORIGINAL_NOT_WORKING} <= codes
    # and account groups: their limits, and groups that cannot be checked
    assert pb.REJECT_CODE_GROUP_UNAVAILABLE in codes
    assert codes & {pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, pb.REJECT_CODE_GROUP_MAX_SHORT_POSITION,
                    pb.REJECT_CODE_GROUP_MAX_GROSS_EXPOSURE, pb.REJECT_CODE_GROUP_LOSS_LIMIT}
    print(f"{decisions} decisions, {approvals} approved, {replays} replayed, "
          f"{auto_halts} auto-halts, {replaced} replaces approved, "
          f"{expired_ids} ids asked back from Redis, "
          f"{table.counts()['orders_evicted']} records left the table, {lapsed} lapsed; "
          f"codes seen: {sorted(codes)}")


def test_core_and_reference_agree_over_a_seeded_walk_in_a_full_table() -> None:
    seed = int(os.environ.get("PRETRADE_SEED", random.randrange(2**32)))
    print(f"random walk seed: {seed} (rerun with PRETRADE_SEED={seed})")
    walk = RandomWalk(random.Random(seed))
    table, engine, book = fresh_pair(max_orders=40, share=16, expiry_ms=50, capacities=TIGHT)
    table.set_sync_live(True)
    book.set_sync_live(True)
    capacity = 0
    for step in range(6_000):
        op = walk.operation()
        try:
            decision = apply(op, table, engine, book)
        except AssertionError as error:
            raise AssertionError(f"seed {seed}, step {step}: {error}") from None
        if op[0] == "evaluate":
            assert decision is not None
            capacity += any(code == pb.REJECT_CODE_CAPACITY_EXHAUSTED
                            for code, _, _ in decision[2])
        if step % 500 == 0:
            assert_same_reservations(table, book, f"seed {seed}, step {step}")
    assert capacity > 0


def assert_same_reservations(table, book: ReferenceBook, where: str) -> None:
    for account in ACCOUNTS:
        for symbol in SYMBOLS:
            assert table.working(account, symbol) == book.working(account, symbol), (
                f"{where}: working quantities of {account!r} {symbol!r} differ")
            assert table.position(account, symbol) == book.position(account, symbol), where
        assert table.account_groups(account) == book.account_groups(account), where
    for desk in DESKS:
        assert table.group_info(desk) == book.group_info(desk), f"{where}: group {desk!r}"


def _time_in_force(rng: random.Random, wall: int) -> dict[str, int]:
    """An order's time in force on the walk's wall clock: GTD expiries from
    just past to a few sessions on, DAY and IOC ending with the session."""
    tif = rng.choice(TIMES_IN_FORCE[:5])
    return {"time_in_force": tif,
            "expire_at_unix_ms": wall + rng.choice([-1, 3, 30, 300])
            if tif == pb.TIME_IN_FORCE_GTD else 0,
            "now_unix_ms": wall, "session_end_unix_ms": (wall // 100 + 1) * 100}


def test_core_and_reference_agree_over_a_seeded_walk_of_replaces() -> None:
    """A live book near its limits where most orders are cancel/replaces of
    working ones, between partial fills, cancels and records leaving; with
    times in force that lapse (swept or not), a minimum notional and margin
    rates on an account whose cash comes and goes."""
    seed = int(os.environ.get("PRETRADE_SEED", random.randrange(2**32)))
    print(f"replace walk seed: {seed} (rerun with PRETRADE_SEED={seed})")
    rng = random.Random(seed)
    table, engine, book = fresh_pair(max_orders=400, share=150, expiry_ms=5)
    ops: list[Op] = [("set_sync_live", (True,), {})]
    for symbol in SYMBOLS:
        ops += [("set_instrument", (symbol,), {"known": True, "lot_size": 1,
                                               "margin_bps": (5_000, 8_000, 2_500, 4_000)}),
                ("set_last_price", (symbol, 10_000), {})]
    for account in ACCOUNTS[:2]:
        ops += [("set_account_state", (account,), {"known": True}),
                ("set_locates", (account, {s: 60 for s in SYMBOLS}), {}),
                ("set_tag_limits", (account, {b"XNAS": 4_000_000}, {b"GS": 5_000_000}), {}),
                ("set_balances", (account, 50_000_000, 0), {}),
                ("set_account_limits", (account, {0: 100, 1: 10**9, 2: 400, 3: 400, 4: 400,
                                                  5: 10**6}), {})]
    for op in ops:
        apply(op, table, engine, book)
    ids = [f"P{n}".encode() for n in range(6_001)]
    sent: list[tuple[bytes, bytes]] = []   # (account, order id) decided so far
    fills: dict[bytes, dict[bytes, int]] = {a: {} for a in ACCOUNTS[:2]}
    cancels: dict[bytes, set[bytes]] = {a: set() for a in ACCOUNTS[:2]}
    now, next_id = 1_000_000_000, 0
    wall = EPOCH_MS     # the wall clock: sessions end every 100 ms of it
    replaced = lapsed = 0
    codes: set[int] = set()
    for step in range(6_000):
        now += rng.choice([0, 1_000, 2_000_000])
        wall += rng.choice([0, 0, 1, 7, 40])
        account = rng.choice(ACCOUNTS[:2])
        roll = rng.random()
        if roll < 0.02:
            limits = {0: rng.choice([20, 40, 100]), 1: 10**9, 2: rng.choice([30, 80, 200]),
                      3: rng.choice([30, 80, 200]), 4: rng.choice([30, 80, 200]),
                      5: 10**6, 13: rng.choice([6, 50, 1_000]),
                      7: rng.choice([3 * 10**6, 10**9]),
                      23: rng.choice([1, 60_000, 150_000])}
            op: Op = ("set_account_limits", (account, limits), {})
        elif roll < 0.03:
            # cash for margin: plenty, or little enough that it binds
            op = ("set_balances", (account, rng.choice([50_000_000, 1_500_000, 600_000]), 0),
                  {})
        elif roll < 0.35:
            next_id += 1
            op = ("evaluate", (ids[next_id], account, rng.choice(SYMBOLS),
                               rng.choice([pb.SIDE_BUY, pb.SIDE_BUY, pb.SIDE_BUY,
                                           pb.SIDE_SELL, pb.SIDE_SELL_SHORT]),
                               rng.choice([pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_MARKET]),
                               rng.randint(1, 30), 10_000 + rng.choice([-100, 0, 100]),
                               rng.choice([b"", b"XNAS"]), rng.choice([b"", b"GS"]), now),
                  _time_in_force(rng, wall))
        elif roll < 0.75 and sent:
            working = [(a, oid) for a, oid in sent[-60:]
                       if (a, oid) in book.orders and book.orders[(a, oid)].working]
            owner, original = rng.choice(working if working and rng.random() < 0.8
                                         else sent[-40:])
            next_id += 1
            new_id = ids[next_id] if rng.random() < 0.9 else rng.choice(sent[-10:])[1]
            op = ("replace", (new_id, owner, original, rng.choice([0, rng.randint(1, 40)]),
                              rng.choice([0, 10_000 + rng.choice([-200, -100, 100])]), now),
                  {"now_unix_ms": wall})
        elif roll < 0.93 and sent:
            mine = [oid for a, oid in sent[-60:] if a == account]
            for oid in rng.sample(mine, min(len(mine), 3)):
                fills[account][oid] = fills[account].get(oid, 0) + rng.randint(0, 12)
            if mine and rng.random() < 0.6:
                cancels[account].add(rng.choice(mine))
            position = sum(fills[account].values()) % 50
            op = ("replace_positions", (account, {SYMBOLS[0]: (position, position * 10_000)}),
                  {"filled": dict(fills[account]), "cancelled": set(cancels[account])})
        elif roll < 0.96:
            op = ("mark_durable_many", ([pair for pair in sent[-60:]],), {})
        elif roll < 0.98:
            op = ("end_lapsed_orders", (wall,), {})
        else:
            op = ("expire_orders", (now,), {})
        decision, ended = walk_step(op, table, engine, book, f"seed {seed}, step {step}")
        lapsed += ended
        if decision is not None:
            if decision[6]:     # kept under its id: a later replace can name it
                sent.append((op[1][1], op[1][0]))
            replaced += op[0] == "replace" and decision[0] and not decision[3]
            codes.update(code for code, _, _ in decision[2] if op[0] == "replace")
        if step % 250 == 0:
            assert_same_reservations(table, book, f"seed {seed}, step {step}")
    assert_same_reservations(table, book, f"seed {seed}, end")
    print(f"{replaced} replaces approved, {lapsed} lapsed; "
          f"replace rejection codes: {sorted(codes)}")
    assert replaced > 200 and lapsed > 0
    assert {pb.REJECT_CODE_ORIGINAL_NOT_WORKING, pb.REJECT_CODE_REPLACE_BELOW_FILLED,
            pb.REJECT_CODE_DUPLICATE_ORDER_ID, pb.REJECT_CODE_MIN_ORDER_NOTIONAL,
            pb.REJECT_CODE_MARGIN_SHORTFALL} <= codes
