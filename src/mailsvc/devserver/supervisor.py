"""`mailsvc dev`: the whole service on one machine, with nothing installed but Python.

It starts PostgreSQL and Redis (unless URLs are given), migrates, creates a dev tenant, starts the
capture SMTP server, the api, a worker with every role and beat, then prints a token and a curl
line. Ctrl-C stops everything it started; a second run reuses the data in .mailsvc/.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType

from pydantic import SecretStr

from mailsvc.auth.scopes import ALL_SCOPES
from mailsvc.auth.service import ensure_tenant, token_for_tenant
from mailsvc.config import Settings
from mailsvc.db import run_in_session, upgrade_database
from mailsvc.devserver.capture_smtp import start_capture_server
from mailsvc.devserver.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    RuntimeState,
    free_port,
    set_parent_death_signal,
    wait_for_port,
)
from mailsvc.devserver.fakes import FakeProviders

DEV_TENANT = "dev"
DEV_DOMAIN = "example.com"


def dev_jwt_secret(data_dir: Path) -> str:
    """The secret `mailsvc dev` signs with, created once and kept in .mailsvc/jwt-secret."""
    path = data_dir / "jwt-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class Supervisor:
    children: list[Child] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "mailsvc", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us; we stop children in order
            preexec_fn=set_parent_death_signal,
        )
        self.children.append(Child(name, process))

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.children:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
            # A Celery pool child can outlive its parent by a moment: sweep the group too.
            _signal_group(child.process, signal.SIGKILL)
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep stopping the rest
                print(f"mailsvc dev: cleanup failed: {exc}", file=sys.stderr)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signum)


@dataclass(frozen=True)
class MailRoute:
    """Where the dev stack's mail goes: the providers' settings for the children, and how the
    banner describes the mailbox."""

    env: dict[str, str]
    mailbox: str
    smtp_port: int
    help: str = ""


def run_dev(
    config: Settings,
    *,
    api_port: int = 8000,
    smtp_port: int = 2525,
    smtp_relay: tuple[str, int] | None = None,
    fake_providers: bool = False,
) -> int:
    """Runs until Ctrl-C. With `smtp_relay`, mail goes to that server instead of the capture one;
    with `fake_providers`, through fake SendGrid → Mailgun → SES → SMTP, to watch failover."""

    data_dir = config.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    running = RuntimeState.read(data_dir)
    if running is not None:
        print(f"mailsvc dev is already running (pid {running.pid}), api at {running.api_url}")
        return 1

    supervisor = Supervisor()
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        database_url, redis_url = _start_servers(config, data_dir, supervisor)
        secret = (
            config.jwt_secret.get_secret_value() if config.jwt_secret else dev_jwt_secret(data_dir)
        )
        _prepare_database(database_url)
        mail = _route_mail(supervisor, data_dir, smtp_port, smtp_relay, fake_providers)
        env = _child_env(database_url, redis_url, secret, mail, data_dir)
        _start_services(supervisor, env, api_port, redis_url)

        api_url = f"http://127.0.0.1:{api_port}"
        RuntimeState(
            pid=os.getpid(),
            database_url=database_url,
            redis_url=redis_url,
            api_url=api_url,
            smtp_port=mail.smtp_port,
        ).write(data_dir)
        supervisor.cleanups.append(lambda: RuntimeState.remove(data_dir))
        token = _dev_token(config, database_url, secret)
        _print_banner(api_url, token, mail.mailbox, mail.help)
        return _watch(supervisor)
    except _Stop:
        print("\nmailsvc dev: stopping…", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop()


def _start_servers(config: Settings, data_dir: Path, supervisor: Supervisor) -> tuple[str, str]:
    """PostgreSQL and Redis: those the settings name, else embedded ones under `data_dir`."""
    database_url = config.database_url
    if not database_url:
        postgres = EmbeddedPostgres(data_dir / "pg")
        database_url = postgres.start()
        supervisor.cleanups.append(postgres.stop)
    redis_url = config.redis_url
    if not redis_url:
        redis = EmbeddedRedis(data_dir / "redis", port=6390)
        redis_url = redis.start()
        supervisor.cleanups.append(redis.stop)
    return database_url, redis_url


def _prepare_database(database_url: str) -> None:
    """Migrated, with the dev tenant the banner's token is for."""
    upgrade_database(database_url)
    run_in_session(
        database_url,
        lambda session: ensure_tenant(session, name=DEV_TENANT, domains=[DEV_DOMAIN]),
    )


def _route_mail(
    supervisor: Supervisor,
    data_dir: Path,
    smtp_port: int,
    smtp_relay: tuple[str, int] | None,
    fake_providers: bool,
) -> MailRoute:
    outbox = data_dir / "outbox"
    if fake_providers:
        fakes = FakeProviders(outbox=outbox)
        fakes.start(http_port=free_port(8025), smtp_port=free_port(smtp_port))
        supervisor.cleanups.append(fakes.stop)
        return MailRoute(
            env=fakes.settings_env(),
            mailbox=f"{outbox}/<provider>-*.eml   (fake providers, {fakes.http_url})",
            smtp_port=smtp_port,
            help=_fakes_help(fakes.http_url),
        )
    if smtp_relay is None:
        smtp_port = free_port(smtp_port)
        capture = start_capture_server(outbox, port=smtp_port)
        supervisor.cleanups.append(capture.stop)
        return MailRoute(
            env=_smtp_only("127.0.0.1", smtp_port),
            mailbox=f"{outbox}/*.eml   (the capture SMTP server keeps every message)",
            smtp_port=smtp_port,
        )
    return MailRoute(
        env=_smtp_only(*smtp_relay),
        mailbox=f"relayed to SMTP {smtp_relay[0]}:{smtp_relay[1]}",
        smtp_port=smtp_port,
    )


def _child_env(
    database_url: str, redis_url: str, secret: str, mail: MailRoute, data_dir: Path
) -> dict[str, str]:
    """The api's, the worker's and beat's environment: they read their settings from it."""

    def kept(name: str, default: str) -> str:  # dev's shorter housekeeping, unless set
        return os.environ.get(name, default)

    return {
        **os.environ,
        "MAILSVC_ENV": "dev",
        "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_REDIS_URL": redis_url,
        "MAILSVC_JWT_SECRET": secret,
        **mail.env,
        "MAILSVC_DATA_DIR": str(data_dir),
        "MAILSVC_SWEEP_AFTER_SECONDS": kept("MAILSVC_SWEEP_AFTER_SECONDS", "20"),
        "MAILSVC_SWEEP_INTERVAL_SECONDS": kept("MAILSVC_SWEEP_INTERVAL_SECONDS", "10"),
        "MAILSVC_DISPATCH_INTERVAL_SECONDS": kept("MAILSVC_DISPATCH_INTERVAL_SECONDS", "2"),
    }


def _start_services(
    supervisor: Supervisor, env: dict[str, str], api_port: int, redis_url: str
) -> None:
    supervisor.spawn("api", ["api", "--port", str(api_port)], env)
    supervisor.spawn("worker", ["worker", "--role", "all", "--concurrency", "2"], env)
    supervisor.spawn("beat", ["beat"], env)
    wait_for_port(api_port, timeout=30)
    _wait_for_worker(redis_url)


def _dev_token(config: Settings, database_url: str, secret: str) -> str:
    """The banner's token: every scope, for the dev tenant, for 30 days."""
    signing = config.model_copy(update={"jwt_secret": SecretStr(secret)})
    return run_in_session(
        database_url,
        lambda session: token_for_tenant(
            session,
            tenant_name=DEV_TENANT,
            scopes=ALL_SCOPES,
            ttl=timedelta(days=30),
            config=signing,
        ),
    )


def _watch(supervisor: Supervisor) -> int:
    """Until a child exits (1) or Ctrl-C raises _Stop."""
    while True:
        exited = supervisor.first_exited()
        if exited is not None:
            print(
                f"mailsvc dev: {exited.name} exited with {exited.process.returncode}; "
                "stopping everything",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.5)


def _wait_for_worker(redis_url: str, timeout: float = 30.0) -> None:
    from celery import Celery

    # A client of its own: the process's celery_app keeps the settings it was configured with.
    client = Celery("mailsvc-dev", broker=redis_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if client.control.ping(timeout=0.5):
                return
        print("mailsvc dev: the worker did not answer a ping yet; continuing", file=sys.stderr)
    finally:
        client.close()


def _smtp_only(host: str, port: int) -> dict[str, str]:
    return {
        "MAILSVC_PROVIDER_ORDER": "smtp",
        "MAILSVC_SMTP_HOST": host,
        "MAILSVC_SMTP_PORT": str(port),
    }


def _fakes_help(url: str) -> str:
    return f"""
Fake providers: sendgrid → mailgun → ses → smtp. Watch a failover:
  curl -s -X POST {url}/_fake/sendgrid/fail -d '{{"status": 503, "for_seconds": 60}}'
  (send a message; its attempts show sendgrid failing and mailgun taking it)
  curl -s {url}/_fake/deliveries      # which provider took each Message-ID
"""


def _print_banner(api_url: str, token: str, mailbox: str, extra: str = "") -> None:
    body = (
        '{"to": ["someone@example.net"], "subject": "Hello from mailsvc", '
        '"text": "It works.", "html": "<p>It works.</p>"}'
    )
    print(
        f"""
mailsvc is running.
  api      {api_url}   (docs: {api_url}/docs)
  mail     {mailbox}

Token (all scopes, 30 days):
{token}

Send an email:
curl -s {api_url}/v1/messages -H "Authorization: Bearer {token}" \\
  -H 'Content-Type: application/json' -d '{body}'

Look it up:
curl -s {api_url}/v1/messages/<id> -H "Authorization: Bearer {token}"
{extra}
Ctrl-C stops everything.
""",
        flush=True,
    )
