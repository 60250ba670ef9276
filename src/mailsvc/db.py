"""The engine and session factory; the request dependency owns the transaction.

Services flush and never commit. Whoever opens the transaction (a request, a task) commits it,
then publishes the jobs the transaction enqueued (kit.outbox).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mailsvc.config import async_database_url
from mailsvc.kit.outbox import Outbox, Publisher, outbox_of

T = TypeVar("T")


class Database:
    """An engine and its session factory. One per process; in a worker, one per thread that runs
    tasks (worker/bridge.py)."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        outer: AsyncConnection | None = None,
    ) -> None:
        self.engine = engine
        self.sessionmaker = sessionmaker
        self._outer = outer

    @classmethod
    def from_url(
        cls, url: str, *, pool_size: int = 10, synchronous_commit: bool = True
    ) -> Database:
        """The caller says how many connections it keeps (MAILSVC_DB_POOL_SIZE for the API's);
        as many again may open for a burst."""
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args=(
                {} if synchronous_commit else {"server_settings": {"synchronous_commit": "off"}}
            ),
        )
        return cls(engine, async_sessionmaker(engine, expire_on_commit=False))

    @classmethod
    def for_connection(cls, connection: AsyncConnection) -> Database:
        """Sessions inside an outer transaction a test rolls back: commits become savepoints."""
        return cls(
            connection.engine,
            async_sessionmaker(
                bind=connection,
                expire_on_commit=False,
                join_transaction_mode="create_savepoint",
            ),
            outer=connection,
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose work commits at the end, or rolls back on an exception.

        After the commit the session's outbox holds the released jobs; the caller publishes them.
        """
        async with self.sessionmaker() as session:
            box = outbox_of(session)
            try:
                yield session
                await session.commit()
                box.release()
            except BaseException:
                await session.rollback()
                box.discard()
                raise

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection on which each statement is its own transaction: for single statements
        that are atomic by themselves, on the worker's hot path."""
        if self._outer is not None:  # a test's transaction: statements join it
            yield self._outer
            return
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection

    async def dispose(self) -> None:
        await self.engine.dispose()


_UNAVAILABLE_ASYNCPG = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or does not exist
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, starting up, cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
)


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means PostgreSQL cannot be reached or is not serving, rather than a bug.

    asyncpg's own errors, SQLAlchemy's wrappers of them, and the raw OSError or TimeoutError of a
    refused or stalled connect (which reach the caller unwrapped) all count. The whole chain of
    causes is read, since each layer wraps the one below.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, TimeoutError, *_UNAVAILABLE_ASYNCPG)):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.DisconnectionError | sa_exc.TimeoutError):
            return True  # the pool's own: a dead connection, or no connection free in time
        if isinstance(current, asyncpg.InterfaceError) and "closed" in str(current):
            return True  # "connection is closed": a pooled connection the server dropped
        orig = getattr(current, "orig", None)
        current = (
            orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
        )
    return False


def describe_outage(exc: BaseException) -> str:
    """The innermost error of a database failure, on one line: SQLAlchemy's own message
    carries the statement, its parameters and a link, over several lines."""
    innermost = exc
    while innermost.__cause__ is not None:
        innermost = innermost.__cause__
    text = str(innermost).strip().splitlines()
    return f"{type(innermost).__name__}: {text[0]}" if text else type(innermost).__name__


async def get_database(request: Request) -> Database:  # async: FastAPI runs sync deps in threads
    database: Database = request.app.state.database
    return database


async def _request_outbox(request: Request) -> AsyncIterator[Outbox]:
    """Request-scoped: its exit runs after the response is sent, so publishing adds no latency."""
    box = Outbox()
    yield box
    jobs = box.take_released()
    if jobs:
        publish: Publisher = request.app.state.publish
        await publish(jobs)


async def _request_session(
    database: Annotated[Database, Depends(get_database)],
    box: Annotated[Outbox, Depends(_request_outbox)],
) -> AsyncIterator[AsyncSession]:
    """Function-scoped: commits before the response is sent, so a 202 means the row is durable."""
    async with database.transaction() as session:
        yield session
    box.released.extend(outbox_of(session).take_released())


DbSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]


def run_in_session(database_url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """For the CLI: run `work` in one committed transaction on a short-lived engine."""

    async def main() -> T:
        database = Database.from_url(async_database_url(database_url), pool_size=1)
        try:
            async with database.transaction() as session:
                return await work(session)
        finally:
            await database.dispose()

    return asyncio.run(main())


def alembic_ini() -> Path:
    """alembic.ini: $MAILSVC_ALEMBIC_INI, else the current folder's, else the source checkout's."""
    candidates = [
        os.environ.get("MAILSVC_ALEMBIC_INI"),
        "alembic.ini",
        str(Path(__file__).resolve().parents[2] / "alembic.ini"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    raise FileNotFoundError("alembic.ini not found; set MAILSVC_ALEMBIC_INI")


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Migrate to `revision`. Synchronous: Alembic's env runs its own event loop."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(alembic_ini()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, revision)
