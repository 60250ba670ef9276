"""The `mailsvc` command, run as a real process against the test database."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import asyncpg
import jwt
import pytest
from sqlalchemy.engine import make_url

from mailsvc.auth.service import tenant_info
from mailsvc.auth.tokens import verify_token
from mailsvc.config import Settings
from mailsvc.models import Tenant
from tests.support.servers import TestServers


def mailsvc(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILSVC_")}
    return subprocess.run(
        [sys.executable, "-m", "mailsvc", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cli_env(servers: TestServers, tmp_path: Path) -> dict[str, str]:
    return {
        "MAILSVC_DATABASE_URL": servers.database_url,
        "MAILSVC_JWT_SECRET": secrets.token_urlsafe(48),
        "MAILSVC_DATA_DIR": str(tmp_path / "data"),
    }


def test_tenant_and_token(cli_env: dict[str, str]) -> None:
    name = f"acme-{secrets.token_hex(3)}"
    created = mailsvc(
        "tenant", "create", name, "--domains", "acme.example,Mail.Acme.Example", env=cli_env
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"tenant {name} ")
    assert created.stdout.strip().endswith(
        "domains=acme.example,mail.acme.example sender=noreply@acme.example"
    )

    issued = mailsvc(
        "token",
        "create",
        "--tenant",
        name,
        "--scopes",
        "messages:send messages:read",
        "--ttl",
        "2h",
        env=cli_env,
    )
    assert issued.returncode == 0, issued.stderr
    config = Settings(jwt_secret=cli_env["MAILSVC_JWT_SECRET"])
    claims = verify_token(issued.stdout.strip(), config)
    assert claims.scopes == {"messages:send", "messages:read"}
    payload = jwt.decode(issued.stdout.strip(), options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 7200
    assert payload["aud"] == "mailsvc"


def test_token_for_unknown_tenant_is_refused(cli_env: dict[str, str]) -> None:
    result = mailsvc("token", "create", "--tenant", "nobody", "--scopes", "admin", env=cli_env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "mailsvc: unknown tenant 'nobody'; create it with `mailsvc tenant create`"
    )


def test_unknown_scope_is_refused(cli_env: dict[str, str]) -> None:
    result = mailsvc("token", "create", "--tenant", "x", "--scopes", "messages:nuke", env=cli_env)
    assert result.returncode == 2
    assert "unknown scopes ['messages:nuke']" in result.stderr


def test_duplicate_tenant_is_refused(cli_env: dict[str, str]) -> None:
    name = f"dup-{secrets.token_hex(3)}"
    assert mailsvc("tenant", "create", name, "--domains", "a.example", env=cli_env).returncode == 0
    again = mailsvc("tenant", "create", name, "--domains", "a.example", env=cli_env)
    assert again.returncode == 2
    assert again.stderr.strip() == f"mailsvc: tenant '{name}' already exists"


def test_special_use_domain_is_refused(cli_env: dict[str, str]) -> None:
    result = mailsvc("tenant", "create", "t", "--domains", "shop.test", env=cli_env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mailsvc: 'shop.test' is not a valid sender domain: "
        "It is a special-use or reserved name that cannot be used with email."
    )


def test_bad_ttl_is_refused(cli_env: dict[str, str]) -> None:
    result = mailsvc(
        "token", "create", "--tenant", "x", "--scopes", "admin", "--ttl", "soon", env=cli_env
    )
    assert result.returncode == 2
    assert "is not a duration like 3600, 30m, 1h or 7d" in result.stderr


def test_commands_beside_a_running_dev_use_its_servers(
    servers: TestServers, tmp_path: Path
) -> None:
    """No MAILSVC_* URL set: the command reads the running `mailsvc dev`'s runtime.json."""
    data_dir = tmp_path / ".mailsvc"
    data_dir.mkdir()
    (data_dir / "runtime.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),  # alive, as the dev supervisor would be
                "database_url": servers.database_url,
                "redis_url": servers.redis_url,
                "api_url": "http://127.0.0.1:8000",
                "smtp_port": 2525,
            }
        )
    )
    secret = secrets.token_urlsafe(48)
    (data_dir / "jwt-secret").write_text(secret)
    name = f"beside-{secrets.token_hex(3)}"
    assert (
        mailsvc("tenant", "create", name, "--domains", "b.example", env={}, cwd=tmp_path).returncode
        == 0
    )
    issued = mailsvc("token", "create", "--tenant", name, "--scopes", "admin", env={}, cwd=tmp_path)
    assert issued.returncode == 0, issued.stderr
    assert verify_token(issued.stdout.strip(), Settings(jwt_secret=secret)).scopes == {"admin"}


def test_rate_limits_are_set_shown_and_cleared(cli_env: dict[str, str]) -> None:
    assert (
        "provider:ses\tper_minute=None\tper_second=14\tdefault"
        in mailsvc("limits", "show", env=cli_env).stdout
    )
    done = mailsvc("limits", "set", "provider:smtp", "--per-minute", "6000", env=cli_env)
    assert done.returncode == 0, done.stderr
    shown = mailsvc("limits", "show", env=cli_env).stdout
    assert "provider:smtp\tper_minute=6000\tper_second=None\tset" in shown
    assert mailsvc("limits", "clear", "provider:smtp", env=cli_env).returncode == 0
    assert "provider:smtp" not in mailsvc("limits", "show", env=cli_env).stdout


def test_a_bad_rate_limit_scope_is_refused(cli_env: dict[str, str]) -> None:
    result = mailsvc("limits", "set", "provider:pigeon", "--per-minute", "5", env=cli_env)
    assert result.returncode == 2
    assert "is not a scope" in result.stderr
    zero = mailsvc("limits", "set", "lane:bulk", "--per-minute", "0", env=cli_env)
    assert zero.returncode == 2
    assert "'0' is not a whole number above 0" in zero.stderr


# -- item 7: the command is complete and honest ------------------------------------------------

COMMANDS = ("dev", "api", "worker", "beat", "db", "tenant", "token", "limits", "openapi")
NO_DATABASE = "mailsvc: no database: set MAILSVC_DATABASE_URL, or start `make run` in this folder"


def one_line_refusal(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The stderr line of a command that stopped as documented: nothing on stdout, no traceback."""
    assert result.returncode == exit_code, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mailsvc: ")
    return lines[0]


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from mailsvc.db import alembic_ini

    head = ScriptDirectory.from_config(Config(str(alembic_ini()))).get_current_head()
    assert head is not None
    return head


@pytest.fixture
def empty_database(servers: TestServers) -> Iterator[str]:
    """A database of its own on the test server, with no tables: as a new deployment's is."""
    name = f"mailsvc_cli_{secrets.token_hex(5)}"
    server = make_url(servers.database_url).set(drivername="postgresql")
    admin = server.render_as_string(hide_password=False)

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield server.set(database=name).render_as_string(hide_password=False)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def closed_port() -> int:
    """A local port nothing listens on: a database that does not answer."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = mailsvc("--help", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    listed = [line.split()[0] for line in section.splitlines() if line.startswith("    ")]
    assert listed == list(COMMANDS)
    for code in ("0  done", "2  refused", "3  not configured", "4  the database does not answer"):
        assert f"  {code}" in result.stdout


@pytest.mark.parametrize(
    ("command", "actions"),
    [("tenant", ["create", "list"]), ("token", ["create"]), ("db", ["upgrade"])],
)
def test_help_lists_each_commands_actions(command: str, actions: list[str], tmp_path: Path) -> None:
    result = mailsvc(command, "--help", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ")]
    assert listed == actions


def test_version_is_the_packages(tmp_path: Path) -> None:
    result = mailsvc("--version", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"mailsvc {metadata.version('mailsvc')}\n"


def test_db_upgrade_says_what_it_did(empty_database: str, tmp_path: Path) -> None:
    env = {"MAILSVC_DATABASE_URL": empty_database, "MAILSVC_DATA_DIR": str(tmp_path / "data")}
    head = head_revision()

    first = mailsvc("db", "upgrade", "0005", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "migrated an empty database to 0005\n"

    second = mailsvc("db", "upgrade", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == f"upgraded the database from 0005 to {head} (head)\n"

    third = mailsvc("db", "upgrade", env=env, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.stdout == f"the database is already at {head} (head): nothing to do\n"
    assert "Traceback" not in first.stderr + second.stderr + third.stderr


def test_db_upgrade_of_a_fresh_database_to_head(empty_database: str, tmp_path: Path) -> None:
    env = {"MAILSVC_DATABASE_URL": empty_database, "MAILSVC_DATA_DIR": str(tmp_path / "data")}
    done = mailsvc("db", "upgrade", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"migrated an empty database to {head_revision()} (head)\n"
    listed = mailsvc("tenant", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "name\tid\tdomains\tdefault sender\n"


@pytest.mark.parametrize(
    ("sender", "stored", "display_name"),
    [
        ("Acme <no-reply@acme.example>", "Acme <no-reply@acme.example>", "Acme"),
        (
            '"Acme, Inc." <no-reply@Acme.Example>',
            '"Acme, Inc." <no-reply@acme.example>',
            "Acme, Inc.",
        ),
        ("no-reply@acme.example", "no-reply@acme.example", None),
    ],
)
def test_tenant_create_with_a_sender_then_list(
    cli_env: dict[str, str], sender: str, stored: str, display_name: str | None
) -> None:
    name = f"sender-{secrets.token_hex(3)}"
    created = mailsvc(
        "tenant", "create", name, "--domains", "acme.example", "--sender", sender, env=cli_env
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.endswith(f" domains=acme.example sender={stored}\n")
    tenant_id = uuid.UUID(created.stdout.split()[2])

    listed = mailsvc("tenant", "list", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "name\tid\tdomains\tdefault sender"
    assert f"{name}\t{tenant_id}\tacme.example\t{stored}" in lines[1:]

    # What messages that give no From are sent as: the address, and the name beside it.
    info = tenant_info(
        Tenant(id=tenant_id, name=name, allowed_domains=["acme.example"], default_sender=stored)
    )
    assert info.default_sender == "no-reply@acme.example"
    assert info.default_sender_name == display_name


@pytest.mark.parametrize(
    ("sender", "message"),
    [
        (
            "Acme <no-reply@elsewhere.example>",
            "mailsvc: default sender 'no-reply@elsewhere.example' is outside the tenant's domains",
        ),
        (
            "Acme <not an address>",
            "mailsvc: 'Acme <not an address>' is not a sender: give `Name <address>` or an address",
        ),
        (
            "a@acme.example, b@acme.example",
            "mailsvc: 'a@acme.example, b@acme.example' is not a sender: "
            "give `Name <address>` or an address",
        ),
    ],
)
def test_a_bad_sender_is_refused(cli_env: dict[str, str], sender: str, message: str) -> None:
    name = f"bad-sender-{secrets.token_hex(3)}"
    result = mailsvc(
        "tenant", "create", name, "--domains", "acme.example", "--sender", sender, env=cli_env
    )
    assert one_line_refusal(result, 2) == message
    assert name not in mailsvc("tenant", "list", env=cli_env).stdout


@pytest.mark.parametrize(
    "command",
    [
        ["tenant", "list"],
        ["tenant", "create", "acme", "--domains", "acme.example"],
        ["db", "upgrade"],
        ["limits", "show"],
        ["api"],
        ["worker"],
    ],
)
def test_no_database_configured_is_one_line_and_exit_3(command: list[str], tmp_path: Path) -> None:
    """No MAILSVC_DATABASE_URL and no running dev: nothing is started in its place."""
    result = mailsvc(*command, env={}, cwd=tmp_path)
    assert one_line_refusal(result, 3) == NO_DATABASE
    assert list(tmp_path.iterdir()) == []  # no .mailsvc/pg: no embedded PostgreSQL


def test_token_without_a_secret_is_one_line_and_exit_3(tmp_path: Path) -> None:
    result = mailsvc(
        "token", "create", "--tenant", "acme", "--scopes", "admin", env={}, cwd=tmp_path
    )
    assert one_line_refusal(result, 3) == (
        "mailsvc: no signing secret: set MAILSVC_JWT_SECRET, or start `make run` in this folder"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["tenant", "list"],
        ["tenant", "create", "acme", "--domains", "acme.example"],
        ["token", "create", "--tenant", "acme", "--scopes", "admin"],
        ["limits", "show"],
    ],
)
def test_an_unmigrated_database_is_one_line_and_exit_5(
    command: list[str], empty_database: str, tmp_path: Path
) -> None:
    env = {
        "MAILSVC_DATABASE_URL": empty_database,
        "MAILSVC_JWT_SECRET": secrets.token_urlsafe(48),
        "MAILSVC_DATA_DIR": str(tmp_path / "data"),
    }
    result = mailsvc(*command, env=env, cwd=tmp_path)
    assert one_line_refusal(result, 5) == (
        f"mailsvc: the database has no tables yet, this release needs {head_revision()}: "
        "run `mailsvc db upgrade`"
    )


def test_a_database_at_an_older_revision_is_one_line_and_exit_5(
    empty_database: str, tmp_path: Path
) -> None:
    env = {"MAILSVC_DATABASE_URL": empty_database, "MAILSVC_DATA_DIR": str(tmp_path / "data")}
    assert mailsvc("db", "upgrade", "0005", env=env, cwd=tmp_path).returncode == 0
    result = mailsvc("tenant", "list", env=env, cwd=tmp_path)
    assert one_line_refusal(result, 5) == (
        f"mailsvc: the database is at 0005, this release needs {head_revision()}: "
        "run `mailsvc db upgrade`"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["tenant", "list"],
        ["db", "upgrade"],
        ["token", "create", "--tenant", "a", "--scopes", "admin"],
    ],
)
def test_a_database_that_does_not_answer_is_one_line_and_exit_4(
    command: list[str], tmp_path: Path
) -> None:
    port = closed_port()
    env = {
        "MAILSVC_DATABASE_URL": f"postgresql://mailsvc:hunter2@127.0.0.1:{port}/mailsvc",
        "MAILSVC_JWT_SECRET": secrets.token_urlsafe(48),
    }
    line = one_line_refusal(mailsvc(*command, env=env, cwd=tmp_path), 4)
    assert line.startswith(
        f"mailsvc: cannot reach the database postgresql://mailsvc:***@127.0.0.1:{port}/mailsvc "
        "(ConnectionRefusedError: "
    )
    assert "hunter2" not in line
