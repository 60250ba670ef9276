"""/metrics: on a port of its own (`mailsvc api --metrics-port`), or on the API's port only for a
scraper holding the metrics token."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from mailsvc.config import Settings
from mailsvc.devserver.embedded import free_port
from mailsvc.models import Tenant
from tests.support.auth import bearer
from tests.support.servers import TestServers
from tests.support.stack import api_process


async def test_metrics_are_not_served_on_the_api_port_without_a_token_setting(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A caller of the API, even an authenticated one, cannot read the metrics."""
    for headers in ({}, bearer(tenant)):
        response = await client.get("/metrics", headers=headers)
        assert response.status_code == 404
        assert "--metrics-port" in response.json()["detail"]


async def test_metrics_need_the_metrics_token(
    client: httpx.AsyncClient,
    tenant: Tenant,
    test_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The app's settings (the `client` fixture's app holds this object).
    monkeypatch.setattr(test_settings, "metrics_token", SecretStr("scrape-me"))
    for headers in (
        {},
        bearer(tenant),
        {"Authorization": "Bearer scrape-me-not"},
        {"Authorization": "Basic scrape-me"},
    ):
        response = await client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
    response = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "mailsvc_http_request_duration_seconds" in response.text


@pytest.mark.e2e
async def test_the_metrics_port_serves_what_the_api_counted(
    servers: TestServers, tmp_path: Path
) -> None:
    metrics_port = free_port()
    with api_process(servers, tmp_path / "logs", args=("--metrics-port", str(metrics_port))) as api:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{api.url}/healthz")).status_code == 200
            assert (await client.get(f"{api.url}/metrics")).status_code == 404
            scraped = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert scraped.status_code == 200
    assert 'mailsvc_http_request_duration_seconds_count{method="GET",route="/healthz"' in (
        scraped.text
    )
