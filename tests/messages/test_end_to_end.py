"""One email end to end: the API, Redis, a real `celery worker` process, SMTP, PostgreSQL."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from mailsvc.models import Tenant
from tests.support.auth import bearer
from tests.support.env import service_env
from tests.support.processes import WORKER_READY, ServiceProcess, eventually, start_service
from tests.support.servers import TestServers

pytestmark = pytest.mark.e2e


@pytest.fixture
def worker(
    servers: TestServers, smtp_sink: tuple[Controller, Path], tmp_path: Path
) -> Iterator[ServiceProcess]:
    controller, _ = smtp_sink
    process = start_service(
        "worker",
        ["worker", "--role", "all", "--concurrency", "2"],
        env=service_env(servers, MAILSVC_SMTP_PORT=str(controller.port)),
        log_dir=tmp_path / "logs",
        ready_marker=WORKER_READY,
    )
    yield process
    process.stop()
    print(process.log()[-6000:])  # shown by pytest when the test fails


async def test_one_email_end_to_end(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    worker: ServiceProcess,
) -> None:
    _, outbox = smtp_sink
    headers = bearer(live_tenant)
    response = await live_client.post(
        "/v1/messages",
        json={
            "from": {"email": "hello@example.com", "name": "Example Team"},
            "to": [{"email": "zoe@bücher.example", "name": "Zoë Ünïcode"}],
            "subject": "Welcome — ça marche",
            "text": "Plain text body ☃",
            "html": "<p>HTML body ☃</p>",
            "headers": {"X-Campaign": "welcome"},
            "tags": ["welcome"],
        },
        headers=headers,
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"

    async def eml_files() -> list[Path]:
        # The sink is this test's, but be exact: the file named by this message's Message-ID.
        return sorted(f for f in outbox.glob("*.eml") if accepted["id"].replace("-", "") in f.name)

    files = await eventually(eml_files, what="the .eml at the SMTP sink", timeout=30)
    assert len(files) == 1
    received = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert received["Message-ID"] == accepted["message_id_header"]
    assert received["Subject"] == "Welcome — ça marche"
    assert received["From"] == "Example Team <hello@example.com>"
    assert received["To"] == "Zoë Ünïcode <zoe@xn--bcher-kva.example>"
    assert received["X-Campaign"] == "welcome"
    assert received.get_content_type() == "multipart/alternative"
    plain, html = received.get_body(("plain",)), received.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == "Plain text body ☃"
    assert html.get_content().strip() == "<p>HTML body ☃</p>"

    async def sent() -> dict[str, Any] | None:
        current = await live_client.get(f"/v1/messages/{accepted['id']}", headers=headers)
        body: dict[str, Any] = current.json()
        return body if body["status"] == "sent" else None

    message = await eventually(sent, what="status sent")
    assert message["attempt_count"] == 1
    attempts = message["attempts"]
    assert isinstance(attempts, list)
    assert len(attempts) == 1
    assert attempts[0]["provider"] == "smtp"
    assert attempts[0]["outcome"] == "sent"
    assert attempts[0]["number"] == 1
    assert message["sent_at"] is not None
    assert [e["type"] for e in message["events"]] == ["accepted", "sent"]
