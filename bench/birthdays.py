"""The birthday job's selection at scale: is an hourly run still milliseconds at a million contacts?

N contacts (default 1,000,000) with random birthdays (1940-2009, so Feb 29s too) spread evenly over
every IANA zone are inserted with one INSERT … SELECT generate_series, then VACUUM ANALYZE. Then
24 consecutive hourly runs of one day (00:00-23:00 UTC) each do what the job does to find its
recipients: `timing.birthday_targets` (which zones are at or past 09:00, on which local date)
and `repository.birthday_contacts` (one statement through ix_contacts_birthday). Reported: the
median and maximum milliseconds per run, and the rows each run selects; and EXPLAIN ANALYZE of
one run. The target is at most 2 s per run.

    python -m bench.birthdays                          # embedded PostgreSQL, 1,000,000 contacts
    python -m bench.birthdays --contacts 100000 --database-url postgresql://…

With --database-url the bench's tenant (and with it its contacts) is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path

from sqlalchemy import ARRAY, Text, bindparam, delete, text

from mailsvc.auth.service import create_tenant
from mailsvc.config import async_database_url
from mailsvc.db import Database, upgrade_database
from mailsvc.devserver.embedded import EmbeddedPostgres
from mailsvc.models import Tenant
from mailsvc.schedules import repository, timing

Row = tuple[str, str, str]

DAY = date(2026, 11, 18)
SEND_AT = clock_time(9, 0)

_FILL = text(
    """
    INSERT INTO contacts (id, tenant_id, email, name, birthday, timezone, attributes)
    SELECT gen_random_uuid(), :tenant_id, 'c' || g || '@example.net', 'Contact ' || g,
           date '1940-01-01' + floor(random() * 25567)::int,
           (:zones)[1 + floor(random() * cardinality(:zones))::int],
           '{"plan": "free"}'::jsonb
      FROM generate_series(1, :contacts) AS g
    """
).bindparams(bindparam("zones", type_=ARRAY(Text)))


@dataclass(frozen=True)
class HourlyRun:
    at: datetime
    targets_ms: float
    query_ms: float
    rows: int
    pairs: int  # (birth_md, zone) pairs probed

    @property
    def total_ms(self) -> float:
        return self.targets_ms + self.query_ms


async def _stage(database: Database, contacts: int) -> tuple[uuid.UUID, float]:
    started = time.perf_counter()
    async with database.transaction() as session:
        tenant = await create_tenant(
            session, name=f"bench-birthdays-{secrets.token_hex(4)}", domains=["example.com"]
        )
        zones = [name for name, _ in timing.all_zones()]
        await session.execute(_FILL, {"tenant_id": tenant.id, "zones": zones, "contacts": contacts})
    async with database.autocommit() as connection:  # VACUUM cannot run in a transaction
        await connection.execute(text("VACUUM ANALYZE contacts"))
    return tenant.id, time.perf_counter() - started


async def _runs(database: Database, tenant_id: uuid.UUID) -> tuple[list[HourlyRun], str]:
    async with database.transaction() as session:
        # Warm the connection (type codecs, the prepared statement) on another day.
        warm = timing.birthday_targets(datetime(2026, 1, 1, 12, tzinfo=UTC), SEND_AT)
        await repository.birthday_contacts(session, warm, [tenant_id])
        runs = []
        for hour in range(24):
            at = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC) + timedelta(hours=hour)
            started = time.perf_counter()
            targets = timing.birthday_targets(at, SEND_AT)
            found = time.perf_counter()
            rows = await repository.birthday_contacts(session, targets, [tenant_id])
            done = time.perf_counter()
            pairs = sum(len(t.zones) * len(t.birth_mds) for t in targets)
            runs.append(
                HourlyRun(at, (found - started) * 1000, (done - found) * 1000, len(rows), pairs)
            )
        noon = datetime(DAY.year, DAY.month, DAY.day, 12, tzinfo=UTC)
        plan = await repository.explain_birthday_contacts(
            session, timing.birthday_targets(noon, SEND_AT), [tenant_id], analyze=True
        )
    return runs, plan


async def _drop(database: Database, tenant_id: uuid.UUID) -> None:
    async with database.transaction() as session:
        await session.execute(delete(Tenant).where(Tenant.id == tenant_id))


async def _bench(database_url: str, contacts: int, *, cleanup: bool) -> list[Row]:
    database = Database.from_url(async_database_url(database_url), pool_size=1)
    try:
        print(f"staging {contacts:,} contacts …", flush=True)
        tenant_id, staging = await _stage(database, contacts)
        try:
            print("24 hourly runs …", flush=True)
            runs, plan = await _runs(database, tenant_id)
        finally:
            if cleanup:
                await _drop(database, tenant_id)
    finally:
        await database.dispose()

    print(f"\nEXPLAIN ANALYZE of the 12:00 UTC run:\n{plan}\n")
    for run in runs:
        print(
            f"{run.at:%H:%M} UTC  targets {run.targets_ms:6.2f} ms  query {run.query_ms:7.2f} ms"
            f"  {run.rows:6,} rows  {run.pairs:4} pairs"
        )
    totals = [r.total_ms for r in runs]
    queries = [r.query_ms for r in runs]
    targets = [r.targets_ms for r in runs]
    rows = [r.rows for r in runs]
    zones = len(timing.all_zones())
    return [
        (
            f"birthday run: targets + contacts query ({contacts:,} contacts)",
            f"median {statistics.median(totals):.1f} ms, max {max(totals):.1f} ms",
            f"24 hourly runs on {DAY}, {zones} zones; query alone median "
            f"{statistics.median(queries):.1f} ms, max {max(queries):.1f} ms; target ≤ 2,000 ms",
        ),
        (
            "birthday run: birthday_targets alone",
            f"median {statistics.median(targets):.2f} ms, max {max(targets):.2f} ms",
            f"{zones} zones grouped by local date",
        ),
        (
            "birthday run: contacts selected per run",
            f"median {statistics.median(rows):,.0f}",
            f"min {min(rows):,}, max {max(rows):,}; "
            f"(birth_md, zone) pairs probed: {min(r.pairs for r in runs)}-"
            f"{max(r.pairs for r in runs)}",
        ),
        (
            "birthday run: plan",
            "index scan on ix_contacts_birthday"
            if "ix_contacts_birthday" in plan
            else "NOT the birthday index",
            f"staging (INSERT … SELECT generate_series, VACUUM ANALYZE) took {staging:.1f} s",
        ),
    ]


def run_birthday_bench(database_url: str, contacts: int) -> list[Row]:
    """Migrate `database_url`, stage `contacts` contacts, time 24 hourly runs; the result rows.

    The bench's tenant and its contacts are deleted afterwards.
    """
    upgrade_database(database_url)
    return asyncio.run(_bench(database_url, contacts, cleanup=True))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.birthdays", description=__doc__)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument(
        "--database-url",
        help="postgresql://… to use; by default an embedded PostgreSQL in a temporary folder",
    )
    return parser


def run_embedded(contacts: int) -> list[Row]:
    """The bench on a PostgreSQL of its own, started and removed around it."""
    with tempfile.TemporaryDirectory(prefix="mailsvc-birthdays-") as scratch:
        postgres = EmbeddedPostgres(Path(scratch) / "pg")
        try:
            database_url = postgres.start()
            upgrade_database(database_url)
            return asyncio.run(_bench(database_url, contacts, cleanup=False))
        finally:
            postgres.stop()


def main() -> None:
    args = parser().parse_args()
    if args.database_url:
        rows = run_birthday_bench(args.database_url, args.contacts)
    else:
        rows = run_embedded(args.contacts)
    print("\n| measurement | result | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(json.dumps(rows, ensure_ascii=False))


if __name__ == "__main__":
    main()
