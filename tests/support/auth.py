"""Tenants and the bearer tokens tests call the API with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from mailsvc.auth.scopes import ALL_SCOPES
from mailsvc.auth.tokens import issue_token
from mailsvc.models import Tenant

# The domain test tenants may send from.
TEST_DOMAIN = "example.com"

# The `make_tenant` fixture: `await make_tenant(name=…, domains=[…])`.
TenantFactory = Callable[..., Awaitable[Tenant]]


def token(tenant: Tenant, scopes: tuple[str, ...] | list[str] = ALL_SCOPES, **kw: Any) -> str:
    return issue_token(
        tenant_id=tenant.id, scopes=scopes, ttl=kw.pop("ttl", timedelta(minutes=10)), **kw
    )


def bearer(tenant: Tenant, scopes: tuple[str, ...] | list[str] = ALL_SCOPES) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, scopes)}"}
