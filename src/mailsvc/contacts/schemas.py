"""Request and response bodies of the contacts API.

Checks that need the current time (nothing in the future) are made by the service, which takes
a clock; everything else is checked here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from mailsvc.kit.addresses import normalise_email
from mailsvc.kit.headers import HeaderText
from mailsvc.kit.json import json_size
from mailsvc.kit.time import check_time_zone

EARLIEST_BIRTHDAY = date(1900, 1, 1)
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTES_BYTES = 16 * 1024


def normalise_contact_email(value: str) -> str:
    """The stored form of an address: valid, ASCII (IDN domains in punycode), lower-cased.

    Idempotent: a normalised address normalises to itself.
    """
    return normalise_email(value).lower()


def _check_birthday(value: date | None) -> date | None:
    if value is not None and value < EARLIEST_BIRTHDAY:
        raise ValueError(f"birthday is before {EARLIEST_BIRTHDAY.isoformat()}")
    return value


def _in_utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _check_attributes(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes are allowed; got {len(value)}")
    size = json_size(value)
    if size > MAX_ATTRIBUTES_BYTES:
        raise ValueError(
            f"attributes are {size} bytes as JSON; at most {MAX_ATTRIBUTES_BYTES} are allowed"
        )
    return value


Timestamp = Annotated[AwareDatetime | None, AfterValidator(_in_utc)]


class ContactFields(BaseModel):
    """A contact's fields. On update, a field left out of the body keeps its stored value (so
    events can fill a contact in part by part); a field sent as null is cleared. On create, a
    field left out takes its default."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[HeaderText, Field(max_length=200)] | None = None
    birthday: Annotated[
        date | None,
        AfterValidator(_check_birthday),
        Field(description="Not in the future (in the contact's time zone), nor before 1900."),
    ] = None
    timezone: Annotated[
        str,
        Field(max_length=64, description="An IANA time zone name, such as 'Europe/Paris'."),
        AfterValidator(check_time_zone),
    ] = "UTC"
    signed_up_at: Annotated[
        Timestamp, Field(description="RFC 3339 with an offset; stored in UTC.")
    ] = None
    activated_at: Annotated[
        Timestamp, Field(description="RFC 3339 with an offset; stored in UTC.")
    ] = None
    attributes: Annotated[
        dict[str, JsonValue],
        Field(
            description="At most 50 keys and 16 KiB as JSON.",
            json_schema_extra={"maxProperties": MAX_ATTRIBUTES},
        ),
        AfterValidator(_check_attributes),
    ] = Field(default_factory=dict)


class Contact(BaseModel):
    """A contact, as stored: the email address is its key."""

    email: str
    name: str | None
    birthday: date | None
    timezone: str
    signed_up_at: datetime | None
    activated_at: datetime | None
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ContactPage(BaseModel):
    data: list[Contact]
    next_cursor: str | None
