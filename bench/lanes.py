"""Lanes, throughput and rate limits, on a stack laid out as production runs it:

    api · worker --role realtime (1 process) · worker --role bulk (2) · worker --role scheduled
    (1, the dispatcher and bulk feeder) · beat · PostgreSQL and Redis (embedded) · an SMTP sink

1. Transactional latency under bulk load: 200,000 bulk messages drain while 1,000
   transactional ones arrive at 20/s; latency is API accept (created_at) to the sink's
   acceptance of the message (the attempt's finished_at). Bulk throughput is the drain rate,
   claim to status write, with every worker process's RSS sampled throughout.
2. The raw ceiling (bench.raw_ceiling) and the naive baseline, in the same run.
3. Rate-limit accuracy: 6,000/min on the SMTP provider across 4 bulk worker processes for
   three minutes, counted at the sink by arrival time.

    python -m bench.lanes            # everything, about 8 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import tempfile
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from celery import Celery

from bench.content import message_body
from bench.processes import Process
from bench.raw_ceiling import run_raw_ceiling
from bench.sinks import PostfixSmtpSink
from bench.stack import UNLIMITED_API
from bench.throughput import naive_throughput
from mailsvc.auth.service import TenantInfo, ensure_tenant, token_for_tenant
from mailsvc.config import RateLimitSpec, Settings, async_database_url
from mailsvc.db import Database, run_in_session, upgrade_database
from mailsvc.devserver.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from mailsvc.messages import service
from mailsvc.messages.schemas import MessageCreate
from mailsvc.ratelimit.repository import RateLimitRepository
from mailsvc.sending.lanes import Lane

Row = tuple[str, str, str]


@dataclass
class Stack:
    folder: Path
    database_url: str
    redis_url: str
    secret: str
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        process = Process(name, ["mailsvc", *args], {**self.env, **(env or {})}, self.logs)
        process.start()
        self.processes.append(process)
        return process

    def worker(self, name: str, role: str, concurrency: int, **env: str) -> Process:
        process = self.start(
            name,
            "worker",
            "--role",
            role,
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            env=env,
        )
        # Workers log at WARNING, so "ready" is never printed: ask the worker itself, through
        # an app of this stack's own (the shared one keeps the first broker it talked to).
        control = Celery(broker=self.redis_url).control
        destination = [f"{name}@{socket.gethostname()}"]
        deadline = time.monotonic() + 60
        while not control.ping(destination=destination, timeout=0.5):
            if not process.alive or time.monotonic() > deadline:
                log = self.logs / f"{name}.{process.starts}.log"
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
        self.workers.append(process)
        return process

    @property
    def logs(self) -> Path:
        path = self.folder / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _env(database_url: str, redis_url: str, secret: str, smtp_port: int) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("MAILSVC_")},
        "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_REDIS_URL": redis_url,
        "MAILSVC_JWT_SECRET": secret,
        "MAILSVC_ENV": "test",
        "MAILSVC_LOG_LEVEL": "WARNING",
        "MAILSVC_API_RATE_LIMIT": UNLIMITED_API,
        "MAILSVC_PROVIDER_ORDER": "smtp",
        "MAILSVC_SMTP_HOST": "127.0.0.1",
        "MAILSVC_SMTP_PORT": str(smtp_port),
        "MAILSVC_DISPATCH_INTERVAL_SECONDS": "1",
    }


async def _tenant(database_url: str, name: str, secret: str) -> tuple[TenantInfo, str]:
    database = Database.from_url(async_database_url(database_url), pool_size=1)
    try:
        async with database.transaction() as session:
            tenant = await ensure_tenant(session, name=name, domains=["example.com"])
            token = await token_for_tenant(
                session,
                tenant_name=name,
                scopes=["messages:send", "messages:read"],
                ttl=timedelta(hours=2),
                config=Settings(jwt_secret=secret),
            )
        info = TenantInfo(
            id=tenant.id,
            name=tenant.name,
            allowed_domains=frozenset(tenant.allowed_domains),
            default_sender=tenant.default_sender,
        )
        return info, token
    finally:
        await database.dispose()


async def stage_bulk(database_url: str, tenant: TenantInfo, count: int) -> None:
    """Accept `count` bulk messages as the batch endpoint does: parked for the bulk feeder."""
    database = Database.from_url(async_database_url(database_url), pool_size=1)
    try:
        for start in range(0, count, 5000):
            async with database.transaction() as session:
                rows = [
                    service.build_message(
                        tenant, MessageCreate.model_validate(message_body(i)), lane=Lane.bulk
                    )
                    for i in range(start, min(count, start + 5000))
                ]
                await service.accept_messages(session, rows)
    finally:
        await database.dispose()


async def _fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def _pg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


class RssSampler:
    """The largest resident set of each worker process (pool children included), sampled."""

    def __init__(self, workers: list[Process]) -> None:
        self.workers = workers
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for worker in self.workers:
                if worker.proc is None:
                    continue
                try:
                    main = psutil.Process(worker.proc.pid)
                    for process in [main, *main.children(recursive=True)]:
                        self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
                except psutil.Error:
                    continue

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _label(process: psutil.Process) -> str | None:
    """Which part of the stack a process is, by its command line; None for the rest."""
    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return None
    if "mailsvc" in line and " worker " in line and "--role" in line:
        return "worker --role " + line.split("--role ", 1)[1].split()[0]
    for marker, label in (
        ("mailsvc api", "api"),
        ("mailsvc beat", "beat"),
        ("postgres", "PostgreSQL"),
        ("redis-server", "Redis"),
        ("smtp-sink", "smtp-sink"),
        ("bench.lanes", "this benchmark (staging, transactional client)"),
    ):
        if marker in line:
            return label
    return None


class CpuAccount:
    """CPU seconds spent by each part of the stack between start() and stop(): where a
    2-core machine's time went."""

    def __init__(self) -> None:
        self._start: dict[int, tuple[str, float]] = {}
        self.seconds: dict[str, float] = {}

    @staticmethod
    def _snapshot() -> dict[int, tuple[str, float]]:
        found = {}
        for process in psutil.process_iter():
            label = _label(process)
            if label is None:
                continue
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            found[process.pid] = (label, times.user + times.system)
        return found

    def start(self) -> None:
        self._start = self._snapshot()
        self.started = time.perf_counter()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self.started
        for pid, (label, used) in self._snapshot().items():
            before = self._start.get(pid, (label, 0.0))[1]
            self.seconds[label] = self.seconds.get(label, 0.0) + used - before

    def summary(self) -> str:
        parts = sorted(self.seconds.items(), key=lambda item: -item[1])
        return f"{self.wall:.0f} s wall, CPU seconds: " + ", ".join(
            f"{label} {used:.0f}" for label, used in parts if used >= 0.5
        )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _transactional(
    api_url: str, token: str, count: int, rate: float, *, sent: list[str], refused: list[int]
) -> None:
    """POST `count` high-priority messages at `rate`/s (open loop); keep the accepted ids."""
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            body = {**message_body(i), "subject": f"Your code is {i:06d}", "priority": "high"}
            response = await client.post("/v1/messages", json=body)
            if response.status_code == 202:
                sent.append(response.json()["id"])
            else:
                refused.append(response.status_code)

        await asyncio.gather(*(one(i) for i in range(count)))


def latency_and_throughput(stack: Stack, bulk: int, transactional: int) -> list[Row]:
    info, token = asyncio.run(_tenant(stack.database_url, "bench", stack.secret))
    api_port = free_port()
    stack.start("api", "api", "--port", str(api_port), "--no-access-log")
    stack.worker("realtime", "realtime", 1)
    stack.worker("scheduled", "scheduled", 1)
    stack.start("beat", "beat", "--schedule", str(stack.folder / "beat"))
    wait_for_port(api_port, timeout=60)

    print(f"staging {bulk:,} bulk messages …", flush=True)
    asyncio.run(stage_bulk(stack.database_url, info, bulk))
    db = _pg(stack.database_url)
    count_sent = "SELECT count(*) FROM messages WHERE lane = 'bulk' AND status = 'sent'"
    count_delivered = "SELECT count(*) FROM messages WHERE id = ANY($1::uuid[]) AND status = 'sent'"
    bulk_span = """SELECT min(a.started_at) AS first, max(a.finished_at) AS last
                     FROM attempts a JOIN messages m ON m.id = a.message_id
                    WHERE m.lane = 'bulk'"""
    arrivals = """SELECT m.created_at, max(a.finished_at) AS arrived
                    FROM messages m JOIN attempts a ON a.message_id = m.id AND a.outcome = 'sent'
                   WHERE m.id = ANY($1::uuid[]) GROUP BY m.id, m.created_at"""

    print("draining them with a --role bulk worker, while transactional mail arrives …")
    api_url = f"http://127.0.0.1:{api_port}"
    sent: list[str] = []
    refused: list[int] = []
    sender = threading.Thread(
        target=lambda: asyncio.run(
            _transactional(api_url, token, transactional, 20, sent=sent, refused=refused)
        )
    )
    stack.worker("bulk", "bulk", 2)
    cpu = CpuAccount()
    with RssSampler(stack.workers) as rss:
        sender.start()
        cpu.start()
        while asyncio.run(_fetch(db, count_sent))[0][0] < bulk:
            time.sleep(0.2)
        cpu.stop()
        sender.join()
        deadline = time.monotonic() + 60
        while asyncio.run(_fetch(db, count_delivered, sent))[0][0] < len(sent):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    drain = asyncio.run(_fetch(db, bulk_span))[0]
    drained = (drain["last"] - drain["first"]).total_seconds()
    rows = asyncio.run(_fetch(db, arrivals, sent))
    latencies = [(r["arrived"] - r["created_at"]).total_seconds() * 1000 for r in rows]
    under_load = [
        (r["arrived"] - r["created_at"]).total_seconds() * 1000
        for r in rows
        if r["created_at"] < drain["last"]
    ]
    return [
        (
            f"transactional latency, accept → SMTP sink, {transactional:,} at 20/s while "
            f"{bulk:,} bulk drain",
            f"p99 {percentile(latencies, 0.99):.0f} ms",
            f"p50 {percentile(latencies, 0.5):.0f} ms, max {max(latencies):.0f} ms; "
            f"the {len(under_load):,} accepted before the drain ended: "
            f"p99 {percentile(under_load, 0.99):.0f} ms; "
            f"{len(refused)} refused, {len(sent) - len(latencies)} undelivered",
        ),
        (
            f"bulk throughput, {bulk:,} messages, one --role bulk worker (2 processes)",
            f"{bulk / drained:,.0f} emails/s",
            f"{drained:.1f} s from the first claim to the last status write, fed by the "
            "bulk feeder, with the transactional load alongside",
        ),
        ("where the drain's time went", "", cpu.summary()),
        (
            "worker RSS, largest process during the drain",
            f"{rss.peak_mb:.0f} MB",
            "every worker process and pool child, sampled every 0.5 s",
        ),
    ]


def rate_limit_accuracy(stack: Stack, limit: int, seconds: float) -> list[Row]:
    """L per minute on the provider, 4 bulk worker processes, counted at the fake SMTP sink."""
    fakes_http, fakes_smtp = free_port(), free_port()
    fakes = Process(
        "fakes",
        ["mailsvc.devserver.fakes", "--http-port", str(fakes_http), "--smtp-port", str(fakes_smtp)],
        dict(os.environ),
        stack.logs,
    )
    fakes.start()
    stack.processes.append(fakes)
    wait_for_port(fakes_http)
    wait_for_port(fakes_smtp)
    run_in_session(
        stack.database_url,
        lambda s: RateLimitRepository(s).put("provider:smtp", RateLimitSpec(per_minute=limit)),
    )
    info, _ = asyncio.run(_tenant(stack.database_url, "ratelimited", stack.secret))
    backlog = int(limit * (seconds / 60) * 1.3)
    print(f"rate limit: {limit:,}/min, {backlog:,} messages waiting, {seconds:.0f} s …", flush=True)
    asyncio.run(stage_bulk(stack.database_url, info, backlog))
    smtp = {"MAILSVC_SMTP_PORT": str(fakes_smtp)}
    stack.worker("scheduled", "scheduled", 1, **smtp)
    stack.start("beat", "beat", "--schedule", str(stack.folder / "beat"), env=smtp)
    stack.worker("limited1", "bulk", 2, **smtp)
    stack.worker("limited2", "bulk", 2, **smtp)
    first = time.time()
    time.sleep(seconds + 2)
    received = httpx.get(f"http://127.0.0.1:{fakes_http}/_fake/smtp/received", timeout=60).json()
    arrivals = sorted(m["at"] for m in received["messages"])
    start = arrivals[0] if arrivals else first
    inside = [t for t in arrivals if t < start + seconds]
    busiest = max(
        (bisect_left(inside, t + 60.0) - bisect_left(inside, t) for t in inside), default=0
    )
    minutes = seconds / 60
    return [
        (
            f"rate limit {limit:,}/min, 4 worker processes, {seconds:.0f} s: busiest 60 s window",
            f"{busiest:,}",
            f"limit {limit:,}; counted at the SMTP sink by arrival time",
        ),
        (
            "rate limit utilisation while a backlog waits",
            f"{len(inside) / (limit * minutes) * 100:.1f}%",
            f"{len(inside):,} sent in {seconds:.0f} s, of {limit * minutes:,.0f} allowed",
        ),
    ]


def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mailsvc-lanes-") as scratch:
        folder = Path(scratch)
        postgres = EmbeddedPostgres(folder / "pg")
        redis = EmbeddedRedis(folder / "redis", persist=False)
        sink = PostfixSmtpSink(folder) if PostfixSmtpSink.available() else None
        if sink is None:
            raise SystemExit("bench.lanes needs Postfix's smtp-sink: apt-get install postfix")
        stack: Stack | None = None
        try:
            database_url = postgres.start()
            upgrade_database(database_url)
            redis_url = redis.start()
            secret = secrets.token_urlsafe(48)
            stack = Stack(
                folder,
                database_url,
                redis_url,
                secret,
                _env(database_url, redis_url, secret, sink.port),
            )
            rows += latency_and_throughput(stack, args.bulk, args.transactional)
            print("the raw ceiling and the naive baseline …", flush=True)
            raw = run_raw_ceiling(sink.host, sink.port, args.raw, processes=2)
            rows.append(
                (
                    "raw ceiling: a script blasting aiosmtplib, no database, no Celery",
                    f"{raw.per_second:,.0f} emails/s",
                    f"{raw.messages:,} messages, 2 processes, 16 connections each, uvloop",
                )
            )
            for builder in ("mailsvc", "stdlib"):
                naive = naive_throughput(redis_url, sink, args.naive, folder, builder=builder)
                rate = f"{naive.per_second:,.0f} emails/s"
                rows.append((naive.label, rate, f"{naive.messages:,} messages"))
            stack.stop()
            stack.processes.clear()
            stack.workers.clear()
            rows += rate_limit_accuracy(stack, args.limit, args.limit_seconds)
        finally:
            if stack is not None:
                stack.stop()
            sink.stop()
            redis.stop()
            postgres.stop()
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.lanes")
    p.add_argument("--bulk", type=int, default=200_000)
    p.add_argument("--transactional", type=int, default=1000)
    p.add_argument("--raw", type=int, default=50_000)
    p.add_argument("--naive", type=int, default=20_000)
    p.add_argument("--limit", type=int, default=6000)
    p.add_argument("--limit-seconds", type=float, default=180.0)
    return p


def main() -> None:
    rows = run(parser().parse_args())
    print("\n| measurement | result | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(json.dumps(rows, ensure_ascii=False))


if __name__ == "__main__":
    main()
