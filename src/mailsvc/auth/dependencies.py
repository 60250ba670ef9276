"""The Principal dependency: a verified token, its tenant, and a check of one scope per route."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mailsvc.auth import scopes
from mailsvc.auth.service import TenantCache, TenantInfo
from mailsvc.auth.tokens import verify_token
from mailsvc.db import DbSession
from mailsvc.errors import Forbidden, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="A JWT issued by `mailsvc token create`.")


@dataclass(frozen=True)
class Principal:
    subject: str
    tenant: TenantInfo
    scopes: frozenset[str]

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.tenant.id

    def has(self, scope: str) -> bool:
        return scope in self.scopes or scopes.ADMIN in self.scopes


async def authenticate(
    request: Request,
    session: DbSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("an Authorization: Bearer token is required")
    claims = verify_token(credentials.credentials)
    cache: TenantCache = request.app.state.tenants
    tenant = await cache.get(session, claims.tenant_id)
    if tenant is None:
        raise Unauthorized("token tenant does not exist")
    return Principal(subject=claims.subject, tenant=tenant, scopes=claims.scopes)


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.has(scope):
            raise Forbidden(f"this token lacks the {scope!r} scope")
        return principal

    check.__name__ = f"require_{scope.replace(':', '_')}"
    return check


SendScope = Annotated[Principal, Depends(require(scopes.MESSAGES_SEND))]
ReadScope = Annotated[Principal, Depends(require(scopes.MESSAGES_READ))]
ContactsWriteScope = Annotated[Principal, Depends(require(scopes.CONTACTS_WRITE))]
ContactsReadScope = Annotated[Principal, Depends(require(scopes.CONTACTS_READ))]
TemplatesWriteScope = Annotated[Principal, Depends(require(scopes.TEMPLATES_WRITE))]
AdminScope = Annotated[Principal, Depends(require(scopes.ADMIN))]
