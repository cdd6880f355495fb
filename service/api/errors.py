"""Every error leaves the API as `{"error": <kind>, "detail": <for a person>}`."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from service.errors import ServiceError, as_field
from service.faults import transient_db

log = structlog.get_logger(__name__)

_HTTP_KINDS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    415: "UnsupportedMediaType",
}


def error_response(
    status: int, kind: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    # ("body", "source", "git", "ref") → "source.ref": the location as the client wrote it.
    # A part can be a key of the client's own (an unknown field): never echoed unbounded.
    parts = [as_field(str(part)) for part in loc if part not in ("body",)]
    # A source's discriminator tag (`source.git.ref`) is not a field the client wrote: `source.ref`.
    if "source" in parts and len(parts) > parts.index("source") + 2:
        del parts[parts.index("source") + 1]
    return ".".join(parts) or "body"


def _describe(error: dict[str, Any]) -> str:
    field = _field(tuple(error.get("loc", ())))
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    elif error.get("type") == "json_invalid":
        return f"body is not valid JSON: {error.get('ctx', {}).get('error', message)}"
    return f"{field}: {message}"


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return error_response(exc.status_code, exc.kind, exc.detail, headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = sorted({_describe(error) for error in exc.errors()})
    return error_response(422, "ValidationError", "; ".join(details))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = _HTTP_KINDS.get(exc.status_code, "HTTPError")
    return error_response(exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))


async def _database_error(_: Request, exc: Exception) -> JSONResponse:
    if not transient_db(exc):
        # A permanent error (a missing table, a value too long) is a bug or a broken schema: a 500, logged.
        log.error("database error", exc_info=exc)
        return error_response(500, "InternalError", "the service could not complete the request")
    # The database is unavailable for a moment: the request may be retried.
    return error_response(
        503, "Unavailable", "the database does not answer; try again shortly", {"Retry-After": "5"}
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
