"""Random operations applied alike to the compiled table and the reference twin.

Shared by the differential tests: each operation is a ``(method, args, kwargs)``
triple naming a state-writing method that ``PositionTable`` and
``ReferenceBook`` both have, or ``("evaluate", order, {})``.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import strategies as st

from pretrade.fixedpoint import INT64_MAX, INT64_MIN
from pretrade.limits import LimitKind
from pretrade.v1 import risk_pb2 as pb

ACCOUNTS = [b"ACC-1", b"ACC-2", b"ACC-3"]
SYMBOLS = [b"AAPL", b"MSFT", b"BRK.B"]
SIDES = [pb.SIDE_BUY, pb.SIDE_SELL, pb.SIDE_SELL_SHORT]
ORDER_TYPES = [pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_MARKET]
HALT_MODES = [0, pb.HALT_MODE_ACTIVE, pb.HALT_MODE_REDUCE_ONLY, pb.HALT_MODE_HALTED]
HALT_SCOPES = [pb.HALT_SCOPE_GLOBAL, pb.HALT_SCOPE_ACCOUNT, pb.HALT_SCOPE_SYMBOL]
EDGES = [INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX]

Op = tuple[str, tuple[Any, ...], dict[str, Any]]

# Small magnitudes make exact boundaries (quantity == limit) common; the
# int64 edges and wide ranges find the overflow paths.
quantities = st.one_of(st.integers(-2, 12), st.integers(-5, 2_000), st.sampled_from(EDGES),
                       st.integers(INT64_MIN, INT64_MAX))
prices = st.one_of(st.integers(-1, 12), st.integers(-5, 5_000_000), st.sampled_from(EDGES),
                   st.integers(INT64_MIN, INT64_MAX))
limit_values = st.one_of(st.integers(0, 15), st.integers(0, 150), st.integers(0, 5_000_000_000),
                         st.sampled_from(EDGES))
limit_sets = st.dictionaries(st.sampled_from(list(LimitKind)).map(int), limit_values)
accounts = st.sampled_from(ACCOUNTS)
symbols = st.sampled_from(SYMBOLS)


def _op(name: str, *args: Any, **kwargs: Any) -> Op:
    return (name, args, kwargs)


operations = st.one_of(
    st.builds(lambda a, k, i: _op("set_account_state", a, known=k, invalid=i),
              accounts, st.booleans(), st.booleans().filter(lambda v: True)),
    st.builds(lambda a, lim: _op("set_account_limits", a, lim),
              accounts, st.one_of(st.none(), limit_sets)),
    st.builds(lambda a, s, lim: _op("set_symbol_limits", a, s, lim),
              accounts, symbols, st.one_of(st.none(), limit_sets)),
    st.builds(lambda a, pos: _op("replace_positions", a, pos), accounts,
              st.dictionaries(symbols, st.tuples(st.one_of(st.integers(-15, 15), quantities),
                                                  st.integers(-10**12, 10**12)),
                              max_size=3)),
    st.builds(lambda s, k, i: _op("set_instrument", s, known=k, invalid=i),
              symbols, st.booleans(), st.booleans()),
    st.builds(lambda s, p: _op("set_last_price", s, p), symbols,
              st.one_of(st.none(), st.integers(1, 10_000_000), st.just(INT64_MAX))),
    st.builds(lambda sc, a, s, m: _op("set_halt", sc, a if sc == pb.HALT_SCOPE_ACCOUNT else s, m),
              st.sampled_from(HALT_SCOPES), accounts, symbols, st.sampled_from(HALT_MODES)),
    st.builds(lambda live: _op("set_sync_live", live), st.booleans()),
    st.just(_op("clear_halts")),
)

orders = st.builds(
    lambda a, s, side, ot, q, p: _op("evaluate", a, s, side, ot, q, p),
    st.one_of(accounts, st.just(b"NOBODY")), st.one_of(symbols, st.just(b"NOSUCH")),
    st.sampled_from(SIDES), st.sampled_from(ORDER_TYPES), quantities, prices,
)


def random_operation(rng: random.Random) -> Op:
    """One operation from a seeded stdlib RNG, for long random walks."""
    roll = rng.random()
    account, symbol = rng.choice(ACCOUNTS), rng.choice(SYMBOLS)

    def value(lo: int, hi: int) -> int:
        # Small values half the time, so boundaries are hit exactly and often.
        roll = rng.random()
        if roll < 0.05:
            return rng.choice(EDGES)
        if roll < 0.5:
            return rng.randint(max(lo, -3), min(hi, 15))
        return rng.randint(lo, hi)

    if roll < 0.55:
        return _op("evaluate", account if rng.random() < 0.95 else b"NOBODY",
                   symbol if rng.random() < 0.95 else b"NOSUCH", rng.choice(SIDES),
                   rng.choice(ORDER_TYPES), value(-2, 1_500), value(-2, 2_000_000))
    if roll < 0.65:
        return _op("replace_positions", account,
                   {s: (value(-3_000, 3_000), rng.randint(-10**10, 10**10))
                    for s in rng.sample(SYMBOLS, rng.randint(0, 3))})
    if roll < 0.72:
        limits = {int(k): value(0, 3_000_000_000)
                  for k in LimitKind if rng.random() < 0.9}
        return _op("set_account_limits", account, None if rng.random() < 0.05 else limits)
    if roll < 0.77:
        limits = {int(k): value(0, 3_000) for k in LimitKind if rng.random() < 0.3}
        return _op("set_symbol_limits", account, symbol, limits or None)
    if roll < 0.83:
        return _op("set_halt", scope := rng.choice(HALT_SCOPES),
                   account if scope == pb.HALT_SCOPE_ACCOUNT else symbol, rng.choice(HALT_MODES))
    if roll < 0.88:
        return _op("set_last_price", symbol,
                   None if rng.random() < 0.1 else rng.randint(1, 2_000_000))
    if roll < 0.93:
        return _op("set_account_state", account, known=rng.random() < 0.9,
                   invalid=rng.random() < 0.05)
    if roll < 0.97:
        return _op("set_instrument", symbol, known=rng.random() < 0.9,
                   invalid=rng.random() < 0.05)
    if roll < 0.99:
        return _op("clear_halts")
    return _op("set_sync_live", rng.random() < 0.8)
