"""The domain's errors: a small hierarchy, with no transport in it.

Code anywhere in pretrade raises these; :mod:`pretrade.api.status` is the one
place that turns them into gRPC status codes. :class:`ConfigError` is apart:
it stops a start (``pretrade serve`` exits 2 with its message), never a call.
"""

from __future__ import annotations


class PretradeError(Exception):
    """Base of the errors that end a call (mapped by :func:`pretrade.api.status.grpc_status`)."""


class InvalidRequest(PretradeError):
    """The request is malformed (missing ids, unspecified enums, bad ranges)."""


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
