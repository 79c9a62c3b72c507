"""What both clients share: the shard map, which node an order goes to, what a refusal says.

No I/O here (the clients in :mod:`~pretrade.client.sync` and
:mod:`~pretrade.client.aio` do the calls): the map is built from a node's
``GetStatus`` (:meth:`ShardMap.from_status`) or from the leases in Redis
(:meth:`ShardMap.from_leases`, the values of ``pretrade:lease:<N>``), an
order is routed by its account's slot (:meth:`ShardMap.plan`), and a failed
call is read for a NOT_OWNER redirect (:func:`redirect_of`) or for whether
sending it again is safe (:func:`retryable`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from pretrade.shards.owners import NOT_OWNER, ShardOwner, owner_of
from pretrade.shards.slots import shard_of, slot_range
from pretrade.v1 import risk_pb2 as pb

__all__ = ["CallFailed", "Redirect", "ShardMap", "redirect_of", "retryable"]

#: Statuses after which the same request may be sent again: the call reached no
#: node that decided it (UNAVAILABLE), and a node that did decide it replays
#: its decision for the same order id (ids are idempotent).
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class CallFailed(Exception):
    """A call that ended without a reply: its status, ErrorInfo reason and metadata."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, reason: str = "",
                 metadata: Mapping[str, str] | None = None,
                 error: grpc.RpcError | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        #: The failed call itself (its trailers, for a caller that reads more).
        self.error = error
        #: The node that answered with the failure.
        self.target = ""

    @classmethod
    def of(cls, method: str, target: str, error: grpc.RpcError) -> CallFailed:
        code = status_code(error)
        details_of = getattr(error, "details", None)
        details = details_of() if callable(details_of) else str(error)
        info = error_info(error)
        name = code.name if code is not None else "UNKNOWN"
        failed = cls(f"{method} on {target} failed: {name}: {' '.join(str(details).split())}",
                     code, info.reason if info else "", info.metadata if info else None, error)
        failed.target = target
        return failed


@dataclass(frozen=True)
class Redirect:
    """A NOT_OWNER refusal: the shards refused and the address of each one's owner
    (empty when no node holds it)."""

    addresses: dict[int, str]
    shard_count: int = 0

    def address_of(self, shard: int) -> str:
        return self.addresses.get(shard, "")


@dataclass
class ShardMap:
    """Which node decides which account. ``shard_count`` 0: ownership is off (any node)."""

    shard_count: int = 0
    owners: dict[int, ShardOwner] = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: pb.ServerStatus) -> ShardMap:
        return cls(status.shard_count, {
            lease.shard: ShardOwner(lease.shard, lease.first_slot, lease.last_slot,
                                    lease.node_id, lease.address, lease.epoch)
            for lease in status.shard_leases})

    @classmethod
    def from_leases(cls, shard_count: int, values: Sequence[object]) -> ShardMap:
        """From the replies to GET ``pretrade:lease:0`` .. ``<shard_count - 1>`` (anything
        but bytes, an absent key or an error, is no holder)."""
        return cls(shard_count, {
            shard: owner_of(shard, shard_count, value if isinstance(value, bytes) else None)
            for shard, value in enumerate(values)})

    def shard(self, account: str) -> int | None:
        if not self.shard_count:
            return None
        return shard_of(account.encode("utf-8", "replace"), self.shard_count)

    def address_of(self, account: str) -> str | None:
        """The owner's address; None when ownership is off or no owner is known."""
        shard = self.shard(account)
        if shard is None:
            return None
        owner = self.owners.get(shard)
        return owner.address if owner is not None and owner.address else None

    def plan(self, accounts: Sequence[str], fallback: str) -> dict[str, list[int]]:
        """``{address: [positions]}``: where each account's order goes (in order per node).

        An account whose owner is not known goes to ``fallback``, whose refusal
        names the owner.
        """
        plan: dict[str, list[int]] = {}
        for index, account in enumerate(accounts):
            plan.setdefault(self.address_of(account) or fallback, []).append(index)
        return plan

    def forget(self, address: str) -> None:
        """``address`` did not answer: no shard is known to be its (until a refresh)."""
        for shard, owner in self.owners.items():
            if owner.address == address:
                self.owners[shard] = ShardOwner(shard, owner.first_slot, owner.last_slot)

    def learn(self, redirect: Redirect) -> None:
        """What a refusal said about owners, until the next refresh."""
        if redirect.shard_count and redirect.shard_count != self.shard_count:
            self.shard_count, self.owners = redirect.shard_count, {}
        for shard, address in redirect.addresses.items():
            if 0 <= shard < self.shard_count:
                first, last = slot_range(shard, self.shard_count)
                self.owners[shard] = ShardOwner(shard, first, last, address=address)


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    """The status of a failed call, blocking (grpc.Call) or asyncio (grpc.aio.AioRpcError)."""
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ``ErrorInfo`` in a failed call's ``grpc-status-details-bin`` trailer, or None
    (either kind of call: the trailer is read directly)."""
    trailers = getattr(error, "trailing_metadata", None)
    for key, value in (trailers() or ()) if callable(trailers) else ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    return None


def redirect_of(error: grpc.RpcError) -> Redirect | None:
    """The owners a FAILED_PRECONDITION NOT_OWNER names; None for any other failure."""
    if status_code(error) != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    info = error_info(error)
    if info is None or info.reason != NOT_OWNER:
        return None
    shards = [int(s) for s in info.metadata.get("shards", "").split(",") if s.isdigit()]
    count = info.metadata.get("shard_count", "")
    return Redirect({shard: info.metadata.get(f"address.{shard}", "") for shard in shards},
                    int(count) if count.isdigit() else 0)


def retryable(error: grpc.RpcError) -> bool:
    """Whether sending the same request again is safe and may help (see ``_RETRYABLE``)."""
    return status_code(error) in _RETRYABLE


#: The trailer of the rich error model (google.rpc.Status).
_DETAILS_KEY = "grpc-status-details-bin"
#: The first pause before a retry, seconds; doubled for each retry after it.
RETRY_PAUSE_SECONDS = 0.05


@dataclass
class Attempts:
    """What to do after a failed call: follow a redirect (once), retry (what is safe), or stop.

    Both clients run the same loop around it: call; on failure ask
    :meth:`after`, which raises :class:`CallFailed` when the call must end
    with that failure, else says whether to refresh the map and follow the
    redirects, and how long to wait first.
    """

    retries: int
    redirected: bool = False
    retried: int = 0

    def after(self, method: str, failures: Sequence[tuple[str, grpc.RpcError]]
              ) -> tuple[list[Redirect], float]:
        """``(redirects, pause)`` for another attempt; raises CallFailed when there is none.

        All failures NOT_OWNER, and no redirect followed yet: the redirects
        (pause 0). All failures safe to send again, with retries left: no
        redirect and the pause before the retry. Anything else ends the call.
        """
        redirects = [redirect_of(error) for _, error in failures]
        if not self.redirected and all(r is not None for r in redirects):
            self.redirected = True
            return [r for r in redirects if r is not None], 0.0
        if self.retried < self.retries and all(retryable(error) for _, error in failures):
            self.retried += 1
            return [], RETRY_PAUSE_SECONDS * 2 ** (self.retried - 1)
        target, error = failures[0]
        raise CallFailed.of(method, target, error) from None


def map_read_errors() -> tuple[type[Exception], ...]:
    """What a failed refresh of the map raises: CallFailed (no node answered), OSError,
    and redis-py's errors once it is loaded (only a client given a Redis URL loads it)."""
    import sys

    exceptions = sys.modules.get("redis.exceptions")
    return (CallFailed, OSError, *((exceptions.RedisError,) if exceptions is not None else ()))


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    """``indices`` in runs of at most ``size`` (a batch's most orders)."""
    return [list(indices[start:start + size]) for start in range(0, len(indices), size)]
