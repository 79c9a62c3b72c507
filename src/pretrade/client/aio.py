"""The asyncio client: :class:`AsyncRiskClient` (see :mod:`pretrade.client`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType

import grpc

from pretrade.api.requests import MAX_BATCH
from pretrade.client.base import ClientBase
from pretrade.client.routing import Attempts, CallFailed, Redirect, ShardMap, map_read_errors
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

__all__ = ["AsyncRiskClient"]


class AsyncRiskClient(ClientBase[grpc.aio.Channel]):
    """:class:`~pretrade.client.RiskClient` for asyncio (grpc.aio): the same routing,
    redirects and retries, every method a coroutine."""

    _refreshing: asyncio.Future[ShardMap] | None = None

    async def refresh(self) -> ShardMap:
        """Read the shard map again: from Redis when given, else from the first node
        that answers."""
        self.refreshes += 1
        if self.redis_url is not None:
            # Imported here: a client that asks the nodes loads no Redis client.
            import redis.asyncio as aioredis

            from pretrade.state.schema import lease_key

            client = aioredis.Redis.from_url(self.redis_url)
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for shard in range(self.shard_count):
                        pipe.get(lease_key(shard))
                    values = await pipe.execute(raise_on_error=False)
            finally:
                await client.aclose()
            self.map = ShardMap.from_leases(self.shard_count, values)
            return self.map
        failure: tuple[str, grpc.RpcError] | None = None
        for target in self.targets:
            try:
                self.map = ShardMap.from_status(await self.status(target))
                return self.map
            except grpc.RpcError as error:
                failure = (target, error)
        assert failure is not None
        raise CallFailed.of("GetStatus", *failure)

    async def _follow(self, redirects: list[Redirect], pause: float, since: int) -> None:
        # Concurrent calls refused at once share one refresh (not one each).
        await asyncio.sleep(pause)
        if self.refreshes == since:  # not read again since the call was sent
            self._refreshing = asyncio.ensure_future(self.refresh())
        try:
            if self._refreshing is not None:
                await asyncio.shield(self._refreshing)
        except map_read_errors():
            pass  # a node or Redis that does not answer now: the redirects still say where
        self._learn(redirects)

    async def status(self, target: str | None = None) -> pb.ServerStatus:
        """GetStatus of one node (default: the first seed)."""
        reply: pb.ServerStatus = await self._stub(target or self.targets[0]).GetStatus(
            pb.StatusRequest(), timeout=self.timeout, metadata=self._metadata())
        return reply

    async def evaluate(self, order: pb.Order) -> pb.Decision:
        """EvaluateOrder at the account's owner; CallFailed when no node decided it."""
        return await self._unary("EvaluateOrder", order.account_id, order)

    async def replace(self, request: pb.ReplaceRequest) -> pb.Decision:
        """ReplaceOrder at the account's owner."""
        return await self._unary("ReplaceOrder", request.account_id, request)

    async def evaluate_many(self, orders: Sequence[pb.Order]) -> list[pb.Decision]:
        """Every order decided by its account's owner: one EvaluateOrders per node (all
        at once), the decisions in the orders' order."""
        decisions: list[pb.Decision] = [pb.Decision()] * len(orders)
        pending = list(range(len(orders)))
        attempts = Attempts(self.retries)
        if self.redis_url is not None and not self.refreshes:
            await self.refresh()
        while pending:
            since = self.refreshes
            batches = self._batches(orders, pending, MAX_BATCH)
            replies = await asyncio.gather(*(
                self._stub(address).EvaluateOrders(
                    pb.OrderBatch(orders=[orders[i] for i in part]), timeout=self.timeout,
                    metadata=self._metadata())
                for address, part in batches), return_exceptions=True)
            failures: list[tuple[str, grpc.RpcError]] = []
            pending = []
            for (address, part), reply in zip(batches, replies, strict=True):
                if isinstance(reply, grpc.RpcError):
                    failures.append((address, reply))
                    pending.extend(part)
                    continue
                if isinstance(reply, BaseException):
                    raise reply
                for index, decision in zip(part, reply.decisions, strict=True):
                    decisions[index] = decision
            if failures:
                self._unanswered(failures)
                await self._follow(*attempts.after("EvaluateOrders", failures), since)
                pending.sort()
        return decisions

    async def _unary(self, method: str, account: str,
                     request: pb.Order | pb.ReplaceRequest) -> pb.Decision:
        if self.redis_url is not None and not self.refreshes:
            await self.refresh()
        address = self._address(account)
        attempts = Attempts(self.retries)
        while True:
            since = self.refreshes
            try:
                reply: pb.Decision = await getattr(self._stub(address), method)(
                    request, timeout=self.timeout, metadata=self._metadata())
                return reply
            except grpc.RpcError as error:
                self._unanswered([(address, error)])
                redirects, pause = attempts.after(method, [(address, error)])
                await self._follow(redirects, pause, since)
                address = self._retry_address(account, address, redirects)

    def _stub(self, address: str) -> risk_pb2_grpc.PreTradeRiskStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = (grpc.aio.insecure_channel(address) if self.credentials is None
                       else grpc.aio.secure_channel(address, self.credentials))
            self._channels[address] = channel
        return risk_pb2_grpc.PreTradeRiskStub(channel)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def __aenter__(self) -> AsyncRiskClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()
