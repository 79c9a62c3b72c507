"""A small demo book for ``make serve``: three instruments, two accounts, their lots and limits.

Written to Redis with the same keys any order system would use (see
docs/redis-schema.md), once: a marker key keeps a restart from overwriting
what an operator changed since.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from pretrade.engine.fixedpoint import parse_price
from pretrade.state.connection import is_cluster
from pretrade.state.schema import (
    instrument_key,
    limits_key,
    lot_keys,
    price_history_key,
    price_key,
)

DEMO_MARKER = b"pretrade:demo:loaded"

INSTRUMENTS: dict[bytes, dict[FieldT, EncodableT]] = {
    b"AAPL": {b"tick_size": b"100", b"lot_size": b"1", b"issuer": b"Apple Inc.",
              b"sector": b"Information Technology", b"currency": b"USD"},
    b"MSFT": {b"tick_size": b"100", b"lot_size": b"1", b"issuer": b"Microsoft Corp.",
              b"sector": b"Information Technology", b"currency": b"USD"},
    b"BRK.B": {b"tick_size": b"100", b"lot_size": b"1", b"issuer": b"Berkshire Hathaway Inc.",
               b"sector": b"Financials", b"currency": b"USD"},
}
LAST_PRICES = {b"AAPL": "68.9100", b"MSFT": "412.3300", b"BRK.B": "455.1000"}

# (lot id, symbol, signed quantity, cost price)
LOTS = {
    b"DEMO-1": [
        (b"L1", b"AAPL", 10, "68.3378"),
        (b"L2", b"AAPL", 10, "68.82"),
        (b"L3", b"MSFT", 25, "401.1200"),
    ],
    b"DEMO-2": [
        (b"L1", b"BRK.B", -40, "460.0000"),
    ],
}
LIMITS = {
    b"DEMO-1": {
        b"max_order_quantity": 1_000,
        b"max_order_notional": parse_price("250000"),
        b"max_net_position": 2_000,
        b"max_long_position": 2_000,
        b"max_short_position": 500,
        b"price_collar_bps": 500,
        # A tighter per-symbol override for one name.
        b"max_long_position:MSFT": 100,
    },
    b"DEMO-2": {
        b"max_order_quantity": 200,
        b"max_order_notional": parse_price("50000"),
        b"max_net_position": 300,
        b"max_long_position": 300,
        b"max_short_position": 100,
        b"price_collar_bps": 500,
    },
}


async def load_demo_book(client: aioredis.Redis, *, force: bool = False,
                         series_prices: bool = False) -> bool:
    """Write the demo book unless it was written before; True if it wrote it.

    ``series_prices`` (``price_source = "timeseries"``): the last prices go
    to ``price_history:<SYM>`` series (``TS.ADD``), not to ``price:<SYM>``.
    """
    if not force and not await client.set(DEMO_MARKER, b"1", nx=True):
        return False
    # One transaction on a standalone Redis; a Redis Cluster refuses one across
    # slots, and the book is written before the server loads it anyway.
    async with client.pipeline(transaction=not is_cluster(client)) as pipe:
        for symbol, fields in INSTRUMENTS.items():
            pipe.hset(instrument_key(symbol), mapping=fields)
            price = str(parse_price(LAST_PRICES[symbol]))
            if series_prices:
                pipe.execute_command("TS.ADD", price_history_key(symbol), "*", price,
                                     "DUPLICATE_POLICY", "LAST")
            else:
                pipe.set(price_key(symbol), price)
        for account, lots in LOTS.items():
            tickers, quantities, prices = lot_keys(account)
            for lot, symbol, quantity, price in lots:
                pipe.hset(tickers, lot, symbol)
                pipe.hset(quantities, lot, str(quantity))
                pipe.hset(prices, lot, str(parse_price(price)))
        for account, limits in LIMITS.items():
            limit_fields: dict[FieldT, EncodableT] = {k: str(v) for k, v in limits.items()}
            pipe.hset(limits_key(account), mapping=limit_fields)
        pipe.set(DEMO_MARKER, b"1")
        await pipe.execute()
    return True
