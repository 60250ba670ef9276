"""The naive baseline: one Celery task per email, a new SMTP connection for each.

It builds the message with the same code as mailsvc and keeps no records at all, so the
comparison favours it: the difference is the design (a broker round trip and a TCP/SMTP
handshake per email), not the work done.
"""

from __future__ import annotations

import os
import smtplib
import uuid
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from mailsvc.delivery.message import Address, OutgoingEmail
from mailsvc.delivery.mime import build_mime

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)


@app.task(name="naive.send")
def send(message: dict[str, Any]) -> None:
    email = OutgoingEmail(
        message_id=uuid.uuid4(),
        message_id_header=f"<{uuid.uuid4().hex}@example.com>",
        sender=Address("noreply@example.com"),
        to=[Address(address) for address in message["to"]],
        subject=message["subject"],
        date=datetime.now(UTC),
        text=message["text"],
        html=message["html"],
    )
    host, port = os.environ["NAIVE_SMTP_HOST"], int(os.environ["NAIVE_SMTP_PORT"])
    with smtplib.SMTP(host, port) as smtp:
        smtp.sendmail(email.sender.email, email.envelope_recipients, build_mime(email))
