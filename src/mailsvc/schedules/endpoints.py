"""The /v1/schedules routes: each tenant's recurring jobs, their settings and next runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from mailsvc.auth.dependencies import AdminScope, ReadScope
from mailsvc.db import DbSession
from mailsvc.errors import NotFound, ValidationFailed, problem_responses
from mailsvc.kit.time import Clock, utcnow
from mailsvc.models import SCHEDULE_NAMES
from mailsvc.routing import ApiRoute
from mailsvc.schedules import schemas
from mailsvc.schedules.repository import (
    EffectiveSchedule,
    ScheduleRepository,
    effective_for_tenant,
)

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
    now = clock()
    effective = await effective_for_tenant(session, principal.tenant_id)
    return schemas.ScheduleList(data=[schemas.Schedule.of(s, now) for s in effective])


@router.put("/{name}", operation_id="putSchedule", responses=problem_responses(404))
async def put_schedule(
    name: ScheduleNamePath,
    body: schemas.ScheduleUpdate,
    session: DbSession,
    principal: AdminScope,
    clock: ScheduleClock,
) -> schemas.Schedule:
    """Replace the settings of one recurring job; what is left out takes its default."""
    if name not in SCHEDULE_NAMES:
        raise NotFound(f"no schedule named {name!r}; there are {', '.join(SCHEDULE_NAMES)}")
    errors = body.problems_for(name)
    if errors:
        detail = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors)
        raise ValidationFailed(detail, errors=errors)
    row = await ScheduleRepository(session).put(principal.tenant_id, name, **body.columns())
    return schemas.Schedule.of(EffectiveSchedule.of(principal.tenant_id, name, row), clock())
