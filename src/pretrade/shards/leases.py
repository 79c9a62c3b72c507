"""Leases of shards in Redis: who may decide which accounts, fenced by an epoch.

A node that owns shards (the ``owned_shards`` setting) holds one lease per
shard: the string ``pretrade:lease:<N>``, with a TTL of ``lease_ttl_ms``,
whose value names the holder (:class:`Lease`: node id, advertised gRPC
address, fencing epoch, and a random token of this holding).

* **Acquired** with ``SET NX PX`` (the value's epoch still 0), then the epoch
  counter ``pretrade:lease-epoch:<N>`` is INCR'd and the value rewritten
  with it by a compare-and-set script. The INCR happens while the lease is
  held, and holdings never overlap, so every holder's epoch is higher than
  every earlier holder's.
* **Renewed** every third of the ttl by a compare-and-set script (PEXPIRE
  only while the value is still this holding's).
* **Deadline.** After each successful acquire or renewal the keeper writes
  ``start + ttl - margin`` (CLOCK_MONOTONIC, ``start`` taken *before* the
  command was sent, so before Redis started the TTL) into the shared
  table; the compiled pipeline refuses the shard's orders STALE_DATA after
  it. A node that cannot renew (Redis unreachable, the process frozen)
  therefore stops approving before its lease can have expired in Redis, and
  so before another node can take it.
* **Lost** (the value is not ours any more): released in the table at once.
* **Lapsed** (it expired in Redis with nobody holding it since: the node
  could not renew in time, as when the primary holding the key is lost and
  its replica promoted): taken again at once. When the new epoch is the old
  one plus one, nobody held the shard in between (every holder INCRs), so
  the table already has every decision of its accounts and serves at once;
  any other epoch means another holder, and a full load as for any take-over.

Every command is on one key (``SET``, ``GET``, ``INCR``, ``EVAL`` of one
key), so the same code works on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from pretrade._core import PositionTable
from pretrade.engine.errors import FailedPrecondition
from pretrade.engine.text import is_valid_id
from pretrade.shards.owners import NOT_OWNER, Lease, ShardOwner, owner_of
from pretrade.shards.slots import shard_of, slot_range
from pretrade.state.schema import lease_epoch_key, lease_key

log = logging.getLogger("pretrade.shards")

__all__ = ["NOT_OWNER", "Lease", "LeaseKeeper", "Ownership", "ShardOwner", "lease_margin_ns",
           "owner_of", "read_shard_map"]

# KEYS[1] the lease; ARGV[1] the value this holding wrote; ARGV[2] the ttl (ms).
# 1: renewed; 0: another holding's; -1: nobody's (it expired).
_RENEW = """
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if value == false then
  return -1
end
return 0
"""
#: What the renewal script answers for a lease that expired: nobody holds it.
LAPSED = -1
# KEYS[1] the lease; ARGV[1] the provisional value; ARGV[2] the final one; ARGV[3] ttl (ms).
_PROMOTE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# KEYS[1] the lease; ARGV[1] the value this holding wrote.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


#: How often a shard waiting for its full load is looked at, seconds.
RESTORE_POLL_SECONDS = 0.01


def lease_margin_ns(ttl_ms: int) -> int:
    """How long before the lease's expiry (by this node's clock) the node stops approving.

    A tenth of the ttl: room for the two clocks' rates to differ and for the
    table's readers to see a renewal late.
    """
    return ttl_ms * 1_000_000 // 10


async def read_shard_map(client: aioredis.Redis, shard_count: int,
                         shards: Iterable[int] | None = None) -> list[ShardOwner]:
    """Each shard's holder as Redis says now (one GET per lease, pipelined).

    A lease that cannot be read (another type: WRONGTYPE) is nobody's; a
    connection error raises.
    """
    wanted = list(range(shard_count) if shards is None else shards)
    async with client.pipeline(transaction=False) as pipe:
        for shard in wanted:
            pipe.get(lease_key(shard))
        values = await pipe.execute(raise_on_error=False)
    for value in values:
        if isinstance(value, RedisError) and not isinstance(value, ResponseError):
            raise value
    return [owner_of(shard, shard_count, value if isinstance(value, bytes) else None)
            for shard, value in zip(wanted, values, strict=True)]


class LeaseKeeper:
    """Holds a node's leases and writes their deadlines into the shared table.

    Runs in the table writer (the sync process): the deadline it writes is
    what every server process's pipeline checks, so a lost lease fails closed
    in all of them at once.

    Parameters
    ----------
    client
        Its own Redis connection, with a socket timeout below the renewal
        period (a renewal that hangs must not hold the next one back).
    table
        The shared table (``set_shards`` already called).
    node, address
        This node's id and the gRPC address other nodes and clients are sent to.
    shards
        The shards it tries to hold.
    ttl_ms
        The leases' TTL in Redis; renewed every third of it.
    """

    def __init__(self, client: aioredis.Redis, table: PositionTable, *, node: str,
                 address: str, shards: Sequence[int], ttl_ms: int,
                 loads: Callable[[], int] = lambda: 1,
                 reload: Callable[[str], None] | None = None,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.client = client
        self.table = table
        self.node = node
        self.address = address
        self.shards = tuple(shards)
        self.shard_count = table.shard_count
        self.ttl_ms = ttl_ms
        self.clock = clock
        self.margin_ns = lease_margin_ns(ttl_ms)
        #: The leases this node holds now: ``{shard: Lease}``.
        self.held: dict[int, Lease] = {}
        #: The whole map as last read (every round).
        self.map: list[ShardOwner] = []
        #: Full loads the table has had (the sync's count), and how to ask for one.
        self.loads = loads
        self.reload = reload
        #: Shards held in Redis whose accounts this node does not decide yet:
        #: ``{shard: full loads when acquired}``. A shard taken over from another
        #: node waits for a full load after it (which restores the decided orders
        #: of ``orders:{ACC}``: the owner's working reservations and replayable
        #: ids) and a live table, so nothing is decided on what the table had.
        self.restoring: dict[int, int] = {}
        #: When each held lease was last acquired or renewed (the clock, at its start).
        self.renewed_at: dict[int, int] = {}
        #: Leases that expired while this node held them, nobody's since: ``{shard: epoch}``.
        self.lapsed: dict[int, int] = {}
        self.acquired = self.renewed = self.lost = self.failures = self.rejoined = 0
        self.last_error = ""
        self._renew = client.register_script(_RENEW)
        self._promote = client.register_script(_PROMOTE)
        self._release = client.register_script(_RELEASE)
        self._stopping = False

    @property
    def period_seconds(self) -> float:
        return self.ttl_ms / 3000

    async def run(self) -> None:
        """Acquire and renew until stopped (a round every third of the ttl)."""
        while not self._stopping:
            started = time.monotonic()
            await self.round()
            while (left := self.period_seconds - (time.monotonic() - started)) > 0:
                self.grant_restored()
                await asyncio.sleep(min(left, RESTORE_POLL_SECONDS) if self.restoring else left)

    def grant_restored(self) -> None:
        """Start deciding the shards whose full load after their acquisition is done."""
        for shard, loads in list(self.restoring.items()):
            if self.loads() > loads and self.table.sync_live and shard in self.held:
                del self.restoring[shard]
                self.table.set_shard_lease(shard, self.held[shard].epoch,
                                           self._deadline(self.renewed_at[shard]))
                log.info("deciding shard %d (epoch %d)", shard, self.held[shard].epoch)

    async def round(self) -> None:
        """Renew every lease held, try to take every one not held, read the map."""
        for shard in self.shards:
            try:
                if shard in self.held:
                    await self._keep(shard)
                else:
                    await self._take(shard)
            except (TimeoutError, RedisError, OSError) as error:
                # Nothing is written to the table: its deadline runs out by itself.
                self.failures += 1
                self.last_error = f"shard {shard}: {type(error).__name__}: {error}"
                log.warning("lease of shard %d not renewed: %s", shard, error)
        try:
            self.map = await read_shard_map(self.client, self.shard_count)
        except (TimeoutError, RedisError, OSError) as error:
            self.last_error = f"shard map: {type(error).__name__}: {error}"

    async def _keep(self, shard: int) -> None:
        lease = self.held[shard]
        started = self.clock()
        answer = await self._renew(keys=[lease_key(shard)], args=[lease.encode(), self.ttl_ms])
        if answer == 1:
            self.renewed_at[shard] = started
            if shard not in self.restoring:
                self.table.set_shard_lease(shard, lease.epoch, self._deadline(started))
            self.renewed += 1
            return
        self.table.set_shard_lease(shard, 0, 0)
        del self.held[shard]
        self.lost += 1
        if answer == LAPSED and shard not in self.restoring:
            self.lapsed[shard] = lease.epoch
            log.warning("the lease of shard %d (epoch %d) expired before it was renewed; "
                        "nobody holds it: taking it again", shard, lease.epoch)
            await self._take(shard)
            return
        self.restoring.pop(shard, None)
        log.warning("lost the lease of shard %d (epoch %d): another node holds it",
                    shard, lease.epoch)

    async def _take(self, shard: int) -> None:
        key = lease_key(shard)
        provisional = Lease(self.node, self.address, 0, secrets.token_hex(8))
        started = self.clock()
        if not await self.client.set(key, provisional.encode(), nx=True, px=self.ttl_ms):
            return
        epoch = int(await self.client.incr(lease_epoch_key(shard)))
        lease = Lease(self.node, self.address, epoch, provisional.token)
        if not await self._promote(keys=[key], args=[provisional.encode(), lease.encode(),
                                                     self.ttl_ms]):
            return  # expired between the two (a frozen process): not ours after all
        self.held[shard] = lease
        self.renewed_at[shard] = started
        self.acquired += 1
        if self.lapsed.pop(shard, None) == epoch - 1:
            # Nobody held it since this node's lapsed lease: the table is whole.
            self.rejoined += 1
            self.table.set_shard_lease(shard, epoch, self._deadline(started))
            log.info("holding shard %d again with epoch %d; nobody held it in between, "
                     "deciding at once", shard, epoch)
            return
        # Held, with no deadline yet: this node is the owner (no NOT_OWNER
        # refusal pointing at itself) but its orders get STALE_DATA until the
        # full load below is done (grant_restored gives the deadline).
        self.table.set_shard_lease(shard, epoch, 0)
        loads = self.loads()
        self.restoring[shard] = loads
        if loads and self.reload is not None:
            # Taken over while running: what the last owner decided since this
            # table loaded is only in orders:{ACC}; a full load reads it back.
            self.reload(f"took over shard {shard} (epoch {epoch})")
        log.info("holding shard %d (slots %d-%d) with epoch %d; deciding after a full load",
                 shard, *slot_range(shard, self.shard_count), epoch)
        self.grant_restored()

    def _deadline(self, started_ns: int) -> int:
        return started_ns + self.ttl_ms * 1_000_000 - self.margin_ns

    async def release(self) -> None:
        """Stop, and give every lease back (the table first: nothing decides on them after)."""
        self._stopping = True
        self.restoring.clear()
        for shard, lease in list(self.held.items()):
            self.table.set_shard_lease(shard, 0, 0)
            del self.held[shard]
            try:
                await self._release(keys=[lease_key(shard)], args=[lease.encode()])
            except (RedisError, OSError) as error:
                # It expires by itself within the ttl; the table already refuses.
                log.warning("lease of shard %d not released (it expires): %s", shard, error)


class Ownership:
    """What a server process asks before deciding: are these accounts this node's?

    Reads the shared table (the keeper's epochs); only a refusal reads Redis,
    for the owners to name.
    """

    def __init__(self, table: PositionTable, client: aioredis.Redis) -> None:
        self.table = table
        self.client = client

    def unowned(self, accounts: Iterable[str]) -> dict[int, list[str]]:
        """``{shard: accounts}`` of the accounts whose shard this node does not hold.

        Empty while ownership is off. A malformed id is left to request
        validation (it is refused INVALID_ARGUMENT there).
        """
        count = self.table.shard_count
        if not count:
            return {}
        refused: dict[int, list[str]] = {}
        for account in accounts:
            raw = account.encode("utf-8", "replace")
            if not is_valid_id(raw):
                continue
            shard = shard_of(raw, count)
            if self.table.shard_lease(shard)[0] == 0:
                refused.setdefault(shard, []).append(account)
        return refused

    async def refusal(self, unowned: dict[int, list[str]]) -> FailedPrecondition:
        """FAILED_PRECONDITION NOT_OWNER naming each shard's owner (ErrorInfo metadata).

        One shard: ``account``, ``shard``, ``owner``, ``address`` (empty when no
        node holds the lease). Every shard refused also as ``owner.<N>`` and
        ``address.<N>``, and ``shards`` lists them (a batch refused whole);
        ``shard_count``, for a client to route by slot from then on.
        """
        count = self.table.shard_count
        try:
            owners = await read_shard_map(self.client, count, sorted(unowned))
        except (RedisError, OSError):
            # The owners cannot be named: still refused, pointing at nobody.
            owners = [ShardOwner(s, *slot_range(s, count)) for s in sorted(unowned)]
        first = owners[0]
        metadata = {"account": unowned[first.shard][0], "shard": str(first.shard),
                    "owner": first.node, "address": first.address,
                    "shards": ",".join(str(o.shard) for o in owners),
                    "shard_count": str(count)}
        for owner in owners:
            metadata[f"owner.{owner.shard}"] = owner.node
            metadata[f"address.{owner.shard}"] = owner.address
        where = (f"node {first.node!r} at {first.address}" if first.node
                 else "no node (its lease is not held)")
        more = f" (and {len(owners) - 1} other shards)" if len(owners) > 1 else ""
        return FailedPrecondition(
            f"account {metadata['account']!r} is in shard {first.shard}, which this node does "
            f"not own: it is served by {where}{more}", NOT_OWNER, metadata)
