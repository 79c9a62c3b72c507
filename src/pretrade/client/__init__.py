"""A client library for order systems: orders to the node that owns each account.

With account ownership (``owned_shards``) each account is decided by one
node: the holder of its shard's lease. :class:`RiskClient` (blocking) and
:class:`AsyncRiskClient` (asyncio) keep the shard map (from any node's
GetStatus, or from the leases in Redis), send each order to its account's
owner by slot, send ``evaluate_many`` as one EvaluateOrders per node at once,
follow a FAILED_PRECONDITION ``NOT_OWNER`` refusal once (to the owner it
names, after refreshing the map), and send again only what is safe: a call
that reached no node (UNAVAILABLE), since an order id is idempotent (a node
that did decide it replays the decision). Without ownership every order goes
to the first node given. A call that ends without a decision raises
:class:`CallFailed` (its status, ErrorInfo reason and metadata).

::

    from pretrade.client import RiskClient
    from pretrade.v1 import risk_pb2 as pb

    with RiskClient(["10.0.0.7:50051", "10.0.0.8:50051"]) as client:
        decision = client.evaluate(pb.Order(order_id="o-1", account_id="ACC-1", ...))
"""

from pretrade.client.aio import AsyncRiskClient
from pretrade.client.routing import CallFailed, Redirect, ShardMap
from pretrade.client.sync import RiskClient

__all__ = ["AsyncRiskClient", "CallFailed", "Redirect", "RiskClient", "ShardMap"]
