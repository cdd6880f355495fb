"""The one error hierarchy. The API renders each as ``{"error": <kind>, "detail": <for a person>}``."""

from __future__ import annotations

import re


class ServiceError(Exception):
    """A failure with a meaning for the caller. ``status_code`` is the HTTP status it maps to."""

    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def kind(self) -> str:
        return type(self).__name__


class ConfigurationError(ServiceError):
    """The service is configured in a way it cannot run with."""


class InvalidRequest(ServiceError):
    status_code = 422


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class PayloadTooLarge(ServiceError):
    status_code = 413


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class TooManyRequests(ServiceError):
    status_code = 429


class Unavailable(ServiceError):
    status_code = 503


class SourceError(ServiceError):
    """A run's source could not be fetched or does not hold what the run needs (worker side)."""

    status_code = 502


class Canceled(Exception):  # a fact, not a fault
    """A run was canceled while the worker prepared it (fetching its source)."""


class ClientError(ServiceError):
    """The `ars` client got no usable answer from the API (unreachable, or it answered with an error)."""


# C0 and C1 controls, line and paragraph separators, and bidirectional overrides (text that displays
# differently from what it is): never accepted in a name, a path, a label or a pattern from a request.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def as_field(name: str) -> str:
    """A name of the client's own (a key) as part of a field path: as it is, or cut when it is long."""
    return name if len(name) <= 64 else shown(name)


def shown(value: str, limit: int = 64) -> str:
    """`value` quoted for an error message, cut to `limit` characters: input is never echoed unbounded."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"
