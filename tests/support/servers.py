"""The real servers the tests talk to: named by MAILSVC_TEST_* variables, or embedded ones."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from mailsvc.devserver.embedded import EmbeddedPostgres, EmbeddedRedis


@dataclass(frozen=True)
class TestServers:
    __test__ = False  # not a test class

    database_url: str  # postgresql://… of a database made for this run
    redis_url: str
    source: str  # "embedded" or "environment"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _create_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@contextlib.contextmanager
def test_servers() -> Iterator[TestServers]:
    """A fresh database for this run (dropped afterwards) and a Redis to flush per test."""
    env_db = os.environ.get("MAILSVC_TEST_DATABASE_URL")
    env_redis = os.environ.get("MAILSVC_TEST_REDIS_URL")
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailsvc-test-")))
        if env_db:
            admin_url, source = env_db, "environment"
        else:
            postgres = EmbeddedPostgres(scratch / "pg")
            admin_url, source = postgres.start(), "embedded"
            stack.callback(postgres.stop)
        name = f"mailsvc_test_{uuid.uuid4().hex[:10]}"
        asyncio.run(_create_database(_asyncpg_url(admin_url), name))
        stack.callback(lambda: asyncio.run(_drop_database(_asyncpg_url(admin_url), name)))

        if env_redis:
            redis_url = env_redis
        else:
            redis = EmbeddedRedis(scratch / "redis", persist=False)
            redis_url = redis.start()
            stack.callback(redis.stop)
        yield TestServers(
            database_url=_with_database(admin_url, name), redis_url=redis_url, source=source
        )


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
