"""PostgreSQL crashes (immediate stop) under steady traffic, with a real API, worker and beat:
the API answers 503 while it is down, nothing accepted is lost or sent twice, and what was
waiting goes out within seconds of its return."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from aiosmtpd.controller import Controller
from sqlalchemy import select

from mailsvc.db import Database
from mailsvc.devserver.capture_smtp import CaptureHandler
from mailsvc.devserver.embedded import free_port
from mailsvc.models import Message, Tenant
from tests.support.auth import token
from tests.support.env import service_env
from tests.support.processes import eventually, start_service
from tests.support.servers import TestServers
from tests.support.stack import worker_and_beat

pytestmark = pytest.mark.e2e

CLIENTS = 2
PAUSE_SECONDS = 0.2  # between one client's requests: steady traffic, not a flood
BEFORE_SECONDS = 2.0
OUTAGE_SECONDS = 10.0
AFTER_SECONDS = 2.0
BURST = 30  # sent at once just before the crash, while the sink holds every delivery
RECOVERY_SECONDS = 5.0
API_READY = "Uvicorn running on"  # logged once the socket listens


class GatedCapture(CaptureHandler):
    """The capture server, holding each message's DATA until the gate opens: the worker is
    then certainly in the middle of sends (claimed, outcomes not written) when the database
    goes down, and has more of the burst still to claim."""

    def __init__(self, outbox: Path) -> None:
        super().__init__(outbox)
        self.gate = threading.Event()
        self.gate.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def gated_sink(tmp_path: Path) -> Iterator[tuple[Controller, GatedCapture, Path]]:
    outbox = tmp_path / "outbox"
    handler = GatedCapture(outbox)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), ready_timeout=10)
    controller.start()
    yield controller, handler, outbox
    handler.gate.set()
    controller.stop()


@dataclass(frozen=True)
class Answer:
    label: str  # the request's Idempotency-Key, and what its body is made from
    sent_at: float  # time.time() when the request went out
    answered_at: float
    status: int | None  # None: no HTTP answer at all
    body: dict[str, object] | None
    headers: dict[str, str]
    error: str | None = None


async def _post(client: httpx.AsyncClient, label: str) -> Answer:
    started = time.time()
    try:
        response = await client.post(
            "/v1/messages",
            headers={"Idempotency-Key": label},
            json={
                "from": {"email": "hello@example.com"},
                "to": [{"email": f"user-{label}@example.net"}],
                "subject": f"Outage {label}",
                "text": "Body",
            },
        )
    except httpx.HTTPError as exc:
        return Answer(label, started, time.time(), None, None, {}, repr(exc))
    try:
        body = response.json()
    except ValueError:
        body = None
    return Answer(label, started, time.time(), response.status_code, body, dict(response.headers))


def _client(api: str, bearer: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=api, headers={"Authorization": f"Bearer {bearer}"}, timeout=20
    )


async def _traffic(api: str, bearer: str, name: str, stop: asyncio.Event) -> list[Answer]:
    answers: list[Answer] = []
    async with _client(api, bearer) as client:
        while not stop.is_set():
            answers.append(await _post(client, f"{name}-{len(answers)}"))
            await asyncio.sleep(PAUSE_SECONDS)
    return answers


async def _burst(api: str, bearer: str) -> list[Answer]:
    async with _client(api, bearer) as client:
        return list(await asyncio.gather(*(_post(client, f"burst-{n}") for n in range(BURST))))


async def _retry(api: str, bearer: str, answers: list[Answer]) -> list[Answer]:
    """What a client does with a 503: the same request again, with the same Idempotency-Key.

    A request whose COMMIT reached the disk as the database crashed, before its answer came
    back, was answered 503 but is stored: its retry answers 200 with the message it made. The
    others are made by their retry."""
    async with _client(api, bearer) as client:
        return [await _post(client, a.label) for a in answers if a.status != 202]


def _arrivals(outbox: Path) -> dict[str, list[float]]:
    """Message-ID → when each copy reached the sink (time.time(), from the file's name)."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    found: dict[str, list[float]] = {}
    for path in outbox.glob("*.eml"):
        message_id = str(parser.parsebytes(path.read_bytes())["Message-ID"])
        found.setdefault(message_id, []).append(int(path.name.split("-", 1)[0]) / 1e9)
    return found


async def test_a_database_crash_loses_nothing_sends_nothing_twice_and_recovers_in_seconds(
    servers: TestServers,
    live_database: Database,
    live_tenant: Tenant,
    redis_client: aioredis.Redis,
    gated_sink: tuple[Controller, GatedCapture, Path],
    tmp_path: Path,
) -> None:
    control = servers.database_control()
    controller, sink, outbox = gated_sink
    logs = tmp_path / "logs"
    port = free_port()
    starting = ThreadPoolExecutor(max_workers=1)  # the API starts while the worker does
    api_started = starting.submit(
        start_service,
        "api",
        ["api", "--port", str(port), "--no-access-log"],
        env=service_env(servers),
        log_dir=logs,
        ready_marker=API_READY,
    )
    starting.shutdown(wait=False)
    env = service_env(servers, MAILSVC_SMTP_PORT=str(controller.port))
    try:
        with worker_and_beat(env, logs) as services:
            api_process = api_started.result()
            stop = asyncio.Event()
            bearer = token(live_tenant)
            api = f"http://127.0.0.1:{port}"
            clients = [
                asyncio.create_task(_traffic(api, bearer, f"c{n}", stop)) for n in range(CLIENTS)
            ]
            burst: list[Answer] = []
            try:
                await asyncio.sleep(BEFORE_SECONDS)  # the scenario's phases, not a wait for work
                sink.gate.clear()
                burst = await _burst(api, bearer)
                burst_ids = [
                    uuid.UUID(str(a.body["id"])) for a in burst if a.body and a.status == 202
                ]

                async def claimed() -> bool:
                    async with live_database.sessionmaker() as session:
                        sending = await session.execute(
                            select(Message.id).where(
                                Message.id.in_(burst_ids), Message.status == "sending"
                            )
                        )
                        return bool(sending.first())

                await eventually(claimed, timeout=20, what="a burst message claimed")
                crashed_at = time.time()
                await asyncio.to_thread(control.crash)
                down_at = time.time()  # stopped: nothing is written until the start
                sink.gate.set()  # the held sends finish now; their outcomes wait for the database
                await asyncio.sleep(OUTAGE_SECONDS)
                await asyncio.to_thread(control.start)
                back_at = time.time()  # start() returns once the database answers
                await asyncio.sleep(AFTER_SECONDS)
            finally:
                stop.set()
                control.ensure_running()
                answers = [a for found in await asyncio.gather(*clients) for a in found] + burst

            retried = await _retry(api, bearer, answers)
            accepted = {
                str(a.body["message_id_header"]): a
                for a in answers + retried
                if a.status in (200, 202) and a.body is not None
            }
            ids = [uuid.UUID(str(a.body["id"])) for a in accepted.values() if a.body is not None]

            async def unsent() -> dict[str, tuple[str, int, bool]]:
                """Message-ID → (status, attempts, at the sink) of each message not done."""
                arrived = set(_arrivals(outbox))
                async with live_database.sessionmaker() as session:
                    rows = await session.execute(
                        select(
                            Message.message_id_header, Message.status, Message.attempt_count
                        ).where(Message.id.in_(ids))
                    )
                    return {
                        row.message_id_header: (
                            row.status,
                            row.attempt_count,
                            row.message_id_header in arrived,
                        )
                        for row in rows
                        if row.status != "sent" or row.message_id_header not in arrived
                    }

            async def all_sent() -> bool:
                return not await unsent()

            try:
                await eventually(all_sent, timeout=30, what="every accepted message sent")
            except AssertionError as timed_out:
                raise AssertionError(f"{timed_out}: {await unsent()}") from None
            arrivals = _arrivals(outbox)
            async with live_database.sessionmaker() as session:
                recorded = await session.execute(
                    select(Message.message_id_header, Message.sent_at).where(Message.id.in_(ids))
                )
                sent_at = {row.message_id_header: row.sent_at.timestamp() for row in recorded}
            assert services.worker.alive, services.worker.log()[-4000:]
            assert services.beat is not None
            assert services.beat.alive, services.beat.log()[-4000:]
            assert api_process.alive, api_process.log()[-4000:]
            worker_log = services.worker.log()
    finally:
        api_process = api_started.result()
        api_process.stop()
        print(api_process.log()[-4000:])  # shown when the test fails

    unavailable = [a for a in answers if a.status == 503]
    replayed = [a for a in retried if a.status == 200]
    # A message is done once it is at the sink and recorded sent. Those accepted before the
    # database came back and done after it went down are what the outage held.
    done_at = {m: max(arrivals[m][0], sent_at[m]) for m in accepted}  # all done: waited above
    held = {
        m: done_at[m] - back_at
        for m, answer in accepted.items()
        if answer.answered_at <= back_at and done_at[m] > down_at
    }
    print(  # shown when the test fails
        f"{len(answers)} requests: {len(accepted)} accepted, {len(unavailable)} answered 503 "
        f"({len(replayed)} of them stored, their retry answered 200); "
        f"{len(held)} held by the outage, the last done {max(held.values(), default=0):.1f} s "
        "after the database's return"
    )

    assert [a for a in answers if a.status not in (202, 503)] == []
    assert [a for a in retried if a.status not in (200, 202)] == []
    assert len(accepted) == len({a.label for a in answers})  # each request made one message
    assert [a for a in unavailable if crashed_at <= a.sent_at <= back_at] != []
    for answer in unavailable:
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.body is not None
        assert answer.body["status"] == 503
    assert len(accepted) >= 20  # some before the crash, some after the return

    # Nothing lost (every 202 arrived and reads back sent), nothing twice.
    assert set(arrivals) == set(accepted)
    assert {
        message_id: len(copies) for message_id, copies in arrivals.items() if len(copies) > 1
    } == {}
    # The burst just before the crash left the worker messages to claim, or to record; they were
    # done within seconds of the database's return, not after the sweeper's threshold or a lease.
    assert held != {}
    assert {m: round(seconds, 1) for m, seconds in held.items() if seconds > RECOVERY_SECONDS} == {}
    assert "Traceback" not in worker_log, worker_log[-6000:]
