"""Local fake email providers on real sockets (SendGrid, Mailgun, SES, SMTP) that validate
requests like the real APIs, record what they accept and can be scripted to fail."""

from mailsvc.devserver.fakes.script import FakeProvider, Received
from mailsvc.devserver.fakes.server import FakeCredentials, FakeProviders

__all__ = ["FakeCredentials", "FakeProvider", "FakeProviders", "Received"]
