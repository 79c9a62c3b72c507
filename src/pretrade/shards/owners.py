"""Who holds a shard: the lease's value, and the shard map's entries (no Redis client here).

Read by the lease keeper (:mod:`pretrade.shards.leases`) and by the client
library, which must load without a Redis client or the state room.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pretrade.shards.slots import slot_range

__all__ = ["NOT_OWNER", "Lease", "ShardOwner", "owner_of"]

#: ErrorInfo.reason of an order refused because another node owns its account.
NOT_OWNER = "NOT_OWNER"


@dataclass(frozen=True)
class Lease:
    """The value of ``pretrade:lease:<N>``: who holds the shard, under which epoch."""

    node: str
    address: str
    epoch: int
    token: str

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "address": self.address, "epoch": self.epoch,
                           "token": self.token}, sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Lease | None:
        """The lease a value holds; None when it is not one (then it is nobody's to use)."""
        try:
            fields = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(fields, dict):
            return None
        node, address, epoch, token = (fields.get(k) for k in ("node", "address", "epoch",
                                                               "token"))
        if not (isinstance(node, str) and isinstance(address, str) and isinstance(token, str)
                and isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
            return None
        return cls(node, address, epoch, token)


@dataclass(frozen=True)
class ShardOwner:
    """One shard of the map: its slots and its holder ("" when no node holds it)."""

    shard: int
    first_slot: int
    last_slot: int
    node: str = ""
    address: str = ""
    epoch: int = 0


def owner_of(shard: int, shard_count: int, raw: bytes | None) -> ShardOwner:
    """The map entry of a shard from its lease's value (None: no lease)."""
    first, last = slot_range(shard, shard_count)
    lease = Lease.parse(raw) if raw is not None else None
    if lease is None or lease.epoch == 0:
        # Absent, unreadable, or still being acquired: no holder to send orders to.
        return ShardOwner(shard, first, last)
    return ShardOwner(shard, first, last, lease.node, lease.address, lease.epoch)
