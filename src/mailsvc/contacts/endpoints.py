"""The /v1/contacts routes: parse, authorize, call the service, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import AfterValidator

from mailsvc.auth.dependencies import ContactsReadScope, ContactsWriteScope
from mailsvc.contacts import schemas, service
from mailsvc.db import DbSession
from mailsvc.errors import problem_responses
from mailsvc.kit.pagination import cursor_query
from mailsvc.routing import ApiRoute

router = APIRouter(prefix="/v1/contacts", tags=["contacts"], route_class=ApiRoute)

# `:text` (routing.py): an address with a "/" in its local part (valid, if rare) still routes
# here, and one with a line break reaches the validation and its 422.
ContactEmail = Annotated[
    str,
    Path(
        max_length=320,
        description="The contact's address; IDN domains are stored as punycode and the whole "
        "address lower-cased.",
    ),
    AfterValidator(schemas.normalise_contact_email),
]


@router.put(
    "/{email:text}",
    operation_id="putContact",
    responses={201: {"model": schemas.Contact, "description": "Created: the address was new"}},
)
async def put_contact(
    email: ContactEmail,
    body: schemas.ContactFields,
    session: DbSession,
    principal: ContactsWriteScope,
    response: Response,
) -> schemas.Contact:
    """Create or update a contact; on update, fields left out keep their stored values."""
    contact, created = await service.upsert_contact(session, principal.tenant_id, email, body)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return service.present(contact)


@router.get("/{email:text}", operation_id="getContact", responses=problem_responses(404))
async def get_contact(
    email: ContactEmail, session: DbSession, principal: ContactsReadScope
) -> schemas.Contact:
    """One contact."""
    return service.present(await service.read_contact(session, principal.tenant_id, email))


@router.delete(
    "/{email:text}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="deleteContact",
    responses=problem_responses(404),
)
async def delete_contact(
    email: ContactEmail, session: DbSession, principal: ContactsWriteScope
) -> None:
    """Forget a contact."""
    await service.delete_contact(session, principal.tenant_id, email)


@router.get("", operation_id="listContacts")
async def list_contacts(
    session: DbSession,
    principal: ContactsReadScope,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> schemas.ContactPage:
    """Contacts, newest first, a page at a time."""
    before = cursor_query(cursor)
    return await service.list_contacts(session, principal.tenant_id, before=before, limit=limit)
