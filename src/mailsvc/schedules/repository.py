"""Every query of the schedules domain: the tenants' settings, and who each recurring job is for.

The selections are one statement each and go through the partial indexes on contacts
(ix_contacts_birthday, ix_contacts_unactivated), so an hourly run costs index probes, not a scan
of every contact.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Date,
    SmallInteger,
    Text,
    and_,
    bindparam,
    func,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import TIMESTAMP, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from mailsvc.models import SCHEDULE_NAMES, Schedule, Tenant
from mailsvc.schedules import timing

_UUIDS = ARRAY(UUID(as_uuid=True))


class ScheduleRepository:
    """A tenant's own settings, one row per job it has changed."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_all(self, tenant_id: uuid.UUID) -> dict[str, Schedule]:
        rows = await self.session.scalars(select(Schedule).where(Schedule.tenant_id == tenant_id))
        return {row.name: row for row in rows}

    async def put(self, tenant_id: uuid.UUID, name: str, **fields: Any) -> Schedule:
        """Insert the row or update the given fields of the existing one."""
        insert = pg_insert(Schedule).values(tenant_id=tenant_id, name=name, **fields)
        upsert = insert.on_conflict_do_update(
            index_elements=[Schedule.tenant_id, Schedule.name],
            set_={**{key: insert.excluded[key] for key in fields}, "updated_at": func.now()},
        ).returning(Schedule)
        rows = await self.session.scalars(upsert, execution_options={"populate_existing": True})
        return rows.one()


# -- effective settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectiveSchedule:
    """A tenant's settings for one job, with the defaults filled in where it has none."""

    tenant_id: uuid.UUID
    name: str
    enabled: bool
    cron: str | None  # None for activation_reminder, which counts days
    days: int | None  # activation_reminder only
    timezone: str
    template: str  # the built-in of the same name unless the tenant chose one
    recipients: list[str]

    @classmethod
    def of(cls, tenant_id: uuid.UUID, name: str, row: Schedule | None) -> EffectiveSchedule:
        if row is None:
            return _defaults(tenant_id, name)
        return _with_defaults(
            tenant_id,
            name,
            row.enabled,
            row.cron,
            row.days,
            row.timezone,
            row.template,
            row.recipients,
        )


_DEFAULT_CRON = {"birthday": timing.BIRTHDAY_CRON, "weekly_report": timing.WEEKLY_REPORT_CRON}


def _check_name(name: str) -> None:
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"no schedule named {name!r}; there are {', '.join(SCHEDULE_NAMES)}")


def _defaults(tenant_id: uuid.UUID, name: str) -> EffectiveSchedule:
    return _with_defaults(tenant_id, name, None, None, None, None, None, None)


def _with_defaults(
    tenant_id: uuid.UUID,
    name: str,
    enabled: bool | None,
    cron: str | None,
    days: int | None,
    timezone: str | None,
    template: str | None,
    recipients: list[str] | None,
) -> EffectiveSchedule:
    recipients = list(recipients or [])
    if enabled is None:  # no row: on, except the report, which has nobody to go to
        enabled = name != "weekly_report"
    return EffectiveSchedule(
        tenant_id=tenant_id,
        name=name,
        # A report with no recipients cannot be sent, whatever the row says.
        enabled=enabled and (name != "weekly_report" or bool(recipients)),
        cron=(cron or _DEFAULT_CRON[name]) if name in _DEFAULT_CRON else None,
        days=(days or timing.ACTIVATION_DAYS) if name == "activation_reminder" else None,
        timezone=timezone or "UTC",
        template=template or name,
        recipients=recipients,
    )


def _enabled(name: str) -> ColumnElement[bool]:
    """In SQL, as _with_defaults decides it: with no row (NULLs) the default applies."""
    if name == "weekly_report":
        return and_(Schedule.enabled, func.cardinality(Schedule.recipients) > 0)
    return func.coalesce(Schedule.enabled, true())


async def effective_schedules(session: AsyncSession, name: str) -> list[EffectiveSchedule]:
    """Every tenant's settings for the job `name`, where it is enabled: one query."""
    _check_name(name)
    rows = await session.execute(
        select(
            Tenant.id,
            Schedule.enabled,
            Schedule.cron,
            Schedule.days,
            Schedule.timezone,
            Schedule.template,
            Schedule.recipients,
        )
        .select_from(Tenant)
        .outerjoin(Schedule, and_(Schedule.tenant_id == Tenant.id, Schedule.name == name))
        .where(_enabled(name))
        .order_by(Tenant.id)
    )
    return [_with_defaults(row[0], name, *row[1:]) for row in rows]


async def effective_for_tenant(
    session: AsyncSession, tenant_id: uuid.UUID
) -> list[EffectiveSchedule]:
    """The tenant's settings for every job, enabled or not, in SCHEDULE_NAMES order."""
    rows = await ScheduleRepository(session).get_all(tenant_id)
    return [EffectiveSchedule.of(tenant_id, name, rows.get(name)) for name in SCHEDULE_NAMES]


# -- birthdays -----------------------------------------------------------------------------------


class BirthdayContact(NamedTuple):
    tenant_id: uuid.UUID
    contact_id: uuid.UUID
    email: str
    name: str | None
    birthday: date
    timezone: str
    attributes: dict[str, Any]
    signed_up_at: datetime | None
    local_date: date  # the contact's local date: its year is the send's period


# One index probe on ix_contacts_birthday per (birth_md, zone) pair: about 600 a run, however
# many contacts there are. `birthday IS NOT NULL` is the index's predicate: without it the
# planner may not use the partial index.
_BIRTHDAY_CONTACTS = """
    SELECT c.tenant_id, c.id AS contact_id, c.email, c.name, c.birthday, c.timezone,
           c.attributes, c.signed_up_at, t.local_date
      FROM unnest(:birth_mds, :zones, :local_dates) AS t(birth_md, zone, local_date)
      JOIN contacts AS c ON c.birth_md = t.birth_md AND c.timezone = t.zone
     WHERE c.birthday IS NOT NULL
       AND c.tenant_id = ANY(:tenant_ids)
"""
# Contacts already greeted this (local) year: a primary-key probe each on the ledger.
_NOT_YET_SENT = """
       AND NOT EXISTS (
           SELECT FROM recurring_sends AS s
            WHERE s.tenant_id = c.tenant_id AND s.schedule = 'birthday'
              AND s.recipient = lower(c.email)
              AND s.period = EXTRACT(YEAR FROM t.local_date)::int::text)
"""


def _birthday_statement(prefix: str = "", *, unsent_only: bool = False) -> TextClause:
    sql = prefix + _BIRTHDAY_CONTACTS + (_NOT_YET_SENT if unsent_only else "")
    return text(sql).bindparams(
        bindparam("birth_mds", type_=ARRAY(SmallInteger)),
        bindparam("zones", type_=ARRAY(Text)),
        bindparam("local_dates", type_=ARRAY(Date)),
        bindparam("tenant_ids", type_=_UUIDS),
    )


_BIRTHDAYS = {False: _birthday_statement(), True: _birthday_statement(unsent_only=True)}


def _birthday_params(
    targets: Sequence[timing.BirthdayTarget], tenant_ids: Sequence[uuid.UUID]
) -> dict[str, Any]:
    triples = [
        (md, zone, target.local_date)
        for target in targets
        for zone in target.zones
        for md in target.birth_mds
    ]
    return {
        "birth_mds": [md for md, _, _ in triples],
        "zones": [zone for _, zone, _ in triples],
        "local_dates": [day for _, _, day in triples],
        "tenant_ids": list(tenant_ids),
    }


async def birthday_contacts(
    session: AsyncSession,
    targets: Sequence[timing.BirthdayTarget],
    tenant_ids: Sequence[uuid.UUID],
    *,
    unsent_only: bool = False,
) -> list[BirthdayContact]:
    """The contacts of `tenant_ids` whose birthday it is, per `targets` (timing.birthday_targets).

    `unsent_only` leaves out those the ledger says were greeted this local year already: an
    hourly run otherwise sees each of them again until their local day ends.
    """
    if not targets or not tenant_ids:
        return []
    result = await session.execute(_BIRTHDAYS[unsent_only], _birthday_params(targets, tenant_ids))
    return [BirthdayContact(*row) for row in result]


async def explain_birthday_contacts(
    session: AsyncSession,
    targets: Sequence[timing.BirthdayTarget],
    tenant_ids: Sequence[uuid.UUID],
    *,
    analyze: bool = False,
) -> str:
    """The plan of birthday_contacts, as text; with `analyze`, as it ran."""
    options = "ANALYZE, BUFFERS" if analyze else "COSTS"
    result = await session.execute(
        _birthday_statement(f"EXPLAIN ({options}) "), _birthday_params(targets, tenant_ids)
    )
    return "\n".join(str(row[0]) for row in result)


async def birthday_contacts_plan(
    session: AsyncSession,
    targets: Sequence[timing.BirthdayTarget],
    tenant_ids: Sequence[uuid.UUID],
) -> dict[str, Any]:
    """The plan of birthday_contacts, as EXPLAIN (FORMAT JSON) gives its top node."""
    result = await session.execute(
        _birthday_statement("EXPLAIN (FORMAT JSON) "), _birthday_params(targets, tenant_ids)
    )
    plan: dict[str, Any] = result.scalar_one()[0]["Plan"]
    return plan


# -- activation reminders ------------------------------------------------------------------------


class UnactivatedContact(NamedTuple):
    tenant_id: uuid.UUID
    contact_id: uuid.UUID
    email: str
    name: str | None
    timezone: str
    attributes: dict[str, Any]
    signed_up_at: datetime  # its ISO form is the send's period


# Tenants share windows (most keep the default of 3 days), and the index is on signed_up_at
# alone: so each distinct window is one range scan of ix_contacts_unactivated, and the tenants
# that use it are joined to its rows.
_UNACTIVATED_CONTACTS = """
    SELECT c.tenant_id, c.id AS contact_id, c.email, c.name, c.timezone, c.attributes,
           c.signed_up_at
      FROM unnest(:starts, :ends) WITH ORDINALITY AS w(after, until, window_no)
      JOIN contacts AS c ON c.signed_up_at > w.after AND c.signed_up_at <= w.until
      JOIN unnest(:tenant_ids, :tenant_windows) AS t(tenant_id, window_no)
        ON t.window_no = w.window_no AND t.tenant_id = c.tenant_id
     WHERE c.activated_at IS NULL AND c.signed_up_at IS NOT NULL
"""


def _unactivated_statement(prefix: str = "") -> TextClause:
    return text(prefix + _UNACTIVATED_CONTACTS).bindparams(
        bindparam("starts", type_=ARRAY(TIMESTAMP(timezone=True))),
        bindparam("ends", type_=ARRAY(TIMESTAMP(timezone=True))),
        bindparam("tenant_ids", type_=_UUIDS),
        bindparam("tenant_windows", type_=ARRAY(BigInteger)),
    )


_UNACTIVATED = _unactivated_statement()


def _unactivated_params(
    tenant_windows: Sequence[tuple[uuid.UUID, datetime, datetime]],
) -> dict[str, Any]:
    windows: dict[tuple[datetime, datetime], int] = {}
    for _, start, end in tenant_windows:
        windows.setdefault((start, end), len(windows) + 1)  # ORDINALITY counts from 1
    return {
        "starts": [start for start, _ in windows],
        "ends": [end for _, end in windows],
        "tenant_ids": [tenant_id for tenant_id, _, _ in tenant_windows],
        "tenant_windows": [windows[start, end] for _, start, end in tenant_windows],
    }


async def unactivated_contacts(
    session: AsyncSession, tenant_windows: Sequence[tuple[uuid.UUID, datetime, datetime]]
) -> list[UnactivatedContact]:
    """Contacts not activated who signed up in (start, end] of their tenant's window."""
    if not tenant_windows:
        return []
    result = await session.execute(_UNACTIVATED, _unactivated_params(tenant_windows))
    return [UnactivatedContact(*row) for row in result]


async def unactivated_contacts_plan(
    session: AsyncSession, tenant_windows: Sequence[tuple[uuid.UUID, datetime, datetime]]
) -> dict[str, Any]:
    """The plan of unactivated_contacts, as EXPLAIN (FORMAT JSON) gives its top node."""
    result = await session.execute(
        _unactivated_statement("EXPLAIN (FORMAT JSON) "), _unactivated_params(tenant_windows)
    )
    plan: dict[str, Any] = result.scalar_one()[0]["Plan"]
    return plan


# -- weekly report -------------------------------------------------------------------------------

# One pass over the tenant's messages of the week: the total, by status and by provider as
# grouping sets, and by tag through unnest.
_WEEKLY_FIGURES = text(
    """
    WITH week AS MATERIALIZED (
        SELECT status, provider, tags
          FROM messages
         WHERE tenant_id = :tenant_id AND created_at >= :start AND created_at < :end
    )
    SELECT CASE GROUPING(status, provider) WHEN 3 THEN 'total' WHEN 1 THEN 'status'
           ELSE 'provider' END AS dimension,
           COALESCE(status, provider) AS name,
           count(*) AS count
      FROM week
     GROUP BY GROUPING SETS ((), (status), (provider))
    UNION ALL
    SELECT 'tag', tag, count(*)
      FROM week CROSS JOIN LATERAL unnest(week.tags) AS tag
     GROUP BY tag
    """
).bindparams(
    bindparam("tenant_id", type_=UUID(as_uuid=True)),
    bindparam("start", type_=TIMESTAMP(timezone=True)),
    bindparam("end", type_=TIMESTAMP(timezone=True)),
)


def _ranked(counts: list[tuple[str | None, int]], key: str) -> list[dict[str, Any]]:
    """Most first, then by name; messages with no provider yet (None) last among equals."""
    ordered = sorted(counts, key=lambda item: (-item[1], item[0] is None, item[0] or ""))
    return [{key: name, "count": count} for name, count in ordered]


async def weekly_figures(
    session: AsyncSession, tenant_id: uuid.UUID, start: datetime, end: datetime
) -> dict[str, Any]:
    """The tenant's messages created in [start, end): how many, by status, provider and tag."""
    result = await session.execute(
        _WEEKLY_FIGURES, {"tenant_id": tenant_id, "start": start, "end": end}
    )
    total = 0
    by: dict[str, list[tuple[str | None, int]]] = {"status": [], "provider": [], "tag": []}
    for dimension, name, count in result:
        if dimension == "total":
            total = count
        else:
            by[dimension].append((name, count))
    return {
        "total": total,
        "by_status": _ranked(by["status"], "status"),
        "by_provider": _ranked(by["provider"], "provider"),
        "by_tag": _ranked(by["tag"], "tag"),
    }
