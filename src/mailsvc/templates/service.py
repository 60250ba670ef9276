"""A tenant's templates: resolving a name, rendering, storing, and rendering in bulk for workers.

A name resolves to the tenant's own template first, else to the built-in of that name.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mailsvc.auth.service import TenantInfo
from mailsvc.errors import FieldError, NotFound, ValidationFailed
from mailsvc.kit.time import Clock, utcnow
from mailsvc.models import Template
from mailsvc.templates import schemas
from mailsvc.templates.builtin import builtin_templates, get_builtin, is_builtin
from mailsvc.templates.engine import (
    CacheKey,
    Rendered,
    TemplateCache,
    TemplateRenderError,
    TemplateSource,
    TemplateSyntaxProblem,
    check_syntax,
    default_cache,
    referenced_names,
)
from mailsvc.templates.links import InvalidLink, verify_link
from mailsvc.templates.repository import TemplateRepository, load_templates, source_of

log = logging.getLogger(__name__)

T = TypeVar("T")
Loc = tuple[str | int, ...]
RenderRequest = tuple[uuid.UUID, str, Mapping[str, Any]]


def cache_key(tenant_id: uuid.UUID, source: TemplateSource) -> CacheKey:
    """Built-ins are compiled once for every tenant; a tenant's own, once per tenant."""
    return (None if source.builtin else tenant_id, source.name)


async def find(session: AsyncSession, tenant_id: uuid.UUID, name: str) -> TemplateSource | None:
    """The tenant's own template called `name`, else the built-in, else None."""
    row = await TemplateRepository(session).get(tenant_id, name)
    return source_of(row) if row is not None else get_builtin(name)


async def resolve(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, *, loc: Loc = ("body", "template")
) -> TemplateSource:
    """Like find, for a name given in a request body: an unknown one is a 422 at `loc`."""
    source = await find(session, tenant_id, name)
    if source is None:
        message = f"unknown template {name!r}"
        raise ValidationFailed(message, errors=[FieldError(loc, message)])
    return source


# A render is tenants' code, running for up to sandbox.RENDER_TIME_LIMIT: never on the event
# loop, where it would hold up every other request of every tenant (/healthz included), and at
# most a few at a time in one process, so that heavy templates queue rather than crowd the GIL.
RENDER_THREADS = 4
_render_limiters: dict[int, anyio.CapacityLimiter] = {}


async def off_the_loop(work: Callable[[], T]) -> T:
    """`work()` (a render or a compile) on a worker thread, RENDER_THREADS at once at most."""
    loop = id(asyncio.get_running_loop())
    limiter = _render_limiters.get(loop)
    if limiter is None:
        limiter = _render_limiters[loop] = anyio.CapacityLimiter(RENDER_THREADS)
    return await anyio.to_thread.run_sync(work, limiter=limiter)


def render_source(
    tenant_id: uuid.UUID,
    source: TemplateSource,
    variables: Mapping[str, Any],
    *,
    loc: Loc = ("body",),
    variables_loc: Loc | None = None,
    cache: TemplateCache = default_cache,
) -> Rendered:
    """The rendered template; ValidationFailed at `variables_loc` (default (*loc, "variables"))
    for a missing variable, at (*loc, "template") for anything else."""
    try:
        compiled = cache.compile(source, cache_key=cache_key(tenant_id, source))
    except TemplateSyntaxProblem as exc:
        message = f"template {source.name!r} does not compile: {exc}"
        raise ValidationFailed(message, errors=[FieldError((*loc, "template"), message)]) from exc
    try:
        return compiled.render(variables, tenant_id=tenant_id)
    except TemplateRenderError as exc:
        where = (
            (variables_loc or (*loc, "variables")) if exc.missing_variable else (*loc, "template")
        )
        message = f"template {source.name!r}, {exc.field}: {exc.reason}"
        raise ValidationFailed(message, errors=[FieldError(where, message)]) from exc


async def render(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    name: str,
    variables: Mapping[str, Any],
    *,
    loc: Loc = ("body",),
) -> Rendered:
    """Template `name` rendered for a request: every failure is a 422 naming its field."""
    source = await resolve(session, tenant_id, name, loc=(*loc, "template"))
    return await off_the_loop(partial(render_source, tenant_id, source, variables, loc=loc))


class TemplateLookup:
    """One tenant's templates for the length of a request: each name is looked up once."""

    def __init__(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        *,
        variables_loc: Loc | None = None,  # where the caller's variables are, for errors
    ) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.variables_loc = variables_loc
        self._sources: dict[str, TemplateSource] = {}

    async def source(self, name: str, *, loc: Loc) -> TemplateSource:
        if name not in self._sources:
            self._sources[name] = await resolve(self.session, self.tenant_id, name, loc=loc)
        return self._sources[name]

    async def render(
        self, source: TemplateSource, variables: Mapping[str, Any], *, loc: Loc
    ) -> Rendered:
        """Render, or a 422: a missing variable names the variables, anything else the template."""
        return await off_the_loop(
            partial(
                render_source,
                self.tenant_id,
                source,
                variables,
                loc=loc,
                variables_loc=self.variables_loc,
            )
        )


def with_defaults(
    variables: Mapping[str, Any], *, tenant_name: str, recipient: Mapping[str, Any]
) -> dict[str, Any]:
    """What every built-in may use, under the caller's own variables: tenant, contact, data."""
    contact = {"email": recipient["email"], "name": recipient.get("name"), "attributes": {}}
    return {"tenant": {"name": tenant_name}, "contact": contact, "data": {}, **variables}


async def preview(
    session: AsyncSession, tenant: TenantInfo, name: str, variables: Mapping[str, Any]
) -> schemas.TemplatePreview:
    """What template `name` renders to; `tenant` and `data` default as they do when sending."""
    source = await find(session, tenant.id, name)
    if source is None:
        raise NotFound(f"no template named {name!r}")
    context = {"tenant": {"name": tenant.name}, "data": {}, **variables}
    rendered = await off_the_loop(partial(render_source, tenant.id, source, context, loc=("body",)))
    return schemas.TemplatePreview(subject=rendered.subject, text=rendered.text, html=rendered.html)


async def put_template(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, body: schemas.TemplateCreate
) -> schemas.Template:
    """Store the tenant's template `name` (a new version if it exists) once every part compiles."""
    candidate = TemplateSource(
        name=name,
        subject=body.subject,
        text=body.text,
        html=body.html,
        transactional=body.transactional,
        version=0,
        builtin=False,
    )
    problems = await off_the_loop(partial(check_syntax, candidate))
    if problems:
        errors = [
            FieldError(("body", p.field), f"line {p.line}: {p.reason}" if p.line else p.reason)
            for p in problems
        ]
        detail = "; ".join(f"{e.loc[-1]}: {e.msg}" for e in errors)
        raise ValidationFailed(f"the template does not compile: {detail}", errors=errors)
    row = await TemplateRepository(session).upsert(
        tenant_id,
        name,
        subject=body.subject,
        text_body=body.text,
        html_body=body.html,
        transactional=body.transactional,
    )
    return _present(row)


def _present(row: Template) -> schemas.Template:
    builtin = is_builtin(row.name)
    return schemas.Template(
        name=row.name,
        subject=row.subject,
        text=row.text_body,
        html=row.html_body,
        transactional=row.transactional,
        version=row.version,
        builtin=builtin,
        overridden=builtin,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def list_templates(session: AsyncSession, tenant_id: uuid.UUID) -> schemas.TemplateList:
    """The built-ins, each replaced by the tenant's override if it has one, and its own; by name."""
    own = {row.name: row for row in await TemplateRepository(session).list(tenant_id)}
    summaries = []
    for name, builtin in builtin_templates().items():
        row = own.pop(name, None)
        if row is None:
            summaries.append(
                schemas.TemplateSummary(
                    name=name,
                    subject=builtin.subject,
                    builtin=True,
                    overridden=False,
                    transactional=builtin.transactional,
                    version=builtin.version,
                    variables=list(builtin.variables),
                    description=builtin.description,
                    updated_at=None,
                )
            )
        else:
            summaries.append(_summary(row, builtin=builtin))
    summaries.extend(_summary(row, builtin=None) for row in own.values())
    return schemas.TemplateList(data=sorted(summaries, key=lambda s: s.name))


def _summary(row: Template, *, builtin: TemplateSource | None) -> schemas.TemplateSummary:
    return schemas.TemplateSummary(
        name=row.name,
        subject=row.subject,
        builtin=builtin is not None,
        overridden=builtin is not None,
        transactional=row.transactional,
        version=row.version,
        variables=list(referenced_names(source_of(row))),
        description=builtin.description if builtin is not None else "",
        updated_at=row.updated_at,
    )


class TemplateRenderer:
    """Renders the templates of a batch of messages for a worker: one query, no exceptions.

    Each result is the Rendered message or the TemplateRenderError that explains why it cannot
    be sent (a permanent failure for that message alone).
    """

    def __init__(self, cache: TemplateCache | None = None) -> None:
        self.cache = cache if cache is not None else default_cache

    async def render_many(
        self, connection: AsyncConnection | AsyncSession, requests: Sequence[RenderRequest]
    ) -> list[Rendered | TemplateRenderError]:
        own = await load_templates(
            connection, [(tenant_id, name) for tenant_id, name, _ in requests]
        )
        # One thread hop for the batch: the worker's event loop keeps other sends moving.
        return await off_the_loop(
            lambda: [
                self.render_one(tenant_id, name, own.get((tenant_id, name)), variables)
                for tenant_id, name, variables in requests
            ]
        )

    def render_one(
        self,
        tenant_id: uuid.UUID,
        name: str,
        own: TemplateSource | None,
        variables: Mapping[str, Any],
    ) -> Rendered | TemplateRenderError:
        """Template `name` with the tenant's own source `own` (None: the built-in, if any)."""
        source = own or get_builtin(name)
        if source is None:
            return TemplateRenderError("template", f"unknown template {name!r}")
        try:
            compiled = self.cache.compile(source, cache_key=cache_key(tenant_id, source))
        except TemplateSyntaxProblem as exc:
            return TemplateRenderError(exc.field, f"the template does not compile: {exc}")
        except Exception as exc:  # one broken template must not fail the batch
            log.exception("compiling template %r failed", name, extra={"tenant": str(tenant_id)})
            return TemplateRenderError("template", f"{type(exc).__name__}: {exc}")
        try:
            return compiled.render(variables, tenant_id=tenant_id)
        except TemplateRenderError as exc:
            return exc


def check_link(url: str, *, tenant_id: uuid.UUID, clock: Clock = utcnow) -> str:
    """The address this tenant signed a link for; a 422 naming the url if another tenant signed
    it, or it is forged or expired."""
    try:
        return verify_link(url, tenant_id=tenant_id, now=clock())
    except InvalidLink as exc:
        problem = f"the link is not valid: {exc}"
        raise ValidationFailed(problem, errors=[FieldError(("body", "url"), problem)]) from exc
