"""Every log line of a request carries its request id and, once its token is read, its tenant;
the id is the caller's X-Request-ID when it is a sane one, and it comes back in the response."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from mailsvc.kit.logging import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bind,
    context_value,
    log_context,
)
from mailsvc.models import Tenant
from tests.support.auth import bearer
from tests.support.env import service_env
from tests.support.processes import eventually
from tests.support.servers import TestServers
from tests.support.stack import worker_and_beat


def _lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "request_id", None) == request_id]


async def test_a_requests_lines_carry_its_id_and_tenant(
    client: httpx.AsyncClient, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await client.post(
            "/v1/messages",
            json={"to": ["a@example.net"], "subject": "Hi", "text": "Hello"},
            headers={**bearer(tenant), "X-Request-ID": "req-42"},
        )
    assert response.status_code == 202
    assert response.headers["x-request-id"] == "req-42"
    (access,) = [r for r in _lines(caplog, "req-42") if r.name == "mailsvc.access"]
    assert access.getMessage().startswith("POST /v1/messages 202 ")
    assert getattr(access, "tenant", None) == str(tenant.id)


async def test_a_refused_request_is_logged_and_answered_with_its_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await client.get("/v1/messages", headers={"X-Request-ID": "req-anon"})
    assert response.status_code == 401
    assert response.json()["request_id"] == "req-anon"
    (access,) = [r for r in _lines(caplog, "req-anon") if r.name == "mailsvc.access"]
    assert access.getMessage().startswith("GET /v1/messages 401 ")
    assert not hasattr(access, "tenant")  # nobody was authenticated


@pytest.mark.parametrize("given", ["", "a" * 129, "has space", "new\nline", "é"])
async def test_an_unusable_request_id_is_replaced_by_a_new_one(
    client: httpx.AsyncClient, given: str
) -> None:
    response = await client.get("/healthz", headers={b"X-Request-ID": given.encode("utf-8")})
    made = response.headers["x-request-id"]
    assert made != given
    assert len(made) == 32
    assert int(made, 16) >= 0
    other = await client.get("/healthz", headers={b"X-Request-ID": given.encode("utf-8")})
    assert other.headers["x-request-id"] != made  # one per request


def test_json_lines_put_the_context_at_the_top_level() -> None:
    record = logging.LogRecord("mailsvc.test", logging.INFO, __file__, 1, "sent %s", ("x",), None)
    with log_context(task_id="t-1"):
        bind(message_id="m-1", tenant="tenant-1")
        ContextFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert {k: entry[k] for k in ("msg", "task_id", "message_id", "tenant")} == {
        "msg": "sent x",
        "task_id": "t-1",
        "message_id": "m-1",
        "tenant": "tenant-1",
    }
    text = TextFormatter("%(message)s").format(record)
    assert text == "sent x [tenant=tenant-1 message_id=m-1 task_id=t-1]"


def test_bind_outside_a_context_changes_nothing() -> None:
    bind(tenant="nobody")
    assert context_value("tenant") is None
    with log_context():
        assert context_value("tenant") is None


def _json_lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


@pytest.mark.e2e
async def test_a_workers_lines_carry_task_message_and_tenant_and_housekeeping_is_quiet(
    live_client: httpx.AsyncClient,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    servers: TestServers,
    tmp_path: Path,
) -> None:
    """A real worker and beat, JSON logs: the lines about a send name its task, message and
    tenant; beat's dispatch runs every half second, and none of them writes an INFO line."""
    controller, outbox = smtp_sink
    env = service_env(
        servers,
        MAILSVC_SMTP_PORT=str(controller.port),
        MAILSVC_DISPATCH_INTERVAL_SECONDS="0.5",
        MAILSVC_LOG_JSON="true",
    )
    with worker_and_beat(env, tmp_path / "logs") as services:
        response = await live_client.post(
            "/v1/messages",
            json={"to": ["ada@example.net"], "subject": "Logged", "text": "Hello"},
            headers=bearer(live_tenant),
        )
        assert response.status_code == 202, response.text
        message_id = response.json()["id"]

        async def sent_line() -> dict[str, Any] | None:
            for line in _json_lines(services.worker.log()):
                if line.get("msg") == "message sent" and line.get("message_id") == message_id:
                    return line
            return None

        sent = await eventually(sent_line, timeout=30, what="the worker's 'message sent' line")
        assert services.beat is not None

        async def dispatched() -> bool:
            assert services.beat is not None
            return services.beat.log().count("messages.dispatch_due") >= 4

        await eventually(dispatched, timeout=20, what="beat's dispatches")
        lines = _json_lines(services.worker.log())

    assert list(outbox.glob("*.eml")) != []
    assert sent["tenant"] == str(live_tenant.id)
    task_id = sent["task_id"]
    # Celery's own lines about the task (received, succeeded) name it as a field too.
    celery_lines = [line for line in lines if line["logger"].startswith("celery.")]
    assert {line["task_id"] for line in celery_lines if task_id in line["msg"]} == {task_id}
    assert [
        line["msg"]
        for line in lines
        if "dispatch_due" in line["msg"] and line["level"] in ("info", "warning")
    ] == []
    # Every line about a message says which task and tenant it was in.
    about_messages = [line for line in lines if "message_id" in line]
    assert about_messages != []
    assert [line for line in about_messages if not ("task_id" in line and "tenant" in line)] == []
