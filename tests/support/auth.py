"""Tenants and the bearer tokens tests call the API with."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pydantic import SecretStr

from mailsvc.auth.scopes import ALL_SCOPES
from mailsvc.auth.tokens import issue_token
from mailsvc.config import Settings
from mailsvc.models import Tenant

# The domain test tenants may send from.
TEST_DOMAIN = "example.com"

# The run's token secret: the in-process API's settings and every process a test starts have it.
JWT_SECRET = secrets.token_urlsafe(48)
SIGNING = Settings(jwt_secret=SecretStr(JWT_SECRET), env="test")

# The `make_tenant` fixture: `await make_tenant(name=…, domains=[…])`.
TenantFactory = Callable[..., Awaitable[Tenant]]


def token(tenant: Tenant, scopes: tuple[str, ...] | list[str] = ALL_SCOPES, **kw: Any) -> str:
    return issue_token(
        tenant_id=tenant.id,
        scopes=scopes,
        ttl=kw.pop("ttl", timedelta(minutes=10)),
        config=kw.pop("config", SIGNING),
        **kw,
    )


def bearer(tenant: Tenant, scopes: tuple[str, ...] | list[str] = ALL_SCOPES) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, scopes)}"}
