"""Idempotency-Key: a repeat returns the original, another body conflicts, and a race makes one."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.db import Database
from mailsvc.models import Message, Tenant
from tests.support.api import REQUEST_ID
from tests.support.auth import TenantFactory, bearer

BODY = {"to": ["ada@example.net"], "subject": "Your receipt", "text": "Thanks"}


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def test_same_key_and_body_returns_the_original_with_200(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    headers = {**bearer(tenant), **key("order-1")}
    first = await client.post("/v1/messages", json=BODY, headers=headers)
    again = await client.post("/v1/messages", json=BODY, headers=headers)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    count = await session.scalar(
        select(func.count()).select_from(Message).where(Message.tenant_id == tenant.id)
    )
    assert count == 1


async def test_same_key_with_another_body_is_a_conflict(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    headers = {**bearer(tenant), **key("order-2")}
    first = await client.post("/v1/messages", json=BODY, headers=headers)
    other = await client.post("/v1/messages", json={**BODY, "subject": "Other"}, headers=headers)
    assert other.status_code == 409
    assert other.json() == {
        "type": "https://mailsvc.dev/problems/conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "Idempotency-Key 'order-2' was used with a different body "
        f"(message {first.json()['id']})",
        "request_id": REQUEST_ID,
    }


async def test_the_same_body_written_differently_is_the_same_request(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    headers = {**bearer(tenant), **key("order-3")}
    first = await client.post("/v1/messages", json=BODY, headers=headers)
    spelled = {"text": "Thanks", "subject": "Your receipt", "to": [{"email": "ada@EXAMPLE.net"}]}
    again = await client.post("/v1/messages", json=spelled, headers=headers)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


async def test_a_key_is_free_again_after_24_hours(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    headers = {**bearer(tenant), **key("order-4")}
    first = (await client.post("/v1/messages", json=BODY, headers=headers)).json()
    await session.execute(
        update(Message)
        .where(Message.id == first["id"])
        .values(created_at=func.now() - func.make_interval(0, 0, 0, 0, 25))
    )
    await session.commit()
    later = await client.post("/v1/messages", json={**BODY, "subject": "New"}, headers=headers)
    assert later.status_code == 202
    assert later.json()["id"] != first["id"]


async def test_keys_belong_to_a_tenant(
    client: httpx.AsyncClient, tenant: Tenant, make_tenant: TenantFactory
) -> None:
    other = await make_tenant()
    mine = await client.post("/v1/messages", json=BODY, headers={**bearer(tenant), **key("k")})
    theirs = await client.post("/v1/messages", json=BODY, headers={**bearer(other), **key("k")})
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]


async def test_a_key_longer_than_255_characters_is_refused(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await client.post(
        "/v1/messages", json=BODY, headers={**bearer(tenant), **key("k" * 256)}
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["header", "Idempotency-Key"], "msg": "String should have at most 255 characters"}
    ]


async def test_concurrent_identical_requests_make_exactly_one_message(
    live_client: httpx.AsyncClient, live_tenant: Tenant, live_database: Database
) -> None:
    """Ten identical requests at once, over committed rows: one 202, nine 200s, one row."""
    headers = {**bearer(live_tenant), **key("race-1")}
    responses = await asyncio.gather(
        *(live_client.post("/v1/messages", json=BODY, headers=headers) for _ in range(10))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 9 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    async with live_database.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(Message).where(Message.tenant_id == live_tenant.id)
        )
    assert count == 1
