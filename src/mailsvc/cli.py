"""The `mailsvc` command: dev, api, worker, beat, db, tenant, token, openapi.

Beside a running `mailsvc dev`, every command uses the same embedded servers: it reads their
URLs from .mailsvc/runtime.json when MAILSVC_DATABASE_URL / MAILSVC_REDIS_URL are not set.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from mailsvc.config import settings
from mailsvc.kit.logging import configure_logging, quiet_celery_chatter

_TTL = re.compile(r"(\d+)([smhdw]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class CommandError(Exception):
    pass


def parse_ttl(value: str) -> timedelta:
    match = _TTL.fullmatch(value.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 3600, 30m, 1h or 7d")
    return timedelta(seconds=int(match.group(1)) * _TTL_UNITS[match.group(2)])


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number above 0")
    return int(value)


def parse_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host, int(port)


# -- where the servers are ---------------------------------------------------------------------


def _use_running_dev() -> None:
    """Fill unset URLs and secret from a running `mailsvc dev` in this folder."""
    from mailsvc.devserver.embedded import RuntimeState
    from mailsvc.worker.app import celery_app, configure

    state = RuntimeState.read(settings.data_dir)
    if state is not None:
        settings.database_url = settings.database_url or state.database_url
        settings.redis_url = settings.redis_url or state.redis_url
    if settings.jwt_secret is None and (settings.data_dir / "jwt-secret").exists():
        from pydantic import SecretStr

        from mailsvc.devserver.supervisor import dev_jwt_secret

        settings.jwt_secret = SecretStr(dev_jwt_secret(settings.data_dir))
    configure(celery_app, settings)


def _database_url() -> str:
    """The configured database, a running dev's, or the embedded one started for this command."""
    if settings.database_url:
        return settings.database_url
    from mailsvc.devserver.embedded import EmbeddedPostgres

    return EmbeddedPostgres(settings.data_dir / "pg").start()


def _require(name: str, value: Any) -> None:
    if not value:
        raise CommandError(
            f"MAILSVC_{name} is not set and no `mailsvc dev` is running in this folder"
        )


# -- tenants and tokens --------------------------------------------------------------------


def _token_for(tenant: str, scopes: list[str], ttl: timedelta) -> str:
    from mailsvc.auth.service import token_for_tenant
    from mailsvc.db import run_in_session
    from mailsvc.errors import NotFound

    try:
        return run_in_session(
            _database_url(),
            lambda session: token_for_tenant(session, tenant_name=tenant, scopes=scopes, ttl=ttl),
        )
    except NotFound as exc:
        raise CommandError(exc.message) from exc


def cmd_tenant_create(args: argparse.Namespace) -> int:
    from mailsvc.auth.service import create_tenant
    from mailsvc.db import run_in_session
    from mailsvc.errors import MailsvcError

    domains = [d for d in args.domains.split(",") if d.strip()]

    async def work(session: Any) -> Any:
        return await create_tenant(
            session, name=args.name, domains=domains, default_sender=args.sender
        )

    try:
        tenant = run_in_session(_database_url(), work)
    except MailsvcError as exc:
        raise CommandError(exc.message) from exc
    print(f"tenant {tenant.name} {tenant.id} domains={','.join(tenant.allowed_domains)}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from mailsvc.auth.scopes import ALL_SCOPES

    scopes = args.scopes.replace(",", " ").split()
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown or not scopes:
        raise CommandError(
            f"unknown scopes {unknown}; choose from: {' '.join(ALL_SCOPES)}"
            if unknown
            else "give at least one scope"
        )
    _require("JWT_SECRET", settings.jwt_secret)
    print(_token_for(args.tenant, scopes, args.ttl))
    return 0


# -- rate limits ----------------------------------------------------------------------------

_SCOPE = re.compile(
    r"provider:(sendgrid|mailgun|ses|smtp)|lane:\w+|tenant:[0-9a-f-]{36}:\w+"
    r"|api|api:tenant:[0-9a-f-]{36}"
)


def cmd_limits_show(_: argparse.Namespace) -> int:
    from mailsvc.db import run_in_session
    from mailsvc.ratelimit.repository import RateLimitRepository

    overrides = run_in_session(_database_url(), lambda s: RateLimitRepository(s).all())
    for scope, spec in sorted({**settings.rate_limits, **overrides}.items()):
        source = "set" if scope in overrides else "default"
        burst = f"\tburst={spec.burst}" if spec.burst else ""
        print(
            f"{scope}\tper_minute={spec.per_minute}\tper_second={spec.per_second}{burst}\t{source}"
        )
    return 0


def cmd_limits_set(args: argparse.Namespace) -> int:
    from mailsvc.config import RateLimitSpec
    from mailsvc.db import run_in_session
    from mailsvc.ratelimit.repository import RateLimitRepository

    if not _SCOPE.fullmatch(args.scope):
        raise CommandError(
            f"{args.scope!r} is not a scope: provider:<sendgrid|mailgun|ses|smtp>, lane:<lane>, "
            "tenant:<tenant id>:<lane>, api or api:tenant:<tenant id>"
        )
    if args.per_minute is None and args.per_second is None:
        raise CommandError("give --per-minute, --per-second or both")
    spec = RateLimitSpec(per_minute=args.per_minute, per_second=args.per_second, burst=args.burst)
    run_in_session(_database_url(), lambda s: RateLimitRepository(s).put(args.scope, spec))
    burst = f" burst={spec.burst}" if spec.burst else ""
    print(f"{args.scope} per_minute={spec.per_minute} per_second={spec.per_second}{burst}")
    return 0


def cmd_limits_clear(args: argparse.Namespace) -> int:
    from mailsvc.db import run_in_session
    from mailsvc.ratelimit.repository import RateLimitRepository

    removed = run_in_session(_database_url(), lambda s: RateLimitRepository(s).remove(args.scope))
    if not removed:
        raise CommandError(f"no limit is set for {args.scope!r}")
    print(f"{args.scope}: back to the default")
    return 0


# -- processes ----------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    from mailsvc.devserver.supervisor import run_dev

    configure_logging(settings.log_level, json_lines=False)
    return run_dev(
        settings, api_port=args.port, smtp_relay=args.smtp, fake_providers=args.fake_providers
    )


def _serve_metrics(port: int, host: str) -> None:
    """Prometheus metrics on a port of their own: the sum over every process that writes to
    PROMETHEUS_MULTIPROC_DIR (the API's uvicorn workers, a worker's pool processes)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)


def _metrics_folder() -> None:
    """Before prometheus_client is imported: every process writes its samples here."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mailsvc-metrics-")


def cmd_api(args: argparse.Namespace) -> int:
    if args.metrics_port:
        _metrics_folder()
    import uvicorn

    _require("DATABASE_URL", settings.database_url)
    _require("JWT_SECRET", settings.jwt_secret or settings.jwt_public_keys)
    configure_logging(settings.log_level, json_lines=settings.json_logs)
    if args.metrics_port:
        _serve_metrics(args.metrics_port, args.metrics_host)
    uvicorn.run(
        "mailsvc.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=not args.no_access_log,
        log_config=None,
        proxy_headers=True,
        timeout_keep_alive=settings.api_keepalive_seconds,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.metrics_port:
        _metrics_folder()
    from mailsvc.worker.queues import ROLES
    from mailsvc.worker_app import celery_app

    _require("DATABASE_URL", settings.database_url)
    _require("REDIS_URL", settings.broker_url or settings.redis_url)
    configure_logging(settings.log_level, json_lines=settings.json_logs)
    if settings.env == "dev":
        quiet_celery_chatter()
    argv = [
        *(["--quiet"] if settings.env == "dev" else []),
        "worker",
        "--queues",
        ",".join(ROLES[args.role]),
        "--hostname",
        args.hostname or f"{args.role}@%h",
        "--concurrency",
        str(args.concurrency),
        "--pool",
        args.pool,
        "--loglevel",
        settings.log_level,
        "--without-mingle",
        "--without-gossip",
    ]
    if args.max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(args.max_tasks_per_child)]
    if args.metrics_port:
        _serve_metrics(args.metrics_port, "0.0.0.0")  # noqa: S104 (a scrape target in a cluster)
    celery_app.worker_main(argv)
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    from mailsvc.worker_app import celery_app

    _require("DATABASE_URL", settings.database_url)
    _require("REDIS_URL", settings.broker_url or settings.redis_url)
    configure_logging(settings.log_level, json_lines=settings.json_logs)
    if settings.env == "dev":
        quiet_celery_chatter()
    schedule = args.schedule or str(settings.data_dir / "celerybeat-schedule")
    Path(schedule).parent.mkdir(parents=True, exist_ok=True)
    from mailsvc.worker.beat import BeatLock

    lock = BeatLock.hold(settings.redis_url or "", ttl_seconds=settings.beat_lock_seconds)
    try:
        celery_app.start(["beat", "--schedule", schedule, "--loglevel", settings.log_level])
    finally:
        lock.release()
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from mailsvc.db import upgrade_database

    upgrade_database(_database_url(), args.revision)
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from mailsvc.openapi import render_openapi

    rendered = render_openapi()
    target = Path(args.output)
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != rendered:
            print(f"{target} is out of date: run `make openapi`", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    target.write_text(rendered)
    print(f"wrote {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mailsvc.worker.queues import ROLES

    parser = argparse.ArgumentParser(prog="mailsvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run everything locally on the embedded servers")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument(
        "--smtp",
        type=parse_host_port,
        default=None,
        metavar="HOST:PORT",
        help="relay mail to this SMTP server instead of the capture server",
    )
    dev.add_argument(
        "--fake-providers",
        action="store_true",
        help="send through local fake SendGrid, Mailgun, SES and SMTP servers (scriptable)",
    )
    dev.set_defaults(func=cmd_dev)

    api = commands.add_parser("api", help="serve the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    api.add_argument("--no-access-log", action="store_true")
    api.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (not on the API's own, where /metrics "
        "needs MAILSVC_METRICS_TOKEN)",
    )
    api.add_argument(
        "--metrics-host",
        default="0.0.0.0",  # noqa: S104 (a scrape target inside a cluster or compose network)
        help="the metrics port's address",
    )
    api.set_defaults(func=cmd_api)

    worker = commands.add_parser("worker", help="run a Celery worker for one role")
    worker.add_argument("--role", choices=sorted(ROLES), default="all")
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument(
        "--pool",
        choices=["prefork", "solo", "threads"],
        default="prefork",
        help="prefork: a process per slot (default); threads: a thread per slot in one process, "
        "each with its own event loop and connections; solo: one task at a time, in-process",
    )
    worker.add_argument("--hostname", default=None)
    worker.add_argument("--max-tasks-per-child", type=int, default=None)
    worker.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    worker.set_defaults(func=cmd_worker)

    beat = commands.add_parser("beat", help="run Celery Beat (exactly one)")
    beat.add_argument("--schedule", default=None, help="the beat state file")
    beat.set_defaults(func=cmd_beat)

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db", required=True)
    upgrade = db.add_parser("upgrade", help="migrate to the newest revision")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(func=cmd_db_upgrade)

    tenant = commands.add_parser("tenant").add_subparsers(dest="tenant", required=True)
    tenant_create = tenant.add_parser("create", help="create a tenant")
    tenant_create.add_argument("name")
    tenant_create.add_argument("--domains", required=True, help="comma-separated sender domains")
    tenant_create.add_argument("--sender", default=None, help="default From address")
    tenant_create.set_defaults(func=cmd_tenant_create)

    token = commands.add_parser("token").add_subparsers(dest="token", required=True)
    token_create = token.add_parser("create", help="print a signed token for a tenant")
    token_create.add_argument("--tenant", required=True)
    token_create.add_argument("--scopes", required=True, help='e.g. "messages:send messages:read"')
    token_create.add_argument("--ttl", type=parse_ttl, default=timedelta(hours=1))
    token_create.set_defaults(func=cmd_token_create)

    limits = commands.add_parser("limits", help="rate limits, changed without a restart")
    limit_commands = limits.add_subparsers(dest="limits", required=True)
    limit_commands.add_parser("show", help="the limits in force").set_defaults(func=cmd_limits_show)
    limit_set = limit_commands.add_parser("set", help="set a limit (workers see it within 5 s)")
    limit_set.add_argument(
        "scope",
        help="provider:<name>, lane:<lane>, tenant:<id>:<lane>, api or api:tenant:<id>",
    )
    limit_set.add_argument("--per-minute", type=positive_int, default=None)
    limit_set.add_argument("--per-second", type=positive_int, default=None)
    limit_set.add_argument(
        "--burst",
        type=positive_int,
        default=None,
        help="a token bucket of this size (the API's limit: 200 by default)",
    )
    limit_set.set_defaults(func=cmd_limits_set)
    limit_clear = limit_commands.add_parser("clear", help="back to the default for a scope")
    limit_clear.add_argument("scope")
    limit_clear.set_defaults(func=cmd_limits_clear)

    openapi = commands.add_parser("openapi", help="write or check openapi.yaml")
    openapi.add_argument("--output", default="openapi.yaml")
    openapi.add_argument("--check", action="store_true")
    openapi.set_defaults(func=cmd_openapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("dev", "openapi"):
        _use_running_dev()
    try:
        result: int = args.func(args)
    except CommandError as exc:
        print(f"mailsvc: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
