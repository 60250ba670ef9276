"""What the API answers when something it needs is down, or when it has a bug: problem+json,
one log entry, and 503 (with Retry-After) rather than 500 when PostgreSQL does not answer."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from fastapi import FastAPI

from mailsvc.app import create_app
from mailsvc.auth.scopes import ALL_SCOPES
from mailsvc.auth.tokens import issue_token
from mailsvc.config import Settings, async_database_url
from mailsvc.db import Database, database_unavailable
from mailsvc.devserver.embedded import free_port
from tests.support.api import REQUEST_ID, problem
from tests.support.auth import SIGNING
from tests.support.operations import OPERATIONS, Operation
from tests.support.publish import RecordingPublisher
from tests.support.servers import TestServers


def _headers() -> dict[str, str]:
    token = issue_token(
        tenant_id=uuid.uuid4(), scopes=ALL_SCOPES, ttl=timedelta(minutes=5), config=SIGNING
    )
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "X-Request-ID": REQUEST_ID,
    }


@pytest_asyncio.fixture
async def hang_up_server() -> AsyncIterator[int]:
    """A port that accepts a connection and closes it at once, as a PostgreSQL going down does."""

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _app_on(
    config: Settings, port: int, redis_client: aioredis.Redis
) -> AsyncIterator[httpx.AsyncClient]:
    database = Database.from_url(
        f"postgresql+asyncpg://postgres@127.0.0.1:{port}/mailsvc", pool_size=1
    )
    app = create_app(config=config, database=database, publish=RecordingPublisher())
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield client
    finally:
        await database.dispose()


@pytest.mark.parametrize("down", ["refused", "hung up"])
async def test_postgresql_down_is_503_with_retry_after_for_every_operation(
    down: str,
    hang_up_server: int,
    redis_client: aioredis.Redis,
    test_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port() if down == "refused" else hang_up_server
    headers = _headers()
    with caplog.at_level(logging.INFO):
        async for client in _app_on(test_settings, port, redis_client):
            for operation in OPERATIONS:
                caplog.clear()
                response = await _call(client, operation, headers)
                assert response.status_code == 503, (operation.id, response.text)
                assert response.headers["retry-after"] == "2"
                assert response.json() == problem(
                    503,
                    "Service Unavailable",
                    "the database does not answer; nothing was stored, try again shortly",
                    "unavailable",
                )
                entries = [r for r in caplog.records if r.name.startswith("mailsvc")]
                answered = [r for r in entries if "answered 503" in r.getMessage()]
                assert len(answered) == 1, [r.getMessage() for r in entries]
                # A line each, never a traceback (the rate limits' re-read may add one too),
                # and the request's id on it. The access line is a line of its own, at INFO.
                problems = [r for r in entries if r.name != "mailsvc.access"]
                assert all(r.levelno == logging.WARNING for r in problems)
                assert all(r.exc_info is None for r in entries)
                assert getattr(answered[0], "request_id", None) == REQUEST_ID


async def _call(
    client: httpx.AsyncClient, operation: Operation, headers: dict[str, str]
) -> httpx.Response:
    content = None if operation.body is None else json.dumps(operation.body).encode()
    return await client.request(operation.method, operation.path, content=content, headers=headers)


async def test_a_bug_is_one_500_and_one_traceback(
    test_settings: Settings,
    database: Database,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app: FastAPI = create_app(config=test_settings, database=database, publish=RecordingPublisher())

    async def broken() -> None:
        raise KeyError("a bug")

    app.add_api_route("/broken", broken)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)  # raise_app_exceptions: nothing escapes
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with caplog.at_level(logging.INFO):
                response = await client.get("/broken", headers={"X-Request-ID": REQUEST_ID})
    assert response.status_code == 500
    assert response.json() == problem(
        500, "Internal Server Error", "an unexpected error", "internal"
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
        OSError(104, "Connection reset by peer"),
    ],
)
def test_outage_errors_are_recognised_through_their_causes(error: BaseException) -> None:
    wrapper = RuntimeError("wrapped")
    wrapper.__cause__ = error
    assert database_unavailable(error)
    assert database_unavailable(wrapper)
    assert not database_unavailable(KeyError("x"))
    assert not database_unavailable(ValueError("x"))


async def test_a_query_error_is_not_an_outage(servers: TestServers) -> None:
    from sqlalchemy import text

    database = Database.from_url(async_database_url(servers.database_url), pool_size=1)
    try:
        async with database.engine.connect() as connection:
            with pytest.raises(Exception, match="no_such_column") as raised:
                await connection.execute(text("SELECT no_such_column FROM tenants"))
        assert not database_unavailable(raised.value)
    finally:
        await database.dispose()
