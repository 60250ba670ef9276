"""send_at, cancel (including cancel racing a worker's claim), and sends from templates."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
from sqlalchemy import select

from mailsvc.db import Database
from mailsvc.messages.repository import MessageRepository
from mailsvc.models import Message, MessageEvent, Tenant
from mailsvc.sending.repository import DeliveryRepository
from tests.factories import queue_messages
from tests.support.auth import bearer

VALID = {"to": ["ada@example.net"], "subject": "Hello", "text": "Hi Ada"}


async def post(client: httpx.AsyncClient, tenant: Tenant, body: Any) -> httpx.Response:
    return await client.post("/v1/messages", json=body, headers=bearer(tenant))


def field_errors(response: httpx.Response) -> list[tuple[list[str | int], str]]:
    return [(e["loc"], e["msg"]) for e in response.json()["errors"]]


# -- send_at ---------------------------------------------------------------------------------------


async def test_send_at_schedules_the_message_and_publishes_nothing(
    client: httpx.AsyncClient, tenant: Tenant, session: Any
) -> None:
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    response = await post(client, tenant, {**VALID, "send_at": at.isoformat()})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "scheduled"
    assert datetime.fromisoformat(body["send_at"]) == at
    row = (await session.execute(select(Message).where(Message.id == body["id"]))).scalar_one()
    assert (row.status, row.not_before, row.enqueued_at) == ("scheduled", at, None)


async def test_send_at_with_an_offset_is_stored_as_the_same_instant(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    kiritimati = at.astimezone(timezone(timedelta(hours=14))).isoformat()
    response = await post(client, tenant, {**VALID, "send_at": kiritimati})
    assert response.status_code == 202, response.text
    assert datetime.fromisoformat(response.json()["send_at"]) == at


async def test_send_at_in_the_past_is_refused_naming_the_field(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    at = datetime.now(UTC) - timedelta(minutes=5)
    response = await post(client, tenant, {**VALID, "send_at": at.isoformat()})
    assert response.status_code == 422
    [(loc, msg)] = field_errors(response)
    assert loc == ["body", "send_at"]
    assert msg == f"send_at {at.isoformat()} is in the past"


async def test_send_at_more_than_a_year_ahead_is_refused(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    at = datetime.now(UTC) + timedelta(days=366)
    response = await post(client, tenant, {**VALID, "send_at": at.isoformat()})
    assert response.status_code == 422
    [(loc, msg)] = field_errors(response)
    assert loc == ["body", "send_at"]
    assert msg == f"send_at {at.isoformat()} is more than 1 year ahead"


async def test_send_at_without_an_offset_is_refused(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await post(client, tenant, {**VALID, "send_at": "2030-01-01T09:00:00"})
    assert response.status_code == 422
    [(loc, _)] = field_errors(response)
    assert loc == ["body", "send_at"]


async def test_send_at_within_the_clock_skew_grace_sends_now(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    at = datetime.now(UTC) - timedelta(seconds=5)
    response = await post(client, tenant, {**VALID, "send_at": at.isoformat()})
    assert response.status_code == 202
    assert (response.json()["status"], response.json()["send_at"]) == ("queued", None)


# -- cancel ---------------------------------------------------------------------------------------


async def test_cancel_a_scheduled_message(client: httpx.AsyncClient, tenant: Tenant) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    created = (await post(client, tenant, {**VALID, "send_at": at.isoformat()})).json()
    response = await client.post(f"/v1/messages/{created['id']}/cancel", headers=bearer(tenant))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled"
    assert [e["type"] for e in body["events"]] == ["accepted", "cancelled"]
    assert body["events"][1]["detail"] == {"reason": "cancelled by the API"}

    again = await client.post(f"/v1/messages/{created['id']}/cancel", headers=bearer(tenant))
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"message {created['id']} is cancelled: only scheduled, queued or retrying messages "
        "can be cancelled"
    )


async def test_cancel_unknown_or_another_tenants_message_is_404(
    client: httpx.AsyncClient, tenant: Tenant, make_tenant: Any
) -> None:
    created = (await post(client, tenant, VALID)).json()
    other = await make_tenant()
    for who, message_id in ((other, created["id"]), (tenant, str(uuid.uuid4()))):
        response = await client.post(f"/v1/messages/{message_id}/cancel", headers=bearer(who))
        assert response.status_code == 404
        assert response.json()["detail"] == f"message {message_id} does not exist"


async def test_cancel_needs_the_send_scope(client: httpx.AsyncClient, tenant: Tenant) -> None:
    created = (await post(client, tenant, VALID)).json()
    response = await client.post(
        f"/v1/messages/{created['id']}/cancel", headers=bearer(tenant, ["messages:read"])
    )
    assert response.status_code == 403


async def test_cancel_racing_a_claim_has_exactly_one_winner(
    live_database: Database, live_tenant: Tenant
) -> None:
    """Cancel and claim hit the same rows at once: each row is cancelled or claimed, never both."""
    async with live_database.transaction() as session:
        ids = await queue_messages(session, live_tenant, 60)

    async def claim(message_id: uuid.UUID) -> bool:
        async with live_database.autocommit() as connection:
            return bool(await DeliveryRepository(connection).claim([message_id], lease_seconds=60))

    async def cancel(message_id: uuid.UUID) -> bool:
        async with live_database.transaction() as session:
            return await MessageRepository(session).cancel(
                live_tenant.id, message_id, reason="race"
            )

    async def race(n: int, message_id: uuid.UUID) -> tuple[bool, bool]:
        if n % 2:  # either one starts first, half the time each
            cancelled, claimed = await asyncio.gather(cancel(message_id), claim(message_id))
        else:
            claimed, cancelled = await asyncio.gather(claim(message_id), cancel(message_id))
        return claimed, cancelled

    outcomes = await asyncio.gather(*(race(n, i) for n, i in enumerate(ids)))
    async with live_database.transaction() as session:
        rows = {
            m.id: m.status
            for m in (await session.execute(select(Message).where(Message.id.in_(ids)))).scalars()
        }
        cancelled_events = set(
            (
                await session.execute(
                    select(MessageEvent.message_id).where(
                        MessageEvent.message_id.in_(ids), MessageEvent.type == "cancelled"
                    )
                )
            ).scalars()
        )
    for message_id, (claimed, cancelled) in zip(ids, outcomes, strict=True):
        assert claimed != cancelled, f"{message_id}: claimed={claimed} cancelled={cancelled}"
        assert rows[message_id] == ("sending" if claimed else "cancelled")
        assert (message_id in cancelled_events) == cancelled


# -- templates through POST /v1/messages --------------------------------------------------------


async def test_a_builtin_template_is_rendered_at_accept(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await post(
        client,
        tenant,
        {"to": [{"email": "ada@example.net", "name": "Ada"}], "template": "password_changed"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["template"] == "password_changed"
    assert body["subject"]
    assert body["priority"] == "high"  # a transactional template


async def test_a_marketing_template_defaults_to_normal_priority(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await post(
        client,
        tenant,
        {
            "to": ["ada@example.net"],
            "template": "marketing",
            "variables": {"data": {"headline": "New", "body": "Things"}},
        },
    )
    assert response.status_code == 202, response.text
    assert response.json()["priority"] == "normal"


async def test_unknown_template_is_422_naming_the_template(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await post(client, tenant, {"to": ["ada@example.net"], "template": "nope"})
    assert response.status_code == 422
    [(loc, msg)] = field_errors(response)
    assert loc == ["body", "template"]
    assert "nope" in msg


async def test_missing_variable_is_422_naming_the_variables(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await post(
        client, tenant, {"to": ["ada@example.net"], "template": "account_confirmation"}
    )
    assert response.status_code == 422
    [(loc, msg)] = field_errors(response)
    assert loc == ["body", "variables"]
    assert "confirm_url" in msg


async def test_variables_without_a_template_are_refused(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await post(client, tenant, {**VALID, "variables": {"a": 1}})
    assert response.status_code == 422
    assert "variables are for a template" in response.text


async def test_a_batch_reports_template_errors_by_index(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    good = {"to": ["ada@example.net"], "template": "password_changed"}
    bad = {"to": ["bob@example.net"], "template": "account_confirmation"}
    response = await client.post(
        "/v1/messages/batch", json={"messages": [good, bad, good]}, headers=bearer(tenant)
    )
    assert response.status_code == 422
    [(loc, _)] = field_errors(response)
    assert loc == ["body", "messages", 1, "variables"]
