"""The stack answers: health, readiness, and an authenticated round trip."""

from __future__ import annotations

import httpx

from mailsvc.models import Tenant
from tests.support.auth import bearer


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_postgres_and_redis(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_send_and_read_back(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.post(
        "/v1/messages",
        json={"to": ["ada@example.net"], "subject": "Hi", "text": "Hello"},
        headers=bearer(tenant),
    )
    assert response.status_code == 202, response.text
    message = response.json()
    fetched = await client.get(f"/v1/messages/{message['id']}", headers=bearer(tenant))
    assert fetched.status_code == 200
    assert fetched.json()["status"] == "queued"
