"""The naive baseline: one Celery task per email, a new SMTP connection for each.

It keeps no records at all. NAIVE_BUILDER picks how it builds the message: "mailsvc" (the
default) uses mailsvc's own builder, so only the design differs (a broker round trip and a
TCP/SMTP handshake per email); "stdlib" uses email.mime, as a naive service would, and as
MEASURED.md's baseline did.
"""

from __future__ import annotations

import os
import smtplib
import uuid
from datetime import UTC, datetime
from email import policy
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr
from typing import Any

from celery import Celery

from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.mime import build_mime

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)


@app.task(name="naive.send")
def send(message: dict[str, Any]) -> None:
    email = OutgoingEmail(
        message_id=uuid.uuid4(),
        message_id_header=f"<{uuid.uuid4().hex}@example.com>",
        sender=Mailbox("noreply@example.com"),
        to=[Mailbox(address) for address in message["to"]],
        subject=message["subject"],
        date=datetime.now(UTC),
        text=message["text"],
        html=message["html"],
    )
    host, port = os.environ["NAIVE_SMTP_HOST"], int(os.environ["NAIVE_SMTP_PORT"])
    if os.environ.get("NAIVE_BUILDER") == "stdlib":
        raw = stdlib_mime(email)
    else:
        raw = build_mime(email)
    with smtplib.SMTP(host, port) as smtp:
        smtp.sendmail(email.sender.email, email.envelope_recipients, raw)


def stdlib_mime(email: OutgoingEmail) -> bytes:
    message = MIMEMultipart("alternative")
    message["From"] = formataddr((email.sender.name or "", email.sender.email))
    message["To"] = ", ".join(a.email for a in email.to)
    message["Subject"] = email.subject
    message["Date"] = format_datetime(email.date)
    message["Message-ID"] = email.message_id_header
    message.attach(MIMEText(email.text or "", "plain", "utf-8"))
    message.attach(MIMEText(email.html or "", "html", "utf-8"))
    return message.as_bytes(policy=policy.SMTP)
