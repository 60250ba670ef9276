"""Lanes with real workers: each role takes its own queues and only those, and the rate limit
holds across worker processes, counted where the mail arrives."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import func, select

from mailsvc.db import Database
from mailsvc.devserver.fakes import FakeProviders
from mailsvc.models import Attempt, Message, Tenant
from mailsvc.worker.app import celery_app
from mailsvc.worker.publish import queue_depths
from tests.support.auth import bearer
from tests.support.env import provider_env, service_env
from tests.support.processes import BEAT_READY, ServiceProcess, eventually, start_service
from tests.support.servers import TestServers
from tests.support.stack import start_worker

pytestmark = pytest.mark.e2e

HOST = socket.gethostname()


@pytest.fixture
def env(servers: TestServers, fake_providers: FakeProviders) -> dict[str, str]:
    return service_env(
        servers,
        **provider_env(fake_providers, order="smtp"),
        MAILSVC_DISPATCH_INTERVAL_SECONDS="0.5",
    )


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for service in started:
        service.stop()
        print(service.name, service.log()[-3000:])


def beat(env: dict[str, str], tmp_path: Path) -> ServiceProcess:
    return start_service(
        "beat",
        ["beat", "--schedule", str(tmp_path / "beat-schedule")],
        env=env,
        log_dir=tmp_path / "logs",
        ready_marker=BEAT_READY,
    )


async def messages_of(database: Database, tenant: Tenant) -> list[Message]:
    async with database.sessionmaker() as session:
        rows = await session.execute(
            select(Message).where(Message.tenant_id == tenant.id).order_by(Message.id)
        )
        return list(rows.scalars())


def subscribed(hostname: str) -> list[str]:
    replies = celery_app.control.inspect(destination=[hostname], timeout=5).active_queues()
    assert replies, f"{hostname} did not answer"
    return sorted(queue["name"] for queue in replies[hostname])


async def waiting(queue: str) -> int:
    """Jobs waiting in `queue`, as the broker counts them."""
    return (await anyio.to_thread.run_sync(queue_depths, [queue]))[queue]


async def test_each_role_takes_its_own_queues_and_only_those(
    env: dict[str, str],
    services: list[ServiceProcess],
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    live_database: Database,
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    services.append(start_worker(env, logs, role="realtime", concurrency=1, name="realtime"))
    services.append(start_worker(env, logs, role="scheduled", concurrency=1, name="scheduled"))
    services.append(beat(env, tmp_path))
    assert subscribed(f"realtime@{HOST}") == ["transactional"]
    assert subscribed(f"scheduled@{HOST}") == ["maintenance", "scheduled"]

    headers = bearer(live_tenant)
    urgent = await live_client.post(
        "/v1/messages",
        json={"to": ["a@example.net"], "subject": "Reset", "text": "x"},
        headers=headers,
    )
    batch = await live_client.post(
        "/v1/messages/batch",
        json={
            "messages": [
                {"to": [f"b{i}@example.net"], "subject": "News", "text": "x"} for i in range(5)
            ]
        },
        headers=headers,
    )
    assert (urgent.status_code, batch.status_code) == (202, 202)

    async def transactional_sent_and_bulk_handed_over() -> list[Message] | None:
        rows = await messages_of(live_database, live_tenant)
        by_lane = {m.lane: [r for r in rows if r.lane == m.lane] for m in rows}
        sent = all(m.status == "sent" for m in by_lane["transactional"])
        handed = all(m.enqueued_at is not None for m in by_lane["bulk"])
        # The feeder publishes after its commit: wait for the job itself, not only the rows.
        queued = await waiting("bulk") >= 1
        return rows if sent and handed and queued else None

    # The bulk job sits in the bulk queue: the realtime worker never takes it.
    rows = await eventually(transactional_sent_and_bulk_handed_over, what="the lanes to move")
    assert {(m.status, m.attempt_count) for m in rows if m.lane == "bulk"} == {("queued", 0)}

    # A bulk worker takes the bulk lane…
    services.append(start_worker(env, logs, role="bulk", concurrency=1, name="bulk"))
    assert subscribed(f"bulk@{HOST}") == ["bulk"]

    async def bulk_sent() -> bool:
        return all(m.status == "sent" for m in await messages_of(live_database, live_tenant))

    await eventually(bulk_sent, what="the bulk messages to be sent")

    # …and never the transactional one: with only it running, a new urgent message waits.
    services.pop(0).stop()  # the realtime worker
    late = await live_client.post(
        "/v1/messages",
        json={"to": ["c@example.net"], "subject": "Reset", "text": "x"},
        headers=headers,
    )

    async def waiting_in_its_queue() -> bool:
        return await waiting("transactional") == 1

    await eventually(waiting_in_its_queue, what="the urgent job in the transactional queue")
    async with live_database.sessionmaker() as session:
        row = await session.get(Message, late.json()["id"])
    assert row is not None
    assert (row.status, row.attempt_count) == ("queued", 0)


async def test_the_rate_limit_holds_across_two_worker_processes(
    servers: TestServers,
    fake_providers: FakeProviders,
    services: list[ServiceProcess],
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    live_database: Database,
    tmp_path: Path,
) -> None:
    per_second, count = 20, 80
    env = service_env(
        servers,
        **provider_env(fake_providers, order="smtp"),
        MAILSVC_DISPATCH_INTERVAL_SECONDS="0.5",
        MAILSVC_RATE_LIMITS=json.dumps({"provider:smtp": {"per_second": per_second}}),
    )
    logs = tmp_path / "logs"
    services.append(start_worker(env, logs, role="bulk", concurrency=1, name="bulk1"))
    services.append(start_worker(env, logs, role="bulk", concurrency=1, name="bulk2"))
    services.append(start_worker(env, logs, role="scheduled", concurrency=1, name="scheduled"))
    services.append(beat(env, tmp_path))

    response = await live_client.post(
        "/v1/messages/batch",
        json={
            "messages": [
                {"to": [f"r{i}@example.net"], "subject": "Paced", "text": "x"} for i in range(count)
            ]
        },
        headers=bearer(live_tenant),
    )
    assert response.status_code == 202
    accepted_at = {m["message_id_header"]: m["created_at"] for m in response.json()["data"]}

    async def all_sent() -> list[Message] | None:
        rows = await messages_of(live_database, live_tenant)
        return rows if all(m.status == "sent" for m in rows) else None

    rows = await eventually(all_sent, timeout=60, what="every paced message sent")

    arrivals = sorted(r.at for r in fake_providers.smtp.received if r.message_id in accepted_at)
    assert len(arrivals) == count
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    # At most per_second tokens in any second; arrival can lag its token by a few milliseconds,
    # which may carry one token across a window edge.
    assert busiest <= per_second + 1
    # A per-second limit sustains half its rate (the rest is its burst): paced, not flooded.
    assert arrivals[-1] - arrivals[0] >= (count - per_second) / per_second

    # What was not granted went back with a later slot: not counted as an attempt, sent once.
    deferred = [m for m in rows if m.not_before - m.created_at > timedelta(seconds=1)]
    assert deferred
    assert {m.attempt_count for m in rows} == {1}
    async with live_database.sessionmaker() as session:
        attempts = await session.scalar(
            select(func.count())
            .select_from(Attempt)
            .where(Attempt.message_id.in_([m.id for m in rows]))
        )
    assert attempts == count
