"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Literal

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from mailsvc.db import Database, get_database
from mailsvc.errors import NotFound, Unauthorized
from mailsvc.routing import AppSettings

router = APIRouter(tags=["operations"])

_CHECK_TIMEOUT = 2.0


async def _check_database(database: Database) -> str:
    async with database.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return "ok"


async def _check_redis(redis_url: str | None) -> str:
    if not redis_url:
        return "not configured"
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=_CHECK_TIMEOUT)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "ok"


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether this process can serve: each dependency's answer ("ok", "not configured", or
    the error it gave)."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


@router.get("/healthz", operation_id="healthz")
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "PostgreSQL or Redis does not answer"}},
)
async def readyz(
    database: Annotated[Database, Depends(get_database)], config: AppSettings
) -> JSONResponse:
    """PostgreSQL and Redis answer."""
    checks: dict[str, str] = {}
    for name, check in (
        ("postgres", _check_database(database)),
        ("redis", _check_redis(config.redis_url)),
    ):
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
async def metrics(
    config: AppSettings, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Prometheus text format, on the API's port only for a scraper holding MAILSVC_METRICS_TOKEN.

    Otherwise it is not served here: `mailsvc api --metrics-port` serves it on a port of its own,
    which is not exposed to the API's callers.
    """
    token = config.metrics_token
    if token is None:
        raise NotFound(
            "metrics are served on the metrics port (mailsvc api --metrics-port), or here "
            "with MAILSVC_METRICS_TOKEN"
        )
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized("the metrics token is required: Authorization: Bearer <token>")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
