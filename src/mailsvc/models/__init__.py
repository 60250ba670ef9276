"""Every ORM table, one module each. Importing this package registers them all on Base.metadata."""

from mailsvc.models.attempt import Attempt
from mailsvc.models.base import Base
from mailsvc.models.contact import Contact
from mailsvc.models.event_mapping import EventMapping
from mailsvc.models.message import Message, MessageStatus
from mailsvc.models.message_event import MessageEvent
from mailsvc.models.rate_limit import RateLimit
from mailsvc.models.schedule import SCHEDULE_NAMES, RecurringSend, Schedule
from mailsvc.models.template import Template
from mailsvc.models.tenant import Tenant

__all__ = [
    "SCHEDULE_NAMES",
    "Attempt",
    "Base",
    "Contact",
    "EventMapping",
    "Message",
    "MessageEvent",
    "MessageStatus",
    "RateLimit",
    "RecurringSend",
    "Schedule",
    "Template",
    "Tenant",
]
