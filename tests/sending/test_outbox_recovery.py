"""Nothing accepted is lost when the broker is not there: the sweeper and dispatcher recover it."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller

from mailsvc.config import Settings
from mailsvc.devserver.embedded import EmbeddedRedis
from mailsvc.models import Tenant
from mailsvc.worker.app import celery_app, configure
from tests.support.auth import bearer
from tests.support.env import service_env
from tests.support.processes import eventually
from tests.support.servers import TestServers
from tests.support.stack import worker_and_beat

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_broker(tmp_path: Path, test_settings: Settings) -> Iterator[EmbeddedRedis]:
    """A Redis this test may stop and start; the in-process API publishes to it meanwhile."""
    broker = EmbeddedRedis(tmp_path / "broker", persist=False)
    url = broker.start()
    celery_app.close()  # drop pooled connections to the previous broker
    configure(celery_app, test_settings.model_copy(update={"redis_url": url}))
    yield broker
    broker.stop()
    celery_app.close()
    configure(celery_app, test_settings)


async def test_accepted_while_redis_is_down_is_delivered_once_it_is_back(
    servers: TestServers,
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    own_broker: EmbeddedRedis,
    tmp_path: Path,
) -> None:
    controller, outbox = smtp_sink
    env = service_env(
        servers,
        MAILSVC_REDIS_URL=own_broker.url,
        MAILSVC_SMTP_PORT=str(controller.port),
        MAILSVC_SWEEP_AFTER_SECONDS="2",
        MAILSVC_SWEEP_INTERVAL_SECONDS="1",
        MAILSVC_DISPATCH_INTERVAL_SECONDS="1",
    )
    with worker_and_beat(env, tmp_path / "logs"):
        own_broker.stop()
        headers = bearer(live_tenant)
        response = await live_client.post(
            "/v1/messages",
            json={"to": ["ada@example.net"], "subject": "While Redis was down", "text": "Hi"},
            headers=headers,
        )
        assert response.status_code == 202
        accepted = response.json()

        own_broker.start()  # the same port, and no data: whatever was in Redis is gone

        async def delivered() -> dict[str, object] | None:
            body: dict[str, object] = (
                await live_client.get(f"/v1/messages/{accepted['id']}", headers=headers)
            ).json()
            return body if body["status"] == "sent" else None

        message = await eventually(delivered, timeout=45, what="the message to be sent")
        # Rows other tests left queued may be swept into this sink too: look for this one.
        files = [f for f in outbox.glob("*.eml") if accepted["id"].replace("-", "") in f.name]
        assert len(files) == 1
        received = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        assert received["Message-ID"] == accepted["message_id_header"]
        assert message["attempt_count"] == 1
        assert isinstance(message["attempts"], list)
        assert len(message["attempts"]) == 1
