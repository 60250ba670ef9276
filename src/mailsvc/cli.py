"""The `mailsvc` command: dev, api, worker, beat, db, tenant, token, limits, openapi.

Beside a running `mailsvc dev`, every command uses the same embedded servers: it reads their
URLs from .mailsvc/runtime.json when MAILSVC_DATABASE_URL / MAILSVC_REDIS_URL are not set.
Outside it, no command starts a server of its own: it says what is missing and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from mailsvc import __version__
from mailsvc.config import Settings
from mailsvc.kit.logging import configure_logging, quiet_celery_chatter

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory
    from sqlalchemy.ext.asyncio import AsyncSession

    from mailsvc.models import Tenant

T = TypeVar("T")

# Exit codes, for scripts (argparse's usage errors are 2 as well).
EXIT_REFUSED = 2  # a bad argument, or a request the service refused (unknown tenant, …)
EXIT_NOT_CONFIGURED = 3  # no database (or secret, or Redis) named, and no `make run` beside
EXIT_UNREACHABLE = 4  # the database named does not answer
EXIT_NOT_MIGRATED = 5  # the database's schema is not this release's: run `mailsvc db upgrade`

_TTL = re.compile(r"(\d+)([smhdw]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BESIDE_DEV = "or start `make run` in this folder"

Command = Callable[[argparse.Namespace, Settings], int]


class CommandError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


def _from_running_dev(config: Settings) -> dict[str, Any]:
    """The settings `config` leaves unset that a `mailsvc dev` in this folder provides."""
    from mailsvc.devserver.embedded import RuntimeState

    found: dict[str, Any] = {}
    state = RuntimeState.read(config.data_dir)
    if state is not None:
        if not config.database_url and state.database_url:
            found["database_url"] = state.database_url
        if not config.redis_url and state.redis_url:
            found["redis_url"] = state.redis_url
    if config.jwt_secret is None and (config.data_dir / "jwt-secret").exists():
        from pydantic import SecretStr

        from mailsvc.devserver.supervisor import dev_jwt_secret

        found["jwt_secret"] = SecretStr(dev_jwt_secret(config.data_dir))
    return found


def _rerun_with(found: dict[str, Any], argv: list[str]) -> NoReturn:
    """api, worker and beat read MAILSVC_* themselves (and so do the processes they start): this
    process runs again with what a running `mailsvc dev` provides in its environment."""
    variables = {
        f"MAILSVC_{name.upper()}": value.get_secret_value() if name == "jwt_secret" else value
        for name, value in found.items()
    }
    os.execve(  # noqa: S606 (this same command, with its own arguments)
        sys.executable,
        [sys.executable, "-m", "mailsvc", *argv],
        {**os.environ, **variables},
    )


def _require(value: Any, missing: str) -> None:
    if not value:
        raise CommandError(f"{missing}, {_BESIDE_DEV}", EXIT_NOT_CONFIGURED)


def _database_url(config: Settings) -> str:
    """The database named by the settings or a running dev; never one started for the command."""
    if not config.database_url:
        raise CommandError(
            f"no database: set MAILSVC_DATABASE_URL, {_BESIDE_DEV}", EXIT_NOT_CONFIGURED
        )
    return config.database_url


def _current_revisions(database_url: str) -> set[str]:
    """The Alembic revisions the database is at (none before its first migration)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.engine import Connection, make_url
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from mailsvc.config import async_database_url
    from mailsvc.db import describe_outage

    def read(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async def probe(url: str) -> set[str]:
        # A short connect timeout: a host that drops packets would hold the command for 60 s.
        engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 10})
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    try:
        url = async_database_url(database_url)
    except ValueError as exc:
        raise CommandError(f"MAILSVC_DATABASE_URL: {exc}", EXIT_NOT_CONFIGURED) from exc
    try:
        return asyncio.run(probe(url))
    except Exception as exc:
        where = make_url(database_url).render_as_string(hide_password=True)
        raise CommandError(
            f"cannot reach the database {where} ({describe_outage(exc)}): "
            f"check MAILSVC_DATABASE_URL, {_BESIDE_DEV}",
            EXIT_UNREACHABLE,
        ) from exc


def _migrations() -> ScriptDirectory:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from mailsvc.db import alembic_ini

    try:
        return ScriptDirectory.from_config(Config(str(alembic_ini())))
    except FileNotFoundError as exc:
        raise CommandError(str(exc), EXIT_NOT_CONFIGURED) from exc


def _revision_text(revisions: set[str]) -> str:
    return ", ".join(sorted(revisions)) or "no revision"


def _migrated_database(config: Settings) -> str:
    """The database's URL, once it is known to answer and to be at this release's schema."""
    url = _database_url(config)
    current, migrations = _current_revisions(url), _migrations()
    heads = set(migrations.get_heads())
    if current == heads:
        return url
    known = {revision.revision for revision in migrations.walk_revisions()}
    if not current <= known:
        problem = (
            f"the database is at {_revision_text(current)}, which this release does not know: "
            "a newer release migrated it"
        )
    else:
        state = f"is at {_revision_text(current)}" if current else "has no tables yet"
        problem = (
            f"the database {state}, this release needs {_revision_text(heads)}: "
            "run `mailsvc db upgrade`"
        )
    raise CommandError(problem, EXIT_NOT_MIGRATED)


def _in_session(config: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """`work` in one committed transaction on the migrated database. The service's refusals
    end the command with their one line, and so does a database lost since the probe."""
    from mailsvc.db import database_unavailable, describe_outage, run_in_session
    from mailsvc.errors import MailsvcError

    url = _migrated_database(config)
    try:
        return run_in_session(url, work)
    except MailsvcError as exc:
        raise CommandError(exc.message) from exc
    except Exception as exc:
        if not database_unavailable(exc):
            raise  # a bug: its traceback is the useful report
        raise CommandError(
            f"the database stopped answering ({describe_outage(exc)})", EXIT_UNREACHABLE
        ) from exc


# -- tenants and tokens --------------------------------------------------------------------


def cmd_tenant_create(args: argparse.Namespace, config: Settings) -> int:
    from mailsvc.auth.service import create_tenant

    domains = [d for d in args.domains.split(",") if d.strip()]

    async def work(session: AsyncSession) -> Tenant:
        return await create_tenant(
            session, name=args.name, domains=domains, default_sender=args.sender
        )

    tenant = _in_session(config, work)
    print(
        f"tenant {tenant.name} {tenant.id} domains={','.join(tenant.allowed_domains)} "
        f"sender={tenant.default_sender}"
    )
    return 0


def cmd_tenant_list(_: argparse.Namespace, config: Settings) -> int:
    from mailsvc.auth.service import list_tenants

    tenants = _in_session(config, list_tenants)
    print("name\tid\tdomains\tdefault sender")
    for tenant in tenants:
        domains = ",".join(tenant.allowed_domains)
        print(f"{tenant.name}\t{tenant.id}\t{domains}\t{tenant.default_sender or '-'}")
    return 0


def cmd_token_create(args: argparse.Namespace, config: Settings) -> int:
    from mailsvc.auth.scopes import ALL_SCOPES
    from mailsvc.auth.service import token_for_tenant

    scopes = args.scopes.replace(",", " ").split()
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown or not scopes:
        raise CommandError(
            f"unknown scopes {unknown}; choose from: {' '.join(ALL_SCOPES)}"
            if unknown
            else "give at least one scope"
        )
    _require(config.jwt_secret, "no signing secret: set MAILSVC_JWT_SECRET")
    token = _in_session(
        config,
        lambda session: token_for_tenant(
            session, tenant_name=args.tenant, scopes=scopes, ttl=args.ttl, config=config
        ),
    )
    print(token)
    return 0


# -- rate limits ----------------------------------------------------------------------------

_SCOPE = re.compile(
    r"provider:(sendgrid|mailgun|ses|smtp)|lane:\w+|tenant:[0-9a-f-]{36}:\w+"
    r"|api|api:tenant:[0-9a-f-]{36}"
)


def cmd_limits_show(_: argparse.Namespace, config: Settings) -> int:
    from mailsvc.ratelimit.repository import RateLimitRepository

    overrides = _in_session(config, lambda s: RateLimitRepository(s).all())
    for scope, spec in sorted({**config.rate_limits, **overrides}.items()):
        source = "set" if scope in overrides else "default"
        burst = f"\tburst={spec.burst}" if spec.burst else ""
        print(
            f"{scope}\tper_minute={spec.per_minute}\tper_second={spec.per_second}{burst}\t{source}"
        )
    return 0


def cmd_limits_set(args: argparse.Namespace, config: Settings) -> int:
    from mailsvc.config import RateLimitSpec
    from mailsvc.ratelimit.repository import RateLimitRepository

    if not _SCOPE.fullmatch(args.scope):
        raise CommandError(
            f"{args.scope!r} is not a scope: provider:<sendgrid|mailgun|ses|smtp>, lane:<lane>, "
            "tenant:<tenant id>:<lane>, api or api:tenant:<tenant id>"
        )
    if args.per_minute is None and args.per_second is None:
        raise CommandError("give --per-minute, --per-second or both")
    spec = RateLimitSpec(per_minute=args.per_minute, per_second=args.per_second, burst=args.burst)
    _in_session(config, lambda s: RateLimitRepository(s).put(args.scope, spec))
    burst = f" burst={spec.burst}" if spec.burst else ""
    print(f"{args.scope} per_minute={spec.per_minute} per_second={spec.per_second}{burst}")
    return 0


def cmd_limits_clear(args: argparse.Namespace, config: Settings) -> int:
    from mailsvc.ratelimit.repository import RateLimitRepository

    removed = _in_session(config, lambda s: RateLimitRepository(s).remove(args.scope))
    if not removed:
        raise CommandError(f"no limit is set for {args.scope!r}")
    print(f"{args.scope}: back to the default")
    return 0


# -- the schema and the API description ------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace, config: Settings) -> int:
    from alembic.util.exc import CommandError as AlembicError

    from mailsvc.db import upgrade_database

    url = _database_url(config)
    before = _current_revisions(url)
    try:
        upgrade_database(url, args.revision)
    except AlembicError as exc:
        raise CommandError(f"cannot upgrade to {args.revision!r}: {exc}") from exc
    after = _current_revisions(url)
    at = _revision_text(after) + (" (head)" if after == set(_migrations().get_heads()) else "")
    if before == after:
        print(f"the database is already at {at}: nothing to do")
    elif not before:
        print(f"migrated an empty database to {at}")
    else:
        print(f"upgraded the database from {_revision_text(before)} to {at}")
    return 0


def cmd_openapi(args: argparse.Namespace, _: Settings) -> int:
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


# -- processes ----------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace, config: Settings) -> int:
    from mailsvc.devserver.supervisor import run_dev

    configure_logging(config.log_level, json_lines=False)
    return run_dev(
        config, api_port=args.port, smtp_relay=args.smtp, fake_providers=args.fake_providers
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


def _require_broker(config: Settings) -> None:
    _require(config.broker_url or config.redis_url, "no broker: set MAILSVC_REDIS_URL")


def cmd_api(args: argparse.Namespace, config: Settings) -> int:
    if args.metrics_port:
        _metrics_folder()
    import uvicorn

    _database_url(config)
    _require(
        config.jwt_secret or config.jwt_public_keys,
        "no signing key: set MAILSVC_JWT_SECRET or MAILSVC_JWT_PUBLIC_KEYS",
    )
    configure_logging(config.log_level, json_lines=config.json_logs)
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
        timeout_keep_alive=config.api_keepalive_seconds,
    )
    return 0


def _worker_argv(args: argparse.Namespace, config: Settings) -> list[str]:
    from mailsvc.worker.queues import ROLES

    argv = [
        *(["--quiet"] if config.env == "dev" else []),
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
        config.log_level,
        "--without-mingle",
        "--without-gossip",
    ]
    if args.max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(args.max_tasks_per_child)]
    return argv


def cmd_worker(args: argparse.Namespace, config: Settings) -> int:
    if args.metrics_port:
        _metrics_folder()
    from mailsvc.worker_app import worker_app

    _database_url(config)
    _require_broker(config)
    # The rate limits and breakers live in Redis, whatever the broker is.
    _require(config.redis_url, "no Redis for the limits and breakers: set MAILSVC_REDIS_URL")
    celery_app = worker_app(config)
    configure_logging(config.log_level, json_lines=config.json_logs)
    if config.env == "dev":
        quiet_celery_chatter()
    if args.metrics_port:
        _serve_metrics(args.metrics_port, "0.0.0.0")  # noqa: S104 (a scrape target in a cluster)
    celery_app.worker_main(_worker_argv(args, config))
    return 0


def cmd_beat(args: argparse.Namespace, config: Settings) -> int:
    from mailsvc.worker.beat import BeatLock
    from mailsvc.worker_app import worker_app

    _database_url(config)
    _require_broker(config)
    if not config.redis_url:  # the lease is kept in Redis, whatever the broker is
        raise CommandError(
            f"no Redis for beat's lease: set MAILSVC_REDIS_URL, {_BESIDE_DEV}", EXIT_NOT_CONFIGURED
        )
    celery_app = worker_app(config)
    configure_logging(config.log_level, json_lines=config.json_logs)
    if config.env == "dev":
        quiet_celery_chatter()
    schedule = args.schedule or str(config.data_dir / "celerybeat-schedule")
    Path(schedule).parent.mkdir(parents=True, exist_ok=True)
    lock = BeatLock.hold(config.redis_url, ttl_seconds=config.beat_lock_seconds)
    try:
        celery_app.start(["beat", "--schedule", schedule, "--loglevel", config.log_level])
    finally:
        lock.release()
    return 0


# -- the parser ----------------------------------------------------------------------------

_SERVERS = ("api", "worker", "beat")  # read MAILSVC_* themselves, in every process they start
_STANDALONE = ("dev", "openapi")  # need no server of a running dev


def _add_dev(commands: Any) -> None:
    dev = commands.add_parser(
        "dev",
        help="run everything locally, on embedded servers (`make run`)",
        description="Start PostgreSQL and Redis under .mailsvc/ (unless MAILSVC_DATABASE_URL / "
        "MAILSVC_REDIS_URL name others), migrate, then run the api, a worker for every role, "
        "beat and a capture SMTP server. Prints a token and a ready curl line; Ctrl-C stops all.",
    )
    dev.add_argument("--port", type=int, default=8000, help="the API's port (default 8000)")
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


def _add_api(commands: Any) -> None:
    api = commands.add_parser("api", help="serve the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    api.add_argument("--port", type=int, default=8000, help="the port to listen on")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.add_argument("--no-access-log", action="store_true", help="no line per request")
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


def _add_worker(commands: Any) -> None:
    from mailsvc.worker.queues import ROLES

    worker = commands.add_parser("worker", help="run a Celery worker for one role")
    worker.add_argument(
        "--role",
        choices=sorted(ROLES),
        default="all",
        help="the queues to serve: "
        + "; ".join(f"{role}: {', '.join(queues)}" for role, queues in ROLES.items()),
    )
    worker.add_argument("--concurrency", type=int, default=2, help="tasks run at once")
    worker.add_argument(
        "--pool",
        choices=["prefork", "solo", "threads"],
        default="prefork",
        help="prefork: a process per slot (default); threads: a thread per slot in one process, "
        "each with its own event loop and connections; solo: one task at a time, in-process",
    )
    worker.add_argument("--hostname", default=None, help="the node name (default ROLE@host)")
    worker.add_argument(
        "--max-tasks-per-child", type=int, default=None, help="replace a pool process after N"
    )
    worker.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    worker.set_defaults(func=cmd_worker)


def _add_beat(commands: Any) -> None:
    beat = commands.add_parser("beat", help="run Celery Beat (exactly one, behind a Redis lease)")
    beat.add_argument(
        "--schedule", default=None, help="the beat state file (default .mailsvc/celerybeat-…)"
    )
    beat.set_defaults(func=cmd_beat)


def _add_db(commands: Any) -> None:
    db = commands.add_parser("db", help="the database schema (Alembic)")
    actions = db.add_subparsers(dest="db", required=True, metavar="ACTION")
    upgrade = actions.add_parser(
        "upgrade",
        help="migrate to the newest revision, and say from which to which",
        description="Migrate the database, then print the revision it started from and the one "
        "it is at, or that it was already there.",
    )
    upgrade.add_argument(
        "revision", nargs="?", default="head", help="the revision to reach (default: head)"
    )
    upgrade.set_defaults(func=cmd_db_upgrade)


def _add_tenant(commands: Any) -> None:
    tenant = commands.add_parser("tenant", help="create and list tenants")
    actions = tenant.add_subparsers(dest="tenant", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a tenant")
    create.add_argument("name", help="the tenant's name (tokens are made for it by name)")
    create.add_argument("--domains", required=True, help="comma-separated sender domains")
    create.add_argument(
        "--sender",
        default=None,
        help="the From of messages that give none: 'Acme <no-reply@acme.example>' or an "
        "address in one of the domains (default noreply@ the first domain)",
    )
    create.set_defaults(func=cmd_tenant_create)
    listing = actions.add_parser(
        "list", help="every tenant: name, id, domains, default sender (tab-separated)"
    )
    listing.set_defaults(func=cmd_tenant_list)


def _add_token(commands: Any) -> None:
    token = commands.add_parser("token", help="sign API tokens for a tenant")
    actions = token.add_subparsers(dest="token", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="print a signed token for a tenant",
        description="Print a JWT for the tenant, signed with MAILSVC_JWT_SECRET (beside "
        "`make run`: its .mailsvc/jwt-secret).",
    )
    create.add_argument("--tenant", required=True, help="the tenant's name")
    create.add_argument(
        "--scopes",
        required=True,
        help='space- or comma-separated, e.g. "messages:send messages:read"',
    )
    create.add_argument(
        "--ttl",
        type=parse_ttl,
        default=timedelta(hours=1),
        help="how long it is valid: 3600, 30m, 1h, 7d … (default 1h)",
    )
    create.set_defaults(func=cmd_token_create)


def _add_limits(commands: Any) -> None:
    limits = commands.add_parser("limits", help="rate limits, changed without a restart")
    actions = limits.add_subparsers(dest="limits", required=True, metavar="ACTION")
    actions.add_parser("show", help="the limits in force").set_defaults(func=cmd_limits_show)
    limit_set = actions.add_parser("set", help="set a limit (workers see it within 5 s)")
    limit_set.add_argument(
        "scope",
        help="provider:<name>, lane:<lane>, tenant:<id>:<lane>, api or api:tenant:<id>",
    )
    limit_set.add_argument("--per-minute", type=positive_int, default=None, help="tokens a minute")
    limit_set.add_argument("--per-second", type=positive_int, default=None, help="tokens a second")
    limit_set.add_argument(
        "--burst",
        type=positive_int,
        default=None,
        help="a token bucket of this size (the API's limit: 200 by default)",
    )
    limit_set.set_defaults(func=cmd_limits_set)
    limit_clear = actions.add_parser("clear", help="back to the default for a scope")
    limit_clear.add_argument("scope", help="a scope that `limits set` set")
    limit_clear.set_defaults(func=cmd_limits_clear)


def _add_openapi(commands: Any) -> None:
    openapi = commands.add_parser("openapi", help="write or check openapi.yaml")
    openapi.add_argument("--output", default="openapi.yaml", help="the file (openapi.yaml)")
    openapi.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from the code's API"
    )
    openapi.set_defaults(func=cmd_openapi)


_EPILOG = f"""\
exit codes:
  0  done
  1  failed (a server stopped; openapi.yaml is out of date)
  {EXIT_REFUSED}  refused: a bad argument, an unknown tenant, a duplicate, …
  {EXIT_NOT_CONFIGURED}  not configured: no MAILSVC_DATABASE_URL (secret, Redis) and no `make run`
  {EXIT_UNREACHABLE}  the database does not answer
  {EXIT_NOT_MIGRATED}  the database is not at this release's schema: run `mailsvc db upgrade`
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailsvc",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mailsvc {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, title="commands", metavar="COMMAND"
    )
    for add in (
        _add_dev,
        _add_api,
        _add_worker,
        _add_beat,
        _add_db,
        _add_tenant,
        _add_token,
        _add_limits,
        _add_openapi,
    ):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    config = Settings()  # read once, here; each command is given what it needs
    if args.command not in _STANDALONE:
        found = _from_running_dev(config)
        if found and args.command in _SERVERS:
            _rerun_with(found, argv)
        config = config.model_copy(update=found)
    command: Command = args.func
    try:
        return command(args, config)
    except CommandError as exc:
        print(f"mailsvc: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
