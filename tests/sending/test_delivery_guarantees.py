"""Failover, permanent failures, backoff, Retry-After and exhaustion, with a real worker and beat
against the fake providers. Timings are read from what the rows record, not by sleeping."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import httpx
import pytest

from mailsvc.db import Database
from mailsvc.devserver.fakes import FakeProviders
from mailsvc.models import Tenant
from tests.support.auth import bearer
from tests.support.env import provider_env, service_env
from tests.support.processes import eventually
from tests.support.servers import TestServers
from tests.support.stack import History, Services, history, worker_and_beat

pytestmark = pytest.mark.e2e

BASE, CAP, MAX_ATTEMPTS = 2.0, 8.0, 3


@pytest.fixture(scope="module")
def services(
    servers: TestServers, fakes: FakeProviders, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    env = service_env(
        servers,
        **provider_env(fakes),
        MAILSVC_SENDGRID_TIMEOUT_SECONDS="1",
        MAILSVC_MAILGUN_TIMEOUT_SECONDS="1",
        MAILSVC_SES_TIMEOUT_SECONDS="1",
        MAILSVC_SMTP_TIMEOUT_SECONDS="1",
        MAILSVC_RETRY_BASE_SECONDS=str(BASE),
        MAILSVC_RETRY_CAP_SECONDS=str(CAP),
        MAILSVC_RETRY_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        MAILSVC_BREAKER_FAILURE_THRESHOLD="1000",  # the breaker has its own test module
        MAILSVC_DISPATCH_INTERVAL_SECONDS="0.5",
    )
    with worker_and_beat(env, tmp_path_factory.mktemp("guarantees")) as running:
        yield running


async def send(client: httpx.AsyncClient, tenant: Tenant, to: str = "ada@example.net") -> str:
    response = await client.post(
        "/v1/messages",
        json={"to": [to], "subject": "Guaranteed", "text": "Hello"},
        headers=bearer(tenant),
    )
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


async def reaches(
    database: Database,
    message_id: str,
    condition: Callable[[History], bool],
    *,
    timeout: float = 30,
) -> History:
    async def probe() -> History | None:
        found = await history(database, message_id)
        return found if condition(found) else None

    return await eventually(probe, timeout=timeout, what=f"message {message_id}")


def fail_http_providers(fakes: FakeProviders, status: int, retry_after: int | None = None) -> None:
    for name in ("sendgrid", "mailgun", "ses"):
        fakes.providers[name].fail(status=status, retry_after=retry_after)


def settled(h: History) -> bool:
    return h.message.status in {"sent", "failed"}


def finished(h: History, number: int) -> datetime:
    return max(a.finished_at for a in h.attempts if a.number == number)


def started(h: History, number: int) -> datetime:
    return min(a.started_at for a in h.attempts if a.number == number)


@pytest.fixture
def fakes_for_test(services: Services, fake_providers: FakeProviders) -> FakeProviders:
    return fake_providers


async def test_failover_to_the_next_provider_on_5xx(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    live_database: Database,
    fakes_for_test: FakeProviders,
) -> None:
    fakes_for_test.sendgrid.fail(status=503)
    message_id = await send(live_client, live_tenant)
    h = await reaches(live_database, message_id, settled)
    assert (h.message.status, h.message.provider, h.message.attempt_count) == ("sent", "mailgun", 1)
    assert h.tries() == [
        (1, "sendgrid", "transient_error", "http_503"),
        (1, "mailgun", "sent", None),
    ]
    assert fakes_for_test.sendgrid.received == []
    assert [r.message_id for r in fakes_for_test.mailgun.received] == [h.message.message_id_header]


async def test_failover_to_the_next_provider_on_timeout(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    live_database: Database,
    fakes_for_test: FakeProviders,
) -> None:
    fakes_for_test.sendgrid.timeout(delay=5)  # the worker gives up after 1 s
    message_id = await send(live_client, live_tenant)
    h = await reaches(live_database, message_id, settled)
    assert (h.message.status, h.message.provider) == ("sent", "mailgun")
    assert h.tries() == [
        (1, "sendgrid", "transient_error", "timeout"),
        (1, "mailgun", "sent", None),
    ]


async def test_a_permanent_http_refusal_is_neither_failed_over_nor_retried(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    live_database: Database,
    fakes_for_test: FakeProviders,
) -> None:
    fakes_for_test.sendgrid.reject("nobody@example.net")
    message_id = await send(live_client, live_tenant, to="nobody@example.net")
    h = await reaches(live_database, message_id, settled)
    assert (h.message.status, h.message.error_code, h.message.attempt_count) == (
        "failed",
        "http_400",
        1,
    )
    assert h.message.error == "Does not contain a valid address."
    assert h.tries() == [(1, "sendgrid", "permanent_error", "http_400")]
    assert h.event("retrying") == []
    for name in ("mailgun", "ses", "smtp"):
        assert fakes_for_test.providers[name].requests_seen == 0


async def test_a_permanent_smtp_5xx_ends_the_attempt_and_the_message(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    live_database: Database,
    fakes_for_test: FakeProviders,
) -> None:
    fail_http_providers(fakes_for_test, 503)
    fakes_for_test.smtp.fail(status=554)
    message_id = await send(live_client, live_tenant)
    h = await reaches(live_database, message_id, settled)
    assert (h.message.status, h.message.error_code, h.message.attempt_count) == (
        "failed",
        "smtp_554",
        1,
    )
    assert [t[1:3] for t in h.tries()] == [
        ("sendgrid", "transient_error"),
        ("mailgun", "transient_error"),
        ("ses", "transient_error"),
        ("smtp", "permanent_error"),
    ]
    assert h.event("retrying") == []


async def test_backoff_follows_the_policy_and_exhaustion_fails_with_every_attempt_recorded(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    live_database: Database,
    fakes_for_test: FakeProviders,
) -> None:
    fail_http_providers(fakes_for_test, 503)
    fakes_for_test.smtp.fail(status=451)
    message_id = await send(live_client, live_tenant)
    h = await reaches(live_database, message_id, settled, timeout=60)

    assert (h.message.status, h.message.attempt_count, h.message.error_code) == (
        "failed",
        MAX_ATTEMPTS,
        "smtp_451",
    )
    assert h.message.error is not None
    assert h.message.error.startswith(f"gave up after {MAX_ATTEMPTS} attempts; the last error: ")
    assert len(h.attempts) == MAX_ATTEMPTS * 4
    assert {a.number for a in h.attempts} == {1, 2, 3}
    assert all(a.outcome == "transient_error" for a in h.attempts)
    retries = h.event("retrying")
    assert len(retries) == MAX_ATTEMPTS - 1
    for number, retry in enumerate(retries, start=1):
        retry_at = datetime.fromisoformat(retry["retry_at"])
        waited = (retry_at - finished(h, number)).total_seconds()
        ceiling = min(CAP, BASE * 2 ** (number - 1))
        assert -0.01 <= waited <= ceiling + 0.01, (number, waited, ceiling)
        assert started(h, number + 1) >= retry_at  # the retry ran no sooner than not_before
    assert [e.type for e in h.events][-1] == "failed"


async def test_retry_after_is_honoured(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    live_database: Database,
    fakes_for_test: FakeProviders,
) -> None:
    fail_http_providers(fakes_for_test, 429, retry_after=5)
    fakes_for_test.smtp.fail(status=451)
    message_id = await send(live_client, live_tenant)
    h = await reaches(live_database, message_id, lambda h: h.message.status == "retrying")
    retry_at = datetime.fromisoformat(h.event("retrying")[0]["retry_at"])
    assert (retry_at - finished(h, 1)).total_seconds() >= 5  # above the policy's 2 s ceiling
    assert h.message.not_before == retry_at

    for provider in fakes_for_test.providers.values():
        provider.recover()
    h = await reaches(live_database, message_id, settled)
    assert (h.message.status, h.message.provider, h.message.attempt_count) == (
        "sent",
        "sendgrid",
        2,
    )
    assert started(h, 2) >= retry_at
