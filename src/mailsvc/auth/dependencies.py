"""The Principal dependency: a verified token, its tenant, and a check of one scope per route."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mailsvc.auth import scopes
from mailsvc.auth.service import TenantCache, TenantInfo
from mailsvc.auth.tokens import Claims, verify_token
from mailsvc.db import DbSession
from mailsvc.errors import Forbidden, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="A JWT issued by `mailsvc token create`.")


def bearer_claims(request: Request) -> Claims:
    """The verified claims of the request's bearer token; 401 without a valid one.

    Remembered on the request: the route checks the caller before it reads the body
    (routing.ApiRoute), and the Principal dependency reuses what it found.
    """
    known: Claims | None = getattr(request.state, "claims", None)
    if known is not None:
        return known
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("an Authorization: Bearer token is required")
    claims = verify_token(token.strip(), request.app.state.settings)
    request.state.claims = claims
    return claims


def has_scope(granted: frozenset[str], scope: str) -> bool:
    return scope in granted or scopes.ADMIN in granted


@dataclass(frozen=True)
class Principal:
    subject: str
    tenant: TenantInfo
    scopes: frozenset[str]

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.tenant.id

    def has(self, scope: str) -> bool:
        return has_scope(self.scopes, scope)


async def authenticate(
    request: Request,
    session: DbSession,
    # Read by bearer_claims; declared here so that OpenAPI shows the security scheme.
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    claims = bearer_claims(request)
    cache: TenantCache = request.app.state.tenants
    tenant = await cache.get(session, claims.tenant_id)
    if tenant is None:
        raise Unauthorized("token tenant does not exist")
    return Principal(subject=claims.subject, tenant=tenant, scopes=claims.scopes)


class RequireScope:
    """A dependency: the principal, if its token carries `scope` (403 otherwise).

    routing.ApiRoute reads `scope` to check it before the body is read.
    """

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        check_scope(principal.scopes, self.scope)
        return principal


def check_scope(granted: frozenset[str], scope: str) -> None:
    if not has_scope(granted, scope):
        raise Forbidden(f"this token lacks the {scope!r} scope")


def require(scope: str) -> RequireScope:
    return RequireScope(scope)


SendScope = Annotated[Principal, Depends(require(scopes.MESSAGES_SEND))]
ReadScope = Annotated[Principal, Depends(require(scopes.MESSAGES_READ))]
ContactsWriteScope = Annotated[Principal, Depends(require(scopes.CONTACTS_WRITE))]
ContactsReadScope = Annotated[Principal, Depends(require(scopes.CONTACTS_READ))]
TemplatesWriteScope = Annotated[Principal, Depends(require(scopes.TEMPLATES_WRITE))]
AdminScope = Annotated[Principal, Depends(require(scopes.ADMIN))]
