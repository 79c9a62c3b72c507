"""The domain's errors: a small hierarchy, with no transport in it.

Code anywhere in pretrade raises these; :mod:`pretrade.api.status` is the one
place that turns them into gRPC status codes. :class:`ConfigError` and the
:class:`StartupError` family are apart: they stop a start (``pretrade serve``
prints their message in one line and exits with a status of its own,
:mod:`pretrade.cli.commands` says which), never a call.
"""

from __future__ import annotations


class PretradeError(Exception):
    """Base of the errors that end a call (mapped by :func:`pretrade.api.status.grpc_status`)."""


class InvalidRequest(PretradeError):
    """The request is malformed (missing ids, unspecified enums, bad ranges).

    ``field`` names the request field at fault (``account_id``), when one is:
    the status's BadRequest detail carries it.
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class FailedPrecondition(PretradeError):
    """A well-formed request the current state refuses (halting a target never seen).

    ``reason`` (``UNKNOWN_SYMBOL``) and ``metadata`` go into the status's
    ErrorInfo detail, for programs to act on without reading the message.
    """

    def __init__(self, message: str, reason: str, metadata: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})


class NotFound(PretradeError):
    """What the request names does not exist (a StreamPortfolio of an unknown account)."""


class Unauthenticated(PretradeError):
    """No bearer token, or one the server does not know (:mod:`pretrade.api.access`)."""


class PermissionDenied(PretradeError):
    """A known principal asked for a method or an account its role does not allow."""


class Unavailable(PretradeError):
    """A dependency (Redis) cannot be reached; retrying later may succeed."""


class DeadlineExceeded(PretradeError):
    """The client's deadline passed before the work started: it is not done late."""


class ConfigError(ValueError):
    """A setting (or a file a setting names) that pretrade cannot start with.

    The message names the setting, its value (passwords masked) and where it
    came from.
    """


class StartupError(Exception):
    """Something outside pretrade keeps ``pretrade serve`` from starting.

    The message is one line that says what is wrong and what to do; nothing
    was left behind (no table file, no child process).
    """


class CannotListen(StartupError):
    """The listen address is in use by another process, or cannot be bound at all."""


class TableInUse(StartupError):
    """Another live server holds the lock on the table file."""


class CapacityRefused(StartupError):
    """The table the capacities ask for cannot be made (too large for its filesystem)."""


class RedisUnreachable(StartupError):
    """Redis does not answer at the configured URL, or refuses the credentials."""


class DataDirInUse(StartupError):
    """Another embedded redis-server (or its parent) holds the lock on the data directory."""


class EmbeddedServerFailed(StartupError):
    """An embedded redis-server or PostgreSQL (``make serve``'s) could not be started."""


class WorkerFailed(StartupError):
    """A worker process of ``pretrade serve --workers N`` ended before it served."""
