"""Who may call what: bearer tokens, roles and accounts, checked on every call.

A risk gateway is a control point: an order system must never be able to
lift a halt. Three layers, each configured in :class:`~pretrade.app.config.Settings`
(:mod:`pretrade.app.security` turns the settings into credentials and the
interceptor here):

* **Transport.** TLS with ``tls_cert`` and ``tls_key``; mutual TLS when
  ``tls_client_ca`` and ``tls_require_client_cert`` are set (a client must
  present a certificate issued by that CA). Plaintext only with the explicit
  ``insecure`` switch, for local development.
* **Authentication.** With ``auth = "tokens"`` (the default) every call to
  PreTradeRisk carries ``authorization: Bearer <token>`` metadata. The
  tokens file (``tokens_file``) holds the SHA-256 of each token, never the
  token, with the principal it stands for. ``auth = "none"`` serves every
  RPC to anyone who can connect, and is refused unless the server listens
  on a loopback address.
* **Authorisation.** Each principal has a role (:data:`ROLES`); :data:`RULES`
  says which roles may call which method, and a trader only for its own
  accounts. The standard health and reflection services stay open, so
  ordinary gRPC tools work without a token.

The tokens file is TOML, one ``[[token]]`` table per principal::

    [[token]]
    name = "oms-1"                 # who: shows in logs and denials
    role = "trader"                # trader, risk_operator or admin
    accounts = ["DEMO-1", "DEMO-2"]  # traders only; ["*"] is every account
    sha256 = "5e8f...64 hex digits"  # of the token; `pretrade token` prints it

A missing or unknown token ends the call ``UNAUTHENTICATED``; a role or an
account the principal may not use ends it ``PERMISSION_DENIED``, naming the
method and the account (never the token); so does an account group
(StreamPortfolio's ``group_id``) for a principal that may not use every
account, whoever the group's members are now. Both are logged at WARNING with the
peer and the principal. A batch (EvaluateOrders) with one foreign account in
any of its orders is refused whole.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import inspect
import logging
import re
import secrets
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pretrade.api.malformed import MalformedMessage
from pretrade.api.roles import ADMIN, ALL_ACCOUNTS, RISK_OPERATOR, ROLES, TRADER
from pretrade.api.status import grpc_status
from pretrade.engine.errors import ConfigError, PermissionDenied, PretradeError, Unauthenticated
from pretrade.engine.text import is_valid_id, quoted
from pretrade.v1 import risk_pb2 as pb

__all__ = [
    "ADMIN",
    "ALL_ACCOUNTS",
    "OPEN_SERVICES",
    "RISK_OPERATOR",
    "ROLES",
    "RULES",
    "TRADER",
    "AccessInterceptor",
    "Principal",
    "Rule",
    "TokenTable",
    "current_principal",
    "principal_name",
    "hash_token",
    "load_tokens",
    "new_token",
    "token_entry",
]

log = logging.getLogger("pretrade.access")

TOKEN_BYTES = 32
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[\x21-\x7e]{1,64}")
_ENTRY_KEYS = frozenset({"name", "role", "accounts", "sha256"})
_BEARER = "bearer"

_SERVICE = "/" + pb.DESCRIPTOR.services_by_name["PreTradeRisk"].full_name + "/"
OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
"""Services served without a token: standard tools (grpcurl, probes) need them."""

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "pretrade_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the call being served, or ``None`` (open service, ``auth = "none"``).

    The interceptor sets it in the call's context before the servicer runs,
    so servicer code (an audit record, a halt's author) can name the caller.
    """
    return _principal.get()


def principal_name() -> str:
    """The name of the call's principal, for the audit trail; ``""`` when there is none."""
    principal = _principal.get()
    return principal.name if principal is not None else ""


# -- principals and tokens -----------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a token stands for.

    Attributes
    ----------
    name : str
        Shown in logs and in denials.
    role : str
        ``trader``, ``risk_operator`` or ``admin``.
    accounts : frozenset of str, or None
        The accounts a trader may use; ``None`` means every account (every
        risk operator and admin, and a trader configured with ``["*"]``).
    """

    name: str
    role: str
    accounts: frozenset[str] | None

    def may_use(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts


def new_token() -> str:
    """A fresh random bearer token: 32 bytes from :mod:`secrets`, URL-safe base64.

    Never one that starts with ``-``: ``--token -x...`` on a command line reads
    as an option, not a value (one token in 64 did).
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    while token.startswith("-"):  # drawn again: 1/64 of the space left out
        token = secrets.token_urlsafe(TOKEN_BYTES)
    return token


def hash_token(token: str) -> str:
    """What the tokens file stores for ``token``: its SHA-256, in lower-case hex.

    A plain hash suffices (no salt, no key stretching) because tokens are
    32 random bytes, not passwords: there is nothing to guess.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _toml_string(text: str) -> str:
    # Names and accounts are printable ASCII (checked): escape \ and " only.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def token_entry(name: str, role: str, accounts: Sequence[str], token: str) -> str:
    """The ``[[token]]`` table to append to the tokens file for ``token``.

    Parameters
    ----------
    name, role, accounts
        As in :class:`Principal`; ``accounts`` only for a trader.
    token : str
        The raw token; only its hash is in the result.

    Returns
    -------
    str
        TOML text ending in a newline, checked by the same rules as
        :func:`load_tokens`.

    Raises
    ------
    ValueError
        If the name, role or accounts would not load.
    """
    lines = ["[[token]]", f"name = {_toml_string(name)}", f"role = {_toml_string(role)}"]
    if accounts:
        lines.append("accounts = [" + ", ".join(_toml_string(a) for a in accounts) + "]")
    lines.append(f"sha256 = {_toml_string(hash_token(token))}")
    text = "\n".join(lines) + "\n"
    _parse_entry(tomllib.loads(text)["token"][0], "the new entry")
    return text


def _parse_entry(entry: object, where: str) -> tuple[bytes, Principal]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a [[token]] table")
    if "token" in entry:
        raise ValueError(f"{where}: holds a raw 'token'; store only its sha256 "
                         "(`pretrade token` prints the entry)")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                         f"known keys are {', '.join(sorted(_ENTRY_KEYS))}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: name must be 1 to 64 printable ASCII characters "
                         "without spaces")
    where = f"{where} ({name!r})"
    role = entry.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits")
    accounts = entry.get("accounts")
    if role != TRADER:
        if accounts is not None:
            raise ValueError(f"{where}: accounts only apply to a trader; a {role} may use "
                             "every account")
        return bytes.fromhex(digest), Principal(name, role, None)
    if (not isinstance(accounts, list) or not accounts
            or not all(isinstance(a, str) for a in accounts)):
        raise ValueError(f"{where}: a trader needs accounts, a non-empty list of account "
                         'ids (["*"] for every account)')
    if ALL_ACCOUNTS in accounts:
        if len(accounts) > 1:
            raise ValueError(f'{where}: "*" already means every account; list nothing else')
        return bytes.fromhex(digest), Principal(name, role, None)
    for account in accounts:
        if not is_valid_id(account.encode("utf-8")):
            raise ValueError(f"{where}: {account!r} is not a valid account id")
    return bytes.fromhex(digest), Principal(name, role, frozenset(accounts))


class TokenTable:
    """Token hashes and their principals; :meth:`authenticate` compares in constant time."""

    def __init__(self, entries: Iterable[tuple[bytes, Principal]]) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal whose hash matches ``token``, or ``None``.

        Every entry is compared, with :func:`hmac.compare_digest`, whatever
        matches: the time taken says nothing about which hash came close.
        """
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def load_tokens(path: str | Path) -> TokenTable:
    """Read and check a tokens file (format in the module docstring).

    Raises
    ------
    ConfigError
        If the file cannot be read, is not TOML, or an entry is malformed,
        holds a raw token, or repeats a name or a hash. The message names
        the file and the entry, never a token.
    """
    source = f"tokens_file {path}"
    try:
        with open(path, "rb") as stream:
            document = tomllib.load(stream)
    except OSError as error:
        raise ConfigError(f"{source}: cannot read it: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    extra = sorted(set(document) - {"token"})
    if extra:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(extra)}; the file holds "
                          "[[token]] tables only")
    entries = document.get("token", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: no [[token]] entries; create one with `pretrade token`")
    parsed: list[tuple[bytes, Principal]] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, entry in enumerate(entries, 1):
        try:
            digest, principal = _parse_entry(entry, f"{source}: token {number}")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if principal.name in names:
            raise ConfigError(f"{source}: token {number}: name {principal.name!r} is used "
                              "twice; each principal needs its own name")
        if digest in digests:
            raise ConfigError(f"{source}: token {number} ({principal.name!r}): the same "
                              "sha256 appears twice")
        names.add(principal.name)
        digests.add(digest)
        parsed.append((digest, principal))
    return TokenTable(parsed)


# -- the rules -----------------------------------------------------------------


def _order_account(request: Any) -> Iterable[str]:
    return (request.account_id,)


def _batch_accounts(request: Any) -> Iterable[str]:
    return (order.account_id for order in request.orders)


def _portfolio_account(request: Any) -> Iterable[str]:
    # A group's stream names no account (naming both is the servicer's INVALID_ARGUMENT).
    return () if request.group_id and not request.account_id else (request.account_id,)


def _portfolio_group(request: Any) -> Iterable[str]:
    return (request.group_id,) if request.group_id else ()


def _named_account(request: Any) -> Iterable[str]:
    # Optional: without one, the servicer keeps to the principal's accounts.
    return (request.account_id,) if request.account_id else ()


@dataclass(frozen=True)
class Rule:
    """Who may call one method: its roles, and where its accounts are in the request.

    ``groups``: where the account groups it names are. A group stands for
    accounts that change while the call runs, so naming one needs a principal
    that may use every account (a trader's list is never enough).
    """

    roles: frozenset[str]
    accounts: Callable[[Any], Iterable[str]] | None = None
    groups: Callable[[Any], Iterable[str]] | None = None


RULES: dict[str, Rule] = {
    _SERVICE + "EvaluateOrder": Rule(frozenset({TRADER, ADMIN}), _order_account),
    _SERVICE + "EvaluateOrders": Rule(frozenset({TRADER, ADMIN}), _batch_accounts),
    # each order of the stream is checked as it comes
    _SERVICE + "OrderSession": Rule(frozenset({TRADER, ADMIN}), _order_account),
    # a cancel/replace is an order of its account
    _SERVICE + "ReplaceOrder": Rule(frozenset({TRADER, ADMIN}), _order_account),
    # a group's stream (its members summed) only for who may use every account
    _SERVICE + "StreamPortfolio": Rule(frozenset({TRADER, RISK_OPERATOR, ADMIN}),
                                       _portfolio_account, _portfolio_group),
    _SERVICE + "Halt": Rule(frozenset({RISK_OPERATOR, ADMIN})),
    _SERVICE + "GetStatus": Rule(frozenset({RISK_OPERATOR, ADMIN})),
    # The desk's reads: a trader's answers hold only its own accounts (the servicer filters).
    _SERVICE + "ListAccounts": Rule(frozenset({TRADER, RISK_OPERATOR, ADMIN})),
    _SERVICE + "ListHalts": Rule(frozenset({TRADER, RISK_OPERATOR, ADMIN})),
    _SERVICE + "ListRejections": Rule(frozenset({TRADER, RISK_OPERATOR, ADMIN}),
                                      _named_account),
}
"""Full method name -> rule. A method of no open service and without a rule
is for ``admin`` only: a new RPC is closed until someone decides otherwise."""
_ADMIN_ONLY = Rule(frozenset({ADMIN}))


def _short(method: str) -> str:
    return method.rpartition("/")[2] or method


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The token of the one ``authorization: Bearer`` entry, or raise Unauthenticated."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        raise Unauthenticated("missing bearer token: send metadata "
                              "'authorization: Bearer <token>'")
    if len(values) > 1:
        raise Unauthenticated("more than one authorization header")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _BEARER or not token:
        raise Unauthenticated("malformed authorization header: expected 'Bearer <token>'")
    return token


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call's bearer token and the caller's role and accounts.

    Open services pass untouched. For the rest the token is checked when the
    call arrives; a call that may not go gets a handler that ends it with
    UNAUTHENTICATED or PERMISSION_DENIED (logged with the peer, which only
    the call's context knows). A trader's call is wrapped so that the
    accounts in its request are checked before the servicer sees it.
    """

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method[1:].rpartition("/")[0] in OPEN_SERVICES:
            return handler
        principal = None
        try:
            principal = self.tokens.authenticate(_bearer_token(
                handler_call_details.invocation_metadata))
            if principal is None:
                raise Unauthenticated("invalid bearer token")
            rule = RULES.get(method, _ADMIN_ONLY)
            if principal.role not in rule.roles:
                raise PermissionDenied(
                    f"{principal.name!r} (role {principal.role}) may not call "
                    f"{_short(method)}; allowed roles: {', '.join(sorted(rule.roles))}")
        except PretradeError as error:
            return _refusing(handler, method, principal, error)
        _principal.set(principal)
        if (rule.accounts is None and rule.groups is None) or principal.accounts is None:
            return handler
        return _checking_accounts(handler, method, principal, rule)


async def _deny(context: grpc.aio.ServicerContext, method: str, principal: Principal | None,
                error: PretradeError) -> None:
    code, details = grpc_status(error)
    who = f"{principal.name} (role {principal.role})" if principal else "-"
    log.warning("%s %s from %s, principal %s: %s", code.name, _short(method), context.peer(),
                who, details)
    await context.abort(code, details)


def _refusing(handler: grpc.RpcMethodHandler, method: str, principal: Principal | None,
              error: PretradeError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only ends the call with ``error``."""
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await _deny(context, method, principal, error)

    return _same_shape(handler, refuse)


def _foreign_account(principal: Principal, method: str, request: Any,
                     rule: Rule) -> PermissionDenied | None:
    for group in rule.groups(request) if rule.groups is not None else ():
        return PermissionDenied(
            f"{principal.name!r} may not use group {quoted(group)} in {_short(method)}: "
            "a group is for principals that may use every account")
    for number, account in enumerate(rule.accounts(request) if rule.accounts else (), 1):
        if not principal.may_use(account):
            where = (f" (order {number} of the batch; the whole batch is refused)"
                     if method.endswith("/EvaluateOrders") else "")
            return PermissionDenied(
                f"{principal.name!r} may not use account {quoted(account)} in "
                f"{_short(method)}{where}")
    return None


def _checking_accounts(handler: grpc.RpcMethodHandler, method: str, principal: Principal,
                       rule: Rule) -> grpc.RpcMethodHandler:
    """``handler``, with the request's accounts checked against ``principal`` first.

    In a request stream each message is checked as the handler reads it: a
    foreign account raises PermissionDenied from the stream (logged here),
    for the handler to end the call with once it has answered what came before.
    """
    if handler.request_streaming:
        return _checking_each(handler, method, principal, rule)
    behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary
    if inspect.isasyncgenfunction(behaviour):
        async def each_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            denial = _foreign_account(principal, method, request, rule)
            if denial is not None:
                await _deny(context, method, principal, denial)
            async for response in behaviour(request, context):
                yield response

        return _same_shape(handler, each_response)

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        denial = _foreign_account(principal, method, request, rule)
        if denial is not None:
            await _deny(context, method, principal, denial)
        result = behaviour(request, context)
        return await result if inspect.isawaitable(result) else result

    return _same_shape(handler, checked)


def _checking_each(handler: grpc.RpcMethodHandler, method: str, principal: Principal,
                   rule: Rule) -> grpc.RpcMethodHandler:
    behaviour = handler.stream_stream if handler.response_streaming else handler.stream_unary

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[Any]:
        async for request in requests:
            if not isinstance(request, MalformedMessage):
                denial = _foreign_account(principal, method, request, rule)
                if denial is not None:
                    log.warning("PERMISSION_DENIED %s from %s, principal %s (role %s): %s",
                                _short(method), context.peer(), principal.name, principal.role,
                                denial)
                    raise denial
            yield request

    async def handle(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        # A request-stream handler writes with context.write(): its call is awaited.
        return await behaviour(checked(requests, context), context)

    return _same_shape(handler, handle)


def _same_shape(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any]
                ) -> grpc.RpcMethodHandler:
    kind = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[
        (handler.request_streaming, handler.response_streaming)]
    return kind(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
