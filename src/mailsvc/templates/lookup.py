"""Templates as the messages and events services use them: looked up once per request, rendered
with errors that name the request's own fields, and the variables every built-in expects."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.errors import FieldError, ValidationFailed
from mailsvc.templates.builtin import BUILTIN_NAMES
from mailsvc.templates.engine import Rendered, TemplateSource
from mailsvc.templates.service import render_source, resolve

BUILTIN_TEMPLATES: frozenset[str] = frozenset(BUILTIN_NAMES)

Loc = tuple[str | int, ...]


class TemplateLookup:
    """One tenant's templates for the length of a request: each name is looked up once."""

    def __init__(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        *,
        variables_loc: Loc | None = None,  # where the caller's variables are, for errors
    ) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.variables_loc = variables_loc
        self._sources: dict[str, TemplateSource] = {}

    async def source(self, name: str, *, loc: Loc) -> TemplateSource:
        if name not in self._sources:
            self._sources[name] = await resolve(self.session, self.tenant_id, name, loc=loc)
        return self._sources[name]

    def render(self, source: TemplateSource, variables: Mapping[str, Any], *, loc: Loc) -> Rendered:
        """Render, or a 422: a missing variable names the variables, anything else the template."""
        try:
            return render_source(self.tenant_id, source, variables, loc=loc)
        except ValidationFailed as exc:
            if self.variables_loc is None:
                raise
            exc.errors = [
                FieldError(self.variables_loc, e.msg) if e.loc == (*loc, "variables") else e
                for e in exc.errors
            ]
            raise


def contact_variables(contact: Any) -> dict[str, Any]:
    """A contact as templates see it: `contact.email`, `contact.name`, `contact.attributes`…"""
    birthday = getattr(contact, "birthday", None)
    signed_up_at = getattr(contact, "signed_up_at", None)
    return {
        "email": contact.email,
        "name": contact.name,
        "timezone": getattr(contact, "timezone", "UTC"),
        "birthday": birthday.isoformat() if birthday else None,
        "signed_up_at": signed_up_at.isoformat() if signed_up_at else None,
        "attributes": dict(getattr(contact, "attributes", None) or {}),
    }


def with_defaults(
    variables: Mapping[str, Any], *, tenant_name: str, recipient: Mapping[str, Any]
) -> dict[str, Any]:
    """What every built-in may use, under the caller's own variables: tenant, contact, data."""
    contact = {"email": recipient["email"], "name": recipient.get("name"), "attributes": {}}
    return {"tenant": {"name": tenant_name}, "contact": contact, "data": {}, **variables}
