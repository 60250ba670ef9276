"""The /v1/messages routes: parse, authorize, call the service, return."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from mailsvc.auth.dependencies import ReadScope, SendScope
from mailsvc.db import DbSession
from mailsvc.errors import problem_responses
from mailsvc.kit.pagination import cursor_query
from mailsvc.messages import schemas, service
from mailsvc.messages.repository import ListFilters
from mailsvc.models import MessageStatus
from mailsvc.routing import ApiRoute, AppSettings

router = APIRouter(prefix="/v1/messages", tags=["messages"], route_class=ApiRoute)

StatusFilter = Annotated[MessageStatus | None, Query(description="Only messages in this status.")]


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a request safely for 24 hours: the same key and body return the "
        "original message with 200; the same key with another body gets 409.",
    ),
]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="sendMessage",
    response_model_by_alias=True,
    responses={
        200: {
            "model": schemas.Message,
            "description": "A replay: the message an earlier request with this key made",
        },
        **problem_responses(409),
    },
)
async def send_message(
    body: schemas.MessageCreate,
    session: DbSession,
    principal: SendScope,
    response: Response,
    config: AppSettings,
    idempotency_key: IdempotencyKey = None,
) -> schemas.Message:
    """Accept one email for delivery."""
    accepted = await service.send_message(
        session,
        principal.tenant,
        body,
        idempotency_key=idempotency_key,
        key_ttl=timedelta(hours=config.idempotency_ttl_hours),
    )
    if not accepted.created:
        response.status_code = status.HTTP_200_OK
    return accepted.message


@router.post(
    "/batch",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="sendMessageBatch",
    response_model_by_alias=True,
)
async def send_batch(
    body: schemas.MessageBatchCreate, session: DbSession, principal: SendScope
) -> schemas.MessageBatch:
    """Accept up to 500 emails at once, for the bulk lane; if one is invalid, none is accepted."""
    return schemas.MessageBatch(
        data=await service.send_batch(session, principal.tenant, body.messages)
    )


@router.get("/{message_id}", operation_id="getMessage", responses=problem_responses(404))
async def get_message(
    message_id: uuid.UUID, session: DbSession, principal: ReadScope
) -> schemas.Message:
    """One message with its attempts and events."""
    return await service.get_message(session, principal.tenant, message_id)


@router.post(
    "/{message_id}/cancel",
    operation_id="cancelMessage",
    response_model_by_alias=True,
    responses=problem_responses(404, 409),
)
async def cancel_message(
    message_id: uuid.UUID, session: DbSession, principal: SendScope
) -> schemas.Message:
    """Cancel a scheduled, queued or retrying message before a worker takes it."""
    return await service.cancel_message(session, principal.tenant, message_id)


@router.get("", operation_id="listMessages")
async def list_messages(
    session: DbSession,
    principal: ReadScope,
    status: StatusFilter = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    to: Annotated[str | None, Query(max_length=320, description="Any recipient.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> schemas.MessagePage:
    """Messages, newest first, a page at a time."""
    before = cursor_query(cursor)
    filters = ListFilters(status=status.value if status else None, tag=tag, to=to)
    return await service.list_messages(
        session, principal.tenant, filters, before=before, limit=limit
    )
