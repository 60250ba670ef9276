"""Tenants: creating them, and a short-lived cache of what a request needs to know about one."""

from __future__ import annotations

import email.errors
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from email.headerregistry import Address
from email.policy import default as default_policy
from email.utils import parseaddr

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.auth.repository import TenantRepository
from mailsvc.auth.tokens import issue_token
from mailsvc.config import Settings
from mailsvc.errors import Conflict, NotFound, ValidationFailed
from mailsvc.kit.addresses import normalise_email
from mailsvc.kit.headers import unsafe_character
from mailsvc.models import Tenant

_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class TenantInfo:
    id: uuid.UUID
    name: str
    allowed_domains: frozenset[str]
    default_sender: str | None  # the address alone
    default_sender_name: str | None = None  # its display name, if the tenant gave one

    def may_send_from(self, address: str) -> bool:
        domain = address.rpartition("@")[2].lower()
        return domain in self.allowed_domains


def _normalise_domain(domain: str) -> str:
    domain = domain.strip().lower().rstrip(".")
    try:
        result = validate_email(f"postmaster@{domain}", check_deliverability=False)
    except EmailNotValidError as exc:
        reason = str(exc).replace("The part after the @-sign", "It")
        raise ValidationFailed(f"{domain!r} is not a valid sender domain: {reason}") from exc
    return str(result.ascii_domain)  # IDN domains compare in punycode, as addresses are stored


MAX_SENDER_NAME_CHARS = 200  # as a message's own From name


def parse_sender(value: str) -> tuple[str | None, str]:
    """`Name <address>` or a bare address → (the display name or None, the address in ASCII
    form). Parsed as a From header is, strictly: one mailbox, no defects."""
    problem = f"{value!r} is not a sender: give `Name <address>` or an address"
    bad = unsafe_character(value)
    if bad is not None:
        raise ValidationFailed(f"{problem} (it contains {bad})")
    try:
        header = default_policy.header_factory("from", value)
    except (email.errors.HeaderParseError, IndexError, ValueError) as exc:
        raise ValidationFailed(problem) from exc
    if header.defects or len(header.addresses) != 1:
        raise ValidationFailed(problem)
    [mailbox] = header.addresses
    name = " ".join(mailbox.display_name.split()) or None
    if name is not None and len(name) > MAX_SENDER_NAME_CHARS:
        raise ValidationFailed(f"the sender's name is over {MAX_SENDER_NAME_CHARS} characters")
    try:
        return name, normalise_email(mailbox.addr_spec)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc


async def create_tenant(
    session: AsyncSession, *, name: str, domains: list[str], default_sender: str | None = None
) -> Tenant:
    """`default_sender` is `Name <address>` or an address; unset, noreply@ the first domain."""
    repo = TenantRepository(session)
    if await repo.get_by_name(name) is not None:
        raise Conflict(f"tenant {name!r} already exists")
    allowed = sorted({_normalise_domain(d) for d in domains if d.strip()})
    if not allowed:
        raise ValidationFailed("a tenant needs at least one sender domain")
    sender_name, sender = parse_sender(default_sender or f"noreply@{allowed[0]}")
    if sender.rpartition("@")[2].lower() not in allowed:
        raise ValidationFailed(f"default sender {sender!r} is outside the tenant's domains")
    # Kept as the From header's mailbox, quoted where the name needs it: one column holds both.
    mailbox = str(Address(display_name=sender_name or "", addr_spec=sender))
    return await repo.add(Tenant(name=name, allowed_domains=allowed, default_sender=mailbox))


async def list_tenants(session: AsyncSession) -> list[Tenant]:
    """Every tenant, by name."""
    return await TenantRepository(session).all()


async def ensure_tenant(session: AsyncSession, *, name: str, domains: list[str]) -> Tenant:
    existing = await TenantRepository(session).get_by_name(name)
    return existing or await create_tenant(session, name=name, domains=domains)


async def token_for_tenant(
    session: AsyncSession,
    *,
    tenant_name: str,
    scopes: Iterable[str],
    ttl: timedelta,
    config: Settings,
) -> str:
    tenant = await TenantRepository(session).get_by_name(tenant_name)
    if tenant is None:
        raise NotFound(f"unknown tenant {tenant_name!r}; create it with `mailsvc tenant create`")
    return issue_token(tenant_id=tenant.id, scopes=scopes, ttl=ttl, config=config)


class TenantCache:
    """Tenant facts per process for a few seconds: the hot path does not query them per request."""

    def __init__(self, ttl: float = _CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[uuid.UUID, tuple[float, TenantInfo | None]] = {}

    async def get(self, session: AsyncSession, tenant_id: uuid.UUID) -> TenantInfo | None:
        now = time.monotonic()
        hit = self._entries.get(tenant_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        tenant = await TenantRepository(session).get(tenant_id)
        info = None if tenant is None else tenant_info(tenant)
        self._entries[tenant_id] = (now + self.ttl, info)
        return info


def tenant_info(tenant: Tenant) -> TenantInfo:
    sender_name, sender = parseaddr(tenant.default_sender or "")
    return TenantInfo(
        id=tenant.id,
        name=tenant.name,
        allowed_domains=frozenset(tenant.allowed_domains),
        default_sender=sender or None,
        default_sender_name=sender_name or None,
    )


async def tenant_infos(
    session: AsyncSession, tenant_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, TenantInfo]:
    """What jobs need to know about many tenants, in one query."""
    tenants = await TenantRepository(session).get_many(set(tenant_ids))
    return {t.id: tenant_info(t) for t in tenants}
