"""End-to-end throughput into the SMTP sink: mailsvc's worker, and the naive baseline beside it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from bench.content import message_body
from bench.sinks import Sink, wait_for
from bench.stack import Stack
from mailsvc.auth.repository import TenantRepository
from mailsvc.auth.service import TenantInfo
from mailsvc.config import async_database_url
from mailsvc.db import Database
from mailsvc.kit.outbox import Job, outbox_of
from mailsvc.messages import service
from mailsvc.messages.schemas import MessageCreate
from mailsvc.sending.lanes import Lane
from mailsvc.worker.publish import publish_jobs


@dataclass
class ThroughputResult:
    label: str
    messages: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds


async def stage_messages(stack: Stack, count: int, *, batch_size: int) -> list[Job]:
    """Accept `count` messages through the service layer (as a batch send does) and return
    their send jobs, not yet published, so the clock can start at the first publish.

    The rows are handed over at once, in jobs of `batch_size`, rather than parked for the
    bulk feeder: this measures the worker's path, not the feeder's cadence."""
    database = Database.from_url(async_database_url(stack.database_url), pool_size=1)
    try:
        async with database.transaction() as session:
            tenant = await TenantRepository(session).get_by_name("dev")
            assert tenant is not None
            info = TenantInfo(
                id=tenant.id,
                name=tenant.name,
                allowed_domains=frozenset(tenant.allowed_domains),
                default_sender=tenant.default_sender,
            )
            rows = [
                service.build_message(
                    info, MessageCreate.model_validate(message_body(i)), lane=Lane.bulk
                )
                for i in range(count)
            ]
            for row in rows:
                row.enqueued_at = row.created_at
            await service.accept_messages(session, rows, batch_size=batch_size)
        return outbox_of(session).take_released()
    finally:
        await database.dispose()


def mailsvc_throughput(sink: Sink, jobs: list[Job], count: int) -> ThroughputResult:
    before = sink.count()
    started = time.perf_counter()
    failed = publish_jobs(jobs)
    assert not failed
    finished = wait_for(sink, before + count, timeout=600)
    return ThroughputResult(
        f"mailsvc, one worker: claim, build, send, record → {sink.name}",
        count,
        finished - started,
    )


def naive_throughput(
    redis_url: str, sink: Sink, count: int, folder: Path, *, builder: str = "mailsvc"
) -> ThroughputResult:
    env = {
        **os.environ,
        "NAIVE_BUILDER": builder,
        "NAIVE_BROKER_URL": redis_url,
        "NAIVE_SMTP_HOST": sink.host,
        "NAIVE_SMTP_PORT": str(sink.port),
    }
    log = folder / "naive-worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.naive_worker",
                "worker",
                "-Q",
                "naive",
                "-c",
                "2",
                "--pool",
                "prefork",
                "-n",
                "naive@bench",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "INFO",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[1],
        )
    try:
        # A publisher of this stack's own: a Celery app keeps the first broker it connected to.
        publisher = Celery("naive-publisher", broker=redis_url)
        publisher.conf.update(task_serializer="json", accept_content=["json"])
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the naive worker did not start:\n{log.read_text()}")
            time.sleep(0.05)
        messages = [message_body(i) for i in range(count)]
        before = sink.count()
        started = time.perf_counter()
        with publisher.producer_or_acquire() as producer:
            for message in messages:
                publisher.send_task("naive.send", (message,), queue="naive", producer=producer)
        publisher.close()
        finished = wait_for(sink, before + count, timeout=600)
    finally:
        worker.terminate()
        worker.wait(30)
    built = "" if builder == "mailsvc" else ", email.mime"
    return ThroughputResult(
        f"naive{built}: a task and a connection per email → {sink.name}",
        count,
        finished - started,
    )
