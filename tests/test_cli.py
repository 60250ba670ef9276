"""The `mailsvc` command, run as a real process against the test database."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from mailsvc.auth.tokens import verify_token
from mailsvc.config import Settings
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
    assert created.stdout.strip().endswith("domains=acme.example,mail.acme.example")

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
