"""The async bridge: a runtime per thread that runs tasks, so `--pool threads` works."""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from mailsvc.config import Settings, async_database_url
from mailsvc.models import Tenant
from mailsvc.sending.runtime import Runtime
from mailsvc.worker import bridge
from tests.support.auth import bearer
from tests.support.env import service_env
from tests.support.processes import ServiceProcess, eventually
from tests.support.servers import TestServers
from tests.support.stack import start_worker


@pytest.fixture
def worker_settings(test_settings: Settings) -> Iterator[None]:
    bridge.use(test_settings.model_copy(update={"smtp_host": "127.0.0.1"}))  # it needs a provider
    yield
    bridge.stop()  # whatever a failed assertion left open


async def _backends_gone(database_url: str, pids: list[int]) -> bool:
    engine = create_async_engine(async_database_url(database_url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            alive: int = (
                await connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"),
                    {"pids": pids},
                )
            ).scalar_one()
            return alive == 0
    finally:
        await engine.dispose()


@pytest.mark.usefixtures("worker_settings")
def test_two_threads_run_tasks_at_once_each_on_its_own_runtime(servers: TestServers) -> None:
    key = f"bridge-test:{secrets.token_hex(4)}"
    both_running = threading.Barrier(2, timeout=20)

    async def database_and_redis(runtime: Runtime, name: str) -> tuple[int, bytes, int, int]:
        # Held until the other thread is inside its own run() too: both loops are running now.
        await asyncio.to_thread(both_running.wait)

        async def backend_pid() -> int:
            async with runtime.database.sessionmaker() as session:
                pid: int = (
                    await session.execute(text("SELECT pg_backend_pid() FROM pg_sleep(0.2)"))
                ).scalar_one()
                return pid

        async def store() -> bytes | None:
            await runtime.redis.set(f"{key}:{name}", name, ex=60)
            value: bytes | None = await runtime.redis.get(f"{key}:{name}")
            return value

        pid, stored, count = await asyncio.gather(
            backend_pid(), store(), runtime.redis.incr(f"{key}:count")
        )
        assert stored is not None
        return pid, stored, count, threading.get_ident()

    a_has_its_runtime = threading.Event()

    def task(name: str) -> tuple[Runtime, Runtime, tuple[int, bytes, int, int]]:
        if name == "b":  # as in a pool: a later task, while the first one runs
            assert a_has_its_runtime.wait(20)
        first = bridge.runtime()
        a_has_its_runtime.set()
        result = first.run(database_and_redis(first, name))
        return first, bridge.runtime(), result

    with ThreadPoolExecutor(max_workers=2) as pool:
        a_future, b_future = pool.submit(task, "a"), pool.submit(task, "b")
        b_first, b_second, (b_pid, b_stored, b_count, b_thread) = b_future.result(timeout=60)
        a_first, a_second, (a_pid, a_stored, a_count, a_thread) = a_future.result(timeout=60)

    assert a_thread != b_thread
    assert a_second is a_first
    assert b_second is b_first
    assert a_first is not b_first
    assert a_first.loop is not b_first.loop
    assert a_first.database.engine is not b_first.database.engine
    assert a_first.redis is not b_first.redis
    assert (a_stored, b_stored) == (b"a", b"b")
    assert sorted([a_count, b_count]) == [1, 2]
    assert a_pid != b_pid

    # A loop that is closed already (a thread that never ran a task, here) is passed over.
    with ThreadPoolExecutor(max_workers=1) as pool:
        idle = pool.submit(bridge.runtime).result(timeout=60)
    assert idle is not a_first
    assert idle is not b_first
    idle.loop.close()

    bridge.stop()  # from this thread, as the threads pool's worker_shutdown does
    assert a_first.loop.is_closed()
    assert b_first.loop.is_closed()
    # The engines were disposed on their own loops: their connections are gone.
    assert asyncio.run(
        eventually(
            lambda: _backends_gone(servers.database_url, [a_pid, b_pid]),
            what="the runtimes' connections to close",
        )
    )
    bridge.stop()  # nothing left: a second call does nothing

    with ThreadPoolExecutor(max_workers=1) as pool:
        fresh = pool.submit(bridge.runtime).result(timeout=60)
    assert fresh not in (a_first, b_first, idle)
    assert not fresh.loop.is_closed()


@pytest.mark.usefixtures("worker_settings")
@pytest.mark.parametrize(("durable", "expected"), [(True, "on"), (False, "off")])
def test_workers_commit_synchronously_unless_told_otherwise(
    test_settings: Settings, durable: bool, expected: str
) -> None:
    """A worker's claims and outcomes wait for the WAL flush: a PostgreSQL crash loses none of
    them (MAILSVC_WORKER_SYNCHRONOUS_COMMIT=false trades that for throughput)."""
    bridge.use(
        test_settings.model_copy(
            update={"smtp_host": "127.0.0.1", "worker_synchronous_commit": durable}
        )
    )

    async def setting(runtime: Runtime) -> str:
        async with runtime.database.autocommit() as connection:
            value: str = (await connection.execute(text("SHOW synchronous_commit"))).scalar_one()
            return value

    def in_a_thread() -> str:
        runtime = bridge.runtime()
        return runtime.run(setting(runtime))

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(in_a_thread).result(timeout=60) == expected
    bridge.stop()


# -- a real `mailsvc worker --pool threads` (and solo) ----------------------------------------

MESSAGES = 40
CONCURRENCY = 4


@pytest.fixture
def one_id_per_task(test_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # The API merges the ids it publishes within a few ms into one task. One id per task makes
    # 40 tasks, which the worker's four threads take four at a time. (Before live_client: its
    # app reads the settings at its start.)
    monkeypatch.setattr(test_settings, "publish_max_ids", 1)


@pytest.fixture(params=["threads", "solo"])
def pool_worker(
    request: pytest.FixtureRequest,
    servers: TestServers,
    smtp_sink: tuple[Controller, Path],
    tmp_path: Path,
) -> Iterator[ServiceProcess]:
    controller, _ = smtp_sink
    process = start_worker(
        service_env(servers, MAILSVC_SMTP_PORT=str(controller.port)),
        tmp_path / "logs",
        concurrency=CONCURRENCY,
        name=request.param,
        pool=request.param,
    )
    yield process
    process.stop()
    print(process.log()[-6000:])  # shown by pytest when the test fails


@pytest.mark.e2e
@pytest.mark.usefixtures("one_id_per_task")
async def test_a_threads_or_solo_pool_worker_delivers_each_message_once(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    pool_worker: ServiceProcess,
) -> None:
    pool = pool_worker.name
    _, outbox = smtp_sink
    headers = bearer(live_tenant)
    accepted: list[dict[str, str]] = []
    for number in range(MESSAGES):
        response = await live_client.post(
            "/v1/messages",
            json={"to": [f"reader{number}@example.net"], "subject": f"No. {number}", "text": "Hi"},
            headers=headers,
        )
        assert response.status_code == 202, response.text
        accepted.append(response.json())
    ids = {a["id"].replace("-", ""): a["id"] for a in accepted}

    def received() -> Counter[str]:
        # The sink names each file after the Message-ID it carries, which holds the message's id.
        return Counter(ids[i] for f in outbox.glob("*.eml") for i in ids if i in f.name)

    async def all_received() -> Counter[str] | None:
        found = received()
        return found if len(found) == MESSAGES else None

    await eventually(all_received, timeout=60, what=f"{MESSAGES} messages at the sink")

    async def all_sent() -> list[dict[str, object]] | None:
        bodies = [
            (await live_client.get(f"/v1/messages/{a['id']}", headers=headers)).json()
            for a in accepted
        ]
        return bodies if all(b["status"] == "sent" for b in bodies) else None

    messages = await eventually(all_sent, timeout=30, what="every message recorded as sent")
    assert [m["attempt_count"] for m in messages] == [1] * MESSAGES
    # Recorded as sent, so nothing is in flight: what the sink holds now is final.
    assert received() == Counter(ids.values())
    assert len(list(outbox.glob("*.eml"))) == MESSAGES

    log = pool_worker.log()
    banner = {"threads": f"concurrency: {CONCURRENCY} (thread)", "solo": "(solo)"}[pool]
    assert banner in log  # the pool really is the one asked for
    assert "already running" not in log
    assert log.count("succeeded in") == MESSAGES

    pool_worker.stop()  # a warm shutdown: worker_shutdown closes the runtimes the worker made
    assert pool_worker.process.returncode == 0
    log = pool_worker.log()
    assert "Traceback" not in log
    closed = re.findall(r"worker runtimes closed: (\d+)", log)
    # A threads pool starts another thread only when a task arrives and none is idle.
    assert closed == ["1"] if pool == "solo" else closed in (["1"], ["2"], ["3"], ["4"])
