"""The blocking client: :class:`RiskClient` (see :mod:`pretrade.client`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

import grpc

from pretrade.api.requests import MAX_BATCH
from pretrade.client.base import ClientBase
from pretrade.client.routing import Attempts, CallFailed, Redirect, ShardMap, map_read_errors
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

__all__ = ["RiskClient"]


class RiskClient(ClientBase[grpc.Channel]):
    """Orders to the node that owns each account, over blocking gRPC (parameters:
    :class:`~pretrade.client.base.ClientBase`)."""

    # -- the shard map --

    def refresh(self) -> ShardMap:
        """Read the shard map again: from Redis when given, else from the first node
        that answers."""
        self.refreshes += 1
        if self.redis_url is not None:
            # Imported here: a client that asks the nodes loads no Redis client.
            import redis

            from pretrade.state.schema import lease_key

            client = redis.Redis.from_url(self.redis_url)
            try:
                with client.pipeline(transaction=False) as pipe:
                    for shard in range(self.shard_count):
                        pipe.get(lease_key(shard))
                    values = pipe.execute(raise_on_error=False)
            finally:
                client.close()
            self.map = ShardMap.from_leases(self.shard_count, values)
            return self.map
        failure: tuple[str, grpc.RpcError] | None = None
        for target in self.targets:
            try:
                self.map = ShardMap.from_status(self.status(target))
                return self.map
            except grpc.RpcError as error:
                failure = (target, error)
        assert failure is not None
        raise CallFailed.of("GetStatus", *failure)

    def _follow(self, redirects: list[Redirect], pause: float, since: int) -> None:
        time.sleep(pause)
        try:
            if self.refreshes == since:  # not read again since the call was sent
                self.refresh()
        except map_read_errors():
            pass  # a node or Redis that does not answer now: the redirects still say where
        self._learn(redirects)

    # -- calls --

    def status(self, target: str | None = None) -> pb.ServerStatus:
        """GetStatus of one node (default: the first seed)."""
        reply: pb.ServerStatus = self._stub(target or self.targets[0]).GetStatus(
            pb.StatusRequest(), timeout=self.timeout, metadata=self._metadata())
        return reply

    def evaluate(self, order: pb.Order) -> pb.Decision:
        """EvaluateOrder at the account's owner; CallFailed when no node decided it."""
        return self._unary("EvaluateOrder", order.account_id, order)

    def replace(self, request: pb.ReplaceRequest) -> pb.Decision:
        """ReplaceOrder at the account's owner."""
        return self._unary("ReplaceOrder", request.account_id, request)

    def evaluate_many(self, orders: Sequence[pb.Order]) -> list[pb.Decision]:
        """Every order decided by its account's owner: one EvaluateOrders per node (all
        at once), the decisions in the orders' order."""
        decisions: list[pb.Decision] = [pb.Decision()] * len(orders)
        pending = list(range(len(orders)))
        attempts = Attempts(self.retries)
        if self.redis_url is not None and not self.refreshes:
            self.refresh()
        while pending:
            since = self.refreshes
            calls = []
            for address, part in self._batches(orders, pending, MAX_BATCH):
                batch = pb.OrderBatch(orders=[orders[i] for i in part])
                calls.append((address, part, self._stub(address).EvaluateOrders.future(
                    batch, timeout=self.timeout, metadata=self._metadata())))
            failures: list[tuple[str, grpc.RpcError]] = []
            pending = []
            for address, part, call in calls:
                try:
                    reply = call.result()
                except grpc.RpcError as error:
                    failures.append((address, error))
                    pending.extend(part)
                    continue
                for index, decision in zip(part, reply.decisions, strict=True):
                    decisions[index] = decision
            if failures:
                self._unanswered(failures)
                self._follow(*attempts.after("EvaluateOrders", failures), since)
                pending.sort()
        return decisions

    def _unary(self, method: str, account: str,
               request: pb.Order | pb.ReplaceRequest) -> pb.Decision:
        if self.redis_url is not None and not self.refreshes:
            self.refresh()
        address = self._address(account)
        attempts = Attempts(self.retries)
        while True:
            since = self.refreshes
            try:
                reply: pb.Decision = getattr(self._stub(address), method)(
                    request, timeout=self.timeout, metadata=self._metadata())
                return reply
            except grpc.RpcError as error:
                self._unanswered([(address, error)])
                redirects, pause = attempts.after(method, [(address, error)])
                self._follow(redirects, pause, since)
                address = self._retry_address(account, address, redirects)

    def _stub(self, address: str) -> risk_pb2_grpc.PreTradeRiskStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = (grpc.insecure_channel(address) if self.credentials is None
                       else grpc.secure_channel(address, self.credentials))
            self._channels[address] = channel
        return risk_pb2_grpc.PreTradeRiskStub(channel)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> RiskClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
