"""Request and response bodies of the events API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mailsvc.contacts.schemas import ContactFields, normalise_contact_email
from mailsvc.kit.json import json_size
from mailsvc.messages.schemas import Message, Priority

EVENT_TYPE = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$"
TEMPLATE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
MAX_DATA_BYTES = 64 * 1024


class EventContact(ContactFields):
    """Who the event is about: the contact is created, or updated with the fields given."""

    email: Annotated[str, Field(max_length=320), AfterValidator(normalise_contact_email)]


def _check_data(value: dict[str, Any]) -> dict[str, Any]:
    size = json_size(value)
    if size > MAX_DATA_BYTES:
        raise ValueError(f"data is {size} bytes as JSON; at most {MAX_DATA_BYTES} are allowed")
    return value


class EventCreate(BaseModel):
    """Something a user did. Its type decides which emails go out (see the event types)."""

    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, Field(pattern=EVENT_TYPE, max_length=64)]
    contact: EventContact
    data: Annotated[dict[str, Any], AfterValidator(_check_data)] = Field(default_factory=dict)


class EventAccepted(BaseModel):
    """The emails the event led to, in the order they go out (each after the one before)."""

    messages: list[Message]


class EventTypeUpdate(BaseModel):
    """Which templates an event type sends, in order, and in which lane."""

    model_config = ConfigDict(extra="forbid")

    templates: Annotated[list[Annotated[str, Field(pattern=TEMPLATE_NAME)]], Field(max_length=5)]
    priority: Priority = "high"


class EventType(BaseModel):
    type: str
    templates: list[str]
    priority: Priority
    builtin: bool  # one of mailsvc's own event types
    customised: bool  # the tenant has changed its mapping
    effects: str  # what the event does besides sending


class EventTypeList(BaseModel):
    data: list[EventType]
