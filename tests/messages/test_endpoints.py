"""POST/GET /v1/messages: what is accepted, what is refused and exactly how."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from mailsvc.auth import scopes
from mailsvc.kit.outbox import Job
from mailsvc.models import Tenant
from tests.support.api import problem
from tests.support.auth import TenantFactory, bearer
from tests.support.publish import RecordingPublisher

VALID = {"to": ["ada@example.net"], "subject": "Hello", "text": "Hi Ada"}


async def post(
    client: httpx.AsyncClient, tenant: Tenant, body: Any, **kwargs: Any
) -> httpx.Response:
    return await client.post("/v1/messages", json=body, headers=bearer(tenant), **kwargs)


# -- accepted -------------------------------------------------------------------------------------


async def test_accepts_and_enqueues_after_commit(
    client: httpx.AsyncClient, tenant: Tenant, published: RecordingPublisher
) -> None:
    response = await post(
        client,
        tenant,
        {
            **VALID,
            "cc": [{"email": "Bob@Example.NET", "name": "Bob"}],
            "html": "<p>Hi</p>",
            "tags": ["welcome", "welcome"],
            "metadata": {"user": "42"},
            "headers": {"X-Campaign": "spring"},
        },
    )
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    message_id = uuid.UUID(body["id"])
    assert body["status"] == "queued"
    assert body["from"] == {"email": "noreply@example.com", "name": None}
    assert body["to"] == [{"email": "ada@example.net", "name": None}]
    assert body["cc"] == [{"email": "Bob@example.net", "name": "Bob"}]
    assert body["tags"] == ["welcome"]
    assert body["metadata"] == {"user": "42"}
    assert body["priority"] == "high"
    assert body["message_id_header"] == f"<{message_id.hex}@example.com>"
    assert body["attempts"] == []
    assert [e["type"] for e in body["events"]] == ["accepted"]

    # Released after the commit, ids only, on the transactional lane.
    assert published.jobs == [Job("messages.send", "transactional", {"ids": [str(message_id)]})]


async def test_get_returns_own_message(client: httpx.AsyncClient, tenant: Tenant) -> None:
    created = (await post(client, tenant, VALID)).json()
    response = await client.get(f"/v1/messages/{created['id']}", headers=bearer(tenant))
    assert response.status_code == 200
    assert response.json() == created


# -- 422 ---------------------------------------------------------------------------------------


async def test_invalid_json(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.post(
        "/v1/messages",
        content=b'{"to": ["ada@example.net"], "subject": ',
        headers={**bearer(tenant), "Content-Type": "application/json"},
    )
    # 400, not 422: a body that cannot be read has no content to be invalid.
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    msg = "the body is not valid JSON: Expecting value: line 1 column 40 (char 39)"
    assert response.json() == problem(
        400, "Bad Request", msg, "bad-request", errors=[{"loc": ["body"], "msg": msg}]
    )


async def test_unknown_field(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await post(client, tenant, {**VALID, "bodyy": "typo"})
    assert response.status_code == 422
    assert response.json() == problem(
        422,
        "Unprocessable Content",
        "body.bodyy: Extra inputs are not permitted",
        "validation",
        errors=[{"loc": ["body", "bodyy"], "msg": "Extra inputs are not permitted"}],
    )


async def test_bad_address(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await post(client, tenant, {**VALID, "to": ["ada@@example.net"]})
    assert response.status_code == 422
    body = response.json()
    assert body["errors"] == [
        {
            "loc": ["body", "to", 0, "email"],
            "msg": "'ada@@example.net' is not a valid email address: "
            "The part after the @-sign contains invalid characters: '@'.",
        }
    ]


async def test_non_ascii_local_part_is_refused(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await post(client, tenant, {**VALID, "to": ["zoë@example.net"]})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "to", 0, "email"],
            "msg": "'zoë@example.net' is not a valid email address: "
            "Internationalized characters before the @-sign are not supported: 'ë'.",
        }
    ]


async def test_51_recipients(client: httpx.AsyncClient, tenant: Tenant) -> None:
    to = [f"user{i}@example.net" for i in range(40)]
    cc = [f"copy{i}@example.net" for i in range(11)]
    response = await post(client, tenant, {**VALID, "to": to, "cc": cc})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["body"], "msg": "at most 50 recipients (to, cc and bcc together); got 51"}
    ]


async def test_50_recipients_are_fine(client: httpx.AsyncClient, tenant: Tenant) -> None:
    to = [f"user{i}@example.net" for i in range(50)]
    assert (await post(client, tenant, {**VALID, "to": to})).status_code == 202


@pytest.mark.parametrize(
    ("subject", "found"),
    [("Hi\r\nBcc: victim@example.org", "U+000D"), ("Hi\nX: y", "U+000A"), ("Hi\rthere", "U+000D")],
)
async def test_crlf_in_subject(
    client: httpx.AsyncClient, tenant: Tenant, subject: str, found: str
) -> None:
    response = await post(client, tenant, {**VALID, "subject": subject})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "subject"],
            "msg": f"must not contain line breaks or control characters (found {found})",
        }
    ]


async def test_crlf_in_header(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await post(
        client, tenant, {**VALID, "headers": {"X-Ref": "a\r\nBcc: victim@example.org"}}
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "headers", "X-Ref"],
            "msg": "must not contain line breaks or control characters (found U+000D)",
        }
    ]


async def test_crlf_in_display_name(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await post(
        client, tenant, {**VALID, "to": [{"email": "a@example.net", "name": "A\r\nBcc: x@y.z"}]}
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "to", 0, "name"],
            "msg": "must not contain line breaks or control characters (found U+000D)",
        }
    ]


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ({"text": "a\u0000b"}, ["body", "text"]),
        ({"html": "<p>\u0000</p>"}, ["body", "html"]),
        ({"metadata": {"k": "a\u0000"}}, ["body", "metadata", "k"]),
    ],
)
async def test_nul_anywhere_stored_is_422(
    client: httpx.AsyncClient, tenant: Tenant, extra: dict[str, Any], loc: list[str]
) -> None:
    """PostgreSQL stores U+0000 in neither text nor jsonb: refused, never a 500."""
    response = await post(client, tenant, {**VALID, **extra})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"loc": loc, "msg": "must not contain NUL characters"}]


async def test_nul_in_template_variables_is_422(client: httpx.AsyncClient, tenant: Tenant) -> None:
    body = {"to": ["a@example.net"], "template": "password_changed", "variables": {"x": "\u0000"}}
    response = await post(client, tenant, body)
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["body", "variables", "x"], "msg": "must not contain NUL characters"}
    ]


async def test_only_x_headers(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await post(client, tenant, {**VALID, "headers": {"Bcc": "victim@example.org"}})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "headers", "Bcc", "[key]"],
            "msg": "header 'Bcc' is not allowed: only X-* headers may be set",
        }
    ]


async def test_sender_outside_tenant_domains(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await post(client, tenant, {**VALID, "from": "ceo@bank.example"})
    assert response.status_code == 422
    assert response.json() == problem(
        422,
        "Unprocessable Content",
        "sender domain of 'ceo@bank.example' is not one of this tenant's domains",
        "validation",
        errors=[
            {
                "loc": ["body", "from"],
                "msg": "the domain of 'ceo@bank.example' is not one of the tenant's sender "
                "domains (example.com)",
            }
        ],
    )


async def test_needs_text_or_html(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await post(client, tenant, {"to": ["a@example.net"], "subject": "x"})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["body"], "msg": "give text, html or both, or a template"}
    ]


async def test_nothing_is_stored_or_sent_on_422(
    client: httpx.AsyncClient, tenant: Tenant, published: RecordingPublisher
) -> None:
    await post(client, tenant, {**VALID, "from": "ceo@bank.example"})
    listed = await client.get("/v1/messages", headers=bearer(tenant))
    assert listed.json() == {"data": [], "next_cursor": None}
    assert published.jobs == []


# -- 413 ---------------------------------------------------------------------------------------


async def test_body_over_one_mib(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await post(client, tenant, {**VALID, "text": "x" * (1024 * 1024)})
    assert response.status_code == 413
    assert response.json() == problem(
        413,
        "Payload Too Large",
        "the request body is larger than 1048576 bytes",
        "payload-too-large",
    )


async def test_streamed_body_over_one_mib(client: httpx.AsyncClient, tenant: Tenant) -> None:
    """Without a Content-Length the limit is counted while the body streams in."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"to": ["a@example.net"], "subject": "x", "text": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}'

    response = await client.post(
        "/v1/messages",
        content=chunks(),
        headers={**bearer(tenant), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "the request body is larger than 1048576 bytes"


# -- 401 / 403 / 404 ----------------------------------------------------------------------------


async def test_missing_scope(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.post(
        "/v1/messages", json=VALID, headers=bearer(tenant, [scopes.MESSAGES_READ])
    )
    assert response.status_code == 403
    assert response.json() == problem(
        403, "Forbidden", "this token lacks the 'messages:send' scope", "forbidden"
    )


async def test_other_tenants_message_is_not_found(
    client: httpx.AsyncClient, tenant: Tenant, make_tenant: TenantFactory
) -> None:
    other = await make_tenant()
    created = (await post(client, other, VALID)).json()
    response = await client.get(f"/v1/messages/{created['id']}", headers=bearer(tenant))
    assert response.status_code == 404
    assert response.json() == problem(
        404, "Not Found", f"message {created['id']} does not exist", "not-found"
    )


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


# -- list ----------------------------------------------------------------------------------------


async def test_list_filters_and_pages(
    client: httpx.AsyncClient, tenant: Tenant, make_tenant: TenantFactory
) -> None:
    ids = []
    for i in range(5):
        body = {
            **VALID,
            "to": [f"user{i % 2}@example.net"],
            "tags": ["even" if i % 2 == 0 else "odd"],
        }
        ids.append((await post(client, tenant, body)).json()["id"])
    other = await make_tenant()
    await post(client, other, VALID)
    headers = bearer(tenant)

    first = (await client.get("/v1/messages?limit=2", headers=headers)).json()
    assert [m["id"] for m in first["data"]] == ids[::-1][:2]
    second = (
        await client.get(f"/v1/messages?limit=2&cursor={first['next_cursor']}", headers=headers)
    ).json()
    assert [m["id"] for m in second["data"]] == ids[::-1][2:4]
    third = (
        await client.get(f"/v1/messages?limit=2&cursor={second['next_cursor']}", headers=headers)
    ).json()
    assert [m["id"] for m in third["data"]] == ids[:1]
    assert third["next_cursor"] is None

    by_tag = (await client.get("/v1/messages?tag=even", headers=headers)).json()
    assert [m["id"] for m in by_tag["data"]] == [ids[4], ids[2], ids[0]]
    by_to = (await client.get("/v1/messages?to=USER1@example.net", headers=headers)).json()
    assert [m["id"] for m in by_to["data"]] == [ids[3], ids[1]]
    by_status = (await client.get("/v1/messages?status=sent", headers=headers)).json()
    assert by_status["data"] == []
    queued = (await client.get("/v1/messages?status=queued", headers=headers)).json()
    assert len(queued["data"]) == 5


async def test_list_rejects_a_forged_cursor(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get("/v1/messages?cursor=%%%", headers=bearer(tenant))
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["query", "cursor"], "msg": "cursor is not one this API issued"}
    ]


async def test_list_rejects_unknown_status(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get("/v1/messages?status=nope", headers=bearer(tenant))
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["loc"] == ["query", "status"]
