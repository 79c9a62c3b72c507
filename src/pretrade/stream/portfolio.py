"""Live portfolio value and P&L, fanned out from the sync to StreamPortfolio subscribers.

:class:`PortfolioHub` is a :class:`~pretrade.state.sync.SyncListener`: the sync
tells it of every account (re)load and every price change, after the table
has them; the :class:`~pretrade.state.halts.HaltBook` tells it of every halt
set or lifted. Nothing is polled.

Fan-out and conflation
----------------------
Each stream is one :class:`Subscriber`. The hub indexes subscribers by the
symbols their account holds, so a price change touches only the subscribers
holding that symbol. A listener callback never builds or sends a message: it
adds the symbol to the subscriber's *dirty set*, stores the alert under its
subject (a halt scope, or a holding and limit) and wakes the subscriber (it
resolves the future the stream awaits: an ``asyncio.Event`` without the
deque). That is O(subscribers of the symbol) and never blocks, so order
checks and other subscribers never wait for a slow reader.

The stream's own coroutine (:meth:`PortfolioHub.stream`) wakes, takes the
dirty set and pending alerts, and builds one UPDATE from the state *now*: the
latest prices and positions win, however many changes happened since its
previous message. While gRPC flow control holds a slow reader's coroutine in
``context.write``, changes keep collapsing into the dirty set, whose size is
bounded by the symbols the account held meanwhile (and the pending alerts by
those symbols x 3 position limits + 2 halt scopes): memory per subscriber is
bounded whatever the tick rate.

Holdings and totals of an account are cached as protobuf messages per account
and invalidated per symbol, so 1,000 streams of one account build each figure
once per change.

Heartbeats and shutdown
-----------------------
A stream that has sent nothing for its heartbeat interval sends a HEARTBEAT
(with its next sequence number); the timer is one ``loop.call_at`` per idle
interval, re-armed lazily, so a busy stream pays nothing for it.
:meth:`PortfolioHub.close` (the first thing ``Gateway.stop`` does after
health goes NOT_SERVING) marks every subscriber closed and wakes it; each
stream then ends with :class:`~pretrade.engine.errors.Unavailable` ("shutting
down"), which the servicer turns into the UNAVAILABLE status after every
message already written, within the server's grace period: clients see a
deliberate, retryable end rather than a broken transport or CANCELLED. A
stream stuck behind a reader that never reads is cancelled when the grace
period ends.

Groups
------
A stream may follow an account group instead (:class:`GroupState`): its
holdings are its members' positions summed per symbol, its totals their
figures summed. The group's state keeps each member's held positions and the
sums, updated from the member's ``account_changed`` by the difference
between its old and new positions (O(the member's symbols), never
O(members)); the hub indexes subscribed groups by member
(:attr:`PortfolioHub.member_of`), so an account's change wakes the groups it
is in, and group subscribers join :attr:`PortfolioHub.holders` like account
subscribers, so a tick wakes only the groups holding the symbol.
``group_changed`` (the sync, once per group per batch, after the batch's
memberships and lots are in the table) re-reads the group's record and
member list from the table: members joining or leaving, a parent changing
(the flattened members change) and the group's hash changing (its limits,
whether it can be checked) reach the stream as one UPDATE of the symbols
whose sums moved, and the alerts.

State kept
----------
Prices of every symbol and the realized P&L of every account (small); the
positions, alert state and caches only of accounts with a subscriber (read
from the table when the first subscriber arrives, then kept current by
``account_changed``), and of the members of groups with a subscriber, so a
large book costs no second copy of its positions.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import cast

from pretrade._core import PositionTable
from pretrade.engine.errors import InvalidRequest, NotFound, Unavailable
from pretrade.engine.fixedpoint import INT64_MAX, average_cost, fits_int64, format_money
from pretrade.engine.limits import LimitKind
from pretrade.engine.names import short_name
from pretrade.engine.table import DEFAULT_CURRENCY, currency_of
from pretrade.v1 import risk_pb2 as pb

log = logging.getLogger("pretrade.portfolio")

DEFAULT_HEARTBEAT_SECONDS = 5.0
MIN_HEARTBEAT_MS = 100
MAX_HEARTBEAT_MS = 300_000
READY_TIMEOUT_SECONDS = 30.0
SHUTTING_DOWN = "pretrade is shutting down; reconnect for a new snapshot"

#: The subject an alert is conflated under: ``(symbol, reject code)`` for a
#: position limit, ``(b"", halt scope)`` for a halt (symbols are never empty),
#: :data:`INVALID_STATE_KEY` for the account's state not parsing.
AlertKey = tuple[bytes, int]
INVALID_STATE_KEY: AlertKey = (b"", 0)
MARGIN_CALL_KEY: AlertKey = (b"", pb.REJECT_CODE_MARGIN_SHORTFALL)
Position = tuple[int, int]

#: Position limits checked against every holding, with the code an order would get.
_POSITION_LIMITS = (
    (LimitKind.MAX_NET_POSITION, pb.REJECT_CODE_MAX_NET_POSITION),
    (LimitKind.MAX_LONG_POSITION, pb.REJECT_CODE_MAX_LONG_POSITION),
    (LimitKind.MAX_SHORT_POSITION, pb.REJECT_CODE_MAX_SHORT_POSITION),
)
#: A group's position limits, checked against each summed holding, with the code
#: an order of a member would get.
_GROUP_POSITION_LIMITS = (
    (LimitKind.MAX_LONG_POSITION, pb.REJECT_CODE_GROUP_MAX_LONG_POSITION),
    (LimitKind.MAX_SHORT_POSITION, pb.REJECT_CODE_GROUP_MAX_SHORT_POSITION),
)
#: Why a group cannot be checked: the observed of REJECT_CODE_GROUP_UNAVAILABLE
#: (docs/redis-schema.md, "When a group cannot be checked"); 0: it can be.
GROUP_NOT_CONFIGURED = 1
GROUP_HASH_INVALID = 3
GROUP_MEMBER_INVALID = 6
#: The halt scopes a portfolio stream reports (a symbol halt is not the account's).
_STREAMED_HALT_SCOPES = frozenset((pb.HALT_SCOPE_GLOBAL, pb.HALT_SCOPE_ACCOUNT))


def requested_heartbeat(milliseconds: int) -> float | None:
    """Seconds between heartbeats a PortfolioRequest asks for (None: the server default)."""
    if milliseconds < 0:
        raise InvalidRequest(f"heartbeat_interval_ms must be >= 0, got {milliseconds}",
                             "heartbeat_interval_ms")
    if milliseconds == 0:
        return None
    return min(max(milliseconds, MIN_HEARTBEAT_MS), MAX_HEARTBEAT_MS) / 1000


#: Streams let go per event-loop turn. Between two turns the loop takes up
#: whatever else arrived (an order, above all), so a tick that concerns
#: thousands of streams never holds a decision behind thousands of messages.
WAKES_PER_TURN = 8
#: Streams building or writing a message at once: gRPC's completion queue then
#: never holds more than this many of their writes ahead of an order's events.
MAX_ACTIVE_STREAMS = 64


class Waker:
    """Lets waiting streams go a few per event-loop turn, and only so many at once.

    A stream is *active* from its release until it waits again (its message
    built and written): while ``max_active`` are, the others wait their turn,
    oldest first, their changes conflating meanwhile.
    """

    __slots__ = ("_queue", "_room", "_task", "active", "max_active", "per_turn")

    def __init__(self, per_turn: int = WAKES_PER_TURN,
                 max_active: int = MAX_ACTIVE_STREAMS) -> None:
        self.per_turn = per_turn
        self.max_active = max_active
        self.active = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._room: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def release(self, waiter: asyncio.Future[None]) -> None:
        """Resolve ``waiter`` in a coming turn, when there is room."""
        self._queue.append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="pretrade-stream-waker")

    def done(self) -> None:
        """An active stream waits again (or ended)."""
        self.active -= 1
        if self._room is not None:
            self._room.set()

    async def _run(self) -> None:
        queue = self._queue
        self._room = asyncio.Event()
        while queue:
            room = min(self.per_turn, self.max_active - self.active)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            for _ in range(min(room, len(queue))):
                waiter = queue.popleft()
                if not waiter.done():
                    self.active += 1
                    waiter.set_result(None)
            await asyncio.sleep(0)


class Subscriber:
    """One StreamPortfolio stream: what changed since its last message, and its wake-up.

    The listener side calls the ``note_*`` methods (O(1), never blocks); the
    stream's coroutine awaits :meth:`wait` and then takes everything pending.
    The heartbeat timer is one ``loop.call_at`` per idle interval, re-armed
    lazily, not one timeout per wait: a busy stream pays nothing for it.
    """

    __slots__ = ("_active", "_loop", "_timer", "_waiter", "_waker", "account", "account_id",
                 "alerts", "changes", "closed", "dirty", "group_id", "heartbeat_due",
                 "interval", "last_sent", "messages", "pending", "sequence", "state",
                 "totals_dirty")

    def __init__(self, account: bytes, state: AccountState | GroupState, interval: float,
                 waker: Waker | None = None) -> None:
        #: The account streamed; b"" on a group's stream (``state`` is its GroupState).
        self.account = account
        self._waker = waker or Waker()
        self._active = False
        self.account_id = account.decode()
        self.group_id = state.group.decode() if isinstance(state, GroupState) else ""
        self.state = state
        self.interval = interval
        #: Symbols whose holding or price changed since the last message.
        self.dirty: set[bytes] = set()
        #: The latest alert per subject since the last message.
        self.alerts: dict[AlertKey, pb.Alert] = {}
        self.totals_dirty = False
        self.heartbeat_due = False
        self.closed = False
        #: Something was noted since the stream last woke.
        self.pending = False
        self.sequence = 0
        #: Changes noted, and messages sent: changes - messages were conflated away.
        self.changes = 0
        self.messages = 0
        self._loop = asyncio.get_running_loop()
        self.last_sent = self._loop.time()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def note_symbol(self, symbol: bytes) -> None:
        self.dirty.add(symbol)
        self.changes += 1
        self.wake()

    def note_totals(self) -> None:
        self.totals_dirty = True
        self.changes += 1
        self.wake()

    def note_alert(self, key: AlertKey, alert: pb.Alert) -> None:
        self.alerts[key] = alert
        self.changes += 1
        self.wake()

    def wake(self) -> None:
        self.pending = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            self._waker.release(waiter)

    async def wait(self) -> None:
        """Return once something is pending (a change, a due heartbeat, closing).

        Always through the hub's :class:`Waker`, also when something is pending
        already: a stream that is busy sending takes its turn like the others.
        """
        self.finish_turn()
        # A local: wake() clears self._waiter when it hands it to the Waker,
        # and a cancel (the client went away) can come while it waits there.
        waiter = self._waiter = self._loop.create_future()
        if self.pending:
            self._waker.release(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # released (counted active) and cancelled in the same turn
            if waiter.done() and not waiter.cancelled():
                self._active = True
            raise
        self._active = True
        self._waiter = None
        self.pending = False

    def finish_turn(self) -> None:
        """This stream's message is out (or it ends): room for another stream."""
        if self._active:
            self._active = False
            self._waker.done()

    def next_sequence(self) -> int:
        self.sequence += 1
        self.messages += 1
        return self.sequence

    def sent(self) -> None:
        """A message left: the heartbeat interval counts from now."""
        self.last_sent = self._loop.time()
        if self._timer is None and not self.closed:
            self._timer = self._loop.call_at(self.last_sent + self.interval, self._on_timer)

    def idle(self) -> bool:
        """Nothing was sent for a whole interval (a write held by flow control counts)."""
        # asyncio may run a timer up to its clock resolution early: allow 1 ms.
        return self._loop.time() - self.last_sent >= self.interval - 0.001

    def _on_timer(self) -> None:
        self._timer = None
        if not self.idle():  # something was sent since the timer was armed
            self._timer = self._loop.call_at(self.last_sent + self.interval, self._on_timer)
            return
        self.heartbeat_due = True
        self.wake()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class AccountState:
    """An account with at least one subscriber: its holdings, alert state and caches."""

    __slots__ = ("account", "breaches", "holdings", "margin", "margin_call", "positions",
                 "realized", "subscribers", "totals")

    def __init__(self, account: bytes, positions: dict[bytes, Position], realized: int) -> None:
        self.account = account
        #: Held symbols only (net quantity != 0): ``{symbol: (quantity, cost_basis)}``.
        self.positions = positions
        self.realized = realized
        self.subscribers: set[Subscriber] = set()
        #: Positions over a limit: ``{(symbol, reject code): (observed, limit)}``.
        self.breaches: dict[AlertKey, tuple[int, int]] = {}
        self.holdings: dict[bytes, pb.Holding] = {}
        self.totals: pb.PortfolioTotals | None = None
        #: The account's margin figures (None: not margined, or not known).
        self.margin: Margin | None = None
        #: Whether a MARGIN_CALL is in force (equity below maintenance).
        self.margin_call = False


class GroupState:
    """A group with at least one subscriber: its members' positions, their sums, alert
    state and caches.

    ``positions`` holds every symbol some member holds, summed (its quantity
    may be 0 when the members net out; its cost basis then still counts).
    """

    __slots__ = ("breaches", "group", "hash_invalid", "holders_of", "holdings",
                 "invalid_members", "known", "limits", "members", "positions", "realized",
                 "subscribers", "totals", "unavailable")

    def __init__(self, group: bytes) -> None:
        self.group = group
        #: Each member's held positions: ``{account: {symbol: (quantity, cost_basis)}}``.
        self.members: dict[bytes, dict[bytes, Position]] = {}
        #: The members' positions summed per symbol, and how many members hold each.
        self.positions: dict[bytes, Position] = {}
        self.holders_of: dict[bytes, int] = {}
        #: The members' realized P&L summed.
        self.realized = 0
        #: Its record in the table: ``group:<G>`` exists, does not parse, its limits.
        self.known = False
        self.hash_invalid = False
        self.limits: Mapping[int, int] = {}
        #: Members whose state in Redis does not parse: the sums are unknown.
        self.invalid_members: set[bytes] = set()
        #: The INVALID_STATE alert in force (None: the group can be checked).
        self.unavailable: pb.Alert | None = None
        self.subscribers: set[Subscriber] = set()
        self.breaches: dict[AlertKey, tuple[int, int]] = {}
        self.holdings: dict[bytes, pb.Holding] = {}
        self.totals: pb.PortfolioTotals | None = None


class PortfolioHub:
    """Keeps subscribed accounts' and groups' portfolios current and wakes their streams.

    Parameters
    ----------
    table
        The table the sync writes: account status, limits and positions of
        an account when its first subscriber arrives.
    ready
        Set once the sync's first full load is done (``RedisSync.ready``);
        streams wait for it before deciding whether an account exists.
    heartbeat_interval
        Seconds of silence before a stream sends a HEARTBEAT, unless the
        request asks for another interval.
    default_currency
        Holding.currency of a symbol whose instrument names no currency (the
        table's InstrumentRecord.currency is 0).
    """

    def __init__(self, table: PositionTable, ready: asyncio.Event, *,
                 heartbeat_interval: float = DEFAULT_HEARTBEAT_SECONDS,
                 ready_timeout: float = READY_TIMEOUT_SECONDS,
                 default_currency: str = DEFAULT_CURRENCY) -> None:
        self.table = table
        self.default_currency = default_currency
        self.ready = ready
        self.heartbeat_interval = heartbeat_interval
        self.ready_timeout = ready_timeout
        self.prices: dict[bytes, int] = {}
        #: Margin rates of held symbols as the streams last valued them.
        self.margin_rates: dict[bytes, tuple[int, int, int, int]] = {}
        self.realized: dict[bytes, int] = {}
        self.halts: dict[tuple[int, bytes], tuple[int, str]] = {}
        #: Accounts whose state in Redis does not parse (the sync says so).
        self.invalid: set[bytes] = set()
        self.accounts: dict[bytes, AccountState] = {}
        #: Groups with a subscriber, and account -> those of them it is a member of.
        self.groups: dict[bytes, GroupState] = {}
        self.member_of: dict[bytes, set[GroupState]] = {}
        #: symbol -> subscribers whose account (or group) holds it.
        self.holders: dict[bytes, set[Subscriber]] = {}
        self.waker = Waker()
        self.closed = False
        #: Messages sent by streams that have ended (the metrics).
        self.messages_of_ended = 0

    def _states(self) -> list[AccountState | GroupState]:
        return [*self.accounts.values(), *self.groups.values()]

    @property
    def subscriber_count(self) -> int:
        return sum(len(state.subscribers) for state in self._states())

    @property
    def messages_sent(self) -> int:
        """Portfolio updates sent, by every stream so far."""
        return self.messages_of_ended + sum(subscriber.messages
                                            for state in self._states()
                                            for subscriber in state.subscribers)

    # -- LISTENER CALLBACKS (O(subscribers concerned), never block) --

    def price_changed(self, symbol: bytes, price: int | None) -> None:
        """SyncListener: a symbol's last price (or its currency) changed."""
        unchanged = self.prices.get(symbol) == price
        if price is None:
            self.prices.pop(symbol, None)
        else:
            self.prices[symbol] = price
        rates_moved = False
        if symbol in self.holders:   # only held symbols' rates matter (and are cached)
            rates = self._rates_of(symbol)
            rates_moved = self.margin_rates.get(symbol, rates) != rates
            self.margin_rates[symbol] = rates
        if unchanged and not rates_moved and not self._currency_moved(symbol):
            return
        states: dict[bytes, AccountState] = {}
        for subscriber in self.holders.get(symbol, ()):
            state = subscriber.state
            state.holdings.pop(symbol, None)
            state.totals = None
            subscriber.note_symbol(symbol)
            if isinstance(state, AccountState):
                states[state.account] = state
        for account_state in states.values():
            self._note_margin(account_state)

    def account_changed(self, account: bytes, positions: dict[bytes, Position],
                        realized_pnl: int) -> None:
        """SyncListener: an account's lots or realized P&L were (re)loaded."""
        realized_before = self.realized.get(account, 0)
        if realized_pnl:
            self.realized[account] = realized_pnl
        else:
            self.realized.pop(account, None)
        groups = self.member_of.get(account)
        state = self.accounts.get(account)
        if state is None and not groups:
            return
        held = _held(positions)
        for group in groups or ():
            self._member_changed(group, account, held, realized_pnl - realized_before)
        if state is not None:
            self._account_changed(state, held, realized_pnl)

    def _account_changed(self, state: AccountState, held: dict[bytes, Position],
                         realized_pnl: int) -> None:
        account = state.account
        changed = {symbol for symbol in held.keys() | state.positions.keys()
                   if held.get(symbol) != state.positions.get(symbol)}
        realized_changed = realized_pnl != state.realized
        for symbol in changed:
            state.holdings.pop(symbol, None)
            if symbol not in held:
                self._unindex(state.subscribers, symbol)
            elif symbol not in state.positions:
                self.holders.setdefault(symbol, set()).update(state.subscribers)
        state.positions = held
        state.realized = realized_pnl
        if changed or realized_changed:
            state.totals = None
        _notify(state.subscribers, changed, realized_changed,
                self._refresh_breaches(account, state))
        # balances change equity without changing a holding: margin is re-read
        self._note_margin(state)

    def account_invalid(self, account: bytes, invalid: bool) -> None:
        """SyncListener: the account's Redis state stopped parsing, or parses again."""
        if invalid:
            self.invalid.add(account)
        else:
            self.invalid.discard(account)
        for group in self.member_of.get(account, ()):
            if invalid:
                group.invalid_members.add(account)
            else:
                group.invalid_members.discard(account)
            group.totals = None
            alerts = self._refresh_unavailable(group)
            for subscriber in group.subscribers:
                subscriber.note_totals()
                for key, group_alert in alerts:
                    subscriber.note_alert(key, group_alert)
        state = self.accounts.get(account)
        if state is None:
            return
        state.totals = None
        alert = _invalid_state_alert(invalid)
        for subscriber in state.subscribers:
            subscriber.note_alert(INVALID_STATE_KEY, alert)
            subscriber.note_totals()

    def group_changed(self, group: bytes) -> None:
        """SyncListener: a group's record or members changed (read them from the table)."""
        state = self.groups.get(group)
        if state is None:
            return
        realized_before = state.realized
        changed = self._read_group(state)
        if changed or state.realized != realized_before:
            state.totals = None
        _notify(state.subscribers, changed, state.realized != realized_before,
                self._refresh_group_breaches(state) + self._refresh_unavailable(state))

    def halt_changed(self, scope: int, target: bytes, mode: int, reason: str) -> None:
        """HaltListener: a halt was applied (mode > 0) or lifted (mode 0)."""
        if scope not in _STREAMED_HALT_SCOPES:
            return
        key = (scope, target)
        previous = self.halts.get(key, (0, ""))[0]
        if mode:
            self.halts[key] = (mode, reason)
        else:
            self.halts.pop(key, None)
        if mode == previous:
            return
        alert = _halt_alert(scope, mode, reason, previous)
        if scope == pb.HALT_SCOPE_GLOBAL:
            # a global halt stops every member: a group's stream reports it too
            states: Iterable[AccountState | GroupState] = self._states()
        else:
            account = self.accounts.get(target)
            states = () if account is None else (account,)
        for state in states:
            for subscriber in state.subscribers:
                subscriber.note_alert((b"", scope), alert)

    def currency_of(self, symbol: bytes) -> str:
        """The symbol's currency in the table, or ``default_currency`` when it names none."""
        return currency_of(self.table, symbol, self.default_currency)

    def _currency_moved(self, symbol: bytes) -> bool:
        """A held symbol's cached holdings carry another currency than the table's now."""
        holdings = [subscriber.state.holdings.get(symbol)
                    for subscriber in self.holders.get(symbol, ())]
        built = {holding.currency for holding in holdings if holding is not None}
        return bool(built) and built != {self.currency_of(symbol)}

    # -- STREAMS --

    async def stream(self, account: bytes, heartbeat_interval: float | None = None, *,
                     group: bool = False) -> AsyncGenerator[pb.PortfolioUpdate, None]:
        """A SNAPSHOT, then conflated UPDATEs and HEARTBEATs, until :meth:`close`.

        With ``group``, ``account`` is a group id and the stream is the group's:
        its members summed (``group_id`` set, ``account_id`` empty).

        Raises
        ------
        NotFound
            The account has no holdings and no limits; the group has no
            ``group:<G>`` hash and no members.
        Unavailable
            The hub is closing (server shutdown), or the first load is not done
            within ``ready_timeout``.
        """
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), self.ready_timeout)
            except TimeoutError:
                raise Unavailable("positions are not loaded from Redis yet") from None
        if self.closed:
            raise Unavailable(SHUTTING_DOWN)
        interval = heartbeat_interval or self.heartbeat_interval
        if group:
            found = self.table.group_info(account)
            if not found or not (found["known"] or found["members"]):
                raise NotFound(f"unknown group {account.decode()!r}: it has no group:<G> "
                               "hash and no member accounts")
            subscriber = self._subscribe_group(account, interval)
        else:
            info = self.table.account_info(account)
            if not info or not info["known"]:
                raise NotFound(f"unknown account {account.decode()!r}: no holdings or limits "
                               "are configured for it")
            # Subscribing and building the snapshot in one step (no await between)
            # means no change can fall between them.
            subscriber = self._subscribe(account, interval)
        try:
            yield self._snapshot(subscriber)
            subscriber.sent()
            while True:
                await subscriber.wait()
                if subscriber.closed:
                    raise Unavailable(SHUTTING_DOWN)
                update = self._update(subscriber)
                if update is None and subscriber.heartbeat_due and subscriber.idle():
                    update = self._heartbeat(subscriber)
                subscriber.heartbeat_due = False
                if update is not None:
                    yield update
                    subscriber.sent()
        finally:
            self._unsubscribe(subscriber)

    def close(self) -> None:
        """End every stream (UNAVAILABLE, after what each has sent) and refuse new ones."""
        self.closed = True
        log.info("ending %d portfolio streams", self.subscriber_count)
        for state in self._states():
            for subscriber in state.subscribers:
                subscriber.closed = True
                subscriber.cancel_timer()
                subscriber.wake()

    def _subscribe(self, account: bytes, interval: float) -> Subscriber:
        state = self.accounts.get(account)
        if state is None:
            positions = _held(self.table.account_positions(account))
            state = AccountState(account, positions, self.realized.get(account, 0))
            self._refresh_breaches(account, state)
            self._refresh_margin(state)
            self.accounts[account] = state
        subscriber = Subscriber(account, state, interval, self.waker)
        log.debug("portfolio stream of %s opened", subscriber.account_id)
        state.subscribers.add(subscriber)
        for symbol in state.positions:
            self.holders.setdefault(symbol, set()).add(subscriber)
        return subscriber

    def _subscribe_group(self, group: bytes, interval: float) -> Subscriber:
        state = self.groups.get(group)
        if state is None:
            state = GroupState(group)
            self._read_group(state)
            self._refresh_group_breaches(state)
            self._refresh_unavailable(state)
            self.groups[group] = state
        subscriber = Subscriber(b"", state, interval, self.waker)
        log.debug("portfolio stream of group %s opened", subscriber.group_id)
        state.subscribers.add(subscriber)
        for symbol in state.positions:
            self.holders.setdefault(symbol, set()).add(subscriber)
        return subscriber

    def _unsubscribe(self, subscriber: Subscriber) -> None:
        log.debug("portfolio stream of %s closed after %d messages (%d changes)",
                  subscriber.account_id or f"group {subscriber.group_id}", subscriber.messages,
                  subscriber.changes)
        subscriber.cancel_timer()
        subscriber.finish_turn()
        state = subscriber.state
        if subscriber in state.subscribers:
            self.messages_of_ended += subscriber.messages
        state.subscribers.discard(subscriber)
        for symbol in state.positions:
            self._unindex((subscriber,), symbol)
        if state.subscribers:
            return
        if isinstance(state, GroupState):
            if self.groups.get(state.group) is state:
                del self.groups[state.group]
                for member in state.members:
                    self._unindex_member(state, member)
        elif self.accounts.get(subscriber.account) is state:
            del self.accounts[subscriber.account]

    def _unindex_member(self, state: GroupState, member: bytes) -> None:
        groups = self.member_of.get(member)
        if groups is None:
            return
        groups.discard(state)
        if not groups:
            del self.member_of[member]

    # -- GROUPS --

    def _read_group(self, state: GroupState) -> set[bytes]:
        """Bring the group's record and members up to the table's; return the symbols
        whose sums changed (members joining or leaving)."""
        info = self.table.group_info(state.group)
        members: set[bytes] = set(info["members"]) if info else set()
        state.known = bool(info and info["known"])
        state.hash_invalid = bool(info and info["invalid"])
        state.limits = dict(info["limits"]) if info else {}
        changed: set[bytes] = set()
        for member in sorted(state.members.keys() - members):
            changed |= self._set_member(state, member, None)
            state.realized -= self.realized.get(member, 0)
            state.invalid_members.discard(member)
            self._unindex_member(state, member)
        for member in sorted(members - state.members.keys()):
            changed |= self._set_member(state, member,
                                        _held(self.table.account_positions(member)))
            state.realized += self.realized.get(member, 0)
            if member in self.invalid:
                state.invalid_members.add(member)
            self.member_of.setdefault(member, set()).add(state)
        return changed

    def _set_member(self, state: GroupState, member: bytes,
                    held: dict[bytes, Position] | None) -> set[bytes]:
        """Make ``held`` the member's positions in the sums (None: it left); return the
        symbols whose sums changed. O(the member's symbols)."""
        before_member = state.members.get(member, {})
        if held is None:
            state.members.pop(member, None)
        else:
            state.members[member] = held
        after_member = held or {}
        changed: set[bytes] = set()
        for symbol in before_member.keys() | after_member.keys():
            before, after = before_member.get(symbol), after_member.get(symbol)
            if before == after:
                continue
            changed.add(symbol)
            quantity, cost_basis = state.positions.get(symbol, (0, 0))
            count = state.holders_of.get(symbol, 0)
            if before is not None:
                quantity, cost_basis, count = quantity - before[0], cost_basis - before[1], \
                    count - 1
            if after is not None:
                quantity, cost_basis, count = quantity + after[0], cost_basis + after[1], \
                    count + 1
            state.holdings.pop(symbol, None)
            if count:
                if symbol not in state.positions:
                    self.holders.setdefault(symbol, set()).update(state.subscribers)
                state.positions[symbol] = (quantity, cost_basis)
                state.holders_of[symbol] = count
            else:
                state.positions.pop(symbol, None)
                state.holders_of.pop(symbol, None)
                self._unindex(state.subscribers, symbol)
        return changed

    def _member_changed(self, state: GroupState, member: bytes, held: dict[bytes, Position],
                        realized_delta: int) -> None:
        """A member's lots or realized P&L changed: its difference into the group's sums."""
        changed = self._set_member(state, member, held)
        state.realized += realized_delta
        if changed or realized_delta:
            state.totals = None
        _notify(state.subscribers, changed, bool(realized_delta),
                self._refresh_group_breaches(state) if changed else [])

    def _refresh_group_breaches(self, state: GroupState) -> list[tuple[AlertKey, pb.Alert]]:
        """The group's position limits against its summed positions; the alerts for what
        changed."""
        breaches = {key: (min(observed, INT64_MAX), limit) for key, (observed, limit)
                    in position_breaches(state.positions, state.limits,
                                         _GROUP_POSITION_LIMITS).items()}
        return self._breach_alerts(state, breaches)

    def _refresh_unavailable(self, state: GroupState) -> list[tuple[AlertKey, pb.Alert]]:
        """Whether the group can be checked; the INVALID_STATE alert (or its clearing)
        when that, or why it cannot, changed."""
        alert = _group_unavailable_alert(state)
        before = state.unavailable
        state.unavailable = alert
        if alert is None:
            return [] if before is None else [(INVALID_STATE_KEY, _group_available_alert(state))]
        if before is not None and (before.observed, before.message) == (alert.observed,
                                                                        alert.message):
            return []
        return [(INVALID_STATE_KEY, alert)]

    def _unindex(self, subscribers: Iterable[Subscriber], symbol: bytes) -> None:
        holders = self.holders.get(symbol)
        if holders is None:
            return
        holders.difference_update(subscribers)
        if not holders:
            del self.holders[symbol]

    # -- BUILDING MESSAGES --

    def _snapshot(self, subscriber: Subscriber) -> pb.PortfolioUpdate:
        state = subscriber.state
        subscriber.dirty.clear()
        subscriber.alerts.clear()
        subscriber.totals_dirty = False
        subscriber.pending = False
        alerts = [_halt_alert(scope, mode, reason, 0)
                  for (scope, target), (mode, reason) in sorted(self.halts.items())
                  if scope == pb.HALT_SCOPE_GLOBAL or target == subscriber.account]
        alerts += [_limit_alert(symbol, code, observed, limit, breached=True)
                   for (symbol, code), (observed, limit) in sorted(state.breaches.items())]
        if isinstance(state, GroupState):
            if state.unavailable is not None:
                alerts.append(state.unavailable)
        else:
            if subscriber.account in self.invalid:
                alerts.append(_invalid_state_alert(True))
            if state.margin_call and state.margin is not None:
                alerts.append(_margin_call_alert(state.margin, called=True,
                                                 currency=self._currency_of_account(state)))
        return pb.PortfolioUpdate(
            account_id=subscriber.account_id, group_id=subscriber.group_id,
            sequence=subscriber.next_sequence(),
            timestamp_unix_ns=time.time_ns(), kind=pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT,
            holdings=[self._holding(state, symbol) for symbol in sorted(state.positions)],
            totals=self._totals(state), alerts=alerts)

    def _update(self, subscriber: Subscriber) -> pb.PortfolioUpdate | None:
        if not (subscriber.dirty or subscriber.alerts or subscriber.totals_dirty):
            return None
        state = subscriber.state
        symbols = sorted(subscriber.dirty)
        alerts = list(subscriber.alerts.values())
        subscriber.dirty.clear()
        subscriber.alerts.clear()
        subscriber.totals_dirty = False
        return pb.PortfolioUpdate(
            account_id=subscriber.account_id, group_id=subscriber.group_id,
            sequence=subscriber.next_sequence(),
            timestamp_unix_ns=time.time_ns(), kind=pb.PORTFOLIO_UPDATE_KIND_UPDATE,
            holdings=[self._holding(state, symbol) for symbol in symbols],
            totals=self._totals(state), alerts=alerts)

    @staticmethod
    def _heartbeat(subscriber: Subscriber) -> pb.PortfolioUpdate:
        return pb.PortfolioUpdate(
            account_id=subscriber.account_id, group_id=subscriber.group_id,
            sequence=subscriber.next_sequence(),
            timestamp_unix_ns=time.time_ns(), kind=pb.PORTFOLIO_UPDATE_KIND_HEARTBEAT)

    def _holding(self, state: AccountState | GroupState, symbol: bytes) -> pb.Holding:
        cached = state.holdings.get(symbol)
        if cached is None:
            position = state.positions.get(symbol)
            quantity, cost_basis = position or (0, 0)
            price, currency = self.prices.get(symbol), self.currency_of(symbol)
            if isinstance(state, GroupState) and position is not None:
                cached = value_summed_holding(symbol, quantity, cost_basis, price, currency)
            else:
                cached = value_holding(symbol, quantity, cost_basis, price, currency)
            state.holdings[symbol] = cached
        return cached

    def _totals(self, state: AccountState | GroupState) -> pb.PortfolioTotals:
        if isinstance(state, GroupState):
            return self._group_totals(state)
        if state.totals is None:
            if state.account in self.invalid:
                # What the table holds is not what Redis says: no figure at all.
                state.totals = pb.PortfolioTotals(valuation=pb.VALUATION_INVALID_STATE)
            else:
                state.totals = sum_totals(
                    [self._holding(state, symbol) for symbol in state.positions],
                    state.realized, self.default_currency)
                if state.margin is not None:
                    equity, used, maintenance = state.margin
                    state.totals.margined = True
                    state.totals.equity = equity
                    state.totals.margin_used = used
                    state.totals.margin_excess = equity - used
                    state.totals.maintenance_margin = maintenance
        return state.totals

    def _group_totals(self, state: GroupState) -> pb.PortfolioTotals:
        if state.totals is None:
            if state.invalid_members:
                # A member's figures are unknown, so are the sums: no figure at all.
                state.totals = pb.PortfolioTotals(valuation=pb.VALUATION_INVALID_STATE)
            elif not fits_int64(state.realized):
                state.totals = pb.PortfolioTotals(valuation=pb.VALUATION_OVERFLOW)
            else:
                # Margin is not summed: margined stays false.
                state.totals = sum_totals(
                    [self._holding(state, symbol) for symbol in state.positions],
                    state.realized, self.default_currency)
        return state.totals

    # -- MARGIN --

    def _rates_of(self, symbol: bytes) -> tuple[int, int, int, int]:
        info = self.table.instrument_info(symbol)
        return info["margin_bps"] if info else (0, 0, 0, 0)

    def _refresh_margin(self, state: AccountState) -> list[tuple[AlertKey, pb.Alert]]:
        """Re-value the account's margin; return the alert when a margin call starts or ends."""
        info = self.table.account_info(state.account)
        cash = info["cash"] if info else None
        rates = {symbol: self._rates_of(symbol) for symbol in state.positions}
        self.margin_rates.update(rates)
        margin = None
        if cash is not None and state.account not in self.invalid:
            assert info is not None
            margin = value_margin(state.positions, self.prices, rates,
                                  cash + info["credit_line"] + state.realized)
        state.margin = margin
        calling = margin is not None and margin[0] < margin[2]
        if calling == state.margin_call:
            return []
        state.margin_call = calling
        shown = margin if margin is not None else (0, 0, 0)
        return [(MARGIN_CALL_KEY, _margin_call_alert(
            shown, called=calling, currency=self._currency_of_account(state)))]

    def _currency_of_account(self, state: AccountState) -> str:
        """The one currency of the account's holdings, or "" when they are mixed (or none)."""
        currencies = {self.currency_of(symbol) for symbol in state.positions}
        return currencies.pop() if len(currencies) == 1 else ""

    def _note_margin(self, state: AccountState) -> None:
        before = state.margin
        alerts = self._refresh_margin(state)
        if state.margin != before:
            state.totals = None
        for subscriber in state.subscribers:
            if state.margin != before:
                subscriber.note_totals()
            for key, alert in alerts:
                subscriber.note_alert(key, alert)

    # -- ALERTS --

    def _refresh_breaches(self, account: bytes, state: AccountState
                          ) -> list[tuple[AlertKey, pb.Alert]]:
        """Recompute the positions over a limit; return the alerts for what changed."""
        info = self.table.account_info(account)
        limits: Mapping[int, int] = info["limits"] if info else {}
        return self._breach_alerts(state, position_breaches(state.positions, limits))

    @staticmethod
    def _breach_alerts(state: AccountState | GroupState,
                       breaches: dict[AlertKey, tuple[int, int]]
                       ) -> list[tuple[AlertKey, pb.Alert]]:
        """Make ``breaches`` the state's; return the alerts for what changed."""
        alerts = [(key, _limit_alert(key[0], key[1], *figures, breached=True))
                  for key, figures in sorted(breaches.items()) if key not in state.breaches]
        alerts += [(key, _limit_alert(key[0], key[1], *figures, breached=False))
                   for key, figures in sorted(state.breaches.items()) if key not in breaches]
        state.breaches = breaches
        return alerts


def value_summed_holding(symbol: bytes, quantity: int, cost_basis: int, price: int | None,
                         currency: str = DEFAULT_CURRENCY) -> pb.Holding:
    """A group's holding of a symbol some member holds: the members' summed position,
    valued as :func:`value_holding` values an account's.

    Its sums need not fit in int64 (VALUATION_OVERFLOW), and members may net
    out to quantity 0: that holding keeps its summed cost basis (market value
    0, unrealized P&L -cost basis), so the group's totals are always its
    members' summed.
    """
    if not (fits_int64(quantity) and fits_int64(cost_basis)):
        return pb.Holding(symbol=symbol.decode(), currency=currency,
                          valuation=pb.VALUATION_OVERFLOW)
    if quantity != 0:
        return value_holding(symbol, quantity, cost_basis, price, currency)
    holding = pb.Holding(symbol=symbol.decode(), cost_basis=cost_basis, currency=currency)
    if price is None:
        holding.valuation = pb.VALUATION_NO_PRICE
    elif fits_int64(-cost_basis):
        holding.last_price = price
        holding.unrealized_pnl = -cost_basis
        holding.valuation = pb.VALUATION_PRICED
    else:
        holding.last_price = price
        holding.valuation = pb.VALUATION_OVERFLOW
    return holding


def _notify(subscribers: Iterable[Subscriber], symbols: Iterable[bytes], totals: bool,
            alerts: list[tuple[AlertKey, pb.Alert]]) -> None:
    """Tell each subscriber what changed: these symbols, the totals, these alerts."""
    for subscriber in subscribers:
        for symbol in symbols:
            subscriber.note_symbol(symbol)
        if totals:
            subscriber.note_totals()
        for key, alert in alerts:
            subscriber.note_alert(key, alert)


def value_holding(symbol: bytes, quantity: int, cost_basis: int, price: int | None,
                  currency: str = DEFAULT_CURRENCY) -> pb.Holding:
    """One holding valued at ``price`` (None: no last price; quantity 0: closed)."""
    if quantity == 0:
        return pb.Holding(symbol=symbol.decode(), currency=currency)
    holding = pb.Holding(symbol=symbol.decode(), quantity=quantity, cost_basis=cost_basis,
                         average_cost=average_cost(quantity, cost_basis), currency=currency)
    if price is None:
        holding.valuation = pb.VALUATION_NO_PRICE
        return holding
    holding.last_price = price
    market_value = quantity * price
    unrealized = market_value - cost_basis
    if fits_int64(market_value) and fits_int64(unrealized):
        holding.market_value = market_value
        holding.unrealized_pnl = unrealized
        holding.valuation = pb.VALUATION_PRICED
    else:
        holding.valuation = pb.VALUATION_OVERFLOW
    return holding


def sum_totals(holdings: Iterable[pb.Holding], realized_pnl: int,
               default_currency: str = DEFAULT_CURRENCY) -> pb.PortfolioTotals:
    """Totals over the holdings; unpriced ones are counted, not valued at 0 silently.

    Their currency is the holdings' one, ``default_currency`` with no
    holdings, and empty when the holdings are in several.
    """
    market_value = cost_basis = unrealized = 0
    unvalued = 0
    currencies: set[str] = set()
    for holding in holdings:
        currencies.add(holding.currency)
        cost_basis += holding.cost_basis
        if holding.valuation == pb.VALUATION_PRICED:
            market_value += holding.market_value
            unrealized += holding.unrealized_pnl
        else:
            unvalued += 1
    currency = default_currency if not currencies else \
        currencies.pop() if len(currencies) == 1 else ""
    if not (fits_int64(market_value) and fits_int64(cost_basis) and fits_int64(unrealized)):
        return pb.PortfolioTotals(realized_pnl=realized_pnl, unvalued_holdings=unvalued,
                                  valuation=pb.VALUATION_OVERFLOW, currency=currency)
    return pb.PortfolioTotals(
        market_value=market_value, cost_basis=cost_basis, unrealized_pnl=unrealized,
        realized_pnl=realized_pnl, unvalued_holdings=unvalued,
        valuation=pb.VALUATION_PRICED if unvalued == 0 else pb.VALUATION_NO_PRICE,
        currency=currency)


#: An account's margin figures: (equity, initial margin, maintenance margin).
Margin = tuple[int, int, int]


def value_margin(positions: Mapping[bytes, Position], prices: Mapping[bytes, int],
                 rates: Mapping[bytes, tuple[int, int, int, int]], balance: int
                 ) -> Margin | None:
    """``(equity, initial margin, maintenance margin)`` of the holdings at last prices.

    ``balance`` is cash + credit line + realized P&L; ``rates`` each symbol's
    ``(initial long, initial short, maintenance long, maintenance short)``
    basis points. None when no holding carries a rate (not margined), one has
    no last price, or a figure does not fit in int64: never a guess.
    """
    unrealized = initial = maintenance = 0
    for symbol, (quantity, cost_basis) in positions.items():
        price = prices.get(symbol)
        if price is None:
            return None
        value = quantity * price
        unrealized += value - cost_basis
        initial_long, initial_short, maintenance_long, maintenance_short = rates[symbol]
        initial += value * initial_long if value > 0 else -value * initial_short
        maintenance += value * maintenance_long if value > 0 else -value * maintenance_short
    if initial == 0 and maintenance == 0:
        return None
    figures = (balance + unrealized, -(-initial // 10_000), -(-maintenance // 10_000))
    equity, used, _ = figures
    if not all(fits_int64(figure) for figure in (*figures, equity - used)):
        return None
    return figures


def _margin_call_alert(margin: Margin, *, called: bool, currency: str = "") -> pb.Alert:
    """MARGIN_CALL (or its end); the message's money as a person reads it, in ``currency``
    (empty for holdings in mixed currencies: the figures without a symbol)."""
    equity, _, maintenance = margin
    if called:
        return pb.Alert(kind=pb.ALERT_KIND_MARGIN_CALL, code=pb.REJECT_CODE_MARGIN_SHORTFALL,
                        message=f"equity {format_money(equity, currency)} is below the "
                        f"maintenance margin {format_money(maintenance, currency)}",
                        observed=equity, limit=maintenance)
    return pb.Alert(kind=pb.ALERT_KIND_MARGIN_CALL_CLEARED,
                    code=pb.REJECT_CODE_MARGIN_SHORTFALL,
                    message="equity covers the maintenance margin again",
                    observed=equity, limit=maintenance)


def position_breaches(positions: Mapping[bytes, Position], limits: Mapping[int, int],
                      checks: Iterable[tuple[int, int]] = _POSITION_LIMITS
                      ) -> dict[AlertKey, tuple[int, int]]:
    """Holdings over the account's position limits: ``{(symbol, code): (observed, limit)}``.

    ``checks`` are the ``(LimitKind, reject code)`` pairs to check (a group's
    are ``_GROUP_POSITION_LIMITS``).
    """
    breaches: dict[AlertKey, tuple[int, int]] = {}
    for kind, code in checks:
        limit = limits.get(kind)
        if limit is None:
            continue
        for symbol, (quantity, _) in positions.items():
            if kind == LimitKind.MAX_NET_POSITION:
                observed = abs(quantity)
            elif kind == LimitKind.MAX_LONG_POSITION:
                observed = quantity
            else:
                observed = -quantity
            if observed > limit:
                breaches[(symbol, code)] = (observed, limit)
    return breaches


def _held(positions: Mapping[bytes, Position]) -> dict[bytes, Position]:
    return {symbol: position for symbol, position in positions.items() if position[0] != 0}


def _limit_alert(symbol: bytes, code: int, observed: int, limit: int, *, breached: bool
                 ) -> pb.Alert:
    name = short_name(pb.RejectCode, code).lower()
    text = symbol.decode()
    if breached:
        message = f"{text} position {observed} is over {name} {limit}"
        kind = pb.ALERT_KIND_LIMIT_BREACH
    else:
        message = f"{text} position is back within {name} {limit}"
        kind = pb.ALERT_KIND_LIMIT_CLEARED
    return pb.Alert(kind=kind, code=cast(pb.RejectCode, code), message=message,
                    observed=observed, limit=limit, symbol=text)


def _invalid_state_alert(invalid: bool) -> pb.Alert:
    if invalid:
        return pb.Alert(kind=pb.ALERT_KIND_INVALID_STATE, code=pb.REJECT_CODE_INVALID_STATE,
                        message="the account's state in Redis could not be parsed: its "
                        "figures are unknown and its orders are rejected; see the server log")
    return pb.Alert(kind=pb.ALERT_KIND_INVALID_STATE_CLEARED, code=pb.REJECT_CODE_INVALID_STATE,
                    message="the account's state in Redis parses again")


def _group_unavailable_alert(state: GroupState) -> pb.Alert | None:
    """The INVALID_STATE alert of a group that cannot be checked (None: it can), with the
    smallest reason that applies, as its members' orders get REJECT_CODE_GROUP_UNAVAILABLE."""
    group = state.group.decode()
    if state.hash_invalid:
        reason = GROUP_HASH_INVALID
        message = (f"group {group}: its group:{group} hash could not be parsed; its members' "
                   "orders are rejected group_unavailable; see the server log")
    elif not state.known:
        reason = GROUP_NOT_CONFIGURED
        message = (f"group {group} is not configured (no group:{group} hash); its members' "
                   "orders are rejected group_unavailable")
    elif state.invalid_members:
        reason = GROUP_MEMBER_INVALID
        names = ", ".join(member.decode() for member in sorted(state.invalid_members))
        message = (f"group {group}: the state in Redis of member {names} could not be "
                   "parsed: the group's figures are unknown and its members' orders are "
                   "rejected group_unavailable")
    else:
        return None
    return pb.Alert(kind=pb.ALERT_KIND_INVALID_STATE, code=pb.REJECT_CODE_GROUP_UNAVAILABLE,
                    message=message, observed=reason)


def _group_available_alert(state: GroupState) -> pb.Alert:
    return pb.Alert(kind=pb.ALERT_KIND_INVALID_STATE_CLEARED,
                    code=pb.REJECT_CODE_GROUP_UNAVAILABLE,
                    message=f"group {state.group.decode()} can be checked again")


def _halt_alert(scope: int, mode: int, reason: str, previous: int) -> pb.Alert:
    scope_name = short_name(pb.HaltScope, scope).lower()
    code = pb.REJECT_CODE_GLOBAL_HALT if scope == pb.HALT_SCOPE_GLOBAL \
        else pb.REJECT_CODE_ACCOUNT_HALT
    if mode == 0:
        if previous == pb.HALT_MODE_REDUCE_ONLY:
            code = pb.REJECT_CODE_REDUCE_ONLY
        return pb.Alert(kind=pb.ALERT_KIND_HALT_LIFTED, code=code,
                        message=f"{scope_name} halt lifted", halt_mode=pb.HALT_MODE_ACTIVE)
    if mode == pb.HALT_MODE_REDUCE_ONLY:
        code = pb.REJECT_CODE_REDUCE_ONLY
    mode_name = short_name(pb.HaltMode, mode)
    return pb.Alert(kind=pb.ALERT_KIND_HALT, code=code,
                    message=f"{scope_name} halt {mode_name}: {reason}",
                    halt_mode=cast(pb.HaltMode, mode))
