"""/health (the process answers) and /ready (the database and Redis answer), outside /api/v1."""

from __future__ import annotations

import anyio
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from service.api.errors import error_response

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT = 2.0


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "the database or Redis does not answer"}})
async def ready(request: Request) -> JSONResponse:
    problems = []
    try:
        with anyio.fail_after(_CHECK_TIMEOUT):
            async with request.app.state.sessions() as session:
                await session.execute(sa.text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        problems.append(f"database: {type(exc).__name__}")
    try:
        with anyio.fail_after(_CHECK_TIMEOUT):
            await request.app.state.redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        problems.append(f"redis: {type(exc).__name__}")
    if problems:
        return error_response(503, "Unavailable", "; ".join(problems))
    return JSONResponse({"status": "ready", "database": "ok", "redis": "ok"})
