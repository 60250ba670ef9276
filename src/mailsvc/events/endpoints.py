"""The /v1/events routes: parse, authorize, call the service, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from mailsvc.auth.dependencies import AdminScope, ReadScope, SendScope
from mailsvc.db import DbSession
from mailsvc.errors import problem_responses
from mailsvc.events import schemas, service
from mailsvc.routing import ApiRoute

router = APIRouter(prefix="/v1/events", tags=["events"], route_class=ApiRoute)

EventTypeName = Annotated[str, Path(pattern=schemas.EVENT_TYPE, max_length=64)]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="recordEvent",
    response_model_by_alias=True,
)
async def record_event(
    body: schemas.EventCreate, session: DbSession, principal: SendScope
) -> schemas.EventAccepted:
    """Record what a user did, and send the emails its type maps to."""
    return schemas.EventAccepted(
        messages=await service.record_event(session, principal.tenant, body)
    )


@router.get("/types", operation_id="listEventTypes")
async def list_event_types(session: DbSession, principal: ReadScope) -> schemas.EventTypeList:
    """The event types this tenant can send, built-in and its own, with their templates."""
    return await service.list_event_types(session, principal.tenant)


@router.put("/types/{event_type}", operation_id="putEventType", responses=problem_responses(403))
async def put_event_type(
    event_type: EventTypeName,
    body: schemas.EventTypeUpdate,
    session: DbSession,
    principal: AdminScope,
) -> schemas.EventType:
    """Change which templates an event type sends, or map a type of the tenant's own."""
    return await service.put_event_type(session, principal.tenant, event_type, body)
