"""The /v1/templates routes: parse, authorize, call the service, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from mailsvc.auth.dependencies import ReadScope, TemplatesWriteScope
from mailsvc.db import DbSession
from mailsvc.errors import problem_responses
from mailsvc.routing import ApiRoute
from mailsvc.templates import schemas, service

router = APIRouter(prefix="/v1/templates", tags=["templates"], route_class=ApiRoute)

TemplateName = Annotated[
    str,
    Path(
        pattern=schemas.NAME_PATTERN,
        description="1-64 of a-z 0-9 _ . -, starting with a letter or digit.",
    ),
]


@router.get("", operation_id="listTemplates")
async def list_templates(session: DbSession, principal: ReadScope) -> schemas.TemplateList:
    """The built-in templates and the tenant's own, by name."""
    return await service.list_templates(session, principal.tenant_id)


@router.put("/{name}", operation_id="putTemplate")
async def put_template(
    name: TemplateName,
    body: schemas.TemplateCreate,
    session: DbSession,
    principal: TemplatesWriteScope,
) -> schemas.Template:
    """Create or replace one of the tenant's templates, or override a built-in."""
    return await service.put_template(session, principal.tenant_id, name, body)


@router.post("/{name}/preview", operation_id="previewTemplate", responses=problem_responses(404))
async def preview_template(
    name: str,
    body: schemas.TemplatePreviewRequest,
    session: DbSession,
    principal: ReadScope,
) -> schemas.TemplatePreview:
    """Render a template with the given variables, without sending anything."""
    return await service.preview(session, principal.tenant, name, body.variables)


links_router = APIRouter(prefix="/v1/links", tags=["templates"], route_class=ApiRoute)


@links_router.post("/verify", operation_id="verifyLink")
async def verify_link(body: schemas.LinkCheck, principal: ReadScope) -> schemas.LinkOwner:
    """Check a link this tenant's email carried (its token) and say which address it was for."""
    return schemas.LinkOwner(email=service.check_link(body.url, tenant_id=principal.tenant_id))
