"""POST /v1/messages/batch (all or nothing, errors by index) and how priority picks the lane."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.models import Message, Tenant
from tests.support.auth import bearer
from tests.support.publish import RecordingPublisher

ONE = {"to": ["ada@example.net"], "subject": "News", "text": "Hello"}


def item(i: int, **overrides: Any) -> dict[str, Any]:
    return {**ONE, "to": [f"user{i}@example.net"], **overrides}


async def count(session: AsyncSession, tenant: Tenant) -> int:
    return int(
        await session.scalar(
            select(func.count()).select_from(Message).where(Message.tenant_id == tenant.id)
        )
        or 0
    )


async def test_a_batch_is_accepted_for_the_bulk_lane(
    client: httpx.AsyncClient,
    tenant: Tenant,
    session: AsyncSession,
    published: RecordingPublisher,
) -> None:
    response = await client.post(
        "/v1/messages/batch",
        json={"messages": [item(i) for i in range(3)]},
        headers=bearer(tenant),
    )
    assert response.status_code == 202
    data = response.json()["data"]
    assert [m["to"][0]["email"] for m in data] == [f"user{i}@example.net" for i in range(3)]
    assert {m["status"] for m in data} == {"queued"}
    rows = (await session.execute(select(Message).where(Message.tenant_id == tenant.id))).scalars()
    assert {(m.lane, m.enqueued_at) for m in rows} == {("bulk", None)}  # parked for the feeder
    assert published.jobs == []  # the feeder hands them over at its own pace


async def test_one_invalid_item_rejects_the_whole_batch_with_every_error_by_index(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    messages = [
        item(0),
        item(1, to=["not-an-address"]),
        item(2, **{"from": "ceo@bank.example"}),
        item(3, subject="Hi\r\nBcc: x@y.z"),
    ]
    response = await client.post(
        "/v1/messages/batch", json={"messages": messages}, headers=bearer(tenant)
    )
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [e["loc"] for e in errors] == [
        ["body", "messages", 1, "to", 0, "email"],
        ["body", "messages", 3, "subject"],
    ]
    assert await count(session, tenant) == 0

    # Schema errors come first; the tenant's own rules are checked for every item too.
    messages[1], messages[3] = item(1), item(3)
    messages.append(item(4, **{"from": "x@elsewhere.example"}))
    response = await client.post(
        "/v1/messages/batch", json={"messages": messages}, headers=bearer(tenant)
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "2 of 5 messages are invalid; none was accepted"
    assert [e["loc"] for e in response.json()["errors"]] == [
        ["body", "messages", 2, "from"],
        ["body", "messages", 4, "from"],
    ]
    assert await count(session, tenant) == 0


async def test_at_most_500_messages(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.post(
        "/v1/messages/batch",
        json={"messages": [item(i) for i in range(501)]},
        headers=bearer(tenant),
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "messages"],
            "msg": "List should have at most 500 items after validation, not 501",
        }
    ]


async def test_500_full_size_messages_fit_though_one_message_may_not_pass_1_mib(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    text = "x" * 4000
    body = json.dumps({"messages": [item(i, text=text) for i in range(500)]})
    assert len(body) > 1024 * 1024
    response = await client.post(
        "/v1/messages/batch",
        content=body,
        headers={**bearer(tenant), "Content-Type": "application/json"},
    )
    assert response.status_code == 202
    assert await count(session, tenant) == 500


async def test_a_batch_over_16_mib_is_refused(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.post(
        "/v1/messages/batch",
        content=b"x" * (16 * 1024 * 1024 + 1),
        headers={**bearer(tenant), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "the request body is larger than 16777216 bytes"


async def test_priority_picks_the_lane_of_a_single_message(
    client: httpx.AsyncClient,
    tenant: Tenant,
    session: AsyncSession,
    published: RecordingPublisher,
) -> None:
    lanes = {}
    for priority in ("high", "normal", "low"):
        response = await client.post(
            "/v1/messages", json={**ONE, "priority": priority}, headers=bearer(tenant)
        )
        message = await session.get(Message, response.json()["id"])
        assert message is not None
        lanes[priority] = (message.lane, message.enqueued_at is not None)
    assert lanes == {
        "high": ("transactional", True),  # published at once
        "normal": ("bulk", False),  # parked for the bulk feeder
        "low": ("bulk", False),
    }
    assert [(job.task, job.queue) for job in published.jobs] == [("messages.send", "transactional")]
