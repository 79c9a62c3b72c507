"""Account ownership: accounts split into shards by their Redis Cluster slot, leases of shards.

* :mod:`~pretrade.shards.slots`: the slot of an account (CRC16 of ``{ACC}``,
  exactly Redis Cluster's HASH_SLOT) and the shards as contiguous slot ranges;
* :mod:`~pretrade.shards.leases`: one lease per shard in Redis (acquired with
  SET NX PX, a fencing epoch, renewed by compare-and-set), the keeper that
  holds a node's leases and writes their deadlines into the shared table, and
  the shard map (who holds what) read back from Redis.
"""
