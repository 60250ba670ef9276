"""The breaker with a real worker: a failing provider is skipped once its circuit opens, probed
after the cool-down, and used again once a probe succeeds."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from mailsvc.db import Database
from mailsvc.devserver.fakes import FakeProviders
from mailsvc.models import Tenant
from tests.sending.test_delivery_guarantees import reaches, send, settled
from tests.support.env import provider_env, service_env
from tests.support.processes import eventually
from tests.support.servers import TestServers
from tests.support.stack import Services, worker_and_beat

pytestmark = pytest.mark.e2e

COOLDOWN = 2.0


@pytest.fixture(scope="module")
def services(
    servers: TestServers, fakes: FakeProviders, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    env = service_env(
        servers,
        **provider_env(fakes),
        MAILSVC_BREAKER_FAILURE_THRESHOLD="2",
        MAILSVC_BREAKER_COOLDOWN_SECONDS=str(COOLDOWN),
        MAILSVC_BREAKER_CACHE_SECONDS="0",
    )
    # One pool process, so the messages go one after another and the order is the test's.
    with worker_and_beat(env, tmp_path_factory.mktemp("breaker"), concurrency=1) as running:
        yield running


async def test_the_circuit_opens_skips_the_provider_and_closes_after_a_probe(
    services: Services,
    fake_providers: FakeProviders,
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    live_database: Database,
    redis_client: aioredis.Redis,
) -> None:
    sendgrid = fake_providers.sendgrid
    sendgrid.fail(status=503)

    async def deliver() -> list[str]:
        h = await reaches(live_database, await send(live_client, live_tenant), settled)
        assert h.message.status == "sent"
        return [f"{provider}:{outcome}" for _, provider, outcome, _ in h.tries()]

    # Two failures in a row open the circuit…
    assert await deliver() == ["sendgrid:transient_error", "mailgun:sent"]
    assert await deliver() == ["sendgrid:transient_error", "mailgun:sent"]
    assert await redis_client.get("mailsvc:breaker:sendgrid:open_until") is not None
    # …after which sendgrid is not even asked.
    seen = sendgrid.requests_seen
    assert await deliver() == ["mailgun:sent"]
    assert sendgrid.requests_seen == seen

    # It recovers; after the cool-down one probe goes through, succeeds, and closes the circuit.
    sendgrid.recover()

    async def half_open() -> bool:
        return (await deliver())[0] == "sendgrid:sent"

    await eventually(half_open, timeout=COOLDOWN + 15, interval=0.2, what="the probe")
    assert await redis_client.get("mailsvc:breaker:sendgrid:open_until") is None
    assert await deliver() == ["sendgrid:sent"]
