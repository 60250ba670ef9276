"""The /v1/schedules routes: parse, authorize, call the service, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from mailsvc.auth.dependencies import AdminScope, ReadScope
from mailsvc.db import DbSession
from mailsvc.errors import problem_responses
from mailsvc.kit.time import Clock, utcnow
from mailsvc.models import SCHEDULE_NAMES
from mailsvc.routing import ApiRoute
from mailsvc.schedules import schemas, service

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], route_class=ApiRoute)


async def get_clock() -> Clock:  # async: FastAPI runs sync dependencies in threads
    """What "now" is for next_run; tests override this dependency with a fixed clock."""
    return utcnow


ScheduleClock = Annotated[Clock, Depends(get_clock)]

ScheduleNamePath = Annotated[
    str,
    Path(
        max_length=64,
        description="birthday, activation_reminder or weekly_report.",
        json_schema_extra={"enum": list(SCHEDULE_NAMES)},
    ),
]


@router.get("", operation_id="listSchedules")
async def list_schedules(
    session: DbSession, principal: ReadScope, clock: ScheduleClock
) -> schemas.ScheduleList:
    """The tenant's recurring jobs, with their settings and when each next sends."""
    return await service.list_schedules(session, principal.tenant_id, clock=clock)


@router.put("/{name}", operation_id="putSchedule", responses=problem_responses(404))
async def put_schedule(
    name: ScheduleNamePath,
    body: schemas.ScheduleUpdate,
    session: DbSession,
    principal: AdminScope,
    clock: ScheduleClock,
) -> schemas.Schedule:
    """Replace the settings of one recurring job; what is left out takes its default."""
    return await service.put_schedule(session, principal.tenant_id, name, body, clock=clock)
