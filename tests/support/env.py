"""Settings for what a test starts: mailsvc processes, and transports aimed at the fakes."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from mailsvc.config import Settings
from mailsvc.devserver.fakes import FakeProviders
from tests.support.auth import JWT_SECRET
from tests.support.servers import TestServers


def settings_for(servers: TestServers, **overrides: Any) -> Settings:
    """The settings of mailsvc code a test runs in its own process (the app factory's, …)."""
    return Settings(
        **{
            "database_url": servers.database_url,
            "redis_url": servers.redis_url,
            "jwt_secret": SecretStr(JWT_SECRET),
            "env": "test",
            **overrides,
        }
    )


def service_env(servers: TestServers, **overrides: str) -> dict[str, str]:
    """Environment for a mailsvc process started by a test."""
    env = {
        "MAILSVC_DATABASE_URL": servers.database_url,
        "MAILSVC_REDIS_URL": servers.redis_url,
        "MAILSVC_JWT_SECRET": JWT_SECRET,
        "MAILSVC_ENV": "test",
        "MAILSVC_LOG_LEVEL": "INFO",
        "MAILSVC_SMTP_HOST": "127.0.0.1",
        # A beat a test stopped hard frees the single-beat lock soon for the next test's beat.
        "MAILSVC_BEAT_LOCK_SECONDS": "3",
    }
    env.update(overrides)
    return env


def provider_env(fakes: FakeProviders, order: str = "sendgrid,mailgun,ses,smtp") -> dict[str, str]:
    """MAILSVC_* settings that point every provider at the fakes."""
    return fakes.settings_env(order)


def provider_settings(fakes: FakeProviders, **overrides: Any) -> Settings:
    env: dict[str, Any] = {
        k.removeprefix("MAILSVC_").lower(): v for k, v in provider_env(fakes).items()
    }
    env["provider_order"] = env["provider_order"].split(",")
    return Settings(**{**env, **overrides})
