"""The price feed: ticks from the Redis stream ``prices``, applied to the table and listeners.

A market-data writer publishes every tick twice, in one ``MULTI``::

    SET price:AAPL 689100
    XADD prices * symbol AAPL price 689100

The ``price:<SYM>`` string is the latest price: the sync loads it at startup
and follows it through keyspace notifications. The stream is the tick
sequence: :class:`PriceFeed` reads it with ``XREAD BLOCK`` and calls
:meth:`RedisSync.apply_price <pretrade.state.sync.RedisSync.apply_price>` for each
tick, which updates the table (a MARKET order is valued at the new price in
the next decision) and tells the sync listeners (portfolio streams).

Where reading starts
--------------------
:meth:`PriceFeed.mark_start` records the id of the stream's last entry
*before* the sync's first full load begins (``Gateway.start`` calls it
first), and :meth:`PriceFeed.run` waits for that load to finish before its
first read. Ticks added while the load runs are therefore replayed after it,
so none is lost even from a writer that only XADDs. Starting from ``$``
after the load would drop them (only a writer that also SETs the key would
be covered, by the sync). The feed never reads history from before it
started: the load's ``price:<SYM>`` values are the state as of startup.

A replayed tick may be older than the ``price:<SYM>`` value the load read;
it is applied anyway and the next entry (or the key's notification) brings
the price back to the latest, since the stream's last entry for a symbol and
its key are written together.

After a link error the feed logs, waits (exponential backoff, capped) and
resumes after the last id it processed, so ticks written during the outage
are applied once Redis is back (if the stream survived, i.e. Redis persists
it or was not restarted).

Per batch (``XREAD COUNT``), several ticks for one symbol are coalesced: only
the latest is applied. A malformed entry (missing or invalid symbol, a price
that is not a positive int64) is logged, counted in
:attr:`PriceFeedStats.bad_entries` and skipped; it never stops the feed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from pretrade.engine.text import is_valid_id, quoted
from pretrade.state.schema import StateError, parse_last_price
from pretrade.state.sync import LINK_ERRORS, RedisSync

log = logging.getLogger("pretrade.prices")

#: The Redis stream of price ticks: entries ``symbol <SYM> price <P>``.
PRICE_STREAM = b"prices"
#: Read from the start of the stream (it did not exist, or was empty).
STREAM_START = b"0-0"

StreamEntry = tuple[bytes, Mapping[bytes, bytes]]


@dataclass
class PriceFeedStats:
    """Counters of one PriceFeed; read them, never write them."""

    #: Ticks applied to the table (after coalescing).
    ticks_applied: int = 0
    #: Valid ticks not applied because a later tick for the symbol was in the same batch.
    ticks_coalesced: int = 0
    #: Malformed entries skipped.
    bad_entries: int = 0
    #: XREAD replies that held entries.
    batches: int = 0
    #: Link errors the feed recovered from.
    link_errors: int = 0
    #: The id of the last entry processed (b"" until the start is known).
    last_id: bytes = b""
    last_error: str = ""


class PriceFeed:
    """Follows the ``prices`` stream and applies each tick through the sync.

    Parameters
    ----------
    client
        An asyncio Redis client with ``decode_responses=False``. A blocked
        XREAD holds one pooled connection; ``block_ms`` must stay below the
        client's socket timeout.
    sync
        The sync whose :meth:`~pretrade.state.sync.RedisSync.apply_price` the ticks
        go through; the feed waits for its ``ready`` event before reading.
    stream
        The stream key.
    batch_size
        ``XREAD COUNT``: entries per read, coalesced per symbol.
    block_ms
        ``XREAD BLOCK``: how long one read waits for new entries.
    backoff, max_backoff
        Seconds to wait after a link error, doubling up to ``max_backoff``.
    """

    def __init__(self, client: aioredis.Redis, sync: RedisSync, *,
                 stream: bytes = PRICE_STREAM, batch_size: int = 1000, block_ms: int = 1000,
                 backoff: float = 0.1, max_backoff: float = 5.0) -> None:
        self.client = client
        self.sync = sync
        self.stream = stream
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = PriceFeedStats()
        self._stopping = False

    async def mark_start(self) -> None:
        """Remember the stream's last entry now: the feed applies only entries after it.

        Call before the sync's first full load. If Redis cannot be reached,
        :meth:`run` finds the start itself once it can (ticks during the load
        may then be missed by the feed; the sync still loads their key).
        """
        try:
            self.stats.last_id = await self._stream_tail()
        except LINK_ERRORS as error:
            log.warning("could not read the tail of stream %s (%s); the feed will start at "
                        "its tail once Redis answers", self.stream.decode(), error)

    async def _stream_tail(self) -> bytes:
        newest = cast(list[StreamEntry], await self.client.xrevrange(self.stream, count=1))
        return newest[0][0] if newest else STREAM_START

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current read."""
        self._stopping = True

    async def run(self) -> None:
        """Read and apply ticks until :meth:`stop` (or cancellation); never raises on data."""
        await self.sync.ready.wait()
        delay = self.backoff
        while not self._stopping:
            try:
                if not self.stats.last_id:
                    self.stats.last_id = await self._stream_tail()
                reply = await self.client.xread({self.stream: self.stats.last_id},
                                                count=self.batch_size, block=self.block_ms)
                delay = self.backoff
            except (*LINK_ERRORS, ResponseError) as error:
                # ResponseError: e.g. WRONGTYPE if the key is not a stream; keep
                # retrying so the feed recovers when someone fixes the key.
                self.stats.link_errors += 1
                self.stats.last_error = f"{type(error).__name__}: {error}"
                log.error("reading price stream %s failed (%s); retrying in %.1f s",
                          self.stream.decode(), self.stats.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            # The gateway's client speaks RESP2: [[stream, [(id, fields), ...]]].
            for _stream, entries in cast(list[tuple[bytes, list[StreamEntry]]], reply or []):
                self.apply_entries(entries)

    def apply_entries(self, entries: Sequence[StreamEntry]) -> None:
        """Validate one batch, keep each symbol's latest tick, apply those in order."""
        if not entries:
            return
        self.stats.batches += 1
        latest: dict[bytes, int] = {}
        for entry_id, fields in entries:
            tick = self._parse(entry_id, fields)
            if tick is None:
                continue
            symbol, price = tick
            if symbol in latest:
                self.stats.ticks_coalesced += 1
                del latest[symbol]  # re-insert: apply in order of each symbol's last tick
            latest[symbol] = price
        self.stats.last_id = entries[-1][0]
        for symbol, price in latest.items():
            self.sync.apply_price(symbol, price)
            self.stats.ticks_applied += 1

    def _parse(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> tuple[bytes, int] | None:
        symbol = fields.get(b"symbol")
        raw_price = fields.get(b"price")
        try:
            if symbol is None or not is_valid_id(symbol):
                raise StateError(f"symbol {quoted(symbol)} is not a valid symbol")
            if raw_price is None:
                raise StateError("no price field")
            return symbol, parse_last_price(raw_price)
        except StateError as error:
            self.stats.bad_entries += 1
            log.warning("skipping price tick %s in stream %s: %s",
                        entry_id.decode(errors="replace"), self.stream.decode(), error)
            return None
