"""What a durable worker costs: the hot path's statements with synchronous commit on and off.

A worker claims a batch (one UPDATE … RETURNING) and records its outcomes, attempts and events
(one statement every 50 outcomes). With `synchronous_commit=off` a PostgreSQL crash can lose the
last few hundred milliseconds of those commits, and every message whose claim or outcome was lost
goes out again; with it on (the default since issue 9) a commit waits for its WAL flush. This
measures exactly that difference: the same batches through the same statements, two streams at
once as two worker processes would, on a real PostgreSQL with fsync on, alternating the two modes
round by round so both see the same machine. Then, where Postfix's smtp-sink is installed, the
same pair end to end: `mailsvc dev` relaying to smtp-sink, 5,000 messages through one worker,
with MAILSVC_WORKER_SYNCHRONOUS_COMMIT true and false, alternating.

    python -m bench.durability [--messages 5000] [--rounds 5] [--end-to-end-rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from bench import throughput
from bench.sinks import PostfixSmtpSink
from bench.stack import start_stack, use_stack
from mailsvc.auth.service import create_tenant, tenant_info
from mailsvc.config import async_database_url
from mailsvc.db import Database, upgrade_database
from mailsvc.devserver.embedded import EmbeddedPostgres
from mailsvc.kit.time import utcnow
from mailsvc.messages import service
from mailsvc.messages.schemas import MessageCreate
from mailsvc.models import MessageStatus
from mailsvc.sending.lanes import Lane
from mailsvc.sending.repository import AttemptRecord, DeliveryRepository, Outcome

BATCH = 100  # ids per bulk task
RECORD_EVERY = 50  # outcomes per record statement, as pipeline.deliver writes them
STREAMS = 2  # worker processes


async def _stage(database: Database, tenant_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    async with database.transaction() as session:
        from mailsvc.auth.repository import TenantRepository

        tenant = await TenantRepository(session).get(tenant_id)
        assert tenant is not None
        info = tenant_info(tenant)
        rows = [
            service.build_message(
                info,
                MessageCreate.model_validate(
                    {"to": [f"u{i}@example.net"], "subject": "s", "text": "t"}
                ),
                lane=Lane.bulk,
            )
            for i in range(count)
        ]
        session.add_all(rows)
    return [row.id for row in rows]


async def _stream(database: Database, batches: list[list[uuid.UUID]]) -> None:
    async with database.autocommit() as connection:
        repo = DeliveryRepository(connection)
        for ids in batches:
            claimed = await repo.claim(ids, lease_seconds=120)
            now = utcnow()
            for start in range(0, len(claimed), RECORD_EVERY):
                part = claimed[start : start + RECORD_EVERY]
                await repo.record(
                    [Outcome(m.id, m.attempt, MessageStatus.sent, provider="smtp") for m in part],
                    [
                        AttemptRecord(
                            m.id,
                            m.attempt,
                            "smtp",
                            now,
                            now + timedelta(milliseconds=1),
                            "sent",
                            None,
                            None,
                        )
                        for m in part
                    ],
                )


async def _run(url: str, tenant_id: uuid.UUID, count: int, *, synchronous: bool) -> float:
    """Seconds for `count` messages through claim and record, STREAMS at once."""
    staging = Database.from_url(url, pool_size=1)
    database = Database.from_url(url, pool_size=STREAMS, synchronous_commit=synchronous)
    try:
        ids = await _stage(staging, tenant_id, count)
        batches = [ids[i : i + BATCH] for i in range(0, len(ids), BATCH)]
        started = time.perf_counter()
        await asyncio.gather(*(_stream(database, batches[s::STREAMS]) for s in range(STREAMS)))
        return time.perf_counter() - started
    finally:
        await staging.dispose()
        await database.dispose()


async def _tenant(url: str) -> uuid.UUID:
    database = Database.from_url(url, pool_size=1)
    try:
        async with database.transaction() as session:
            tenant = await create_tenant(session, name="bench", domains=["example.com"])
            return tenant.id
    finally:
        await database.dispose()


def _end_to_end(messages: int, rounds: int) -> dict[bool, list[float]]:
    """Emails a second into smtp-sink, one `mailsvc dev` stack per run, modes alternating."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="mailsvc-bench-") as scratch:
        sink = PostfixSmtpSink(Path(scratch))
        try:
            for round_number in range(rounds):
                order = (True, False) if round_number % 2 == 0 else (False, True)
                for synchronous in order:
                    setting = {"MAILSVC_WORKER_SYNCHRONOUS_COMMIT": str(synchronous).lower()}
                    folder = Path(scratch) / f"{round_number}-{synchronous}"
                    stack = start_stack(folder, smtp=(sink.host, sink.port), env=setting)
                    try:
                        use_stack(stack)
                        jobs = asyncio.run(
                            throughput.stage_messages(stack, messages, batch_size=100)
                        )
                        result = throughput.mailsvc_throughput(sink, jobs, messages)
                    finally:
                        stack.stop()
                    rates[synchronous].append(result.per_second)
                    mode = "on " if synchronous else "off"
                    print(
                        f"end to end, round {round_number + 1}, synchronous_commit {mode}: "
                        f"{result.per_second:,.0f} emails/s",
                        flush=True,
                    )
        finally:
            sink.stop()
    return rates


Row = tuple[str, str, str]


def run(messages: int, rounds: int, end_to_end_rounds: int) -> list[Row]:
    """Both comparisons; the table rows of `make bench`."""
    with tempfile.TemporaryDirectory(prefix="mailsvc-bench-") as scratch:
        postgres = EmbeddedPostgres(Path(scratch) / "pg")
        plain_url = postgres.start()
        try:
            upgrade_database(plain_url)
            url = async_database_url(plain_url)
            tenant_id = asyncio.run(_tenant(url))
            seconds: dict[bool, list[float]] = {True: [], False: []}
            for round_number in range(rounds):
                order = (True, False) if round_number % 2 == 0 else (False, True)
                for synchronous in order:
                    took = asyncio.run(_run(url, tenant_id, messages, synchronous=synchronous))
                    seconds[synchronous].append(took)
                    mode = "on " if synchronous else "off"
                    print(
                        f"round {round_number + 1}, synchronous_commit {mode}: "
                        f"{messages / took:,.0f} messages/s",
                        flush=True,
                    )
        finally:
            postgres.stop()
    on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
    rows: list[Row] = [
        (
            f"claim + record, {messages} messages, {STREAMS} streams, synchronous_commit on / off",
            f"{messages / on:,.0f} / {messages / off:,.0f} messages/s",
            f"+{(on - off) / messages * 1000:.3f} ms a message durable; median of {rounds}",
        )
    ]
    if not PostfixSmtpSink.available() or end_to_end_rounds == 0:
        return [*rows, ("end to end, synchronous_commit on / off", "skipped", "needs smtp-sink")]
    rates = _end_to_end(messages, end_to_end_rounds)
    sync, unsync = statistics.median(rates[True]), statistics.median(rates[False])
    return [
        *rows,
        (
            f"end to end, {messages} messages, one worker → smtp-sink, synchronous_commit on / off",
            f"{sync:,.0f} / {unsync:,.0f} emails/s",
            f"{sync / unsync:.2f} of the throughput durable; median of {end_to_end_rounds}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.durability")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--end-to-end-rounds", type=int, default=4)
    args = parser.parse_args()
    for name, value, note in run(args.messages, args.rounds, args.end_to_end_rounds):
        print(f"{name}: {value} ({note})")


if __name__ == "__main__":
    main()
