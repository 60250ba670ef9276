"""An API, a worker and a beat process for end-to-end tests, and reading a message's history."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from mailsvc.db import Database
from mailsvc.devserver.embedded import free_port
from mailsvc.models import Attempt, Message, MessageEvent
from tests.support.env import service_env
from tests.support.processes import BEAT_READY, WORKER_READY, ServiceProcess, start_service
from tests.support.servers import TestServers

API_READY = "Uvicorn running on"  # logged once the socket listens


@dataclass(frozen=True)
class Api:
    url: str
    port: int
    process: ServiceProcess


@contextmanager
def api_process(
    servers: TestServers, log_dir: Path, *, args: tuple[str, ...] = (), **env: str
) -> Iterator[Api]:
    """A real `mailsvc api` (uvicorn) on a free port, with the test servers' settings."""
    port = free_port()
    process = start_service(
        "api",
        ["api", "--port", str(port), "--no-access-log", *args],
        env=service_env(servers, **env),
        log_dir=log_dir,
        ready_marker=API_READY,
    )
    try:
        yield Api(f"http://127.0.0.1:{port}", port, process)
    finally:
        process.kill(signal.SIGCONT)  # in case the test left it stopped
        process.stop()
        print(process.log()[-4000:])  # shown by pytest when a test fails


@dataclass
class Services:
    worker: ServiceProcess
    beat: ServiceProcess | None


def start_worker(
    env: dict[str, str],
    log_dir: Path,
    *,
    role: str = "all",
    concurrency: int = 2,
    name: str = "",
    pool: str | None = None,
) -> ServiceProcess:
    return start_service(
        name or f"worker-{role}",
        [
            "worker",
            "--role",
            role,
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name or role}@%h",
            *(["--pool", pool] if pool else []),
        ],
        env=env,
        log_dir=log_dir,
        ready_marker=WORKER_READY,
    )


@contextmanager
def worker_and_beat(
    env: dict[str, str], log_dir: Path, *, beat: bool = True, concurrency: int = 2
) -> Iterator[Services]:
    worker = start_worker(env, log_dir, concurrency=concurrency, name="worker")
    beat_process = None
    try:
        if beat:
            beat_process = start_service(
                "beat",
                ["beat", "--schedule", str(log_dir / "beat-schedule")],
                env=env,
                log_dir=log_dir,
                ready_marker=BEAT_READY,
            )
        yield Services(worker, beat_process)
    finally:
        worker.stop()
        if beat_process is not None:
            beat_process.stop()
        print(worker.log()[-6000:])  # shown by pytest when a test fails
        if beat_process is not None:
            print(beat_process.log()[-2000:])


@dataclass
class History:
    message: Message
    attempts: list[Attempt]
    events: list[MessageEvent]

    def tries(self) -> list[tuple[int, str, str, str | None]]:
        return [(a.number, a.provider, a.outcome, a.error_code) for a in self.attempts]

    def event(self, kind: str) -> list[dict[str, Any]]:
        return [e.detail for e in self.events if e.type == kind]


async def history(database: Database, message_id: uuid.UUID | str) -> History:
    ident = uuid.UUID(str(message_id))
    async with database.sessionmaker() as session:
        message = await session.get(Message, ident)
        assert message is not None
        attempts = (
            await session.execute(
                select(Attempt).where(Attempt.message_id == ident).order_by(Attempt.id)
            )
        ).scalars()
        events = (
            await session.execute(
                select(MessageEvent)
                .where(MessageEvent.message_id == ident)
                .order_by(MessageEvent.id)
            )
        ).scalars()
        return History(message, list(attempts), list(events))
