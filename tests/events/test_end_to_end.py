"""A sign-up end to end: the API, a real worker and beat, the capture SMTP server, PostgreSQL.

Then the activation reminder, driven by a test clock: nothing for a contact who activated, and
exactly one for one who did not, however often the job runs.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from mailsvc.db import Database
from mailsvc.kit.outbox import outbox_of
from mailsvc.models import Attempt, Message, Tenant
from mailsvc.schedules import jobs
from mailsvc.templates.links import verify_link
from mailsvc.worker.publish import publish_jobs
from tests.support.auth import bearer
from tests.support.env import service_env
from tests.support.processes import eventually
from tests.support.servers import TestServers
from tests.support.stack import worker_and_beat

pytestmark = pytest.mark.e2e

CONFIRM = "https://app.example.com/confirm?next=%2Fhome"


def received(outbox: Path, message_id: str) -> EmailMessage | None:
    files = [f for f in outbox.glob("*.eml") if message_id.replace("-", "") in f.name]
    if not files:
        return None
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


async def signed_up(client: httpx.AsyncClient, tenant: Tenant, address: str) -> list[str]:
    response = await client.post(
        "/v1/events",
        json={
            "type": "user.signed_up",
            "contact": {"email": address, "name": "Ada Lovelace"},
            "data": {"confirm_url": CONFIRM},
        },
        headers=bearer(tenant),
    )
    assert response.status_code == 202, response.text
    return [m["id"] for m in response.json()["messages"]]


async def test_signed_up_delivers_confirmation_then_welcome(
    live_client: httpx.AsyncClient,
    live_database: Database,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    servers: TestServers,
    tmp_path: Path,
) -> None:
    controller, outbox = smtp_sink
    env = service_env(
        servers, MAILSVC_SMTP_PORT=str(controller.port), MAILSVC_DISPATCH_INTERVAL_SECONDS="0.5"
    )
    with worker_and_beat(env, tmp_path / "logs"):
        confirmation_id, welcome_id = await signed_up(live_client, live_tenant, "ada@example.net")

        async def both() -> tuple[EmailMessage, EmailMessage] | None:
            first, second = received(outbox, confirmation_id), received(outbox, welcome_id)
            return (first, second) if first and second else None

        confirmation, welcome = await eventually(both, what="both emails", timeout=60)

        async def recorded() -> dict[str, Attempt] | None:
            # The sink has the mail a moment before the worker records it as sent.
            async with live_database.transaction() as session:
                ids = [confirmation_id, welcome_id]
                rows = await session.execute(select(Message.status).where(Message.id.in_(ids)))
                if [s for s in rows.scalars() if s != "sent"]:
                    return None
                tries = await session.execute(select(Attempt).where(Attempt.message_id.in_(ids)))
                return {str(a.message_id): a for a in tries.scalars()}

        tried = await eventually(recorded, what="both recorded as sent", timeout=60)

    # In that order: the welcome was first tried after the confirmation was accepted.
    assert tried[welcome_id].started_at >= tried[confirmation_id].finished_at

    for message in (confirmation, welcome):
        assert message["To"] == "Ada Lovelace <ada@example.net>"
        assert message.get_content_type() == "multipart/alternative"
        assert message.get_body(("plain",)) is not None
        assert message.get_body(("html",)) is not None
    assert "confirm" in confirmation["Subject"].lower()
    assert "welcome" in welcome["Subject"].lower()

    text = confirmation.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    link = next(word for word in text.split() if word.startswith("https://app.example.com/"))
    assert parse_qs(urlsplit(link).query)["next"] == ["/home"]
    assert verify_link(link, tenant_id=live_tenant.id, now=datetime.now(UTC)) == "ada@example.net"
    html = confirmation.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert link.replace("&", "&amp;") in html


async def _run_reminders(database: Database, now: datetime) -> int:
    async with database.transaction() as session:
        count = await jobs.run_activation_reminders(session, now=now)
    publish_jobs(outbox_of(session).take_released())
    return count


async def _reminders(database: Database, tenant: Tenant) -> list[dict[str, Any]]:
    async with database.transaction() as session:
        rows = await session.execute(
            select(Message).where(
                Message.tenant_id == tenant.id, Message.template == "activation_reminder"
            )
        )
        return [
            {
                "id": str(m.id),
                "to": m.recipients[0],
                "status": m.status,
                "attempts": m.attempt_count,
            }
            for m in rows.scalars()
        ]


async def test_activation_reminder_exactly_once_and_never_after_activation(
    live_client: httpx.AsyncClient,
    live_database: Database,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    servers: TestServers,
    tmp_path: Path,
) -> None:
    controller, outbox = smtp_sink
    await signed_up(live_client, live_tenant, "active@example.net")
    await signed_up(live_client, live_tenant, "idle@example.net")
    activated = await live_client.post(
        "/v1/events",
        json={"type": "user.activated", "contact": {"email": "active@example.net"}},
        headers=bearer(live_tenant),
    )
    assert activated.status_code == 202

    # The test clock: day 2 sends nothing; day 3 sends one reminder, to the idle contact only;
    # running the job again, and twice at once, sends nothing more.
    start = datetime.now(UTC)
    assert await _run_reminders(live_database, start + timedelta(days=2)) == 0
    assert await _reminders(live_database, live_tenant) == []
    day3 = start + timedelta(days=3, hours=1)
    await _run_reminders(live_database, day3)
    again = await asyncio.gather(*(_run_reminders(live_database, day3) for _ in range(2)))
    await _run_reminders(live_database, day3 + timedelta(hours=5))
    reminders = await _reminders(live_database, live_tenant)
    assert [r["to"] for r in reminders] == ["idle@example.net"]
    assert sum(again) == 0

    env = service_env(servers, MAILSVC_SMTP_PORT=str(controller.port))
    with worker_and_beat(env, tmp_path / "logs", beat=False):

        async def sent() -> list[dict[str, Any]] | None:
            rows = await _reminders(live_database, live_tenant)
            return rows if rows and rows[0]["status"] == "sent" else None

        [reminder] = await eventually(sent, what="the reminder sent", timeout=60)
    assert reminder["attempts"] == 1
    message = received(outbox, reminder["id"])
    assert message is not None
    assert message["To"] == "Ada Lovelace <idle@example.net>"
    assert message.get_body(("plain",)) is not None
    assert message.get_body(("html",)) is not None


async def test_a_scheduled_message_goes_out_when_due_and_a_cancelled_one_never(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    servers: TestServers,
    tmp_path: Path,
) -> None:
    controller, outbox = smtp_sink
    headers = bearer(live_tenant)
    env = service_env(
        servers, MAILSVC_SMTP_PORT=str(controller.port), MAILSVC_DISPATCH_INTERVAL_SECONDS="0.5"
    )
    with worker_and_beat(env, tmp_path / "logs"):
        due = datetime.now(UTC) + timedelta(seconds=3)
        bodies = [
            {
                "to": [f"{who}@example.net"],
                "subject": who,
                "text": "later",
                "send_at": due.isoformat(),
            }
            for who in ("kept", "cancelled")
        ]
        kept, cancelled = [
            (await live_client.post("/v1/messages", json=b, headers=headers)).json() for b in bodies
        ]
        assert kept["status"] == cancelled["status"] == "scheduled"
        response = await live_client.post(f"/v1/messages/{cancelled['id']}/cancel", headers=headers)
        assert response.json()["status"] == "cancelled"

        async def sent() -> dict[str, Any] | None:
            body: dict[str, Any] = (
                await live_client.get(f"/v1/messages/{kept['id']}", headers=headers)
            ).json()
            return body if body["status"] == "sent" else None

        message = await eventually(sent, what="the scheduled message sent", timeout=60)
    assert datetime.fromisoformat(message["attempts"][0]["started_at"]) >= due
    assert received(outbox, kept["id"]) is not None
    assert received(outbox, cancelled["id"]) is None
    final = (await live_client.get(f"/v1/messages/{cancelled['id']}", headers=headers)).json()
    assert (final["status"], final["attempts"]) == ("cancelled", [])
