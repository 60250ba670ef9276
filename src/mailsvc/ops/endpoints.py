"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from mailsvc.config import settings
from mailsvc.db import Database, get_database

router = APIRouter(tags=["operations"])

_CHECK_TIMEOUT = 2.0


@router.get("/healthz", operation_id="healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


async def _check_database(database: Database) -> str:
    async with database.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return "ok"


async def _check_redis() -> str:
    if not settings.redis_url:
        return "not configured"
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=_CHECK_TIMEOUT)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "ok"


@router.get(
    "/readyz",
    operation_id="readyz",
    responses={503: {"description": "PostgreSQL or Redis does not answer"}},
)
async def readyz(database: Annotated[Database, Depends(get_database)]) -> JSONResponse:
    """PostgreSQL and Redis answer."""
    checks: dict[str, Any] = {}
    for name, check in (("postgres", _check_database(database)), ("redis", _check_redis())):
        try:
            checks[name] = await asyncio.wait_for(check, _CHECK_TIMEOUT)
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}: {exc}"
    ready = all(value in ("ok", "not configured") for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", operation_id="metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
