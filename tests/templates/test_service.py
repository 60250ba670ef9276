"""Resolving, rendering and storing templates against real PostgreSQL; render_many for workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mailsvc.auth.service import tenant_info
from mailsvc.errors import FieldError, NotFound, ValidationFailed
from mailsvc.models import Tenant
from mailsvc.templates import schemas, service
from mailsvc.templates.builtin import get_builtin, sample_variables
from mailsvc.templates.engine import Rendered, TemplateCache, TemplateRenderError
from mailsvc.templates.repository import TemplateRepository, load_templates
from mailsvc.templates.schemas import TemplateCreate
from tests.support.auth import TenantFactory


async def put(session: AsyncSession, tenant: Tenant, name: str, **fields: Any) -> schemas.Template:
    body = TemplateCreate.model_validate({"subject": "Hi {{ who }}", "text": "Body", **fields})
    template = await service.put_template(session, tenant.id, name, body)
    await session.commit()
    return template


@pytest.fixture
def statements(connection: AsyncConnection) -> Iterator[list[str]]:
    """Every SQL statement the test's connection runs."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    engine = connection.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


# -- repository -----------------------------------------------------------------------------


async def test_upsert_creates_then_bumps_the_version(session: AsyncSession, tenant: Tenant) -> None:
    repo = TemplateRepository(session)

    first = await repo.upsert(
        tenant.id, "invoice", subject="S1", text_body="T1", html_body=None, transactional=True
    )
    created_at = first.created_at
    second = await repo.upsert(
        tenant.id, "invoice", subject="S2", text_body=None, html_body="H2", transactional=False
    )

    assert second.id == first.id
    assert (second.version, second.subject, second.text_body, second.html_body) == (
        2,
        "S2",
        None,
        "H2",
    )
    assert second.transactional is False
    assert second.created_at == created_at
    assert second.updated_at >= created_at
    assert [t.name for t in await repo.list(tenant.id)] == ["invoice"]
    assert (await repo.get(tenant.id, "invoice")) is second
    assert await repo.get(uuid.uuid4(), "invoice") is None


async def test_load_templates_in_one_query(
    session: AsyncSession,
    connection: AsyncConnection,
    make_tenant: TenantFactory,
    statements: list[str],
) -> None:
    a, b = await make_tenant(), await make_tenant()
    await put(session, a, "invoice", subject="A invoice")
    await put(session, a, "welcome", subject="A welcome")
    await put(session, b, "invoice", subject="B invoice")
    statements.clear()

    loaded = await load_templates(
        connection,
        [(a.id, "invoice"), (a.id, "welcome"), (b.id, "invoice"), (b.id, "welcome"), (a.id, "x")],
    )

    assert len(statements) == 1
    assert {key: s.subject for key, s in loaded.items()} == {
        (a.id, "invoice"): "A invoice",
        (a.id, "welcome"): "A welcome",
        (b.id, "invoice"): "B invoice",
    }
    assert all(not s.builtin and s.version == 1 for s in loaded.values())
    assert await load_templates(connection, []) == {}


# -- resolve and render ---------------------------------------------------------------------


async def test_resolve_prefers_the_tenants_own(session: AsyncSession, tenant: Tenant) -> None:
    assert await service.resolve(session, tenant.id, "welcome") == get_builtin("welcome")

    await put(session, tenant, "welcome", subject="Our own welcome")

    own = await service.resolve(session, tenant.id, "welcome")
    assert (own.subject, own.builtin, own.version) == ("Our own welcome", False, 1)


async def test_resolve_unknown_is_a_422_at_loc(session: AsyncSession, tenant: Tenant) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await service.resolve(session, tenant.id, "nope", loc=("body", "messages", 3, "template"))

    assert caught.value.message == "unknown template 'nope'"
    assert caught.value.errors == [
        FieldError(("body", "messages", 3, "template"), "unknown template 'nope'")
    ]


async def test_render_names_the_missing_variable(session: AsyncSession, tenant: Tenant) -> None:
    variables = sample_variables("account_confirmation")
    del variables["data"]["confirm_url"]

    with pytest.raises(ValidationFailed) as caught:
        await service.render(session, tenant.id, "account_confirmation", variables)

    (error,) = caught.value.errors
    assert error.loc == ("body", "variables")
    assert error.msg.startswith(
        "template 'account_confirmation', text: missing variable data.confirm_url: "
        "'dict object' has no attribute 'confirm_url' (line 1: "
    )
    assert caught.value.message == error.msg


async def test_render_unknown_template(session: AsyncSession, tenant: Tenant) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await service.render(session, tenant.id, "nope", {}, loc=("body", "messages", 0))

    assert caught.value.errors == [
        FieldError(("body", "messages", 0, "template"), "unknown template 'nope'")
    ]


async def test_render_sandbox_violation_is_the_templates_fault(
    session: AsyncSession, tenant: Tenant
) -> None:
    await put(session, tenant, "sneaky", text="{{ ''.__class__ }}")

    with pytest.raises(ValidationFailed) as caught:
        await service.render(session, tenant.id, "sneaky", {"who": "x"})

    assert caught.value.errors[0].loc == ("body", "template")
    assert "not allowed in a template" in caught.value.errors[0].msg


async def test_preview_of_an_unknown_name_is_not_found(
    session: AsyncSession, tenant: Tenant
) -> None:
    with pytest.raises(NotFound, match="no template named 'nope'"):
        await service.preview(session, tenant_info(tenant), "nope", {})


# -- render_many ----------------------------------------------------------------------------


async def test_render_many_one_bad_request_among_good_ones(
    session: AsyncSession,
    connection: AsyncConnection,
    make_tenant: TenantFactory,
    statements: list[str],
) -> None:
    a, b = await make_tenant(), await make_tenant()
    await put(session, a, "invoice", subject="Invoice {{ data.number }}", text="Total {{ total }}")
    await put(session, a, "welcome", subject="A says hi to {{ contact.name }}", text="Hi")
    statements.clear()
    renderer = service.TemplateRenderer(cache=TemplateCache())

    results = await renderer.render_many(
        connection,
        [
            (a.id, "invoice", {"data": {"number": 7}, "total": "9.99"}),
            (a.id, "invoice", {"data": {}}),  # missing variables
            (a.id, "welcome", {"contact": {"name": "Ada"}}),  # the override
            (b.id, "welcome", sample_variables("welcome")),  # the built-in
            (b.id, "invoice", {}),  # a's template is not b's
            (a.id, "birthday", sample_variables("birthday")),
        ],
    )

    assert len(statements) == 1
    assert results[0] == Rendered("Invoice 7", "Total 9.99", None)
    assert isinstance(results[1], TemplateRenderError)
    assert results[1].field == "subject"
    assert results[1].variable == "data.number"
    assert results[2] == Rendered("A says hi to Ada", "Hi", None)
    assert isinstance(results[3], Rendered)
    assert results[3].subject == "Welcome to Analytical Engines"
    assert isinstance(results[4], TemplateRenderError)
    assert (results[4].field, results[4].reason) == ("template", "unknown template 'invoice'")
    assert isinstance(results[5], Rendered)
    assert results[5].subject == "Happy birthday, Ada Lovelace!"
    # Compiled once each: the built-ins are shared between tenants.
    assert (renderer.cache.misses, renderer.cache.hits) == (4, 1)


async def test_render_many_sees_a_new_version(
    session: AsyncSession, connection: AsyncConnection, tenant: Tenant
) -> None:
    renderer = service.TemplateRenderer(cache=TemplateCache())
    await put(session, tenant, "invoice", subject="Old")
    request: list[service.RenderRequest] = [(tenant.id, "invoice", {})]
    assert (await renderer.render_many(connection, request))[0] == Rendered("Old", "Body", None)

    await put(session, tenant, "invoice", subject="New")

    assert (await renderer.render_many(connection, request))[0] == Rendered("New", "Body", None)
    assert renderer.cache.misses == 2


async def test_render_many_with_nothing_to_do(connection: AsyncConnection) -> None:
    assert await service.TemplateRenderer().render_many(connection, []) == []
