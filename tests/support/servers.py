"""The real servers the tests talk to: named by MAILSVC_TEST_* variables, or embedded ones."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from mailsvc.devserver.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.support.processes import eventually_sync

CONTROL_VARIABLE = "MAILSVC_TEST_DATABASE_CONTROL"


class DatabaseControl:
    """Crashes the test PostgreSQL (immediate mode: what the WAL had not flushed is lost) and
    starts it again, for the tests of an outage."""

    def __init__(self, run: Callable[[str], None], admin_url: str) -> None:
        self._run = run
        self._admin_url = admin_url
        self.down = False

    def crash(self) -> None:
        self.down = True
        self._run("stop")

    def start(self, *, timeout: float = 60.0) -> None:
        """Returns once the server answers queries again (crash recovery is done)."""
        self._run("start")
        self.down = False
        eventually_sync(
            lambda: _answers(self._admin_url),
            timeout=timeout,
            what="PostgreSQL to answer after its start",
        )

    def ensure_running(self) -> None:
        """After the run: a test that failed while the server was down does not leave it so."""
        if self.down:
            self.start()


def _answers(url: str) -> bool:
    """Whether the server takes queries; on a thread of its own, so that a test's running
    event loop can call this too."""

    async def probe() -> bool:
        try:
            connection = await asyncpg.connect(url, timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            return False
        try:
            return bool(await connection.fetchval("SELECT true"))
        finally:
            await connection.close()

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, probe()).result()


def _embedded_control(folder: Path, admin_url: str) -> tuple[DatabaseControl, Callable[[], None]]:
    """pgserver's own pg_ctl on its data folder; and a stop for a server this control restarted,
    which pgserver no longer knows (it holds the process it started)."""
    import pgserver

    pg_ctl = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    # postmaster.pid, line 5: the folder of the Unix socket the URL names; a restart keeps it.
    socket_dir = (folder / "postmaster.pid").read_text().splitlines()[4].strip()
    # pgserver runs the server as the data folder's owner (not root, which PostgreSQL refuses).
    owner = folder.owner() if os.geteuid() == 0 else None
    arguments = {
        "stop": ["-m", "immediate", "-w", "stop"],
        "start": ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", f"{folder}/log", "start"],
        "shutdown": ["-m", "fast", "-w", "stop"],
    }

    def run(action: str) -> None:
        completed = subprocess.run(
            [str(pg_ctl), "-D", str(folder), *arguments[action]],
            user=owner,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if completed.returncode != 0 and action != "shutdown":
            raise RuntimeError(f"pg_ctl {action} failed: {completed.stdout}{completed.stderr}")

    return DatabaseControl(run, admin_url), lambda: run("shutdown")


def _command_control(template: str, admin_url: str) -> DatabaseControl:
    """A command for the machine's PostgreSQL, `{action}` being `stop -m immediate` or `start`."""
    actions = {"stop": "stop -m immediate", "start": "start"}

    def run(action: str) -> None:
        command = shlex.split(template.format(action=actions[action]))
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=120, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({completed.returncode}): "
                f"{completed.stdout}{completed.stderr}"
            )

    return DatabaseControl(run, admin_url)


@dataclass(frozen=True)
class TestServers:
    __test__ = False  # not a test class

    database_url: str  # postgresql://… of a database made for this run
    redis_url: str
    source: str  # "embedded" or "environment"
    control: DatabaseControl | None = None

    def database_control(self) -> DatabaseControl:
        """Stop and start the test PostgreSQL; fails the test when there is no way to."""
        if self.control is None:
            pytest.fail(
                "MAILSVC_TEST_DATABASE_URL names a PostgreSQL this test cannot stop and start: "
                f"set {CONTROL_VARIABLE} to a command with {{action}} in it, for example "
                f"{CONTROL_VARIABLE}='pg_ctlcluster --skip-systemctl-redirect 15 main {{action}}' "
                "({action} becomes `stop -m immediate`, then `start`)",
                pytrace=False,
            )
        return self.control


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
        control: DatabaseControl | None = None
        if env_db:
            admin_url, source = env_db, "environment"
            template = os.environ.get(CONTROL_VARIABLE)
            if template:
                control = _command_control(template, _asyncpg_url(admin_url))
        else:
            postgres = EmbeddedPostgres(scratch / "pg")
            admin_url, source = postgres.start(), "embedded"
            control, shutdown = _embedded_control(postgres.folder, _asyncpg_url(admin_url))
            stack.callback(shutdown)  # runs after postgres.stop: the server a test restarted
            stack.callback(postgres.stop)
        name = f"mailsvc_test_{uuid.uuid4().hex[:10]}"
        asyncio.run(_create_database(_asyncpg_url(admin_url), name))
        stack.callback(lambda: asyncio.run(_drop_database(_asyncpg_url(admin_url), name)))
        if control is not None:
            stack.callback(control.ensure_running)

        if env_redis:
            redis_url = env_redis
        else:
            redis = EmbeddedRedis(scratch / "redis", persist=False)
            redis_url = redis.start()
            stack.callback(redis.stop)
        yield TestServers(
            database_url=_with_database(admin_url, name),
            redis_url=redis_url,
            source=source,
            control=control,
        )


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
