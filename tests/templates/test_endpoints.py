"""GET/PUT /v1/templates and POST /v1/templates/{name}/preview: exact answers, every refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from mailsvc.auth import scopes
from mailsvc.models import Tenant
from mailsvc.templates.builtin import BUILTIN_NAMES, sample_variables
from mailsvc.templates.links import sign_link
from tests.support.api import REQUEST_ID
from tests.support.auth import TenantFactory, bearer

INVOICE = {
    "subject": "Invoice {{ data.number }} from {{ tenant.name }}",
    "text": "Hi {{ contact.name or 'there' }}, you owe {{ data.total }}.",
    "html": "<p>You owe <b>{{ data.total }}</b>.</p>",
    "transactional": True,
}


async def put(
    client: httpx.AsyncClient, tenant: Tenant, name: str, body: Any, **kwargs: Any
) -> httpx.Response:
    headers = kwargs.pop("headers", None) or bearer(tenant)
    return await client.put(f"/v1/templates/{name}", json=body, headers=headers, **kwargs)


async def preview(
    client: httpx.AsyncClient, tenant: Tenant, name: str, variables: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/templates/{name}/preview", json={"variables": variables}, headers=bearer(tenant)
    )


def validation(detail: str, errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "https://mailsvc.dev/problems/validation",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": detail,
        "errors": errors,
        "request_id": REQUEST_ID,
    }


# -- list -------------------------------------------------------------------------------------


async def test_list_has_every_built_in(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get("/v1/templates", headers=bearer(tenant, [scopes.MESSAGES_READ]))

    assert response.status_code == 200
    data = response.json()["data"]
    assert [t["name"] for t in data] == sorted(BUILTIN_NAMES)
    confirmation = next(t for t in data if t["name"] == "account_confirmation")
    assert confirmation == {
        "name": "account_confirmation",
        "subject": "Confirm your email address for {{ tenant.name }}",
        "builtin": True,
        "overridden": False,
        "transactional": True,
        "version": 1,
        "variables": ["contact.email", "contact.name", "tenant.name", "data.confirm_url"],
        "description": confirmation["description"],
        "updated_at": None,
    }
    assert "signed link" in confirmation["description"]
    assert {t["name"] for t in data if not t["transactional"]} == {
        "birthday",
        "marketing",
        "weekly_report",
    }


async def test_list_shows_overrides_and_own_templates(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    assert (await put(client, tenant, "invoice", INVOICE)).status_code == 200
    assert (
        await put(client, tenant, "welcome", {"subject": "Yo", "text": "Hi"})
    ).status_code == 200

    data = (await client.get("/v1/templates", headers=bearer(tenant))).json()["data"]

    assert [t["name"] for t in data] == sorted([*BUILTIN_NAMES, "invoice"])
    invoice = next(t for t in data if t["name"] == "invoice")
    assert {k: v for k, v in invoice.items() if k != "updated_at"} == {
        "name": "invoice",
        "subject": INVOICE["subject"],
        "builtin": False,
        "overridden": False,
        "transactional": True,
        "version": 1,
        "variables": ["contact", "data", "tenant"],
        "description": "",
    }
    assert datetime.fromisoformat(invoice["updated_at"]).tzinfo is not None
    welcome = next(t for t in data if t["name"] == "welcome")
    assert (welcome["subject"], welcome["builtin"], welcome["overridden"]) == ("Yo", True, True)
    assert welcome["description"].startswith("Greets a new user")


# -- put --------------------------------------------------------------------------------------


async def test_put_creates_then_a_second_put_bumps_the_version(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    first = await put(client, tenant, "invoice", INVOICE)

    assert first.status_code == 200
    body = first.json()
    assert {k: v for k, v in body.items() if k not in ("created_at", "updated_at")} == {
        "name": "invoice",
        "subject": INVOICE["subject"],
        "text": INVOICE["text"],
        "html": INVOICE["html"],
        "transactional": True,
        "version": 1,
        "builtin": False,
        "overridden": False,
    }

    second = await put(client, tenant, "invoice", {"subject": "Invoice", "html": "<p>x</p>"})

    assert second.status_code == 200
    again = second.json()
    assert (again["version"], again["subject"], again["text"], again["html"]) == (
        2,
        "Invoice",
        None,
        "<p>x</p>",
    )
    assert again["created_at"] == body["created_at"]
    assert again["updated_at"] >= body["updated_at"]


async def test_override_of_a_built_in_is_used_by_preview(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    before = await preview(client, tenant, "welcome", sample_variables("welcome"))
    assert before.json()["subject"] == "Welcome to Analytical Engines"

    response = await put(
        client,
        tenant,
        "welcome",
        {
            "subject": "Glad you're here, {{ contact.name }}",
            "text": "Welcome aboard.",
            "transactional": False,
        },
    )
    assert response.status_code == 200
    assert (response.json()["builtin"], response.json()["overridden"]) == (True, True)

    after = await preview(client, tenant, "welcome", {"contact": {"name": "Ada"}})

    assert after.status_code == 200
    assert after.json() == {
        "subject": "Glad you're here, Ada",
        "text": "Welcome aboard.",
        "html": None,
    }


async def test_put_syntax_errors_name_the_field_and_line(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await put(
        client,
        tenant,
        "invoice",
        {"subject": "Invoice {{ n", "text": "ok", "html": "<p>\n  {{ data.total }\n</p>"},
    )

    assert response.status_code == 422
    subject_msg = "line 1: unexpected end of template, expected 'end of print statement'."
    html_msg = "line 2: unexpected '}'"
    assert response.json() == validation(
        f"the template does not compile: subject: {subject_msg}; html: {html_msg}",
        [
            {"loc": ["body", "subject"], "msg": subject_msg},
            {"loc": ["body", "html"], "msg": html_msg},
        ],
    )
    listed = (await client.get("/v1/templates", headers=bearer(tenant))).json()["data"]
    assert "invoice" not in [t["name"] for t in listed]


async def test_put_unknown_filter_is_a_syntax_error(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await put(client, tenant, "invoice", {"subject": "x", "text": "\n{{ x|money }}"})

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["body", "text"], "msg": "line 2: No filter named 'money'."}
    ]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"subject": "x"}, [{"loc": ["body"], "msg": "give text, html or both"}]),
        ({"text": "x"}, [{"loc": ["body", "subject"], "msg": "Field required"}]),
        (
            {"subject": "", "text": "x"},
            [{"loc": ["body", "subject"], "msg": "String should have at least 1 character"}],
        ),
        (
            {"subject": "s" * 999, "text": "x"},
            [{"loc": ["body", "subject"], "msg": "String should have at most 998 characters"}],
        ),
        (
            {"subject": "x", "text": "é" * (256 * 1024 + 1)},
            [{"loc": ["body", "text"], "msg": "must be at most 512 KiB (UTF-8)"}],
        ),
        (
            {"subject": "x", "html": "a\x00b"},
            [{"loc": ["body", "html"], "msg": "must not contain NUL characters"}],
        ),
        (
            {"subject": "x", "text": "y", "priority": "high"},
            [{"loc": ["body", "priority"], "msg": "Extra inputs are not permitted"}],
        ),
    ],
)
async def test_put_refuses_invalid_bodies(
    client: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any], errors: list[Any]
) -> None:
    response = await put(client, tenant, "invoice", body)

    assert response.status_code == 422
    assert response.json()["errors"] == errors


@pytest.mark.parametrize("name", ["Invoice", "-invoice", "in voice", "a" * 65, "inv%C3%A9"])
async def test_put_refuses_bad_names(client: httpx.AsyncClient, tenant: Tenant, name: str) -> None:
    response = await put(client, tenant, name, INVOICE)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["path", "name"]


async def test_put_accepts_names_up_to_64(client: httpx.AsyncClient, tenant: Tenant) -> None:
    name = "0" + "a_b.c-" * 10 + "xyz"
    assert len(name) == 64

    assert (await put(client, tenant, name, INVOICE)).status_code == 200


# -- preview ----------------------------------------------------------------------------------


async def test_preview_renders_with_autoescaped_html(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await put(client, tenant, "invoice", INVOICE)

    response = await preview(
        client,
        tenant,
        "invoice",
        {"contact": {"name": None}, "data": {"number": 7, "total": "<€9.99>"}},
    )

    assert response.status_code == 200
    assert response.json() == {
        "subject": f"Invoice 7 from {tenant.name}",
        "text": "Hi there, you owe <€9.99>.",
        "html": "<p>You owe <b>&lt;€9.99&gt;</b>.</p>",
    }


async def test_preview_variables_override_the_defaults(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await preview(client, tenant, "welcome", {"contact": {"name": None}})
    assert response.json()["subject"] == f"Welcome to {tenant.name}"

    response = await preview(
        client, tenant, "welcome", {"contact": {"name": None}, "tenant": {"name": "Acme"}}
    )
    assert response.json()["subject"] == "Welcome to Acme"
    assert response.json()["text"].startswith("Hi there,\n\nWelcome to Acme!")


@pytest.mark.parametrize("name", BUILTIN_NAMES)
async def test_preview_every_built_in(client: httpx.AsyncClient, tenant: Tenant, name: str) -> None:
    response = await preview(client, tenant, name, sample_variables(name))

    assert response.status_code == 200
    body = response.json()
    assert body["subject"]
    assert body["text"]
    assert body["html"].startswith("<!DOCTYPE html>")


async def test_preview_missing_variable_is_a_422_naming_it(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await put(client, tenant, "invoice", INVOICE)

    response = await preview(
        client, tenant, "invoice", {"data": {"number": 7}, "contact": {"name": "Ada"}}
    )

    assert response.status_code == 422
    msg = (
        "template 'invoice', text: missing variable data.total: 'dict object' has no attribute "
        "'total' (line 1: Hi {{ contact.name or 'there' }}, you owe {{ data.total }}.)"
    )
    assert response.json() == validation(msg, [{"loc": ["body", "variables"], "msg": msg}])


async def test_preview_missing_nested_variable_of_a_built_in(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    variables = sample_variables("account_confirmation")
    variables["data"] = {}

    response = await preview(client, tenant, "account_confirmation", variables)

    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["loc"] == ["body", "variables"]
    assert error["msg"].startswith(
        "template 'account_confirmation', text: missing variable data.confirm_url: "
        "'dict object' has no attribute 'confirm_url' (line 1: "
    )


async def test_preview_unknown_is_404(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await preview(client, tenant, "nope", {})

    assert response.status_code == 404
    assert response.json() == {
        "type": "https://mailsvc.dev/problems/not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "no template named 'nope'",
        "request_id": REQUEST_ID,
    }


async def test_preview_sandbox_escape_is_a_422_not_a_500(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await put(client, tenant, "sneaky", {"subject": "x", "text": "{{ ''.__class__.__mro__ }}"})

    response = await preview(client, tenant, "sneaky", {})

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "template"],
            "msg": "template 'sneaky', text: not allowed in a template: access to attribute "
            "'__class__' of 'str' object is unsafe. (line 1: {{ ''.__class__.__mro__ }})",
        }
    ]


async def test_preview_refuses_extra_fields(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.post(
        "/v1/templates/welcome/preview",
        json={"variables": {}, "to": "x@example.net"},
        headers=bearer(tenant),
    )

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["body", "to"], "msg": "Extra inputs are not permitted"}
    ]


# -- authorization and tenancy ----------------------------------------------------------------


async def test_scopes(client: httpx.AsyncClient, tenant: Tenant) -> None:
    read_only = bearer(tenant, [scopes.MESSAGES_READ])
    write_only = bearer(tenant, [scopes.TEMPLATES_WRITE])

    refused = await put(client, tenant, "invoice", INVOICE, headers=read_only)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "this token lacks the 'templates:write' scope"
    assert (await client.get("/v1/templates", headers=write_only)).status_code == 403
    previewed = await client.post(
        "/v1/templates/welcome/preview", json={"variables": {}}, headers=write_only
    )
    assert previewed.status_code == 403
    assert (await client.get("/v1/templates")).status_code == 401
    assert (await put(client, tenant, "invoice", INVOICE, headers=write_only)).status_code == 200


async def test_another_tenant_cannot_see_a_tenants_templates(
    client: httpx.AsyncClient, make_tenant: TenantFactory
) -> None:
    owner, other = await make_tenant(), await make_tenant()
    await put(client, owner, "invoice", INVOICE)
    await put(client, owner, "welcome", {"subject": "Owner's welcome", "text": "x"})

    listed = (await client.get("/v1/templates", headers=bearer(other))).json()["data"]
    assert "invoice" not in [t["name"] for t in listed]
    welcome = next(t for t in listed if t["name"] == "welcome")
    assert (welcome["overridden"], welcome["version"]) == (False, 1)

    assert (await preview(client, other, "invoice", {"data": {}})).status_code == 404
    theirs = await preview(client, other, "welcome", sample_variables("welcome"))
    assert theirs.json()["subject"] == "Welcome to Analytical Engines"

    # The other tenant's own template of the same name is separate, at its own version 1.
    mine = await put(client, other, "invoice", {"subject": "Mine", "text": "x"})
    assert mine.json()["version"] == 1
    owners = await preview(
        client, owner, "invoice", {"contact": {"name": "Ada"}, "data": {"number": 1, "total": 2}}
    )
    assert owners.json() == {
        "subject": f"Invoice 1 from {owner.name}",
        "text": "Hi Ada, you owe 2.",
        "html": "<p>You owe <b>2</b>.</p>",
    }


async def test_verify_link_names_the_address_and_refuses_a_forged_one(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    link = sign_link(
        "https://app.example.com/confirm?next=%2F",
        "ada@example.net",
        tenant_id=tenant.id,
        now=datetime.now(UTC),
        ttl=timedelta(hours=1),
    )
    ok = await client.post("/v1/links/verify", json={"url": link}, headers=bearer(tenant))
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"email": "ada@example.net"}

    forged = link.replace("confirm", "delete")
    bad = await client.post("/v1/links/verify", json={"url": forged}, headers=bearer(tenant))
    assert bad.status_code == 422
    assert bad.json()["errors"] == [
        {
            "loc": ["body", "url"],
            "msg": "the link is not valid: the link's signature does not match",
        }
    ]
    expired = sign_link(
        "https://app.example.com/confirm",
        "ada@example.net",
        tenant_id=tenant.id,
        now=datetime.now(UTC) - timedelta(hours=2),
        ttl=timedelta(hours=1),
    )
    old = await client.post("/v1/links/verify", json={"url": expired}, headers=bearer(tenant))
    assert old.status_code == 422
    assert old.json()["errors"][0]["msg"] == "the link is not valid: the link has expired"


async def test_verify_link_answers_only_for_the_callers_own_links(
    client: httpx.AsyncClient, make_tenant: TenantFactory
) -> None:
    """Tenant B can neither verify A's links nor mint links that A's verify accepts."""
    a, b = await make_tenant(), await make_tenant()
    links = {
        t.name: sign_link(
            "https://app.example.com/confirm",
            "ada@example.net",
            tenant_id=t.id,
            now=datetime.now(UTC),
            ttl=timedelta(hours=1),
        )
        for t in (a, b)
    }
    for caller, owner, status in ((a, a, 200), (b, b, 200), (a, b, 422), (b, a, 422)):
        answer = await client.post(
            "/v1/links/verify", json={"url": links[owner.name]}, headers=bearer(caller)
        )
        assert answer.status_code == status, (caller.name, owner.name, answer.text)
        if status == 422:
            assert answer.json()["errors"] == [
                {
                    "loc": ["body", "url"],
                    "msg": "the link is not valid: the link's signature does not match",
                }
            ]
