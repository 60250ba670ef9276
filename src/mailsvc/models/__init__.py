"""Every ORM table, one module each. Importing this package registers them all on Base.metadata."""

from mailsvc.models.attempt import Attempt
from mailsvc.models.base import Base
from mailsvc.models.message import Message, MessageStatus
from mailsvc.models.message_event import MessageEvent
from mailsvc.models.rate_limit import RateLimit
from mailsvc.models.tenant import Tenant

__all__ = ["Attempt", "Base", "Message", "MessageEvent", "MessageStatus", "RateLimit", "Tenant"]
