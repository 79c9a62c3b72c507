"""Random operations applied alike to the compiled table and the reference twin.

Shared by the differential tests: each operation is a ``(method, args, kwargs)``
triple naming a state-writing method that ``PositionTable`` and
``ReferenceBook`` both have, or ``("evaluate", order, {})``, or a cancel/replace
``("replace", (new id, account, original id, quantity, price, now), {})``. Among them the
life of a decided order past its decision: made durable (``mark_durable``,
what the servicer does once Redis has it), leaving the table
(``expire_orders``), put back or remembered as evicted at a restore
(``restore_order``, ``forget_orders``). Small value
ranges make exact boundaries (quantity == limit) common; the int64 edges and
wide ranges find the overflow paths.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import strategies as st

from pretrade._core import account_key_slots, symbol_key_slots
from pretrade.engine.fixedpoint import INT64_MAX, INT64_MIN
from pretrade.engine.limits import GROUP_LIMIT_KINDS, PER_SYMBOL_LIMITS, REQUIRED_COUNT, LimitKind
from pretrade.v1 import risk_pb2 as pb

ACCOUNTS = [b"ACC-1", b"ACC-2", b"ACC-3"]
SYMBOLS = [b"AAPL", b"MSFT", b"BRK.B"]
ORDER_IDS = [f"O{n}".encode() for n in range(40)]
VENUES = [b"", b"XNAS", b"XNYS", b"A-VENUE-NAME-TOO-LONG"]
COUNTERPARTIES = [b"", b"GS", b"MS"]
# OCO groups: mostly none; a few ids, so legs meet (and differ) often.
GROUPS = [b"", b"", b"", b"G1", b"G2"]
# account groups (a desk inside a firm): what set_account_groups is given is
# already flattened and sorted, as the sync gives it
DESKS = [b"DESK-1", b"DESK-2", b"FIRM"]
SIDES = [pb.SIDE_BUY, pb.SIDE_SELL, pb.SIDE_SELL_SHORT]
ORDER_TYPES = [pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_MARKET]
HALT_MODES = [0, pb.HALT_MODE_ACTIVE, pb.HALT_MODE_REDUCE_ONLY, pb.HALT_MODE_HALTED]
HALT_SCOPES = [pb.HALT_SCOPE_GLOBAL, pb.HALT_SCOPE_ACCOUNT, pb.HALT_SCOPE_SYMBOL]
CAPACITIES = [0, 0, 0, 0, pb.CAPACITY_POSITIONS, pb.CAPACITY_ACCOUNT_ORDERS]
REJECTIONS = [(), ((pb.REJECT_CODE_MAX_ORDER_QUANTITY, 11, 10),),
              ((pb.REJECT_CODE_TICK_SIZE, 3, 2), (pb.REJECT_CODE_LOT_SIZE, 3, 2))]
EDGES = [INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX]
NON_NEGATIVE_EDGES = [0, 1, INT64_MAX - 1, INT64_MAX]
# Time in force: a wall clock (Unix ms) near one instant, so expiries, the
# session end and the sweeps that end lapsed orders meet exactly and often.
EPOCH_MS = 1_767_268_800_000
TIMES_IN_FORCE = [pb.TIME_IN_FORCE_UNSPECIFIED, pb.TIME_IN_FORCE_DAY, pb.TIME_IN_FORCE_IOC,
                  pb.TIME_IN_FORCE_GTC, pb.TIME_IN_FORCE_GTD, 7]
WALL_CLOCK_MS = [0, EPOCH_MS - 1, EPOCH_MS, EPOCH_MS + 1, EPOCH_MS + 5_000]
# Margin rates, basis points of notional: none most of the time, ordinary
# ones, the most a rate may be, and one past it (refused by both alike).
MARGIN_RATES = [0, 0, 0, 500, 5_000, 10_000, 15_000, 100_000]
margin_rates = st.one_of(st.just((0, 0, 0, 0)),
                         st.tuples(*[st.sampled_from(MARGIN_RATES)] * 4),
                         st.just((100_001, 0, 0, 0)))
# Window lengths in ms and clock steps in ns that make windows open and close.
WINDOWS_MS = [1, 5, 50, 1_000]
CLOCK_STEPS_NS = [0, 1, 500_000, 2_000_000, 60_000_000]

Op = tuple[str, tuple[Any, ...], dict[str, Any]]

#: The Redis Cluster slots of the keys the orders above are decided on: a
#: lost one of these makes orders STALE_DATA, any other slot changes nothing.
KEY_SLOTS = sorted({slot for account in ACCOUNTS for slot in account_key_slots(account)}
                   | {slot for symbol in SYMBOLS for slot in symbol_key_slots(symbol)})


def _op(name: str, *args: Any, **kwargs: Any) -> Op:
    return (name, args, kwargs)


# -- hypothesis strategies --

quantities = st.one_of(st.integers(-2, 12), st.integers(-5, 2_000), st.sampled_from(EDGES),
                       st.integers(INT64_MIN, INT64_MAX))
prices = st.one_of(st.integers(-1, 12), st.integers(-5, 5_000_000), st.sampled_from(EDGES),
                   st.integers(INT64_MIN, INT64_MAX))
limit_values = st.one_of(st.integers(0, 15), st.integers(0, 150), st.integers(0, 5_000_000_000),
                         st.sampled_from(NON_NEGATIVE_EDGES))
limit_sets = st.dictionaries(st.sampled_from(list(LimitKind)).map(int), limit_values)
accounts = st.sampled_from(ACCOUNTS)
group_limit_sets = st.dictionaries(st.sampled_from(sorted(GROUP_LIMIT_KINDS)).map(int),
                                   limit_values)
symbols = st.sampled_from(SYMBOLS)

def _restore(order_id: bytes, account: bytes, symbol: bytes, side: int, order_type: int,
             quantity: int, price: int, venue: bytes, counterparty: bytes, approved: bool,
             rejections: tuple, time_in_force: int = 0, working_until_ms: int = 0,
             replaces: bytes = b"", carried: int = 0, group: bytes = b"") -> Op:
    return _op("restore_order", account, order_id, symbol, side, order_type, quantity, price,
               price, quantity * price, venue, counterparty, approved,
               () if approved else rejections, time_in_force, 0, working_until_ms, replaces,
               carried, group)


order_ids = st.sampled_from(ORDER_IDS)
operations = st.one_of(
    st.builds(lambda a, k, i, c: _op("set_account_state", a, known=k, invalid=i, capacity=c),
              accounts, st.booleans(), st.booleans(), st.sampled_from(CAPACITIES)),
    st.builds(lambda a, lim: _op("set_account_limits", a, lim),
              accounts, st.one_of(st.none(), limit_sets)),
    # account groups: membership (flattened, sorted), and the groups' limits
    st.builds(lambda a, groups, invalid: _op("set_account_groups", a, sorted(groups),
                                             invalid=invalid),
              accounts, st.sets(st.sampled_from(DESKS)), st.booleans()),
    st.builds(lambda g, lim, invalid: _op("set_group", g, lim, invalid=invalid),
              st.sampled_from(DESKS), st.one_of(st.none(), group_limit_sets), st.booleans()),
    st.builds(lambda a, s, lim: _op("set_symbol_limits", a, s, lim),
              accounts, symbols, st.one_of(st.none(), limit_sets)),
    st.builds(lambda a, pos, fills, cancels, pnl, version: _op(
        "replace_positions", a, pos, filled=fills, cancelled=cancels, realized_pnl=pnl,
        state_version=version),
        accounts,
        st.dictionaries(symbols, st.tuples(st.one_of(st.integers(-15, 15), quantities),
                                           st.integers(-10**12, 10**12)), max_size=3),
        st.one_of(st.none(), st.dictionaries(st.sampled_from(ORDER_IDS), st.integers(0, 12))),
        st.one_of(st.none(), st.sets(st.sampled_from(ORDER_IDS), max_size=3)),
        st.one_of(st.none(), st.integers(-10**9, 10**9)),
        st.one_of(st.none(), st.integers(0, 5))),
    st.builds(lambda s, k, i, iss, sec, r, m: _op("set_instrument", s, known=k, invalid=i,
                                                  tick_size=iss % 3 + 1, lot_size=sec % 2 + 1,
                                                  issuer_id=iss, sector_id=sec,
                                                  short_restricted=r, margin_bps=m),
              symbols, st.booleans(), st.booleans(), st.integers(0, 2), st.integers(0, 2),
              st.booleans(), margin_rates),
    st.builds(lambda s, p: _op("set_last_price", s, p), symbols,
              st.one_of(st.none(), st.integers(1, 12), st.integers(1, 10_000_000),
                        st.just(INT64_MAX))),
    st.builds(lambda a, c, cr: _op("set_balances", a, c, cr), accounts,
              st.one_of(st.none(), st.integers(-1_000, 10**9)), st.integers(0, 10**6)),
    st.builds(lambda a, loc: _op("set_locates", a, loc), accounts,
              st.dictionaries(symbols, st.integers(0, 20))),
    st.builds(lambda a, v, c: _op("set_tag_limits", a, v, c), accounts,
              st.dictionaries(st.sampled_from(VENUES[1:3]), limit_values),
              st.dictionaries(st.sampled_from(COUNTERPARTIES[1:]), limit_values)),
    st.builds(lambda sc, a, s, m: _op("set_halt", sc, a if sc == pb.HALT_SCOPE_ACCOUNT else s, m),
              st.sampled_from(HALT_SCOPES), accounts, symbols, st.sampled_from(HALT_MODES)),
    st.builds(lambda live: _op("set_sync_live", live), st.booleans()),
    # a writer's deadline, which evaluations after it must treat as stale
    st.builds(lambda until: _op("set_sync_live", True, until), st.integers(0, 10**10)),
    # account ownership: shards on or off, leases held (epoch), released (0), expiring
    st.builds(lambda n: _op("set_shards", n), st.sampled_from([0, 0, 1, 2, 4])),
    st.builds(lambda shard, epoch, until: _op("set_shard_lease", shard, epoch, until),
              st.integers(0, 4), st.integers(0, 3), st.integers(0, 10**10)),
    st.just(_op("clear_halts")),
    # a Redis Cluster primary lost (its slots), served again; bad ranges refused alike
    st.builds(lambda slot, width, lost: _op("set_slots_lost", [(slot, slot + width)], lost),
              st.sampled_from(KEY_SLOTS), st.sampled_from([0, 0, 1, 40]), st.booleans()),
    st.builds(lambda lost: _op("set_slots_lost", [(0, 16383)], lost), st.booleans()),
    st.builds(lambda first, last: _op("set_slots_lost", [(first, last)], True),
              st.sampled_from([-1, 0, 5, 16383]), st.sampled_from([4, 16383, 16384])),
    # decided orders: durable, leaving the table, restored
    st.builds(lambda pairs: _op("mark_durable_many", pairs),
              st.lists(st.tuples(accounts, order_ids), max_size=8)),
    st.builds(lambda a, o: _op("mark_durable", a, o), accounts, order_ids),
    st.builds(lambda t: _op("expire_orders", t), st.integers(0, 10**10)),
    st.builds(lambda a, ids: _op("forget_orders", a, ids), accounts,
              st.lists(order_ids, max_size=4)),
    st.builds(_restore, order_ids, accounts, symbols, st.sampled_from(SIDES),
              st.sampled_from(ORDER_TYPES), st.integers(1, 12), st.integers(1, 20_000),
              st.sampled_from(VENUES[:3]), st.sampled_from(COUNTERPARTIES), st.booleans(),
              st.sampled_from(REJECTIONS), st.sampled_from(TIMES_IN_FORCE[:5]),
              st.sampled_from(WALL_CLOCK_MS), st.one_of(st.just(b""), order_ids),
              st.integers(0, 3), st.sampled_from(GROUPS)),
    # the writer's sweep: orders whose time in force ended stop counting
    st.builds(lambda t: _op("end_lapsed_orders", t), st.sampled_from(WALL_CLOCK_MS)),
)

# cancel/replace of a (maybe) working order: 0 keeps the original's quantity or price
replaces = st.builds(
    lambda new, a, orig, q, p, t, m, now: _op("replace", new, a, orig, q, p, t,
                                              min_state_version=m, now_unix_ms=now),
    order_ids, st.one_of(accounts, st.just(b"NOBODY")), order_ids,
    st.one_of(st.just(0), st.integers(-1, 15), quantities), st.one_of(st.just(0), prices),
    st.integers(0, 10**10), st.one_of(st.just(0), st.integers(1, 6)),
    st.sampled_from(WALL_CLOCK_MS))

orders = st.builds(
    lambda oid, a, s, side, ot, q, p, v, c, t, m, tif, exp, now, end, g: _op(
        "evaluate", oid, a, s, side, ot, q, p, v, c, t, min_state_version=m,
        time_in_force=tif, expire_at_unix_ms=exp, now_unix_ms=now, session_end_unix_ms=end,
        group_id=g),
    st.sampled_from(ORDER_IDS + [b""]), st.one_of(accounts, st.just(b"NOBODY")),
    st.one_of(symbols, st.just(b"NOSUCH")), st.sampled_from(SIDES), st.sampled_from(ORDER_TYPES),
    quantities, prices, st.sampled_from(VENUES), st.sampled_from(COUNTERPARTIES),
    st.integers(0, 10**10), st.one_of(st.just(0), st.integers(1, 6)),
    st.sampled_from(TIMES_IN_FORCE), st.sampled_from(WALL_CLOCK_MS),
    st.sampled_from(WALL_CLOCK_MS), st.sampled_from(WALL_CLOCK_MS), st.sampled_from(GROUPS),
)


# -- seeded random walks --

class RandomWalk:
    """Operations from a seeded stdlib RNG, for long walks with a moving clock."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now_ns = 1_000_000_000
        self.last_prices: dict[bytes, int] = {}
        self.issued: list[bytes] = []
        self.sent: list[Op] = []
        # Ownership on is an episode: most orders then fail the lease check,
        # so an episode ends after a bounded number of operations and the
        # walk's other verdicts (approvals, replaces, breakers) stay reachable.
        self.ownership_left = 0
        self.lost_left = 0
        # So is a table writer that stops renewing (a deadline that passes, or
        # trust withdrawn): it resumes after a bounded number of operations,
        # as the real writer's next watchdog turn would.
        self.stale_left = 0

    @property
    def wall_clock_ms(self) -> int:
        """The walk's Unix clock: the monotonic one from EPOCH_MS."""
        return EPOCH_MS + self.now_ns // 1_000_000

    def order_id(self) -> bytes:
        # Mostly fresh ids; sometimes a recent one again (replay or conflict).
        if self.issued and self.rng.random() < 0.08:
            return self.rng.choice(self.issued[-20:])
        if self.rng.random() < 0.01:
            return b""
        self.issued.append(f"O{len(self.issued)}".encode())
        return self.issued[-1]

    def recent_ids(self, most: int) -> list[bytes]:
        recent = self.issued[-30:]
        return self.rng.sample(recent, min(len(recent), self.rng.randint(0, most)))

    def order_price(self, symbol: bytes) -> int:
        # Near the last price most of the time, so the collar lets orders through.
        last = self.last_prices.get(symbol)
        if last is not None and last < 10**12 and self.rng.random() < 0.7:
            return max(1, last + self.rng.choice([-200, -100, -1, 0, 0, 0, 0, 1, 100, 200]))
        return self.value(-2, 2_000_000)

    def value(self, lo: int, hi: int, edges: list[int] = EDGES) -> int:
        # Small values half the time, so boundaries are hit exactly and often.
        roll = self.rng.random()
        if roll < 0.03:
            return self.rng.choice(edges)
        if roll < 0.5:
            return self.rng.randint(max(lo, -3), min(hi, 15))
        return self.rng.randint(lo, hi)

    def limits(self, chance: float, hi: int, generous: float = 0.5) -> dict[int, int]:
        """Required limits almost always, optional controls sometimes; values
        near the order sizes (boundaries) or, with probability ``generous``,
        far above them (approvals)."""
        rng = self.rng
        out = {}
        for kind in LimitKind:
            required = kind < REQUIRED_COUNT
            if rng.random() >= (0.97 if required else chance):
                continue
            if kind.name.endswith("_MS"):
                out[int(kind)] = rng.choice(WINDOWS_MS)
            elif kind.name.endswith("_BPS"):
                out[int(kind)] = rng.choice([0, 100, 2_500, 5_000, 10_000, 10**9]
                                            if rng.random() > generous else [10**9])
            elif kind == LimitKind.MIN_ORDER_QUANTITY:
                out[int(kind)] = rng.choice([0, 1, 2, 5])
            elif kind == LimitKind.MIN_ORDER_NOTIONAL:
                # near the notionals of the walk's orders (a few units at its prices)
                out[int(kind)] = rng.choice([0, 1, 10_000, 100_000, 1_000_000, 10_000_000])
            elif rng.random() < generous:
                out[int(kind)] = rng.choice([10**12, 10**15, INT64_MAX])
            else:
                out[int(kind)] = self.value(0, hi, NON_NEGATIVE_EDGES)
        return out

    def operation(self) -> Op:
        rng = self.rng
        if self.ownership_left > 0:
            self.ownership_left -= 1
            if self.ownership_left == 0:
                return _op("set_shards", 0)
        if self.lost_left > 0:
            self.lost_left -= 1
            if self.lost_left == 0:  # the lost primary's slots are served again
                return _op("set_slots_lost", [(0, 16383)], False)
        if self.stale_left > 0:
            self.stale_left -= 1
            if self.stale_left == 0:
                return _op("set_sync_live", True)
        roll = rng.random()
        account, symbol = rng.choice(ACCOUNTS), rng.choice(SYMBOLS)
        if rng.random() < 0.15:
            return self._decided_order_op(account, symbol)
        if rng.random() < 0.01:
            return self._account_group_op(account)
        if roll < 0.03 and self.sent:
            return rng.choice(self.sent[-20:])  # an order sent again, unchanged
        if roll < 0.55:
            self.now_ns += rng.choice(CLOCK_STEPS_NS)
            if self.issued and rng.random() < 0.2:
                self.sent.append(self._replace(account))
            else:
                self.sent.append(self._new_order(account, symbol))
            return self.sent[-1]
        return self._state_change(roll, account, symbol)

    def _account_group_op(self, account: bytes) -> Op:
        # Accounts join and leave desks; the desks' limits mostly far above
        # the walk's sizes (so orders still go), sometimes near them; now and
        # then a desk without a hash, or one that does not parse.
        rng = self.rng
        if rng.random() < 0.3:
            return _op("set_account_groups", account,
                       sorted(rng.sample(DESKS, rng.randint(0, len(DESKS)))),
                       invalid=rng.random() < 0.02)
        limits = {kind: value for kind, value in self.limits(0.4, 3_000_000_000, 0.8).items()
                  if kind in GROUP_LIMIT_KINDS}
        if rng.random() < 0.3:
            limits[int(LimitKind.MAX_LONG_POSITION)] = self.value(0, 6_000)
            limits[int(LimitKind.MAX_SHORT_POSITION)] = self.value(0, 6_000)
        return _op("set_group", rng.choice(DESKS), None if rng.random() < 0.03 else limits,
                   invalid=rng.random() < 0.02)

    def group_id(self, symbol: bytes, venue: bytes, counterparty: bytes) -> bytes:
        """Mostly no group, or one whose legs agree on what they trade (so
        they are decided on their limits); sometimes a group id shared by
        legs of any symbol, venue or counterparty (GROUP_MISMATCH)."""
        roll = self.rng.random()
        if roll < 0.6:
            return b""
        if roll < 0.92:
            return b"G%d:%s:%s:%s" % (self.rng.randint(1, 2), symbol, venue, counterparty)
        return self.rng.choice(GROUPS[3:])

    def _new_order(self, account: bytes, symbol: bytes) -> Op:
        rng = self.rng
        venue, counterparty = rng.choice(VENUES), rng.choice(COUNTERPARTIES)
        return _op("evaluate", self.order_id(),
                   account if rng.random() < 0.97 else b"NOBODY",
                   symbol if rng.random() < 0.97 else b"NOSUCH",
                   rng.choice([pb.SIDE_BUY] * 5 + [pb.SIDE_SELL] * 3 + [pb.SIDE_SELL_SHORT]),
                   rng.choice(ORDER_TYPES),
                   self.value(-2, 1_500) if rng.random() < 0.3 else rng.randint(1, 12),
                   self.order_price(symbol), venue, counterparty, self.now_ns,
                   min_state_version=0 if rng.random() < 0.8 else rng.randint(1, 6),
                   group_id=self.group_id(symbol, venue, counterparty), **self._time_in_force())

    def _time_in_force(self) -> dict[str, int]:
        # A session ends every 100 ms of the walk's clock (mostly configured);
        # GTD expiries just before, at and after now.
        rng, now = self.rng, self.wall_clock_ms
        tif = rng.choice(TIMES_IN_FORCE)
        return {"time_in_force": tif,
                "expire_at_unix_ms": now + rng.choice([-1, 0, 1, 30, 150]) if tif in (
                    pb.TIME_IN_FORCE_GTD, 7) or rng.random() < 0.02 else 0,
                "now_unix_ms": now,
                "session_end_unix_ms": (now // 100 + 1) * 100 if rng.random() < 0.9 else 0}

    def _replace(self, account: bytes) -> Op:
        """A cancel/replace of a recent order, mostly under a fresh id."""
        rng = self.rng
        placed = [op for op in self.sent[-30:] if op[0] == "evaluate" and op[1][0]]
        if placed and rng.random() < 0.9:
            # mostly an order the walk sent, in its own account
            original, account = rng.choice(placed)[1][:2]
        else:
            original = rng.choice(self.issued[-30:])
        new_id = self.order_id() or b"O0"
        return _op("replace", new_id, account, original,
                   rng.choice([0, 0, rng.randint(1, 3), rng.randint(1, 15),
                               self.value(-2, 1_500)]),
                   rng.choice([0, 0, self.order_price(rng.choice(SYMBOLS))]), self.now_ns,
                   min_state_version=0 if rng.random() < 0.9 else rng.randint(1, 6),
                   now_unix_ms=self.wall_clock_ms)

    def _decided_order_op(self, account: bytes, symbol: bytes) -> Op:
        """What happens to decided orders: mostly made durable (the journal
        caught up), sometimes the expiry sweep, a restore or a forgotten id."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.7:
            # the journal wrote the last decisions, most of the time all of them
            return _op("mark_durable_many", [(a, oid) for oid in self.issued[-12:]
                                             for a in ACCOUNTS if rng.random() < 0.9])
        if roll < 0.8:
            return _op("expire_orders", self.now_ns)
        if roll < 0.9:
            return _op("end_lapsed_orders", self.wall_clock_ms)
        if roll < 0.95:
            return _op("forget_orders", account, self.recent_ids(3))
        self.issued.append(f"R{len(self.issued)}".encode())
        replaced = rng.choice(self.issued[-30:]) if rng.random() < 0.3 else b""
        venue, counterparty = rng.choice(VENUES[:3]), rng.choice(COUNTERPARTIES)
        return _restore(self.issued[-1], account, symbol, rng.choice(SIDES),
                        rng.choice(ORDER_TYPES), rng.randint(1, 12), self.order_price(symbol),
                        venue, counterparty, rng.random() < 0.6, rng.choice(REJECTIONS),
                        rng.choice(TIMES_IN_FORCE[:5]),
                        self.wall_clock_ms + rng.choice([-100, 0, 50, 500]), replaced,
                        rng.randint(0, 2) if replaced else 0,
                        self.group_id(symbol, venue, counterparty))

    def _state_change(self, roll: float, account: bytes, symbol: bytes) -> Op:
        rng = self.rng
        if roll < 0.65:
            positions = {s: (self.value(-3_000, 3_000), rng.randint(-10**10, 10**10))
                         for s in rng.sample(SYMBOLS, rng.randint(0, 3))}
            fills = {oid: rng.randint(0, 12) for oid in self.recent_ids(4)}
            cancels = set(self.recent_ids(2))
            return _op("replace_positions", account, positions, filled=fills,
                       cancelled=cancels, realized_pnl=rng.randint(-10**8, 10**8),
                       state_version=rng.choice([None, None, rng.randint(0, 6)]))
        if roll < 0.72:
            # ACC-1 trades freely, ACC-2 lives at its limits, ACC-3 anywhere.
            generous = {b"ACC-1": 0.95, b"ACC-2": 0.1}.get(account, 0.5)
            limits = self.limits(0.25 if account != b"ACC-1" else 0.1, 3_000_000_000, generous)
            return _op("set_account_limits", account, None if rng.random() < 0.05 else limits)
        if roll < 0.76:
            generous = 0.9 if account == b"ACC-1" else 0.3
            return _op("set_symbol_limits", account, symbol,
                       {k: v for k, v in self.limits(0.2, 3_000, generous).items()
                        if k in PER_SYMBOL_LIMITS and rng.random() < 0.3} or None)
        if roll < 0.81:
            return _op("set_halt", scope := rng.choice(HALT_SCOPES),
                       account if scope == pb.HALT_SCOPE_ACCOUNT else symbol,
                       rng.choice(HALT_MODES + [0, 0, 0, 0]))
        if roll < 0.86:
            price = None if rng.random() < 0.05 else self.value(1, 2_000_000, [1, INT64_MAX])
            if price is None:
                self.last_prices.pop(symbol, None)
            else:
                self.last_prices[symbol] = price
            return _op("set_last_price", symbol, price)
        if roll < 0.89:
            return _op("set_account_state", account, known=rng.random() < 0.95,
                       invalid=rng.random() < 0.02,
                       capacity=rng.choice(CAPACITIES) if rng.random() < 0.05 else 0)
        if roll < 0.92:
            return _op("set_instrument", symbol, known=rng.random() < 0.95,
                       invalid=rng.random() < 0.02, tick_size=rng.choice([1, 1, 2, 100]),
                       lot_size=rng.choice([1, 1, 2]), issuer_id=rng.randint(0, 2),
                       sector_id=rng.randint(0, 2), short_restricted=rng.random() < 0.2,
                       margin_bps=tuple(rng.choice(MARGIN_RATES) for _ in range(4))
                       if rng.random() < 0.5 else (0, 0, 0, 0))
        if roll < 0.94:
            cash = rng.randint(-10**6, 10**10) if account != b"ACC-1" else 10**15
            return _op("set_balances", account, None if rng.random() < 0.3 else cash,
                       rng.randint(0, 10**8))
        if roll < 0.96:
            return _op("set_locates", account, {s: rng.randint(0, 30)
                                                for s in rng.sample(SYMBOLS, rng.randint(0, 3))})
        if roll < 0.97:
            hi = 10**8 if account != b"ACC-1" else 10**15

            def tag_limit() -> int:
                return self.value(0, hi, NON_NEGATIVE_EDGES) if account != b"ACC-1" else hi

            return _op("set_tag_limits", account,
                       {v: tag_limit() for v in VENUES[1:3] if rng.random() < 0.5},
                       {c: tag_limit() for c in COUNTERPARTIES[1:] if rng.random() < 0.5})
        if roll < 0.975:
            return _op("clear_halts")
        if roll < 0.977:  # a Redis Cluster primary lost for a while: one slot, or a range
            self.lost_left = rng.randint(20, 200)
            slot = rng.choice(KEY_SLOTS)
            return _op("set_slots_lost", [(slot, min(slot + rng.choice([0, 300]), 16383))],
                       True)
        if roll < 0.98:  # account ownership: a shard's lease held, lapsing, released
            if rng.random() < 0.2:
                shards = rng.choice([0, 2, 4])
                self.ownership_left = rng.randint(50, 400) if shards else 0
                return _op("set_shards", shards)
            return _op("set_shard_lease", rng.randint(0, 3), rng.choice([0, 1, 7]),
                       self.now_ns + rng.choice([-1, 0, 1, 3_000_000, 10**12]))
        self.stale_left = rng.randint(2, 25)
        if rng.random() < 0.5:  # a deadline just ahead of or behind the walk's clock
            return _op("set_sync_live", True, self.now_ns + rng.choice([-1, 0, 1, 3_000_000]))
        return _op("set_sync_live", rng.random() < 0.9)
