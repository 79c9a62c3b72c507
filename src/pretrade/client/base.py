"""What both clients hold: the seeds, the credentials, the map, and how calls are addressed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import grpc

from pretrade.client.routing import Redirect, ShardMap, chunks, retryable
from pretrade.shards.slots import DEFAULT_SHARD_COUNT
from pretrade.v1 import risk_pb2 as pb

__all__ = ["ClientBase"]

#: A channel of either kind (grpc.Channel, grpc.aio.Channel).
ChannelT = TypeVar("ChannelT")


class ClientBase(Generic[ChannelT]):
    """The settings of a client, and its map (see :class:`~pretrade.client.RiskClient`).

    Parameters
    ----------
    targets
        Seed nodes, ``HOST:PORT``: where the shard map is asked for (GetStatus)
        and where an order goes whose owner the map does not know (its
        refusal names the owner). With ownership off, the first one decides
        everything.
    redis_url
        Read the shard map from the leases in Redis instead of asking a node.
    shard_count
        The deployment's ``shard_count``, needed only with ``redis_url``.
    token, credentials
        A bearer token sent with every call; TLS channel credentials (None:
        plaintext).
    timeout
        Deadline of each call, seconds.
    retries
        How many times a call that reached no node (UNAVAILABLE) is sent again
        (after refreshing the map). Safe: an order id is idempotent, a node
        that did decide it replays the decision.
    """

    def __init__(self, targets: Sequence[str], *, redis_url: str | None = None,
                 shard_count: int = DEFAULT_SHARD_COUNT, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, timeout: float = 5.0,
                 retries: int = 2) -> None:
        if not targets:
            raise ValueError("a client needs at least one node to start from")
        self.targets = list(targets)
        self.redis_url = redis_url
        self.shard_count = shard_count
        self.token = token
        self.credentials = credentials
        self.timeout = timeout
        self.retries = retries
        #: Who owns what, as last learnt: empty until :meth:`refresh` or a redirect
        #: (orders go to the first seed meanwhile, whose refusal names the owner).
        self.map = ShardMap()
        #: The seed orders go to when the map names no owner: the first one, then
        #: the next after one did not answer.
        self.seed = self.targets[0]
        #: Times the map was read (by a refresh or after a redirect).
        self.refreshes = 0
        self._channels: dict[str, ChannelT] = {}

    def _batches(self, orders: Sequence[pb.Order], pending: Sequence[int], size: int
                 ) -> list[tuple[str, list[int]]]:
        """``(address, positions)`` of each call: the pending orders by owner, in runs of
        at most ``size``."""
        plan = self.map.plan([orders[i].account_id for i in pending], self.seed)
        return [(address, part) for address, positions in plan.items()
                for part in chunks([pending[p] for p in positions], size)]

    def _learn(self, redirects: list[Redirect]) -> None:
        for redirect in redirects:
            self.map.learn(redirect)

    def _address(self, account: str) -> str:
        """Where an order of ``account`` goes now: its owner, else the seed."""
        return self.map.address_of(account) or self.seed

    def _retry_address(self, account: str, failed: str, redirects: list[Redirect]) -> str:
        """After a failure at ``failed``: the owner a redirect named, else the map's,
        else the next seed."""
        named = next(iter(redirects[0].addresses.values()), "") if redirects else ""
        return named or self.map.address_of(account) or self._next(failed)

    def _unanswered(self, failures: Sequence[tuple[str, grpc.RpcError]]) -> None:
        """A node that did not answer owns nothing in the map (the next call asks a seed,
        whose refusal names the owner now), and a seed that did not answer is not the
        seed any more."""
        for address, error in failures:
            if retryable(error):
                self.map.forget(address)
                self._next(address)

    def _next(self, address: str) -> str:
        """The seed after ``address`` (a node that did not answer), from now on."""
        if address in self.targets:
            self.seed = self.targets[(self.targets.index(address) + 1) % len(self.targets)]
        return self.seed

    def _metadata(self) -> list[tuple[str, str]] | None:
        return [("authorization", f"Bearer {self.token}")] if self.token else None
